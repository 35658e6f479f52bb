//! `felix-ipam`: felix's IPAM as a CNI IPAM plugin, for other plugins'
//! standard `ipam` delegation.

fn main() -> std::process::ExitCode {
    felix_cni::plugin::main_with(felix_cni::config::Mode::Ipam)
}
