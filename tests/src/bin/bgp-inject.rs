//! `bgp-inject`: a minimal iBGP speaker that streams a pre-encoded full
//! table to a route reflector, as fast as TCP takes it.
//!
//! It generates the table before connecting (deterministic, seeded: the
//! same generator as `bgp/benches/codec.rs`, IPv4 only; duplicates and
//! 127/8 prefixes, which BIRD drops as bogus, are redrawn so that exactly
//! `--prefixes` distinct, acceptable prefixes go out), encodes
//! it with `bgp::wire`, connects, completes OPEN (4-octet AS, IPv4
//! unicast, route refresh, hold time 90), then writes every UPDATE and an
//! End-of-RIB. On stdout it prints one JSON line with the wall-clock time
//! (Unix nanoseconds) of the first UPDATE byte and of the End-of-RIB, then
//! stays up (sending KEEPALIVEs) until killed. Used by
//! `bench/rr-convergence.sh`.

use anyhow::{anyhow, bail, Context, Result};
use bgp::wire::{
    decode, frame_len, AsPath, AttributeValue, Capability, Community, Family, LargeCommunity,
    Message, Nlri, Open, Origin, PathAttribute, SessionParams, Update, MAX_MESSAGE_LEN,
};
use bytes::BytesMut;
use clap::Parser;
use ipnet::{IpNet, Ipv4Net};
use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

#[derive(Parser, Debug)]
#[command(about = "Stream a generated full table into a BGP peer (iBGP)")]
struct Args {
    /// The peer (route reflector) to connect to, ADDR[:PORT].
    #[arg(long)]
    peer: String,
    /// Our address: source of the connection, BGP identifier and NEXT_HOP.
    #[arg(long)]
    local: Ipv4Addr,
    /// Local AS (the peer's too: iBGP).
    #[arg(long, default_value_t = 64512)]
    asn: u32,
    /// Number of distinct IPv4 prefixes to announce.
    #[arg(long, default_value_t = 1_000_000)]
    prefixes: usize,
    /// PRNG seed (the codec bench's by default).
    #[arg(long, default_value_t = 0x5eed_f311_c0de_c0de)]
    seed: u64,
    /// Generate and print the table's statistics, then exit (no peer).
    #[arg(long)]
    dry_run: bool,
}

/// SplitMix64, as in the codec bench.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
    fn permille(&mut self, p: u64) -> bool {
        self.next_u64() % 1000 < p
    }
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

/// IPv4 prefix lengths, per mille, roughly today's DFZ.
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

/// Prefixes sharing one attribute set: median 3, long thin tail.
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

/// One attribute set, in type-code order, as an iBGP client sends it:
/// NEXT_HOP is ours, LOCAL_PREF 100.
fn attribute_set(rng: &mut Rng, next_hop: Ipv4Addr) -> Vec<PathAttribute> {
    let mut attrs = Vec::with_capacity(7);
    let origin = match rng.range(0, 99) {
        0..=84 => Origin::Igp,
        85..=97 => Origin::Incomplete,
        _ => Origin::Egp,
    };
    attrs.push(PathAttribute::new(AttributeValue::Origin(origin)));
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
    // The bench draws a next hop here; keep the draw so the sequence matches.
    let _ = rng.range(1, 4);
    attrs.push(PathAttribute::new(AttributeValue::NextHop(next_hop)));
    if rng.permille(300) {
        attrs.push(PathAttribute::new(AttributeValue::MultiExitDisc(
            rng.range(0, 1000) as u32,
        )));
    }
    attrs.push(PathAttribute::new(AttributeValue::LocalPref(100)));
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
    attrs
}

fn params() -> SessionParams {
    SessionParams {
        four_octet_as: true,
        ..SessionParams::default()
    }
}

/// The encoded table and its shape.
struct Table {
    bytes: BytesMut,
    updates: usize,
    prefixes: usize,
    per_update: Vec<usize>,
}

