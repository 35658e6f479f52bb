//! Full-table codec benchmark: decode and encode a realistic full-table
//! stream with `bgp::wire`, and decode the same bytes with bgpkit-parser for
//! comparison. Results and how to read them: `docs/benchmarks.md`.
//!
//! Run with `cargo bench -p bgp --bench codec`. The stream is generated
//! deterministically (seeded PRNG, no external data): about 1,000,000 IPv4
//! prefixes and 200,000 IPv6 prefixes (MP_REACH_NLRI), grouped by shared
//! attribute set and packed into 4096-byte UPDATEs the way a router sending
//! a full table packs them. `CODEC_BENCH_SCALE` (default 1.0) scales the
//! prefix counts, e.g. 0.05 for a quick profiling run.

use bgp::wire::{
    self, AsPath, AttributeValue, Community, Family, LargeCommunity, Message, MpReach, MpUnreach,
    NextHop, Nlri, Origin, PathAttribute, SessionParams, Update, HEADER_LEN, MAX_MESSAGE_LEN,
};
use bgpkit_parser::models::{AsnLength, BgpMessage};
use bgpkit_parser::parser::bgp::messages::parse_bgp_message;
use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::fmt::Debug;
use std::hint::black_box;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

const V4_PREFIXES: usize = 1_000_000;
const V6_PREFIXES: usize = 200_000;
const SEED: u64 = 0x5eed_f311_c0de_c0de;

/// The session the stream is sent on: 4-octet AS numbers, no ADD-PATH, no
/// extended messages.
fn params() -> SessionParams {
    SessionParams {
        four_octet_as: true,
        ..SessionParams::default()
    }
}

/// Unwraps a fixture-building result; the workspace denies `unwrap`/`expect`.
fn must<T, E: Debug>(r: Result<T, E>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e:?}"),
    }
}

/// SplitMix64: small, fast, deterministic.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
    /// True with probability `pct`/1000.
    fn permille(&mut self, pct: u64) -> bool {
        self.next_u64() % 1000 < pct
    }
    /// Picks from `(weight, value)` pairs.
    fn weighted<T: Copy>(&mut self, table: &[(u32, T)]) -> T {
        let total: u32 = table.iter().map(|&(w, _)| w).sum();
        let mut r = (self.next_u64() % u64::from(total)) as u32;
        for &(w, v) in table {
            if r < w {
                return v;
            }
            r -= w;
        }
        table[table.len() - 1].1
    }
}

/// IPv4 prefix lengths, weighted roughly as in today's DFZ (per mille).
const V4_LENGTHS: &[(u32, u8)] = &[
    (600, 24),
    (105, 23),
    (120, 22),
    (50, 21),
    (45, 20),
    (25, 19),
    (15, 18),
    (10, 17),
    (13, 16),
    (4, 15),
    (3, 14),
    (3, 13),
    (2, 12),
    (1, 11),
    (1, 10),
    (1, 9),
    (2, 8),
];

/// IPv6 prefix lengths: mostly /48, then /32../47.
const V6_LENGTHS: &[(u32, u8)] = &[
    (550, 48),
    (120, 32),
    (80, 44),
    (70, 40),
    (40, 36),
    (30, 46),
    (30, 47),
    (20, 29),
    (20, 42),
    (20, 45),
    (5, 33),
    (5, 34),
    (5, 35),
    (5, 38),
];

/// Prefixes sharing one attribute set: median 3, long thin tail (a few
/// origins announce hundreds or thousands of prefixes with one path).
const GROUP_SIZES: &[(u32, (u32, u32))] = &[
    (2400, (1, 1)),
    (2100, (2, 2)),
    (1700, (3, 3)),
    (1200, (4, 4)),
    (800, (5, 5)),
    (500, (6, 6)),
    (450, (7, 10)),
    (170, (11, 20)),
    (40, (21, 60)),
    (6, (61, 400)),
    (1, (401, 3000)),
];

