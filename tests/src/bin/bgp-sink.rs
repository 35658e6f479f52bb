//! `bgp-sink`: a minimal iBGP speaker (a route-reflector client) that
//! counts what its peer announces and withdraws.
//!
//! It connects to the peer (or, with `--listen`, accepts one connection),
//! completes OPEN (4-octet AS, IPv4 unicast, route refresh, hold time 90),
//! then decodes every message with `bgp::wire` and counts prefixes
//! announced (NLRI and MP_REACH_NLRI) and withdrawn (Withdrawn Routes and
//! MP_UNREACH_NLRI). Times are wall-clock Unix nanoseconds.
//!
//! End-of-RIB is recorded (time and count) but does not end the
//! measurement: a reflector sends its End-of-RIB right after the session
//! comes up, with the table it has then, which is before the injector's
//! routes arrive. With `--expect N` the sink prints one JSON line when the
//! number of prefixes announced reaches N (`done_ns`); without it, one
//! line at every End-of-RIB. `first_update_ns` is the first UPDATE of any
//! kind (often that early End-of-RIB), `first_route_ns` the first carrying
//! prefixes. It then stays up (KEEPALIVEs) until killed.
//! Counting is of announcements, not distinct prefixes: a route announced
//! twice counts twice (a reflector with one source sends each prefix once).

use anyhow::{anyhow, bail, Context, Result};
use bgp::wire::{
    decode, frame_len, Capability, Family, Message, Open, SessionParams, MAX_MESSAGE_LEN,
};
use bytes::BytesMut;
use clap::Parser;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

#[derive(Parser, Debug)]
#[command(about = "Count the prefixes a BGP peer announces (iBGP client)")]
struct Args {
    /// The peer (route reflector) to connect to, ADDR[:PORT].
    #[arg(long, conflicts_with = "listen")]
    peer: Option<String>,
    /// Accept one connection on ADDR:PORT instead of connecting.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Our address: BGP identifier and source of the connection.
    #[arg(long)]
    local: Ipv4Addr,
    /// Local AS (the peer's too: iBGP).
    #[arg(long, default_value_t = 64512)]
    asn: u32,
    /// Print the result when this many prefixes have been announced.
    #[arg(long)]
    expect: Option<u64>,
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn base_params() -> SessionParams {
    SessionParams {
        four_octet_as: true,
        ..SessionParams::default()
    }
}

#[derive(Default)]
struct Counts {
    updates: u64,
    announced: u64,
    withdrawn: u64,
    first_update_ns: Option<u128>,
    first_route_ns: Option<u128>,
    eor: Vec<(u128, u64)>,
}

impl Counts {
    fn json(&self, done_ns: Option<u128>) -> String {
        let eor: Vec<String> = self
            .eor
            .iter()
            .map(|(t, n)| format!("{{\"t_ns\":{t},\"prefixes\":{n}}}"))
            .collect();
        let opt = |v: Option<u128>| v.map_or("null".to_string(), |t| t.to_string());
        format!(
            "{{\"first_update_ns\":{},\"first_route_ns\":{},\"done_ns\":{},\"prefixes\":{},\"withdrawn\":{},\"updates\":{},\"end_of_rib\":[{}]}}",
            opt(self.first_update_ns),
            opt(self.first_route_ns),
            opt(done_ns),
            self.announced,
            self.withdrawn,
            self.updates,
            eor.join(",")
        )
    }
}

async fn connect(args: &Args) -> Result<TcpStream> {
    if let Some(addr) = args.listen {
        let listener = TcpListener::bind(addr).await?;
        let (s, _) = listener.accept().await?;
        return Ok(s);
    }
    let peer = args
        .peer
        .as_deref()
        .ok_or_else(|| anyhow!("give --peer or --listen"))?;
    let peer = match peer.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => SocketAddr::new(peer.parse().context("peer address")?, 179),
    };
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(args.local.into(), 0))?;
    socket.set_recv_buffer_size(1 << 20)?;
    socket
        .connect(peer)
        .await
        .with_context(|| format!("connect to {peer}"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut stream = connect(&args).await?;
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
    let keepalive = Message::Keepalive.to_bytes(&base_params())?;
    stream
        .write_all(&Message::Open(open.clone()).to_bytes(&base_params())?)
        .await?;
    let mut params = base_params();
    let mut buf = BytesMut::with_capacity(1 << 20);
    let mut counts = Counts::default();
    let mut done = false;
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        while let Some(len) = frame_len(&buf, &params).map_err(|e| anyhow!("framing: {e:?}"))? {
            let frame = buf.split_to(len).freeze();
            match decode(&frame, &params).map_err(|e| anyhow!("decode: {e:?}"))? {
                Message::Open(peer) => {
                    params = SessionParams::negotiate_receive(&open, &peer);
                    stream.write_all(&keepalive).await?;
                }
                Message::Update(u) => {
                    counts.updates += 1;
                    if counts.first_update_ns.is_none() {
                        counts.first_update_ns = Some(now_ns());
                    }
                    if u.is_end_of_rib().is_some() {
                        counts.eor.push((now_ns(), counts.announced));
                        if args.expect.is_none() {
                            println!("{}", counts.json(None));
                        }
                        continue;
                    }
                    let announced = u.announced_count() as u64;
                    if announced > 0 && counts.first_route_ns.is_none() {
                        counts.first_route_ns = Some(now_ns());
                    }
                    counts.announced += announced;
                    counts.withdrawn += u.withdrawn_count() as u64;
                    if !done && args.expect.is_some_and(|n| counts.announced >= n) {
                        done = true;
                        println!("{}", counts.json(Some(now_ns())));
                    }
                }
                Message::Notification(n) => bail!("NOTIFICATION from peer: {n:?}"),
                _ => {}
            }
        }
        if buf.capacity() - buf.len() < MAX_MESSAGE_LEN {
            buf.reserve(1 << 20);
        }
        tokio::select! {
            r = stream.read_buf(&mut buf) => {
                if r? == 0 {
                    bail!("peer closed the connection: {}", counts.json(None));
                }
            }
            _ = tick.tick() => stream.write_all(&keepalive).await?,
        }
    }
}