fn generate(n: usize, seed: u64, next_hop: Ipv4Addr) -> Result<Table> {
    let mut rng = Rng(seed);
    let mut seen: HashSet<(u32, u8)> = HashSet::with_capacity(n);
    let mut out = BytesMut::with_capacity(n * 12 + (1 << 20));
    let mut per_update = Vec::with_capacity(n / 2);
    let mut count = 0usize;
    let mut group: Vec<Nlri> = Vec::new();
    while count < n {
        let (lo, hi) = rng.weighted(GROUP_SIZES);
        let size = (rng.range(u64::from(lo), u64::from(hi)) as usize).min(n - count);
        let attrs = attribute_set(&mut rng, next_hop);
        group.clear();
        while group.len() < size {
            let len = rng.weighted(V4_LENGTHS);
            let first = rng.range(1, 223) as u32;
            if first == 127 {
                // Loopback: BIRD ignores it as bogus ("Ignoring bogus route").
                continue;
            }
            let addr = (first << 24) | (rng.next_u64() as u32 & 0x00ff_ffff);
            let net = Ipv4Net::new(Ipv4Addr::from(addr), len)?.trunc();
            if seen.insert((u32::from(net.network()), len)) {
                group.push(Nlri::new(IpNet::V4(net)));
            }
        }
        let mut empty = BytesMut::new();
        Message::Update(Update {
            attributes: attrs.clone(),
            ..Update::default()
        })
        .encode(&params(), &mut empty)?;
        let base = empty.len();
        let mut rest = &group[..];
        while !rest.is_empty() {
            let mut size = base;
            let mut k = 0;
            while k < rest.len() {
                let w = 1 + usize::from(rest[k].prefix.prefix_len()).div_ceil(8);
                if size + w > MAX_MESSAGE_LEN {
                    break;
                }
                size += w;
                k += 1;
            }
            let (chunk, tail) = rest.split_at(k);
            rest = tail;
            Message::Update(Update {
                attributes: attrs.clone(),
                nlri: chunk.to_vec(),
                ..Update::default()
            })
            .encode(&params(), &mut out)?;
            per_update.push(chunk.len());
        }
        count += size;
    }
    Ok(Table {
        updates: per_update.len(),
        prefixes: count,
        bytes: out,
        per_update,
    })
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn parse_peer(s: &str) -> Result<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let ip: std::net::IpAddr = s.parse().with_context(|| format!("peer address {s}"))?;
    Ok(SocketAddr::new(ip, 179))
}

/// Reads messages until the peer's OPEN and its KEEPALIVE have arrived.
async fn handshake(stream: &mut TcpStream, open: &Open) -> Result<SessionParams> {
    let mut buf = BytesMut::with_capacity(4096);
    stream
        .write_all(&Message::Open(open.clone()).to_bytes(&params())?)
        .await?;
    let mut negotiated = None;
    loop {
        while let Some(len) = frame_len(&buf, &params()).map_err(|e| anyhow!("{e:?}"))? {
            let frame = buf.split_to(len).freeze();
            match decode(&frame, &params()).map_err(|e| anyhow!("decode: {e:?}"))? {
                Message::Open(peer) => {
                    let p = SessionParams::negotiate_send(open, &peer);
                    if !p.four_octet_as {
                        bail!("peer did not offer 4-octet AS numbers");
                    }
                    negotiated = Some(p);
                    stream
                        .write_all(&Message::Keepalive.to_bytes(&params())?)
                        .await?;
                }
                Message::Keepalive => {
                    if let Some(p) = negotiated {
                        return Ok(p);
                    }
                }
                Message::Notification(n) => bail!("NOTIFICATION from peer: {n:?}"),
                _ => {}
            }
        }
        if stream.read_buf(&mut buf).await? == 0 {
            bail!("peer closed the connection during OPEN");
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let t0 = std::time::Instant::now();
    let table = generate(args.prefixes, args.seed, args.local)?;
    let mut sizes = table.per_update.clone();
    sizes.sort_unstable();
    let median = sizes.get(sizes.len() / 2).copied().unwrap_or(0);
    eprintln!(
        "bgp-inject: generated {} prefixes in {} UPDATEs ({} bytes, median {} prefixes/UPDATE) in {:.2} s",
        table.prefixes,
        table.updates,
        table.bytes.len(),
        median,
        t0.elapsed().as_secs_f64()
    );
    if args.dry_run {
        return Ok(());
    }
    let peer = parse_peer(&args.peer)?;
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(args.local.into(), 0))?;
    socket.set_nodelay(true)?;
    let mut stream = socket
        .connect(peer)
        .await
        .with_context(|| format!("connect to {peer}"))?;
    let open = Open::new(
        args.asn,
        90,
        args.local,
        vec![
            Capability::Multiprotocol {
                family: Family::IPV4_UNICAST,
            },
            Capability::RouteRefresh,
        ],
    );
    let send_params = handshake(&mut stream, &open).await?;
    let eor = Message::Update(Update::end_of_rib(Family::IPV4_UNICAST)).to_bytes(&send_params)?;
    let keepalive = Message::Keepalive.to_bytes(&send_params)?;
    let (mut rd, mut wr) = stream.into_split();
    // Drain whatever the peer sends (KEEPALIVEs, reflected routes).
    let reader = tokio::spawn(async move {
        let mut sink = vec![0u8; 1 << 16];
        loop {
            match rd.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    });
    let start = now_ns();
    wr.write_all(&table.bytes).await?;
    wr.write_all(&eor).await?;
    let end = now_ns();
    println!(
        "{{\"start_ns\":{start},\"eor_sent_ns\":{end},\"prefixes\":{},\"updates\":{},\"bytes\":{}}}",
        table.prefixes,
        table.updates,
        table.bytes.len()
    );
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = tick.tick() => wr.write_all(&keepalive).await?,
            _ = async { while !reader.is_finished() { tokio::time::sleep(Duration::from_millis(200)).await } } => {
                bail!("peer closed the connection");
            }
        }
    }
}
