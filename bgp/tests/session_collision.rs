//! Connection collisions (RFC 4271 §6.8) between a felix session and a raw
//! TCP peer that plays the other speaker message by message, so that each
//! interleaving is deterministic. The felix side has the lower BGP
//! Identifier (1.1.1.1 against 2.2.2.2): the connection the peer initiated
//! must survive.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bgp::fsm::{PeerAsn, PeerConfig, State};
use bgp::session::{Session, SessionConfig, SessionEvent, SessionHandle};
use bgp::wire::{self, error::cease_subcode, Message, Open, SessionParams};
use bytes::BytesMut;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);
const PEER_ID: Ipv4Addr = Ipv4Addr::new(2, 2, 2, 2);

/// A raw BGP connection: framed reads, encoded writes.
struct Raw {
    stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    fn new(stream: TcpStream) -> Self {
        Raw {
            stream,
            buf: BytesMut::new(),
        }
    }

    async fn send(&mut self, messages: &[Message]) {
        let mut out = BytesMut::new();
        for m in messages {
            m.encode(&SessionParams::default(), &mut out).unwrap();
        }
        self.stream.write_all(&out).await.unwrap();
    }

    /// The next message, or `None` at EOF.
    async fn recv(&mut self) -> Option<Message> {
        let params = SessionParams::default();
        loop {
            if let Some(len) = wire::frame_len(&self.buf, &params).unwrap() {
                let frame = self.buf.split_to(len).freeze();
                return Some(wire::decode(&frame, &params).unwrap());
            }
            let n = timeout(WAIT, self.stream.read_buf(&mut self.buf))
                .await
                .expect("timed out reading from felix")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
    }

    /// Reads until felix closes the connection; returns what came.
    async fn drain(&mut self) -> Vec<Message> {
        let mut got = Vec::new();
        while let Some(m) = self.recv().await {
            got.push(m);
        }
        got
    }

    /// Nothing arrives for `quiet` (and the connection stays open).
    async fn silent_for(&mut self, quiet: Duration) -> Result<(), String> {
        match timeout(quiet, self.recv()).await {
            Err(_) => Ok(()),
            Ok(m) => Err(format!("unexpected {m:?}")),
        }
    }
}

fn peer_open() -> Message {
    Message::Open(Open::new(65002, 90, PEER_ID, vec![]))
}

fn is_collision_cease(m: &Message) -> bool {
    matches!(m, Message::Notification(n)
        if n.code == 6 && n.subcode == cease_subcode::CONNECTION_COLLISION_RESOLUTION)
}

/// An active felix session (1.1.1.1, AS 65001) to `remote`. ConnectRetry
/// is long: nothing in these tests may depend on a retry.
fn felix(remote: SocketAddr) -> SessionHandle {
    let mut c = PeerConfig::new(65001, Ipv4Addr::new(1, 1, 1, 1), PeerAsn::Exact(65002));
    c.hold_time = 90;
    c.connect_retry = Duration::from_secs(60);
    Session::spawn(SessionConfig::new(c, remote)).unwrap()
}

/// Opens a connection "from the peer" to felix: a loopback pair whose
/// accepted end is handed to the session as incoming.
async fn connect_to_felix(h: &SessionHandle) -> Raw {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (server, _) = l.accept().await.unwrap();
    h.incoming(server).unwrap();
    Raw::new(client)
}

async fn established(h: &mut SessionHandle) {
    match timeout(WAIT, h.events.recv()).await {
        Ok(Some(SessionEvent::Established(_))) => {}
        other => panic!("expected Established, got {other:?}"),
    }
}

/// The peer opens a connection while ours is in OpenSent, then abandons it
/// (as a speaker does that picked our connection instead). The dead
/// candidate must not take part in collision resolution: our connection
/// stays and establishes. (Before the fix the dead candidate, left in
/// Active, "won" the resolution by identifier and the live connection was
/// closed with Cease/7.)
#[tokio::test]
async fn abandoned_candidate_does_not_close_the_live_connection() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut h = felix(l.local_addr().unwrap());
    let (ours, _) = timeout(WAIT, l.accept()).await.unwrap().unwrap();
    let mut ours = Raw::new(ours);
    assert!(matches!(ours.recv().await, Some(Message::Open(_))));

