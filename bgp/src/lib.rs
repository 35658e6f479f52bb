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
//!
//! Still to come (issue 3): `rib` (Adj-RIB-In, Loc-RIB, Adj-RIB-Out, route
//! reflection, graceful restart) and `speaker` (the public handle).

pub mod fsm;
pub mod session;
pub mod rib;
pub mod wire;