/// One attribute set (IPv4: with NEXT_HOP; IPv6: without, the returned
/// global next hop goes into MP_REACH_NLRI).
fn attribute_set(rng: &mut Rng, ipv6: bool) -> (Vec<PathAttribute>, Ipv6Addr) {
    let mut attrs = Vec::with_capacity(6);
    let origin = match rng.range(0, 99) {
        0..=84 => Origin::Igp,
        85..=97 => Origin::Incomplete,
        _ => Origin::Egp,
    };
    attrs.push(PathAttribute::new(AttributeValue::Origin(origin)));
    // 2..8 ASNs, peaking at 4-5; the first is the peer, a mix of 2- and
    // 4-byte-range numbers after it.
    let hops = rng.weighted(&[(8, 2), (20, 3), (28, 4), (22, 5), (12, 6), (6, 7), (4, 8)]);
    let mut asns = vec![64_500u32];
    for _ in 1..hops {
        asns.push(if rng.permille(300) {
            rng.range(131_072, 401_308) as u32
        } else {
            rng.range(1, 64_495) as u32
        });
    }
    attrs.push(PathAttribute::new(AttributeValue::AsPath(
        AsPath::sequence(asns),
    )));
    let v4_nh = Ipv4Addr::new(192, 0, 2, rng.range(1, 4) as u8);
    let v6_nh = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, rng.range(1, 4) as u16);
    if !ipv6 {
        attrs.push(PathAttribute::new(AttributeValue::NextHop(v4_nh)));
    }
    if rng.permille(300) {
        attrs.push(PathAttribute::new(AttributeValue::MultiExitDisc(
            rng.range(0, 1000) as u32,
        )));
    }
    if rng.permille(500) {
        let n = rng.range(1, 8);
        let mut cs: Vec<Community> = (0..n)
            .map(|_| Community(((rng.range(1, 65_535) as u32) << 16) | rng.range(0, 65_535) as u32))
            .collect();
        cs.sort();
        attrs.push(PathAttribute::new(AttributeValue::Communities(cs)));
    }
    if rng.permille(50) {
        let n = rng.range(1, 3);
        let ls = (0..n)
            .map(|_| LargeCommunity {
                global: rng.range(131_072, 401_308) as u32,
                local1: rng.range(0, 1000) as u32,
                local2: rng.range(0, 100_000) as u32,
            })
            .collect();
        attrs.push(PathAttribute::new(AttributeValue::LargeCommunities(ls)));
    }
    (attrs, v6_nh)
}

/// `n` random IPv4 prefixes with the DFZ length mix.
fn v4_prefixes(rng: &mut Rng, n: usize, out: &mut Vec<Nlri>) {
    for _ in 0..n {
        let len = rng.weighted(V4_LENGTHS);
        let first = rng.range(1, 223) as u32;
        let addr = (first << 24) | (rng.next_u64() as u32 & 0x00ff_ffff);
        let net = must(Ipv4Net::new(Ipv4Addr::from(addr), len), "v4 prefix");
        out.push(Nlri::new(IpNet::V4(net)));
    }
}

fn v6_prefixes(rng: &mut Rng, n: usize, out: &mut Vec<Nlri>) {
    for _ in 0..n {
        let len = rng.weighted(V6_LENGTHS);
        // 2000::/3 global unicast.
        let hi = (0x2000u128 + rng.range(0, 0x0fff) as u128) << 112;
        let addr = hi | (u128::from(rng.next_u64()) << 48);
        let net = must(Ipv6Net::new(Ipv6Addr::from(addr), len), "v6 prefix");
        out.push(Nlri::new(IpNet::V6(net)));
    }
}

fn encoded_len(msg: &Message) -> usize {
    let mut b = BytesMut::new();
    must(msg.encode(&params(), &mut b), "encode");
    b.len()
}

fn nlri_wire_len(n: &Nlri) -> usize {
    1 + usize::from(n.prefix.prefix_len()).div_ceil(8)
}

/// Packs one group's prefixes into as few UPDATEs as fit in 4096 bytes,
/// appending them to `out`.
fn pack_group(
    attrs: &[PathAttribute],
    v6_nh: Option<Ipv6Addr>,
    prefixes: &[Nlri],
    out: &mut BytesMut,
) -> usize {
    let mut attributes = attrs.to_vec();
    if let Some(global) = v6_nh {
        // Type-code order: MP_REACH_NLRI (14) after COMMUNITIES (8), before
        // LARGE_COMMUNITY (32).
        let at = attributes
            .iter()
            .position(|a| a.type_code() > 14)
            .unwrap_or(attributes.len());
        attributes.insert(
            at,
            PathAttribute::new(AttributeValue::MpReach(Box::new(MpReach {
                family: Family::IPV6_UNICAST,
                next_hop: NextHop::Ipv6 {
                    global,
                    link_local: None,
                },
                nlri: Vec::new(),
                unparsed: Bytes::new(),
            }))),
        );
    }
    let empty = Message::Update(Update {
        attributes: attributes.clone(),
        ..Update::default()
    });
    // +1: MP_REACH_NLRI may switch to the extended length form.
    let base = encoded_len(&empty) + 1;
    let mut updates = 0;
    let mut rest = prefixes;
    while !rest.is_empty() {
        let mut size = base;
        let mut n = 0;
        while n < rest.len() && size + nlri_wire_len(&rest[n]) <= MAX_MESSAGE_LEN {
            size += nlri_wire_len(&rest[n]);
            n += 1;
        }
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        let mut update = Update {
            attributes: attributes.clone(),
            ..Update::default()
        };
        match update
            .attributes
            .iter_mut()
            .find_map(|a| match &mut a.value {
                AttributeValue::MpReach(r) => Some(r),
                _ => None,
            }) {
            Some(r) => r.nlri = chunk.to_vec(),
            None => update.nlri = chunk.to_vec(),
        }
        must(
            Message::Update(update).encode(&params(), out),
            "encode UPDATE",
        );
        updates += 1;
    }
    updates
}