    let mut theirs = connect_to_felix(&h).await;
    assert!(matches!(theirs.recv().await, Some(Message::Open(_))));
    theirs.stream.shutdown().await.unwrap();
    let rest = theirs.drain().await;
    assert!(rest.iter().all(|m| !is_collision_cease(m)), "{rest:?}");

    ours.send(&[peer_open(), Message::Keepalive]).await;
    assert_eq!(ours.recv().await, Some(Message::Keepalive));
    established(&mut h).await;
    ours.silent_for(Duration::from_millis(500)).await.unwrap();
    assert_eq!(h.state(), State::Established);
    h.stop(None).await;
}

/// The peer's OPEN arrives on the connection that loses by identifier: it
/// is closed with Cease/7 and gets no KEEPALIVE first (a KEEPALIVE would
/// let the peer take it to Established before the Cease; RFC 4271 §6.8
/// resolves on receipt of the OPEN). The peer's own connection wins.
#[tokio::test]
async fn losing_connection_gets_the_cease_without_a_keepalive() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut h = felix(l.local_addr().unwrap());
    let (ours, _) = timeout(WAIT, l.accept()).await.unwrap().unwrap();
    let mut ours = Raw::new(ours);
    assert!(matches!(ours.recv().await, Some(Message::Open(_))));
    let mut theirs = connect_to_felix(&h).await;
    assert!(matches!(theirs.recv().await, Some(Message::Open(_))));

    ours.send(&[peer_open()]).await;
    let got = ours.drain().await;
    assert_eq!(got.len(), 1, "expected only the Cease, got {got:?}");
    assert!(is_collision_cease(&got[0]), "{got:?}");

    theirs.send(&[peer_open(), Message::Keepalive]).await;
    assert_eq!(theirs.recv().await, Some(Message::Keepalive));
    established(&mut h).await;
    theirs.silent_for(Duration::from_millis(500)).await.unwrap();
    assert_eq!(h.state(), State::Established);
    h.stop(None).await;
}

/// A listener whose accept queue is full: a connect to it stays pending
/// (Linux drops the SYN) until the test accepts the first connection.
async fn stalled_listener() -> (TcpListener, TcpStream) {
    let s = TcpSocket::new_v4().unwrap();
    s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let l = s.listen(0).unwrap();
    let filler = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    (l, filler)
}

/// The peer's connection arrives while our connect is still pending
/// (Connect state). Our attempt must go on (RFC 4271 §8: an incoming
/// connection gets its own FSM until the peer is identified), so that if
/// the peer in turn abandons its own connection for ours, ours is there.
/// (Before the fix the pending connect was dropped: with both speakers
/// doing that, neither connection survived.)
#[tokio::test]
async fn pending_connect_survives_an_incoming_connection() {
    let (l, filler) = stalled_listener().await;
    let mut h = felix(l.local_addr().unwrap());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.state(), State::Connect);

    let mut theirs = connect_to_felix(&h).await;
    assert!(matches!(theirs.recv().await, Some(Message::Open(_))));
    // The peer gives its connection up; then our SYN gets through.
    theirs.stream.shutdown().await.unwrap();
    theirs.drain().await;
    let (filler_server, _) = l.accept().await.unwrap();
    drop((filler, filler_server));
    let (ours, _) = timeout(WAIT, l.accept()).await.unwrap().unwrap();
    let mut ours = Raw::new(ours);
    assert!(matches!(ours.recv().await, Some(Message::Open(_))));
    ours.send(&[peer_open(), Message::Keepalive]).await;
    assert_eq!(ours.recv().await, Some(Message::Keepalive));
    established(&mut h).await;
    assert_eq!(h.state(), State::Established);
    h.stop(None).await;
}

/// The same start, but the peer's connection completes first: it becomes
/// the session and our still pending attempt is abandoned.
#[tokio::test]
async fn incoming_connection_established_while_connecting_wins() {
    let (l, _filler) = stalled_listener().await;
    let mut h = felix(l.local_addr().unwrap());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut theirs = connect_to_felix(&h).await;
    assert!(matches!(theirs.recv().await, Some(Message::Open(_))));
    theirs.send(&[peer_open(), Message::Keepalive]).await;
    assert_eq!(theirs.recv().await, Some(Message::Keepalive));
    established(&mut h).await;
    theirs.silent_for(Duration::from_millis(500)).await.unwrap();
    assert_eq!(h.state(), State::Established);
    h.stop(None).await;
}
