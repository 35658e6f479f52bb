//! `felix-rs` — the felix node agent and its command-line tools.
//!
//! Today it owns the operator tools built on the BGP codec (`felix bgp
//! decode`). The agent, route programmer, CNI API and lab come with issues 3–6.

pub mod bgp_run;
pub mod control;
pub mod decode;
pub mod pcap;
pub mod status_view;
