//! `bgp` — felix-rs's BGP implementation.
//!
//! This crate owns everything that speaks BGP:
//!
//! - [`wire`]: the message codec. Pure: bytes in, typed messages out (and back),
//!   with every malformation a typed [`wire::DecodeError`] that knows the
//!   NOTIFICATION it calls for (RFC 4271 §6) and its RFC 7606 disposition.
//!
//! Still to come (issue 3): `fsm` (sans-IO RFC 4271 state machine), `session`
//! (tokio task per peer), `rib` (Adj-RIB-In, Loc-RIB, Adj-RIB-Out, route
//! reflection, graceful restart) and `speaker` (the public handle).

pub mod wire;
