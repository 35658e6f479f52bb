//! Failure handling of felix's BGP speaker.
//!
//! Without root (each test on its own 127.x.y.z loopback addresses):
//! - malformed UPDATEs from a hand-driven peer, answered per RFC 7606:
//!   a bad ORIGIN value is treat-as-withdraw (session up, an earlier
//!   announcement of the prefix withdrawn), a bad ATOMIC_AGGREGATE length is
//!   attribute discard (route accepted), an NLRI of length 33 resets the
//!   session with NOTIFICATION 3/10 (Invalid Network Field);
//! - hold-timer expiry: a peer that goes silent after OPEN/KEEPALIVE with
//!   hold time 3 gets NOTIFICATION 4/0 and the neighbour goes down;
//! - connection collision: two speakers connecting to each other at once
//!   end with exactly one TCP connection and routes both ways.
//!
//! With root and bird2 (otherwise SKIPPED): a peer going away — BIRD
//! killed with SIGKILL — is noticed by felix (`felix bgp run`) from the TCP
//! close, long before the hold time, and BIRD's routes are withdrawn from
//! felix's other peer (a second BIRD).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod interop_common;
mod interop_hub;

use bgp::speaker::{NeighborConfig, PeerStatus, Speaker, SpeakerConfig};
use bgp::wire::{self, Capability, Family, Message, Open, SessionParams};
use bytes::BytesMut;
use interop_common::{skip_unless, wait_until};
use interop_hub::{birdc, felix_json, Hub};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{timeout, Instant};

const FELIX_AS: u32 = 65001;
const PEER_AS: u32 = 65002;
const WAIT: Duration = Duration::from_secs(10);

/// A pair of loopback addresses (felix, peer) no other test of this run
/// (or of a concurrent run) uses: 127.(10 + pid % 200).n.{1,2}.
fn loopback_pair() -> (Ipv4Addr, Ipv4Addr) {
    static N: AtomicU8 = AtomicU8::new(1);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let b = 10 + (std::process::id() % 200) as u8;
    (Ipv4Addr::new(127, b, n, 1), Ipv4Addr::new(127, b, n, 2))
}

struct RawPeer {
    stream: TcpStream,
    buf: BytesMut,
    params: SessionParams,
}

