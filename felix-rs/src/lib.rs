//! `felix-rs` — the felix node agent and its command-line tools.
//!
//! Today it owns the operator tools: `felix bgp decode` on the BGP codec,
//! and `felix bgp run` / `status` / `routes` on the BGP speaker
//! ([`bgp_run`], [`control`], [`status_view`]). The agent, route programmer,
//! CNI API and lab come with issues 3–6.

pub mod agent;
pub mod bgp_run;
pub mod control;
pub mod crds;
pub mod decode;
pub mod ipam_cli;
pub mod lab;
pub mod latency_histogram;
pub mod local_pods;
pub mod pcap;
pub mod pod_api;
pub mod routes;
pub mod status_view;
pub mod tunnel;

/// The single-threaded tokio runtime a `felix` subcommand runs on. On
/// failure it says so on stderr and gives the exit code (1) to return.
pub fn command_runtime() -> Result<tokio::runtime::Runtime, std::process::ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("felix: starting the runtime: {e}");
            std::process::ExitCode::from(1)
        })
}