struct Fixture {
    stream: Bytes,
    updates: usize,
    v4_updates: usize,
    v4: usize,
    v6: usize,
    per_update: Vec<usize>,
}

fn fixture(scale: f64) -> Fixture {
    let mut rng = Rng(SEED);
    let mut out = BytesMut::with_capacity(8 << 20);
    let (mut v4, mut v6, mut updates, mut v4_updates) = (0usize, 0usize, 0usize, 0usize);
    let v4_target = (V4_PREFIXES as f64 * scale) as usize;
    let v6_target = (V6_PREFIXES as f64 * scale) as usize;
    let mut prefixes = Vec::new();
    for ipv6 in [false, true] {
        let (count, target) = if ipv6 {
            (&mut v6, v6_target)
        } else {
            (&mut v4, v4_target)
        };
        while *count < target {
            let (lo, hi) = rng.weighted(GROUP_SIZES);
            let n = (rng.range(u64::from(lo), u64::from(hi)) as usize).min(target - *count);
            let (attrs, nh) = attribute_set(&mut rng, ipv6);
            prefixes.clear();
            if ipv6 {
                v6_prefixes(&mut rng, n, &mut prefixes);
            } else {
                v4_prefixes(&mut rng, n, &mut prefixes);
            }
            updates += pack_group(&attrs, ipv6.then_some(nh), &prefixes, &mut out);
            *count += n;
        }
        if !ipv6 {
            v4_updates = updates;
        }
    }
    // End-of-RIB for both families, as a full-table transfer ends.
    for eor in [
        Update::default(),
        Update {
            attributes: vec![PathAttribute::new(AttributeValue::MpUnreach(Box::new(
                MpUnreach {
                    family: Family::IPV6_UNICAST,
                    withdrawn: Vec::new(),
                    unparsed: Bytes::new(),
                },
            )))],
            ..Update::default()
        },
    ] {
        must(
            Message::Update(eor).encode(&params(), &mut out),
            "encode End-of-RIB",
        );
        updates += 1;
    }
    let stream = out.freeze();
    let per_update = wire::split_stream(stream.clone(), params())
        .map(
            |m| match must(wire::decode(&must(m, "frame"), &params()), "decode") {
                Message::Update(u) => u.announced_count(),
                _ => 0,
            },
        )
        .collect();
    Fixture {
        stream,
        updates,
        v4_updates,
        v4,
        v6,
        per_update,
    }
}

fn felix_decode(stream: &Bytes) -> usize {
    let mut prefixes = 0;
    for msg in wire::split_stream(stream.clone(), params()) {
        let msg = must(msg, "frame");
        if let Message::Update(u) = must(wire::decode(&msg, &params()), "decode") {
            prefixes += u.nlri.len() + u.mp_reach().map_or(0, |r| r.nlri.len());
            black_box(&u);
        }
    }
    prefixes
}

fn bgpkit_decode(stream: &Bytes) -> usize {
    let mut rest = stream.clone();
    let mut prefixes = 0;
    while rest.len() >= HEADER_LEN {
        // Hand bgpkit one message at a time, as felix's framing does.
        let len = usize::from(u16::from_be_bytes([rest[16], rest[17]]));
        let mut msg = rest.split_to(len);
        if let BgpMessage::Update(u) = must(
            parse_bgp_message(&mut msg, false, &AsnLength::Bits32),
            "bgpkit",
        ) {
            prefixes += u.announced_prefixes.len()
                + u.attributes
                    .get_reachable_nlri()
                    .map_or(0, |r| r.prefixes.len());
            black_box(&u);
        }
    }
    prefixes
}

