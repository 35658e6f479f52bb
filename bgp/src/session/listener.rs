//! A minimal BGP listener: accepts TCP connections and hands each to the
//! session of the peer it comes from (RFC 4271 §8: a connection from an
//! unconfigured address is refused, unless an "unknown source" handler
//! takes it: the speaker's dynamic neighbours of listen ranges).

use super::{sockopt, IncomingSender};
use ipnet::IpNet;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, warn, Instrument};

/// Where connections from addresses with no session go: the stream and
/// the peer's address (IPv4-mapped addresses unmapped).
pub type UnknownSourceSender = mpsc::UnboundedSender<(TcpStream, IpAddr)>;

#[derive(Debug, Default)]
struct Table {
    peers: HashMap<IpAddr, IncomingSender>,
    unknown: Option<UnknownSourceSender>,
}

type Routes = Arc<Mutex<Table>>;

/// Accepts connections on one address and routes them by source IP.
#[derive(Debug)]
pub struct Listener {
    local: SocketAddr,
    socket: Option<TcpSocket>,
    /// A duplicate of the listening socket once started, for socket
    /// options set later (MD5 keys of neighbours added at run time).
    started: Option<OwnedFd>,
    routes: Routes,
    task: Option<JoinHandle<()>>,
}

impl Listener {
    /// Binds (without listening yet, so that per-peer socket options such as
    /// [`Listener::set_md5`] apply before the first SYN). Port 0 picks an
    /// ephemeral port.
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let local = socket.local_addr()?;
        Ok(Listener {
            local,
            socket: Some(socket),
            started: None,
            routes: Arc::default(),
            task: None,
        })
    }

    /// The bound address (with the actual port).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Installs a TCP MD5 key (RFC 2385) for connections from `peer`
    /// (an empty key removes it). Works before and after [`Listener::start`].
    pub fn set_md5(&self, peer: IpAddr, key: &[u8]) -> io::Result<()> {
        let peer = SocketAddr::new(self.family_of_socket(peer), 0);
        match (&self.socket, &self.started) {
            (Some(s), _) => sockopt::set_md5(s, peer, key),
            (None, Some(fd)) => sockopt::set_md5(&fd.as_fd(), peer, key),
            (None, None) => Err(io::Error::other("listener closed")),
        }
    }

    /// Installs a TCP MD5 key for connections from every address in
    /// `prefix` (an empty key removes it).
    pub fn set_md5_prefix(&self, prefix: IpNet, key: &[u8]) -> io::Result<()> {
        let set = |fd: &std::os::fd::BorrowedFd<'_>| match (self.local, prefix) {
            (SocketAddr::V6(_), IpNet::V4(p)) => sockopt::set_md5_prefix_v4_mapped(fd, p, key),
            _ => sockopt::set_md5_prefix(fd, prefix, key),
        };
        match (&self.socket, &self.started) {
            (Some(s), _) => set(&s.as_fd()),
            (None, Some(fd)) => set(&fd.as_fd()),
            (None, None) => Err(io::Error::other("listener closed")),
        }
    }

    /// An IPv4 peer of a dual-stack (IPv6) socket as the socket sees it:
    /// `::ffff:a.b.c.d` (Linux takes only IPv6 MD5 keys on an IPv6 socket,
    /// and files a mapped one as the IPv4 key it is).
    fn family_of_socket(&self, peer: IpAddr) -> IpAddr {
        match (self.local, peer) {
            (SocketAddr::V6(_), IpAddr::V4(v4)) => IpAddr::V6(v4.to_ipv6_mapped()),
            _ => peer,
        }
    }

    /// Routes connections from `sender.peer()` to that session.
    pub fn add_peer(&self, sender: IncomingSender) {
        if let Ok(mut routes) = self.routes.lock() {
            routes.peers.insert(sender.peer(), sender);
        }
    }

    /// Stops routing connections from `peer`.
    pub fn remove_peer(&self, peer: IpAddr) {
        if let Ok(mut routes) = self.routes.lock() {
            routes.peers.remove(&peer);
        }
    }

    /// Hands connections from addresses without a session to `sender`
    /// instead of refusing them (`None`: refuse again).
    pub fn set_unknown_source(&self, sender: Option<UnknownSourceSender>) {
        if let Ok(mut routes) = self.routes.lock() {
            routes.unknown = sender;
        }
    }

    /// Starts listening and accepting in a task on the current runtime.
    pub fn start(&mut self) -> io::Result<()> {
        let Some(socket) = self.socket.take() else {
            return Ok(());
        };
        let listener: TcpListener = socket.listen(64)?;
        self.started = Some(listener.as_fd().try_clone_to_owned()?);
        let routes = self.routes.clone();
        let span = tracing::info_span!("bgp_listener", local = %self.local);
        self.task = Some(tokio::spawn(accept_loop(listener, routes).instrument(span)));
        Ok(())
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, routes: Routes) {
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        // An IPv4 peer on a dual-stack socket shows up as ::ffff:a.b.c.d.
        let ip = match from.ip() {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        let (sender, unknown) = match routes.lock() {
            Ok(r) => (r.peers.get(&ip).cloned(), r.unknown.clone()),
            Err(_) => (None, None),
        };
        match (sender, unknown) {
            (Some(s), _) => {
                debug!(%from, "connection handed to its session");
                if s.send(stream).is_err() {
                    debug!(%from, "session gone: connection dropped");
                }
            }
            (None, Some(unknown)) => {
                debug!(%from, "connection from an unconfigured peer handed on");
                let _ = unknown.send((stream, ip));
            }
            (None, None) => debug!(%from, "connection from an unconfigured peer refused"),
        }
    }
}
