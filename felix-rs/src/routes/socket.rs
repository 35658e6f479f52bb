//! One long-lived rtnetlink socket for route dumps and batched route writes.
//!
//! Writes are pipelined: up to [`BATCH`] requests go out in one `sendmsg`
//! (the kernel's `netlink_rcv_skb` walks every message of a datagram in
//! order and ACKs each one, also after an error); felix then reads the ACKs
//! of that datagram before sending the next, so that the ACKs outstanding
//! always fit the socket's receive buffer (an ACK that does not fit is
//! dropped by the kernel).

use std::collections::HashMap;
use std::io;
use std::time::Duration;

use futures_util::stream::StreamExt;
use rtnetlink::packet_core::{
    NetlinkBuffer, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteMessage, RouteProtocol};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::proto::ConnectionHandle;
use rtnetlink::sys::{
    protocols::NETLINK_ROUTE, AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket,
};

use super::FELIX_ROUTE_PROTOCOL;

/// Requests per datagram. 256 route messages are about 20 KiB, far below
/// the netlink send limit (the socket's send buffer, ~208 KiB by default),
/// and their 256 ACKs (each its own skb of well under 1 KiB of truesize;
/// errors carry no copy of the request under `NETLINK_CAP_ACK`) fit the
/// default receive buffer (2 x `rmem_max` = 416 KiB).
pub(crate) const BATCH: usize = 256;
/// How long felix waits for the ACKs of one datagram before declaring the
/// rest of it unanswered.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a whole netlink exchange failed (as opposed to one route's write).
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Opening or configuring the netlink socket failed.
    #[error("cannot open the rtnetlink socket: {0}")]
    Open(#[source] io::Error),
    /// There is no tokio runtime to drive the socket on.
    #[error("the route programmer needs a tokio runtime: {0}")]
    NoRuntime(String),
    /// The connection task has stopped.
    #[error("the rtnetlink connection is closed")]
    Closed,
    /// The kernel refused a dump.
    #[error("{what} dump failed: {source}")]
    Dump {
        /// What was being dumped.
        what: &'static str,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
}

/// Result of one write request: `Ok` on the kernel's ACK.
pub(crate) type WriteResult = Result<(), WriteError>;

/// How one write failed.
#[derive(Debug, Clone)]
pub(crate) enum WriteError {
    /// The kernel's error code (positive errno).
    Errno(i32),
    /// No ACK within [`ACK_TIMEOUT`], or the connection closed.
    NoAnswer,
}

/// The socket; clones share it.
#[derive(Clone, Debug)]
pub(crate) struct RouteSocket {
    handle: ConnectionHandle<RouteNetlinkMessage>,
}

impl RouteSocket {
    /// Opens the socket and spawns its connection task on the current tokio
    /// runtime.
    pub fn open() -> Result<Self, SocketError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| SocketError::NoRuntime(e.to_string()))?;
        let (mut conn, handle, _unsolicited) =
            rtnetlink::proto::new_connection::<RouteNetlinkMessage>(NETLINK_ROUTE)
                .map_err(SocketError::Open)?;
        let sock = conn.socket_mut().socket_mut();
        // Errors come back without a copy of the request; strict checking
        // lets the kernel filter dumps by protocol (Linux 4.20+).
        sock.set_cap_ack(true).map_err(SocketError::Open)?;
        sock.set_netlink_get_strict_chk(true)
            .map_err(SocketError::Open)?;
        // Best effort: capped by net.core.rmem_max.
        let _ = sock.set_rx_buf_sz(4 << 20);
        runtime.spawn(conn);
        Ok(RouteSocket { handle })
    }

    /// Dumps felix-protocol routes of one family (the kernel filters by
    /// protocol under strict checking; callers still check every message).
    pub async fn dump_routes(
        &self,
        family: AddressFamily,
    ) -> Result<Vec<RouteMessage>, SocketError> {
        let mut req = RouteMessage::default();
        req.header.address_family = family;
        req.header.protocol = RouteProtocol::from(FELIX_ROUTE_PROTOCOL);
        let mut msg = NetlinkMessage::from(RouteNetlinkMessage::GetRoute(req));
        msg.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let mut responses = self
            .handle
            .request(msg, SocketAddr::new(0, 0))
            .map_err(|_| SocketError::Closed)?;
        let mut out = Vec::new();
        while let Some(m) = responses.next().await {
            match m.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r)) => out.push(r),
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    return Err(SocketError::Dump {
                        what: "route",
                        source: io::Error::from_raw_os_error(-e.raw_code()),
                    })
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Dumps links as name -> ifindex.
    pub async fn link_indexes(&self) -> Result<HashMap<String, u32>, SocketError> {
        let mut msg = NetlinkMessage::from(RouteNetlinkMessage::GetLink(LinkMessage::default()));
        msg.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let mut responses = self
            .handle
            .request(msg, SocketAddr::new(0, 0))
            .map_err(|_| SocketError::Closed)?;
        let mut out = HashMap::new();
        while let Some(m) = responses.next().await {
            match m.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                    for attr in &link.attributes {
                        if let LinkAttribute::IfName(name) = attr {
                            out.insert(name.clone(), link.header.index);
                        }
                    }
                }
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    return Err(SocketError::Dump {
                        what: "link",
                        source: io::Error::from_raw_os_error(-e.raw_code()),
                    })
                }
                _ => {}
            }
        }
        Ok(out)
    }
}