fn felix_encode(msgs: &[Message], out: &mut BytesMut) -> usize {
    out.clear();
    for m in msgs {
        must(m.encode(&params(), out), "encode");
    }
    out.len()
}

fn benches(c: &mut Criterion) {
    let scale = std::env::var("CODEC_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(1.0);
    let fx = fixture(scale);
    let total = fx.v4 + fx.v6;
    let mut sorted = fx.per_update.clone();
    sorted.sort_unstable();
    let announcing: Vec<usize> = sorted.iter().copied().filter(|&n| n > 0).collect();
    println!(
        "stream: {} bytes ({:.1} MiB), {} UPDATEs ({} IPv4, {} IPv6, 2 End-of-RIB), \
         {} IPv4 + {} IPv6 = {} prefixes; prefixes/UPDATE: median {}, mean {:.2}, p99 {}, max {}",
        fx.stream.len(),
        fx.stream.len() as f64 / (1 << 20) as f64,
        fx.updates,
        fx.v4_updates,
        fx.updates - fx.v4_updates - 2,
        fx.v4,
        fx.v6,
        total,
        announcing[announcing.len() / 2],
        total as f64 / announcing.len() as f64,
        announcing[announcing.len() * 99 / 100],
        announcing[announcing.len() - 1],
    );

    // Both decoders must see every prefix, and encode must round-trip.
    assert_eq!(felix_decode(&fx.stream), total, "felix prefix count");
    assert_eq!(bgpkit_decode(&fx.stream), total, "bgpkit prefix count");
    let msgs: Vec<Message> = wire::split_stream(fx.stream.clone(), params())
        .map(|m| must(wire::decode(&must(m, "frame"), &params()), "decode"))
        .collect();
    let mut out = BytesMut::with_capacity(fx.stream.len());
    felix_encode(&msgs, &mut out);
    assert!(out[..] == fx.stream[..], "encode(decode(stream)) != stream");

    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(total as u64));
    g.bench_function("felix", |b| b.iter(|| felix_decode(black_box(&fx.stream))));
    g.bench_function("bgpkit", |b| {
        b.iter(|| bgpkit_decode(black_box(&fx.stream)))
    });
    g.finish();

    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(total as u64));
    g.bench_function("felix", |b| {
        b.iter(|| felix_encode(black_box(&msgs), &mut out))
    });
    g.finish();

    // Criterion times each function in its own window, so a neighbour's
    // burst of CPU use can land on one and not the other. The paired run
    // alternates the three and keeps each one's fastest pass: contention
    // only ever slows a pass down, so the minimums and their ratios are
    // the most stable numbers on a shared machine. Skipped when a filter
    // or `--test`/`--profile-time` is given.
    let filtered = std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') || a == "--test" || a == "--profile-time");
    if !filtered {
        paired_summary(&fx, &msgs, &mut out);
    }
}

fn paired_summary(fx: &Fixture, msgs: &[Message], out: &mut BytesMut) {
    const ROUNDS: usize = 15;
    let time = |f: &mut dyn FnMut() -> usize| {
        let t = Instant::now();
        black_box(f());
        t.elapsed()
    };
    let (mut felix, mut bgpkit, mut encode) = (Duration::MAX, Duration::MAX, Duration::MAX);
    for _ in 0..ROUNDS {
        felix = felix.min(time(&mut || felix_decode(black_box(&fx.stream))));
        bgpkit = bgpkit.min(time(&mut || bgpkit_decode(black_box(&fx.stream))));
        encode = encode.min(time(&mut || felix_encode(black_box(msgs), out)));
    }
    let total = (fx.v4 + fx.v6) as f64;
    let bytes = fx.stream.len() as f64;
    let row = |name: &str, d: Duration| {
        let s = d.as_secs_f64();
        println!(
            "  {name:<14} {:>9.2} ms  {:>7.2} M prefixes/s  {:>7.1} MB/s",
            s * 1e3,
            total / s / 1e6,
            bytes / s / 1e6
        );
    };
    println!("paired run ({ROUNDS} alternating rounds, fastest of each):");
    row("decode/felix", felix);
    row("decode/bgpkit", bgpkit);
    row("encode/felix", encode);
    println!(
        "  felix decode / bgpkit decode: {:.2}x; felix encode / felix decode: {:.2}x",
        bgpkit.as_secs_f64() / felix.as_secs_f64(),
        felix.as_secs_f64() / encode.as_secs_f64()
    );
}

criterion_group! {
    name = codec;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(10));
    targets = benches
}
criterion_main!(codec);