impl RawPeer {
    /// Connects from `local`, exchanges OPEN (hold time `hold`) and
    /// KEEPALIVE.
    async fn establish(local: Ipv4Addr, to: SocketAddr, hold: u16) -> RawPeer {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(local.into(), 0)).unwrap();
        let stream = timeout(WAIT, socket.connect(to)).await.unwrap().unwrap();
        let mut peer = RawPeer {
            stream,
            buf: BytesMut::new(),
            params: SessionParams::default(),
        };
        let caps = vec![Capability::Multiprotocol {
            family: Family::IPV4_UNICAST,
        }];
        let open = Open::new(PEER_AS, hold, Ipv4Addr::new(10, 0, 0, 99), caps);
        peer.send(Message::Open(open)).await;
        let m = peer.recv().await;
        assert!(matches!(m, Some(Message::Open(_))), "{m:?}");
        let m = peer.recv().await;
        assert!(matches!(m, Some(Message::Keepalive)), "{m:?}");
        peer.send(Message::Keepalive).await;
        peer.params.four_octet_as = true;
        peer
    }

    async fn send(&mut self, m: Message) {
        let bytes = m.to_bytes(&self.params).unwrap();
        self.stream.write_all(&bytes).await.unwrap();
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next message; `None` on EOF, a read error or after `WAIT`.
    async fn recv(&mut self) -> Option<Message> {
        timeout(WAIT, async {
            loop {
                if let Some(n) = wire::frame_len(&self.buf, &self.params).unwrap() {
                    let frame = self.buf.split_to(n).freeze();
                    return Some(wire::decode(&frame, &self.params).unwrap());
                }
                if self.stream.read_buf(&mut self.buf).await.ok()? == 0 {
                    return None;
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// Reads until a NOTIFICATION (skipping KEEPALIVEs and UPDATEs);
    /// `None` if the connection ended or `WAIT` passed without one.
    async fn recv_notification(&mut self) -> Option<wire::Notification> {
        loop {
            match self.recv().await? {
                Message::Notification(n) => return Some(n),
                _ => continue,
            }
        }
    }
}

/// A hand-built UPDATE (4-octet AS path) announcing `nlri` (already
/// encoded: length byte and prefix bytes), with ORIGIN value `origin` and,
/// if `atomic` is given, an ATOMIC_AGGREGATE of that many value bytes
/// (RFC 4271: 0).
fn update(origin: u8, next_hop: Ipv4Addr, atomic: Option<u8>, nlri: &[u8]) -> Vec<u8> {
    let mut attrs = vec![0x40, 1, 1, origin];
    attrs.extend_from_slice(&[0x40, 2, 6, 2, 1]);
    attrs.extend_from_slice(&PEER_AS.to_be_bytes());
    attrs.extend_from_slice(&[0x40, 3, 4]);
    attrs.extend_from_slice(&next_hop.octets());
    if let Some(len) = atomic {
        attrs.extend_from_slice(&[0x40, 6, len]);
        attrs.extend(std::iter::repeat_n(0u8, len as usize));
    }
    let mut body = vec![0, 0];
    body.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    body.extend_from_slice(&attrs);
    body.extend_from_slice(nlri);
    let mut msg = vec![0xff; 16];
    msg.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    msg.push(2);
    msg.extend_from_slice(&body);
    msg
}

async fn felix(addr: Ipv4Addr, hold: u16, peer: Ipv4Addr) -> Speaker {
    let mut config = SpeakerConfig::new(FELIX_AS, addr);
    config.listen = Some(SocketAddr::new(addr.into(), 0));
    config.hold_time = hold;
    let s = Speaker::start(config).await.unwrap();
    let mut n = NeighborConfig::new(peer.into(), PEER_AS);
    n.passive = true;
    s.add_neighbor(n).await.unwrap();
    s
}

async fn peer_status(s: &Speaker) -> PeerStatus {
    s.status().await.peers.remove(0)
}

async fn has_route(s: &Speaker, prefix: &str) -> bool {
    s.routes(None)
        .await
        .iter()
        .any(|r| r.prefix.to_string() == prefix)
}

/// Polls `f` (sleeping on the runtime) until true or `WAIT` passes.
async fn eventually<F: std::future::Future<Output = bool>>(mut f: impl FnMut() -> F) -> bool {
    let end = Instant::now() + WAIT;
    while Instant::now() < end {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f().await
}

#[tokio::test]
async fn malformed_updates_per_rfc7606() {
    let (me, peer_ip) = loopback_pair();
    let s = felix(me, 90, peer_ip).await;
    let mut peer = RawPeer::establish(peer_ip, s.listen_addr().unwrap(), 90).await;

    // A well-formed announcement of 10.77.1.0/24 is accepted.
    peer.send_raw(&update(0, peer_ip, None, &[24, 10, 77, 1]))
        .await;
    assert!(eventually(|| has_route(&s, "10.77.1.0/24")).await);

    // ORIGIN 5 (RFC 7606 §7.1): treat-as-withdraw. The earlier
    // announcement is withdrawn, the session stays up.
    peer.send_raw(&update(5, peer_ip, None, &[24, 10, 77, 1]))
        .await;
    assert!(
        eventually(|| async { !has_route(&s, "10.77.1.0/24").await }).await,
        "bad ORIGIN did not withdraw the route: {:?}",
        s.routes(None).await
    );
    assert_eq!(peer_status(&s).await.state, "Established");

    // ATOMIC_AGGREGATE of length 1 (RFC 7606 §7.6): attribute discard,
    // the route is accepted.
    peer.send_raw(&update(0, peer_ip, Some(1), &[24, 10, 77, 3]))
        .await;
    assert!(
        eventually(|| has_route(&s, "10.77.3.0/24")).await,
        "route with a bad ATOMIC_AGGREGATE not accepted: {:?} {:?}",
        s.routes(None).await,
        peer_status(&s).await
    );
    let p = peer_status(&s).await;
    assert_eq!(p.state, "Established", "{p:?}");
    assert_eq!(p.accepted, 1, "{p:?}");

    // An NLRI of length 33 (RFC 7606 §5.3): session reset with
    // NOTIFICATION UPDATE Message Error / Invalid Network Field (3/10).
    peer.send_raw(&update(0, peer_ip, None, &[33, 10, 77, 4, 0, 0]))
        .await;
    let n = peer
        .recv_notification()
        .await
        .expect("no NOTIFICATION for an NLRI of length 33");
    assert_eq!((n.code, n.subcode), (3, 10), "{n:?}");
    assert!(peer.recv().await.is_none(), "connection not closed");
    let p = peer_status(&s).await;
    assert_ne!(p.state, "Established", "{p:?}");
    // Not a graceful restart (a NOTIFICATION was sent): the peer's routes
    // are gone.
    assert!(eventually(|| async { !has_route(&s, "10.77.3.0/24").await }).await);
    s.shutdown(None).await;
}

#[tokio::test]
async fn hold_timer_expiry_sends_notification_4_0() {
    let (me, peer_ip) = loopback_pair();
    let s = felix(me, 3, peer_ip).await;
    let mut peer = RawPeer::establish(peer_ip, s.listen_addr().unwrap(), 3).await;
    let started = Instant::now();
    assert!(eventually(|| async { peer_status(&s).await.state == "Established" }).await);
    // Silent from now on: read only.
    let n = peer
        .recv_notification()
        .await
        .expect("no NOTIFICATION after the hold time");
    let after = started.elapsed();
    assert_eq!((n.code, n.subcode), (4, 0), "{n:?}");
    assert!(
        after >= Duration::from_millis(2500) && after <= Duration::from_secs(6),
        "hold timer expired after {after:?}"
    );
    let p = peer_status(&s).await;
    assert_ne!(p.state, "Established", "{p:?}");
    let err = p.last_error.clone().unwrap_or_default().to_lowercase();
    assert!(err.contains("hold"), "{p:?}");
    s.shutdown(None).await;
}

/// TCP connections in state ESTABLISHED between `a` and `b` (either
/// direction), counted once per connection, from /proc/net/tcp.
fn established_between(a: Ipv4Addr, b: Ipv4Addr) -> usize {
    let hex = |ip: Ipv4Addr| format!("{:08X}", u32::from_le_bytes(ip.octets()));
    let (ha, hb) = (hex(a), hex(b));
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[3] == "01" && f[1].starts_with(&ha) && f[2].starts_with(&hb)
        })
        .count()
}

#[tokio::test]
async fn connection_collision_leaves_one_session() {
    let (a_ip, b_ip) = loopback_pair();
    let start = |me: Ipv4Addr, asn: u32| async move {
        let mut c = SpeakerConfig::new(asn, me);
        c.listen = Some(SocketAddr::new(me.into(), 0));
        Speaker::start(c).await.unwrap()
    };
    let a = start(a_ip, FELIX_AS).await;
    let b = start(b_ip, PEER_AS).await;
    let neighbor = |to: Ipv4Addr, asn: u32, port: u16, me: Ipv4Addr| {
        let mut n = NeighborConfig::new(to.into(), asn);
        n.port = port;
        n.local_address = Some(IpAddr::V4(me));
        n
    };
    let na = neighbor(b_ip, PEER_AS, b.listen_addr().unwrap().port(), a_ip);
    let nb = neighbor(a_ip, FELIX_AS, a.listen_addr().unwrap().port(), b_ip);
    // Both active, started together: both connect at once.
    let (ra, rb) = tokio::join!(a.add_neighbor(na), b.add_neighbor(nb));
    ra.unwrap();
    rb.unwrap();
    a.originate("10.78.1.0/24".parse().unwrap(), vec![])
        .await
        .unwrap();
    b.originate("10.78.2.0/24".parse().unwrap(), vec![])
        .await
        .unwrap();
    assert!(
        eventually(|| async {
            has_route(&a, "10.78.2.0/24").await && has_route(&b, "10.78.1.0/24").await
        })
        .await,
        "routes did not flow: {:?} {:?}",
        a.status().await,
        b.status().await
    );
    // Stable: still one connection, established on both sides, not reset,
    // a second later.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (pa, pb) = (peer_status(&a).await, peer_status(&b).await);
    assert_eq!(pa.state, "Established", "{pa:?}");
    assert_eq!(pb.state, "Established", "{pb:?}");
    assert!(pa.uptime_secs.unwrap_or(0) >= 1, "{pa:?}");
    let conns = established_between(a_ip, b_ip) + established_between(b_ip, a_ip);
    // One TCP connection appears twice (each end's socket).
    assert_eq!(
        conns, 2,
        "expected exactly one connection between {a_ip} and {b_ip}"
    );
    assert!(has_route(&a, "10.78.2.0/24").await && has_route(&b, "10.78.1.0/24").await);
    a.shutdown(None).await;
    b.shutdown(None).await;
}

fn bird_conf(hub: &Hub, i: usize, prefix: Option<&str>) -> String {
    let statics = prefix
        .map(|p| {
            format!("protocol static routes4 {{ ipv4 {{ import all; }}; route {p} blackhole; }}\n")
        })
        .unwrap_or_default();
    format!(
        r#"router id {me};
log "{log}" all;
protocol device {{ }}
{statics}
protocol bgp felixrr {{
    local {me} as {FELIX_AS};
    neighbor {felix} as {FELIX_AS};
    hold time 30;
    connect delay time 1;
    connect retry time 1;
    error wait time 1, 2;
    graceful restart off;
    ipv4 {{ import all; export all; }};
}}
"#,
        me = hub.peer_ips[i],
        felix = hub.felix_ips[i],
        log = hub.path(&format!("bird{i}.log")).display(),
    )
}

#[test]
fn killed_peer_routes_withdrawn() {
    if skip_unless(&["bird", "birdc", "ip"]) {
        return;
    }
    let mut hub = Hub::new("kill", 2);
    let prefix = "192.0.2.0/24";
    let origin = hub.start_bird(0, &bird_conf(&hub, 0, Some(prefix)));
    let other = hub.start_bird(1, &bird_conf(&hub, 1, None));
    let felix_conf = format!(
        "asn = {FELIX_AS}\nrouter_id = \"{}\"\nlisten = \"0.0.0.0\"\nhold_time = 30\n\
         [[neighbor]]\naddress = \"{}\"\nasn = {FELIX_AS}\nrr_client = true\nlocal_address = \"{}\"\n\
         [[neighbor]]\naddress = \"{}\"\nasn = {FELIX_AS}\nrr_client = true\nlocal_address = \"{}\"\n",
        hub.felix_ips[0],
        hub.peer_ips[0],
        hub.felix_ips[0],
        hub.peer_ips[1],
        hub.felix_ips[1],
    );
    let (_, sock) = hub.start_felix(&felix_conf, "felix");
    let show = || birdc(&other, &["show", "route", prefix]);
    assert!(
        wait_until(Duration::from_secs(15), || show().contains(prefix)),
        "route not reflected: {:?}\n{}",
        felix_json(&sock, &["status"]),
        birdc(&origin, &["show", "protocols", "all", "felixrr"])
    );

    // SIGKILL: no NOTIFICATION, but the kernel closes the socket.
    let pid = std::fs::read_to_string(hub.path("bird0.pid")).unwrap();
    let killed = Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .unwrap();
    assert!(killed.success());
    let t = std::time::Instant::now();
    // Well within the 30 s hold time: detected from the TCP close.
    assert!(
        wait_until(Duration::from_secs(8), || !show().contains(prefix)),
        "BIRD's route not withdrawn after it was killed: {}\n{:?}",
        show(),
        felix_json(&sock, &["status"])
    );
    eprintln!("withdrawn {:?} after the kill", t.elapsed());
    let status = felix_json(&sock, &["status"]).unwrap();
    let p = status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["address"] == hub.peer_ips[0].as_str())
        .unwrap();
    assert_ne!(p["state"], "Established", "{status}");
    assert_eq!(p["accepted"], 0, "{status}");
    let routes = felix_json(&sock, &["routes"]).unwrap();
    assert!(!routes.to_string().contains(prefix), "{routes}");
}
