//! `felix lab up|down|status` arguments and output.

use super::build::{self, Binaries};
use super::plan::{LabDatastore, LabEncapsulation, LabOptions, LabPlan, Tor};
use clap::{Args, Subcommand};
use std::process::ExitCode;

/// The lab subcommands.
#[derive(Subcommand, Clone, Debug)]
pub enum LabCommand {
    /// Build a cluster in network namespaces, print the ping matrix.
    Up(UpArgs),
    /// Remove every namespace, link, process and file of a lab.
    Down(PrefixArg),
    /// Show a lab's processes, agents and pods.
    Status(PrefixArg),
}

#[derive(Args, Clone, Debug)]
pub struct PrefixArg {
    /// Name prefix of the lab's namespaces and links.
    #[arg(long, default_value = "fxl")]
    pub prefix: String,
}

#[derive(Args, Clone, Debug)]
pub struct UpArgs {
    #[command(flatten)]
    pub prefix: PrefixArg,
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: u8,
    /// Pods per node.
    #[arg(long, default_value_t = 2)]
    pub pods: u8,
    /// No mesh: nodes peer only with a `felix bgp run` route reflector.
    #[arg(long)]
    pub route_reflector: bool,
    /// A ToR router namespace running this daemon, eBGP to every node.
    #[arg(long, value_enum)]
    pub tor: Option<Tor>,
    /// Underlay subnets (2: nodes alternate between two subnets behind a router).
    #[arg(long, default_value_t = 1)]
    pub subnets: u8,
    /// The tunnel between the subnets (the pool's vxlanMode or ipipMode
    /// CrossSubnet); only with --subnets 2.
    #[arg(long, value_enum, default_value_t = LabEncapsulation::Vxlan)]
    pub encapsulation: LabEncapsulation,
    /// The datastore shared by the agents.
    #[arg(long, value_enum, default_value_t = LabDatastore::Sqlite)]
    pub datastore: LabDatastore,
    /// IPv6 too: IPv6 underlay addresses, an IPv6 pool, dual-stack pods,
    /// IPv6 BGP sessions; prints the IPv6 ping matrix as well.
    #[arg(long)]
    pub dual_stack: bool,
}

/// Runs a lab subcommand: 0 on success, 1 when it failed, 2 for bad options.
pub fn lab(command: &LabCommand) -> ExitCode {
    match command {
        LabCommand::Up(args) => up(args),
        LabCommand::Down(p) => match build::down(&p.prefix) {
            Ok(r) => {
                println!(
                    "lab {} removed: {} processes stopped, {} namespaces deleted",
                    p.prefix, r.processes, r.namespaces
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("felix: {e}");
                ExitCode::from(1)
            }
        },
        LabCommand::Status(p) => match build::status_text(&p.prefix) {
            Ok(t) => {
                print!("{t}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("felix: {e}");
                ExitCode::from(1)
            }
        },
    }
}

fn up(args: &UpArgs) -> ExitCode {
    let plan = match LabPlan::new(LabOptions {
        prefix: args.prefix.prefix.clone(),
        nodes: args.nodes,
        pods_per_node: args.pods,
        route_reflector: args.route_reflector,
        tor: args.tor,
        subnets: args.subnets,
        encapsulation: args.encapsulation,
        datastore: args.datastore,
        dual_stack: args.dual_stack,
    }) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("felix: {e}");
            return ExitCode::from(2);
        }
    };
    let bins = match Binaries::beside_current_exe() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("felix: {e}");
            return ExitCode::from(1);
        }
    };
    let mut stdout = std::io::stdout();
    match build::up(&plan, &bins, &mut stdout) {
        Ok(state) => {
            if !state.pods.is_empty() {
                let mut failed = 0;
                let families: &[build::PingFamily] = if plan.options.dual_stack {
                    &[build::PingFamily::V4, build::PingFamily::V6]
                } else {
                    &[build::PingFamily::V4]
                };
                for family in families {
                    let pods = build::pods_of_family(&state.pods, *family);
                    let m = build::ping_matrix(&pods);
                    println!("\n{} ping matrix (every pod to every pod):", family.name());
                    print!("{}", build::render_matrix(&pods, &m));
                    let fails = m.iter().flatten().filter(|c| **c == Some(false)).count();
                    let total = m.iter().flatten().filter(|c| c.is_some()).count();
                    println!("{}/{} pings answered", total - fails, total);
                    failed += fails;
                }
                if failed > 0 {
                    println!(
                        "lab is up but not fully connected; `felix lab status --prefix {}`, `felix lab down --prefix {}` removes it",
                        plan.options.prefix, plan.options.prefix
                    );
                    return ExitCode::from(1);
                }
            }
            println!(
                "lab {} is up; `felix lab status --prefix {0}` shows it, `felix lab down --prefix {0}` removes it",
                plan.options.prefix
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("felix: {e}");
            eprintln!(
                "felix: the lab is left as far as it got; `felix lab down --prefix {}` removes it",
                plan.options.prefix
            );
            ExitCode::from(1)
        }
    }
}
