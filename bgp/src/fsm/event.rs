//! What goes into the FSM ([`Event`]) and what comes out ([`Action`]).

use super::negotiate::Negotiated;
use crate::wire::{DecodeError, Message, Notification, RouteRefresh, Update};
use bytes::Bytes;

/// The six states of RFC 4271 §8.2.2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

/// An input from the driver. Timer events (RFC 4271 events 9–13) are not
/// here: the FSM keeps its own timers, see [`super::Fsm::handle_timeout`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Event 1.
    ManualStart,
    /// Event 4 (ManualStart_with_PassiveTcpEstablishment); see
    /// docs/bgp-fsm.md for how it differs from [`super::PeerConfig::passive`].
    ManualStartPassive,
    /// Event 2: operator stop. Cease / Administrative Shutdown (RFC 4486),
    /// with an RFC 9003 shutdown communication if a message is given.
    ManualStop { shutdown_message: Option<String> },
    /// Event 3.
    AutomaticStart,
    /// Event 5.
    AutomaticStartPassive,
    /// Event 8: the local system stops the session by itself (e.g. maximum
    /// prefixes reached), with this Cease subcode and data (RFC 4486 §4:
    /// AFI, SAFI and the limit for Maximum Number of Prefixes Reached).
    AutomaticStop { cease_subcode: u8, data: Bytes },
    /// Event 16 (Tcp_CR_Acked): our outgoing connection is up.
    TcpConnectionAcked,
    /// Event 17 (TcpConnectionConfirmed): we accepted the peer's connection.
    /// Event 14 (TcpConnection_Valid) is the driver's check before this one.
    TcpConnectionConfirmed,
    /// Event 18: the connection failed or the peer closed it.
    TcpConnectionFails,
    /// A message decoded from the connection: events 19/20 (OPEN), 25/24
    /// (NOTIFICATION), 26 (KEEPALIVE), 27 (UPDATE), and ROUTE-REFRESH.
    Message(Message),
    /// A message the codec rejected: events 21 (BGPHeaderErr), 22
    /// (BGPOpenMsgErr) and 28 (UpdateMsgErr), by the error's code.
    DecodeError(DecodeError),
    /// Event 23: the session layer resolved a collision against this
    /// connection (RFC 4271 §6.8).
    OpenCollisionDump,
    /// The driver sent an UPDATE: the keepalive timer restarts (RFC 4271
    /// §8.2.2, Established: "each time the local system sends a KEEPALIVE
    /// or UPDATE message").
    UpdateSent,
}

/// Something the driver must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Initiate a TCP connection to the peer.
    Connect,
    /// Close the TCP connection (or abandon a connection attempt).
    Disconnect,
    /// Encode and send this message.
    Send(Message),
    /// The session is up: the agreed parameters.
    Established(Box<Negotiated>),
    /// A received UPDATE for the RIB (Established only). Its `faults` are
    /// intact: the RIB applies treat-as-withdraw (RFC 7606).
    Update(Update),
    /// A received ROUTE-REFRESH for the RIB (Established only).
    RouteRefresh(RouteRefresh),
    /// The session left Established: drop the peer's routes (or mark them
    /// stale under graceful restart).
    SessionDown { reason: DownReason },
}

/// Why a connection was torn down.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DownReason {
    #[error("stopped by operator")]
    ManualStop,
    #[error("stopped automatically (Cease subcode {0})")]
    AutomaticStop(u8),
    #[error("hold timer expired")]
    HoldTimerExpired,
    #[error("TCP connection failed or closed")]
    ConnectionFailed,
    #[error("peer sent NOTIFICATION: {}", .0.describe())]
    NotificationReceived(Notification),
    /// We found an error in what the peer sent (OPEN check, decode error,
    /// message unexpected in the state) and sent this NOTIFICATION.
    #[error("sent NOTIFICATION: {}", .0.describe())]
    NotificationSent(Notification),
    #[error("connection closed by collision resolution")]
    CollisionResolution,
    /// An event the state does not expect while no BGP message exchange had
    /// started (Connect/Active "any other event").
    #[error("unexpected {0} in state {1:?}")]
    UnexpectedEvent(&'static str, State),
}
