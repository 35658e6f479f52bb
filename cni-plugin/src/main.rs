//! `felix-cni` — the CNI plugin kubelet's runtime calls for every pod.
//!
//! **Not built yet** (issue 5). Until then it answers every call with the CNI
//! error object for "unsupported", so a runtime that calls it fails loudly
//! rather than silently.

use std::process::ExitCode;

fn main() -> ExitCode {
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    // Error code 100+ are plugin-specific (CNI spec 1.1, "Error").
    println!(
        "{{\"cniVersion\":\"1.1.0\",\"code\":100,\"msg\":\"felix-cni is not implemented yet\",\"details\":\"CNI_COMMAND={}\"}}",
        command.escape_default()
    );
    ExitCode::FAILURE
}
