//! `felix-cni`: the CNI plugin (spec 1.1). Run under the name `felix-ipam`
//! (a link) it is the IPAM-only plugin.

fn main() -> std::process::ExitCode {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    felix_cni::plugin::main_with(felix_cni::plugin::mode_for(std::path::Path::new(&argv0)))
}
