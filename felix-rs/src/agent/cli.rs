//! `felix node run` and `felix status`: argument parsing and process set-up
//! (logging, runtime, datastore) around [`run::run`](super::run::run).

use super::config::{self, AgentConfig, LogFormat, DEFAULT_CONTROL_SOCKET};
use super::ipam_blocks::IpamBlocks;
use super::run::{self, Plugins};
use super::status;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

/// Flags of `felix node run`.
#[derive(Args, Clone, Debug, Default)]
pub struct NodeRunArgs {
    /// TOML configuration file (docs/agent.md); `FELIX_*` variables override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Flags of `felix node remove`.
#[derive(Args, Clone, Debug)]
pub struct NodeRemoveArgs {
    /// The node's name (its `FelixNode` object).
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The datastore (sqlite:PATH, etcd://HOST:PORT, kubernetes).
    #[arg(long, value_name = "URL", default_value = ipam::store::DEFAULT_DATASTORE)]
    pub datastore: String,
}

/// Flags of `felix status`.
#[derive(Args, Clone, Debug)]
pub struct StatusArgs {
    /// The agent's control socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
    /// Print the agent's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs the agent: 0 after SIGINT/SIGTERM, 1 when it could not run, 2 for
/// a bad configuration.
pub fn node_run(args: &NodeRunArgs) -> ExitCode {
    let env: std::collections::BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("FELIX_"))
        .collect();
    let config = match config::load(args.config.as_deref(), &env, config::SystemAddresses) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("felix: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = init_logging(&config) {
        eprintln!("felix: {e}");
        return ExitCode::from(2);
    }
    let runtime = match crate::command_runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match runtime.block_on(start(config)) {
        Ok(stopped) => {
            // The runtime first: the sessions close without a Cease.
            drop(runtime);
            drop(stopped);
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("felix: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn start(config: AgentConfig) -> anyhow::Result<run::Stopped> {
    let store = ipam::store::open(&config.datastore)
        .await
        .map_err(|e| anyhow::anyhow!("datastore {}: {e}", config.datastore))?;
    let allocator = std::sync::Arc::new(ipam::Allocator::new(
        store.clone(),
        ipam::AllocatorConfig::default(),
    ));
    // The CNI plugin's socket: addresses come from this node's blocks.
    let server = crate::pod_api::PodApiServer::bind(&config.pod_api_socket)
        .await
        .map_err(|e| anyhow::anyhow!("pod API: {e}"))?;
    // The node's pods as IPAM knows them; the pod API keeps this current
    // and the route programmer keeps their routes.
    let pods = crate::local_pods::LocalPods::load(&allocator, &config.node_name)
        .await
        .map_err(|e| anyhow::anyhow!("reading this node's pods from IPAM: {e}"))?;
    let api = std::sync::Arc::new(
        crate::pod_api::PodApi::new(allocator.clone(), config.node_name.clone())
            .with_local_pods(pods.clone()),
    );
    let pod_api_latency = api.latency();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let pod_api = tokio::spawn(server.serve(api, async {
        let _ = stop_rx.await;
    }));
    tracing::info!(socket = %config.pod_api_socket.display(), "pod API serving");
    let routes = super::kernel_routes::KernelRoutes::open(config.node_address.addr())
        .map_err(|e| anyhow::anyhow!("route programmer: {e}"))?
        .with_local_pods(pods);
    let plugins = Plugins {
        blocks: Some(std::sync::Arc::new(IpamBlocks { allocator })),
        routes: Some(Box::new(routes)),
        nat: Some(Box::new(super::nat_outgoing::NftTable::default())),
        pod_api_latency: Some(pod_api_latency),
    };
    let result = run::run(config, store, plugins).await;
    let _ = stop_tx.send(());
    let _ = pod_api.await;
    Ok(result?)
}

/// `felix node remove NAME`: takes a node out of the cluster for good (its
/// agent stopped first). Deletes its `FelixNode`, so every other agent drops
/// the BGP session and the routes learned over it, then releases its pods'
/// addresses and gives back its blocks (`ipam::Allocator::remove_node`).
/// 0 done, 1 failed.
pub fn node_remove(args: &NodeRemoveArgs) -> ExitCode {
    let runtime = match crate::command_runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match runtime.block_on(remove_node(&args.datastore, &args.name)) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("felix: node remove {}: {e:#}", args.name);
            ExitCode::from(1)
        }
    }
}

async fn remove_node(datastore: &str, name: &str) -> anyhow::Result<String> {
    use ipam::store::{Kind, StoreError};
    let store = ipam::store::open(datastore)
        .await
        .map_err(|e| anyhow::anyhow!("datastore {datastore}: {e}"))?;
    let mut registered = false;
    for _ in 0..10 {
        let obj = match store.get(Kind::FelixNode, name).await {
            Ok(o) => o,
            Err(StoreError::NotFound { .. }) => break,
            Err(e) => return Err(e.into()),
        };
        match store.delete(Kind::FelixNode, name, &obj.revision).await {
            Ok(()) | Err(StoreError::NotFound { .. }) => {
                registered = true;
                break;
            }
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let allocator = ipam::Allocator::new(store, ipam::AllocatorConfig::default());
    let removal = allocator.remove_node(name).await?;
    Ok(format!(
        "node {name}: {}; {} addresses released, blocks given back: {:?}, blocks left unaffined (other nodes' pods in them): {:?}\n",
        if registered {
            "FelixNode deleted"
        } else {
            "no FelixNode registered"
        },
        removal.released.len(),
        removal.blocks_released,
        removal.blocks_unaffined
    ))
}

fn init_logging(config: &AgentConfig) -> Result<(), String> {
    let level: tracing::Level = config.log_level.parse().map_err(|_| {
        format!(
            "log_level {:?}: expected error, warn, info, debug or trace",
            config.log_level
        )
    })?;
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr);
    let result = match config.log_format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|e| format!("logging: {e}"))
}

/// `felix status`: 0, or 1 when the agent could not be asked.
pub fn status(args: &StatusArgs) -> ExitCode {
    match status::query(&args.control_socket) {
        Ok(s) if args.json => match serde_json::to_string_pretty(&s) {
            Ok(j) => {
                println!("{j}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("felix: {e}");
                ExitCode::from(1)
            }
        },
        Ok(s) => {
            print!("{}", status::render(&s));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("felix: {e}");
            ExitCode::from(1)
        }
    }
}
