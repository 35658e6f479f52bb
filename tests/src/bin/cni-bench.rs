//! `cni-bench`: ADD and DEL latency of a CNI plugin, pod after pod and with
//! several pods at once, measured around each plugin process (spawn to
//! exit), the way a runtime experiences it. bench/cni.sh runs it for
//! felix-cni and for the reference bridge + host-local in the same run.
//!
//! The harness enters the node's network namespace once, on its main
//! thread, before starting any worker, so the plugins it spawns run there
//! without an `ip netns exec` per call.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;

#[derive(Parser)]
#[command(about = "CNI ADD/DEL latency: sequential and parallel")]
struct Args {
    /// The plugin binary to run.
    #[arg(long)]
    plugin: PathBuf,
    /// The network configuration given on stdin.
    #[arg(long)]
    conf: PathBuf,
    /// CNI_PATH for the plugin (where it finds its ipam plugin).
    #[arg(long, default_value = "/usr/lib/cni")]
    cni_path: String,
    /// The node's network namespace (a name under /var/run/netns).
    #[arg(long)]
    node_netns: String,
    /// Pods per round.
    #[arg(long, default_value_t = 200)]
    pods: usize,
    /// Pods added (then deleted) at once in the parallel round.
    #[arg(long, default_value_t = 8)]
    parallel: usize,
    /// Name in the table.
    #[arg(long)]
    label: String,
}

/// One round's latencies.
struct Round {
    add: Vec<Duration>,
    del: Vec<Duration>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let conf = std::fs::read(&args.conf).with_context(|| format!("{}", args.conf.display()))?;
    let prefix = format!("fxb{}", std::process::id());
    let pods: Vec<String> = (0..args.pods).map(|i| format!("{prefix}-{i}")).collect();
    for pod in &pods {
        run("ip", &["netns", "add", pod])?;
    }
    let node = std::fs::File::open(format!("/var/run/netns/{}", args.node_netns))
        .context("opening the node netns")?;
    nix::sched::setns(&node, nix::sched::CloneFlags::CLONE_NEWNET)
        .context("entering the node netns")?;

    let outcome = (|| -> anyhow::Result<(Round, Round)> {
        let sequential = round(&args, &conf, &pods, 1, "s")?;
        let parallel = round(&args, &conf, &pods, args.parallel, "p")?;
        Ok((sequential, parallel))
    })();
    for pod in &pods {
        let _ = Command::new("ip").args(["netns", "del", pod]).status();
    }
    let (sequential, parallel) = outcome?;
    for (mode, r) in [
        ("sequential".to_owned(), &sequential),
        (format!("{} in parallel", args.parallel), &parallel),
    ] {
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
            args.label,
            mode,
            r.add.len(),
            ms(percentile(&r.add, 50)),
            ms(percentile(&r.add, 99)),
            ms(percentile(&r.del, 50)),
            ms(percentile(&r.del, 99)),
        );
    }
    Ok(())
}

/// ADD every pod, then DEL every pod, `workers` at a time.
fn round(
    args: &Args,
    conf: &[u8],
    pods: &[String],
    workers: usize,
    tag: &str,
) -> anyhow::Result<Round> {
    let mut result = Round {
        add: Vec::new(),
        del: Vec::new(),
    };
    for command in ["ADD", "DEL"] {
        let next = Mutex::new(0usize);
        let times = Mutex::new(Vec::new());
        let failure = Mutex::new(None);
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| loop {
                    let i = {
                        let mut next = next.lock().unwrap_or_else(|e| e.into_inner());
                        let i = *next;
                        *next += 1;
                        i
                    };
                    if i >= pods.len() {
                        break;
                    }
                    match call(args, conf, command, &format!("bench-{tag}-{i}"), &pods[i]) {
                        Ok(t) => times.lock().unwrap_or_else(|e| e.into_inner()).push(t),
                        Err(e) => {
                            *failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                            break;
                        }
                    }
                });
            }
        });
        if let Some(e) = failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
            return Err(e);
        }
        let times = times.into_inner().unwrap_or_else(|e| e.into_inner());
        match command {
            "ADD" => result.add = times,
            _ => result.del = times,
        }
    }
    Ok(result)
}

/// One plugin run, timed from spawn to exit.
fn call(args: &Args, conf: &[u8], command: &str, id: &str, pod: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut child = Command::new(&args.plugin)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", format!("/var/run/netns/{pod}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", &args.cni_path)
        .env(
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={id}"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", args.plugin.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(conf)?;
    }
    let out = child.wait_with_output()?;
    let elapsed = started.elapsed();
    if !out.status.success() {
        bail!(
            "{command} {id}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(elapsed)
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(program).args(args).status()?;
    if !status.success() {
        bail!("{program} {}: {status}", args.join(" "));
    }
    Ok(())
}

/// The nearest-rank percentile.
fn percentile(times: &[Duration], p: usize) -> Duration {
    if times.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = times.to_vec();
    sorted.sort();
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