/// A second socket, used only for route writes: felix numbers the requests
/// itself so that each ACK or error maps back to its route by sequence
/// number (netlink-proto answers a batch with its errors only).
pub(crate) struct RouteWriter {
    socket: TokioSocket,
    next_seq: u32,
    recv_buf: Vec<u8>,
}

impl std::fmt::Debug for RouteWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteWriter")
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

impl RouteWriter {
    /// Opens and connects the socket (to the kernel, port 0).
    pub fn open() -> Result<Self, SocketError> {
        let mut socket = TokioSocket::new(NETLINK_ROUTE).map_err(SocketError::Open)?;
        let sock = socket.socket_mut();
        sock.bind_auto().map_err(SocketError::Open)?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(SocketError::Open)?;
        sock.set_cap_ack(true).map_err(SocketError::Open)?;
        // Best effort: capped by net.core.rmem_max.
        let _ = sock.set_rx_buf_sz(4 << 20);
        Ok(RouteWriter {
            socket,
            next_seq: 1,
            recv_buf: Vec::with_capacity(64 << 10),
        })
    }

    /// Sends every request (each must ask for an ACK), [`BATCH`] to a
    /// datagram, and returns one result per request, in the same order.
    pub async fn write_all(
        &mut self,
        requests: Vec<NetlinkMessage<RouteNetlinkMessage>>,
    ) -> Vec<WriteResult> {
        let mut results = Vec::with_capacity(requests.len());
        let mut buf = Vec::with_capacity(BATCH * 128);
        let mut it = requests.into_iter().peekable();
        while it.peek().is_some() {
            let base = self.next_seq;
            buf.clear();
            let mut n = 0u32;
            for mut msg in it.by_ref().take(BATCH) {
                msg.header.sequence_number = base.wrapping_add(n);
                msg.finalize();
                let start = buf.len();
                buf.resize(start + msg.buffer_len(), 0);
                msg.serialize(&mut buf[start..]);
                n += 1;
            }
            self.next_seq = base.wrapping_add(n);
            let mut batch: Vec<Option<WriteResult>> = vec![None; n as usize];
            if self.socket.send(&buf).await.is_ok() {
                let _ =
                    tokio::time::timeout(ACK_TIMEOUT, self.collect_acks(base, &mut batch)).await;
            }
            results.extend(
                batch
                    .into_iter()
                    .map(|r| r.unwrap_or(Err(WriteError::NoAnswer))),
            );
        }
        results
    }

    /// Reads ACKs until every request of the batch starting at `base` has one.
    async fn collect_acks(&mut self, base: u32, batch: &mut [Option<WriteResult>]) {
        let mut missing = batch.len();
        while missing > 0 {
            self.recv_buf.clear();
            if self.socket.recv(&mut self.recv_buf).await.is_err() {
                return;
            }
            let mut off = 0;
            while off + 16 <= self.recv_buf.len() {
                let Ok(nl) = NetlinkBuffer::new_checked(&self.recv_buf[off..]) else {
                    break;
                };
                let len = nl.length() as usize;
                let seq = nl.sequence_number();
                if let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(
                    &self.recv_buf[off..off + len],
                ) {
                    let idx = seq.wrapping_sub(base) as usize;
                    if let (NetlinkPayload::Error(e), Some(slot)) =
                        (msg.payload, batch.get_mut(idx))
                    {
                        if slot.is_none() {
                            missing -= 1;
                        }
                        *slot = Some(match e.code {
                            None => Ok(()),
                            Some(code) => Err(WriteError::Errno(-code.get())),
                        });
                    }
                }
                off += (len + 3) & !3;
                if len == 0 {
                    break;
                }
            }
        }
    }
}
