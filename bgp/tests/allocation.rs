//! No input makes decoding allocate more than a small multiple of the
//! message's length: measured with a counting global allocator on
//! adversarial messages (thousands of one-byte prefixes, hundreds of empty
//! attributes, long AS paths) and on random noise.
#![allow(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bgp::wire::{decode, AddPathFamilies, Family, SessionParams};
use bytes::Bytes;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Tracks live and peak bytes of the current thread's allocations.
struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// thread-local counters use const-initialised `Cell`s, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LIVE.try_with(|l| {
            l.set(l.get() + layout.size());
            let _ = PEAK.try_with(|p| p.set(p.get().max(l.get())));
        });
        // SAFETY: same layout contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _ = LIVE.try_with(|l| l.set(l.get().saturating_sub(layout.size())));
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Peak bytes allocated while decoding `msg`, above what was live before.
fn peak_while_decoding(msg: &Bytes, params: &SessionParams) -> usize {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let result = decode(msg, params);
    let peak = PEAK.with(Cell::get) - base;
    drop(result);
    peak
}

/// The bound: a fixed multiple of the message length plus a small constant
/// for fixed-size structures.
const FACTOR: usize = 48;
const CONSTANT: usize = 2048;

fn message(ty: u8, body: &[u8]) -> Bytes {
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    m.push(ty);
    m.extend_from_slice(body);
    Bytes::from(m)
}

fn update(withdrawn: &[u8], attrs: &[u8], nlri: &[u8]) -> Bytes {
    let mut b = (withdrawn.len() as u16).to_be_bytes().to_vec();
    b.extend_from_slice(withdrawn);
    b.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    b.extend_from_slice(attrs);
    b.extend_from_slice(nlri);
    message(2, &b)
}

const BASE: [u8; 20] = [
    0x40, 1, 1, 0, 0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xe9, 0x40, 3, 4, 10, 0, 0, 1,
];

fn adversarial() -> Vec<(&'static str, Bytes, SessionParams)> {
    let ext = SessionParams {
        four_octet_as: true,
        extended_message: true,
        add_path: AddPathFamilies::EMPTY,
    };
    let ap = SessionParams {
        add_path: AddPathFamilies::EMPTY
            .with(Family::IPV4_UNICAST)
            .with(Family::IPV6_UNICAST),
        ..ext
    };
    // MP_REACH of IPv6 with 60,000 /0 prefixes.
    let mut mp = vec![0x90, 14];
    let mut v = vec![0, 2, 1, 16];
    v.extend_from_slice(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    v.extend(std::iter::repeat_n(0u8, 60_000));
    mp.extend_from_slice(&(v.len() as u16).to_be_bytes());
    mp.extend_from_slice(&v);
    // Many distinct unknown optional attributes with empty values, then
    // many repeats of one.
    let mut unknown = Vec::new();
    for t in 19..=255u8 {
        if t != 32 {
            unknown.extend_from_slice(&[0xc0, t, 0]);
        }
    }
    for _ in 0..15_000 {
        unknown.extend_from_slice(&[0xc0, 99, 0]);
    }
    // An AS_PATH of 250 one-AS segments on a 4-octet session.
    let mut path = Vec::new();
    for _ in 0..250 {
        path.extend_from_slice(&[2, 1, 0, 0, 0xfd, 0xe9]);
    }
    let mut as_path_attr = vec![0x50, 2];
    as_path_attr.extend_from_slice(&(path.len() as u16).to_be_bytes());
    as_path_attr.extend_from_slice(&path);
    let attrs_long_path = [
        &[0x40, 1, 1, 0][..],
        &as_path_attr,
        &[0x40, 3, 4, 10, 0, 0, 1],
    ]
    .concat();

    vec![
        (
            "4,000 /0 withdrawals",
            update(&[0; 4000], &[], &[]),
            SessionParams::default(),
        ),
        ("60,000 /0 NLRI", update(&[], &BASE, &[0; 60_000]), ext),
        (
            "IPv6 /0s in MP_REACH",
            update(&[], &[&BASE[..13], &mp].concat(), &[]),
            ext,
        ),
        ("ADD-PATH /0s", update(&[], &BASE, &[0; 60_000]), ap),
        (
            "unknown and repeated attributes",
            update(&[], &[&BASE[..], &unknown].concat(), &[24, 10, 0, 0]),
            ext,
        ),
        (
            "long AS path of short segments",
            update(&[], &attrs_long_path, &[24, 10, 0, 0]),
            ext,
        ),
        (
            "communities",
            update(
                &[],
                &[&BASE[..], &[0xd0, 8, 0xea, 0x60], &[1u8; 60_000]].concat(),
                &[],
            ),
            ext,
        ),
    ]
}

#[test]
fn adversarial_messages_stay_within_the_bound() {
    let mut report = Vec::new();
    for (name, msg, params) in adversarial() {
        let peak = peak_while_decoding(&msg, &params);
        let bound = FACTOR * msg.len() + CONSTANT;
        report.push(format!(
            "{name}: {} bytes in, peak {peak} bytes ({:.1}x)",
            msg.len(),
            peak as f64 / msg.len() as f64
        ));
        assert!(
            peak <= bound,
            "{name}: peak {peak} > bound {bound} for {} bytes",
            msg.len()
        );
        // Each case must really decode (not fail early and allocate little).
        assert!(
            decode(&msg, &params).is_ok(),
            "{name}: {:?}",
            decode(&msg, &params).err()
        );
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
fn random_noise_stays_within_the_bound() {
    // xorshift: deterministic, no dependency.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let params = SessionParams {
        four_octet_as: true,
        extended_message: true,
        add_path: AddPathFamilies::EMPTY,
    };
    for _ in 0..3000 {
        let len = (next() % 600) as usize;
        let ty = 1 + (next() % 5) as u8;
        let body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let msg = message(ty, &body);
        let peak = peak_while_decoding(&msg, &params);
        assert!(
            peak <= FACTOR * msg.len() + CONSTANT,
            "peak {peak} for {} bytes: {:02x?}",
            msg.len(),
            &msg[..]
        );
    }
}
