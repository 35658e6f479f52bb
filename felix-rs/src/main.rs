//! `felix`: the felix-rs command line.
//!
//! Exit codes: `felix bgp decode`: 0 when everything decoded, 1 when a
//! message had an error, 2 for usage and I/O errors. `felix bgp run`: 0
//! after a clean shutdown, 1 when the speaker could not run, 2 for a bad
//! configuration. `felix bgp status` / `routes`: 0, or 1 when the daemon
//! could not be asked.

use anyhow::Context;

/// mimalloc instead of the C library's allocator: `felix bgp run` as a
/// route reflector allocates small blocks on one thread (the RIB actor)
/// and frees them on another (the writers), at millions a second during a
/// full table; glibc's malloc and free were a quarter of its CPU there
/// (docs/benchmarks.md, "RR convergence, issue 3, 2026-11-23 session 2").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use bgp::speaker::{RouteView, SpeakerStatus};
use bgp::wire::{AddPathFamilies, Family, SessionParams};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use felix_rs::bgp_run::{self, RunArgs, RunPlan, DEFAULT_CONTROL_SOCKET};
use felix_rs::control::{self, Request};
use felix_rs::decode::{self, Tally};
use felix_rs::{pcap, pod_api, status_view};
use std::io::{self, Read, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "felix",
    version,
    about = "felix-rs node agent and operator tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// BGP: run a speaker (`felix bgp run`), ask it (`status`, `routes`),
    /// decode what a peer sent (`decode`).
    #[command(subcommand)]
    Bgp(BgpCommand),
    /// The node agent: `felix node run` (and its parts).
    #[command(subcommand)]
    Node(NodeCommand),
    /// IPAM: pools, allocation, release, `show`, `check` and `gc` (like `calicoctl ipam`).
    Ipam(felix_rs::ipam_cli::IpamArgs),
    /// One screen about the running node agent.
    Status(felix_rs::agent::cli::StatusArgs),
    /// A felix cluster in network namespaces on this machine (docs/lab.md).
    #[command(subcommand)]
    Lab(felix_rs::lab::cli::LabCommand),
    /// Print (or write, or check) the CustomResourceDefinitions generated from felix's types.
    Crds(felix_rs::crds::CrdsArgs),
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Run the node agent until SIGINT/SIGTERM (docs/agent.md).
    Run(felix_rs::agent::cli::NodeRunArgs),
    /// Serve the CNI plugin's pod API (addresses from IPAM) on a unix socket
    /// until SIGINT/SIGTERM; the part of `felix node run` that felix-cni talks to.
    PodApi(PodApiArgs),
    /// Take a stopped node out of the cluster: delete its FelixNode (its
    /// peers drop it and its routes), release its addresses, give back its blocks.
    Remove(felix_rs::agent::cli::NodeRemoveArgs),
}

#[derive(Args)]
struct PodApiArgs {
    /// The unix socket felix-cni connects to (its `agent_socket`).
    #[arg(long, value_name = "PATH", default_value = pod_api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// The IPAM datastore (sqlite:PATH, etcd://HOST:PORT, kubernetes).
    #[arg(long, value_name = "URL", default_value = ipam::store::DEFAULT_DATASTORE)]
    datastore: String,
    /// This node's name (its blocks' affinity, its allocations' `node`).
    #[arg(long, value_name = "NAME")]
    node: String,
    /// Create an IP pool with this CIDR unless one with it exists (repeat
    /// for more; for labs and tests without `felix ipam`).
    #[arg(long, value_name = "CIDR")]
    pool: Vec<ipnet::IpNet>,
}

#[derive(Subcommand)]
enum BgpCommand {
    /// Decode BGP messages from a file or capture; print one JSON object per message.
    Decode(DecodeArgs),
    /// Run a BGP speaker (e.g. a route reflector) until SIGINT/SIGTERM.
    Run(Box<RunArgs>),
    /// Show the running speaker's peers: state, uptime, prefix counts, last error.
    Status(QueryArgs),
    /// Show the running speaker's routes, all paths, best marked `*`.
    Routes(RoutesArgs),
    /// Ask a neighbour to send its routes again (ROUTE-REFRESH, RFC 2918).
    Refresh(RefreshArgs),
}

