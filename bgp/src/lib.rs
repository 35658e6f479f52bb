//! `bgp` — felix-rs's BGP implementation.
//!
//! This crate owns everything that speaks BGP:
//!
//! - [`wire`]: the message codec. Pure: bytes in, typed messages out (and back),
//!   with every malformation a typed [`wire::DecodeError`] that knows the
//!   NOTIFICATION it calls for (RFC 4271 §6) and its RFC 7606 disposition.
//! - [`fsm`]: the RFC 4271 §8 finite state machine, sans-IO: events and the
//!   current time in, actions out (see docs/bgp-fsm.md).
//! - [`session`]: one tokio task per peer driving the FSM over TCP (see
//!   docs/bgp-session.md).
//! - [`rib`]: Adj-RIBs-In, Loc-RIB with the RFC 4271 §9.1.2 decision process
//!   and ECMP, Adj-RIBs-Out with export policy, route reflection (RFC 4456),
//!   graceful-restart stale paths (RFC 4724), max-prefix, prefix lists; pure
//!   and synchronous (see docs/bgp-rib.md). `rib::pack` packs the
//!   Adj-RIB-Out changes into UPDATEs (see docs/bgp-update-packing.md).
//!
//! - [`speaker`]: the public [`speaker::Speaker`] handle tying the RIB, one
//!   session and UPDATE packer per neighbour and a listener together in one
//!   actor task; add/remove neighbours at run time, originate/withdraw,
//!   subscribe to best-path changes (see docs/bgp-speaker.md).

pub mod fsm;
pub mod rib;
pub mod session;
pub mod speaker;
pub mod wire;