#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
enum Output {
    /// Aligned text columns.
    #[default]
    Table,
    /// The daemon's answer as JSON.
    Json,
}

#[derive(Args)]
struct QueryArgs {
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    output: Output,
    /// The daemon's control socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL_SOCKET)]
    control_socket: PathBuf,
}

#[derive(Args)]
struct RoutesArgs {
    /// Only this prefix and the prefixes inside it.
    #[arg(value_name = "PREFIX")]
    prefix: Option<ipnet::IpNet>,
    #[command(flatten)]
    query: QueryArgs,
}

#[derive(Args)]
struct RefreshArgs {
    /// The neighbour's address.
    #[arg(value_name = "PEER")]
    peer: std::net::IpAddr,
    #[command(flatten)]
    query: QueryArgs,
}

#[derive(Args)]
struct DecodeArgs {
    /// FILE is a pcap/pcapng capture: decode every TCP stream to or from port 179.
    #[arg(long)]
    pcap: bool,
    /// Decode AS numbers as 4 octets (with --pcap: until both OPENs are seen).
    #[arg(long)]
    four_octet_as: bool,
    /// NLRI of FAMILY carry ADD-PATH path identifiers (ipv4-unicast, ipv6-unicast,
    /// ipv4-multicast, ipv6-multicast); repeat or separate with commas.
    #[arg(long, value_name = "FAMILY", value_delimiter = ',', value_parser = decode::parse_add_path_family)]
    add_path: Vec<Family>,
    /// Allow messages up to 65535 bytes (RFC 8654).
    #[arg(long)]
    extended_message: bool,
    /// Raw concatenated BGP messages (or a capture with --pcap); `-` reads stdin.
    #[arg(value_name = "FILE")]
    file: PathBuf,
}

impl DecodeArgs {
    fn session_params(&self) -> SessionParams {
        let add_path = self
            .add_path
            .iter()
            .fold(AddPathFamilies::default(), |set, family| set.with(*family));
        SessionParams {
            four_octet_as: self.four_octet_as,
            extended_message: self.extended_message,
            add_path,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Bgp(BgpCommand::Decode(args)) => decode_exit(bgp_decode(&args)),
        Command::Bgp(BgpCommand::Run(args)) => bgp_run(&args),
        Command::Bgp(BgpCommand::Status(args)) => bgp_status(&args),
        Command::Bgp(BgpCommand::Routes(args)) => bgp_routes(&args),
        Command::Bgp(BgpCommand::Refresh(args)) => bgp_refresh(&args),
        Command::Node(NodeCommand::PodApi(args)) => node_pod_api(&args),
        Command::Ipam(args) => ipam_command(&args),
        Command::Node(NodeCommand::Run(args)) => felix_rs::agent::cli::node_run(&args),
        Command::Node(NodeCommand::Remove(args)) => felix_rs::agent::cli::node_remove(&args),
        Command::Status(args) => felix_rs::agent::cli::status(&args),
        Command::Lab(command) => felix_rs::lab::cli::lab(&command),
        Command::Crds(args) => felix_rs::crds::command(&args),
    }
}

fn ipam_command(args: &felix_rs::ipam_cli::IpamArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("felix: starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(felix_rs::ipam_cli::run(args)) {
        Ok(outcome) => {
            let mut stdout = io::stdout().lock();
            if let Err(e) = stdout.write_all(outcome.stdout.as_bytes()) {
                if e.kind() != io::ErrorKind::BrokenPipe {
                    eprintln!("felix: {e}");
                    return ExitCode::from(1);
                }
            }
            ExitCode::from(outcome.exit)
        }
        Err(e) => {
            eprintln!("felix ipam: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn node_pod_api(args: &PodApiArgs) -> ExitCode {
    let runtime = match felix_rs::command_runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match runtime.block_on(serve_pod_api(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("felix: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn serve_pod_api(args: &PodApiArgs) -> anyhow::Result<()> {
    let store = ipam::store::open(&args.datastore)
        .await
        .with_context(|| format!("opening datastore {}", args.datastore))?;
    let allocator = std::sync::Arc::new(ipam::Allocator::new(
        store,
        ipam::AllocatorConfig::default(),
    ));
    let pools = allocator.pools().await?;
    for cidr in &args.pool {
        if pools.iter().any(|p| p.spec.cidr == *cidr) {
            continue;
        }
        let name = format!("pool-{}", ipam::names::cidr_name(cidr));
        allocator
            .create_pool(&name, ipam::pool::IpPoolSpec::new(*cidr))
            .await
            .with_context(|| format!("creating pool {cidr}"))?;
    }
    let server = pod_api::PodApiServer::bind(&args.socket).await?;
    let api = std::sync::Arc::new(pod_api::PodApi::new(allocator, args.node.clone()));
    eprintln!(
        "felix: pod API for node {} on {}",
        args.node,
        args.socket.display()
    );
    server.serve(api, shutdown_signal()).await;
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn bgp_run(args: &RunArgs) -> ExitCode {
    let plan = match RunPlan::from_args(args) {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("felix: {e}");
            return ExitCode::from(2);
        }
    };
    // Multi-threaded: the sessions' tasks (reading and decoding UPDATEs,
    // encoding and writing them) run beside the speaker's RIB actor, which
    // a full table keeps busy on one core (docs/benchmarks.md, route
    // reflector).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("felix: starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(bgp_run::run(plan)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("felix: {e}");
            ExitCode::from(1)
        }
    }
}

fn bgp_status(args: &QueryArgs) -> ExitCode {
    query(args, &Request::Status, |status: &SpeakerStatus| {
        status_view::render_status(status)
    })
}

fn bgp_refresh(args: &RefreshArgs) -> ExitCode {
    let request = Request::Refresh { peer: args.peer };
    query(&args.query, &request, |answer: &serde_json::Value| {
        format!(
            "Route refresh requested from {}\n",
            answer["refreshed"].as_str().unwrap_or("?")
        )
    })
}

fn bgp_routes(args: &RoutesArgs) -> ExitCode {
    let request = Request::Routes {
        prefix: args.prefix,
    };
    query(&args.query, &request, |routes: &Vec<RouteView>| {
        status_view::render_routes(routes)
    })
}

/// Asks the daemon, prints its answer as a table or JSON.
fn query<T>(args: &QueryArgs, request: &Request, render: impl Fn(&T) -> String) -> ExitCode
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    let answer: T = match control::request_as(&args.control_socket, request) {
        Ok(answer) => answer,
        Err(e) => {
            eprintln!("felix: {e}");
            return ExitCode::from(1);
        }
    };
    let text = match args.output {
        Output::Table => render(&answer),
        Output::Json => match serde_json::to_string_pretty(&answer) {
            Ok(json) => json + "\n",
            Err(e) => {
                eprintln!("felix: {e}");
                return ExitCode::from(1);
            }
        },
    };
    let mut stdout = io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("felix: {e}");
            ExitCode::from(1)
        }
    }
}

fn decode_exit(result: anyhow::Result<Tally>) -> ExitCode {
    match result {
        Ok(tally) if tally.errors == 0 => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        // A reader that stopped early (`felix ... | head`) is not a failure.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("felix: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<io::Error>()
        .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

fn bgp_decode(args: &DecodeArgs) -> anyhow::Result<Tally> {
    let input = read_input(&args.file)?;
    let params = args.session_params();
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let tally = if args.pcap {
        // Stream the lines out as the capture is walked, so that memory
        // does not grow with the capture.
        let mut tally = Tally::default();
        let mut write_error = None;
        let walked =
            pcap::visit_capture(
                &input,
                params,
                |captured| match decode::write_captured_line(&captured, &mut tally, &mut out) {
                    Ok(()) => ControlFlow::Continue(()),
                    Err(e) => {
                        write_error = Some(e);
                        ControlFlow::Break(())
                    }
                },
            );
        if let Some(e) = write_error {
            return Err(e.into());
        }
        out.flush()?;
        walked.with_context(|| format!("reading capture {}", args.file.display()))?;
        tally
    } else {
        decode::write_stream_json(Bytes::from(input), params, &mut out)?
    };
    out.flush()?;
    Ok(tally)
}

fn read_input(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut data = Vec::new();
        io::stdin()
            .read_to_end(&mut data)
            .context("reading standard input")?;
        Ok(data)
    } else {
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))
    }
}
