//! `cni-bench`: ADD and DEL latency of a CNI plugin, pod after pod and with
//! several pods at once, measured around each plugin process (spawn to
//! exit), the way a runtime experiences it. bench/cni.sh runs it for
//! felix-cni and for the reference bridge + host-local in the same run.
//!
//! The harness enters the node's network namespace once, on its main
//! thread, before starting any worker, so the plugins it spawns run there
//! without an `ip netns exec` per call.
//!
//! Also printed per round: the CPU time the plugin processes used (user +
//! system, from this process's reaped children) and, with `--agent-pid`,
//! the agent's, each per call. With `--timings`, felix-cni reports its own
//! steps (`felix_cni::timings`) and a second table gives each step's p50
//! and p99.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
    /// The agent's pid: its CPU time per call is reported too.
    #[arg(long)]
    agent_pid: Option<u32>,
    /// Append the CPU table (and the step tables) to this file instead of
    /// printing them after the latency rows.
    #[arg(long)]
    details: Option<PathBuf>,
    /// Ask felix-cni for its step timings (FELIX_CNI_TIMINGS) and print
    /// their percentiles.
    #[arg(long)]
    timings: bool,
}

/// One verb's calls in one round.
#[derive(Default)]
struct Calls {
    latency: Vec<Duration>,
    /// CPU seconds of the plugin processes and of the agent, per call.
    plugin_cpu: f64,
    agent_cpu: Option<f64>,
    /// Each step's times (ms) as felix-cni reported them.
    steps: BTreeMap<String, Vec<f64>>,
    /// Step names in the order first reported.
    order: Vec<String>,
}

/// One round's calls.
struct Round {
    add: Calls,
    del: Calls,
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
    let modes = [
        ("sequential".to_owned(), &sequential),
        (format!("{} in parallel", args.parallel), &parallel),
    ];
    for (mode, r) in &modes {
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
            args.label,
            mode,
            r.add.latency.len(),
            ms(percentile(&r.add.latency, 50)),
            ms(percentile(&r.add.latency, 99)),
            ms(percentile(&r.del.latency, 50)),
            ms(percentile(&r.del.latency, 99)),
        );
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| {} | mode | verb | plugin CPU ms/call | agent CPU ms/call |",
        args.label
    );
    let _ = writeln!(out, "| --- | --- | --- | --- | --- |");
    for (mode, r) in &modes {
        for (verb, calls) in [("ADD", &r.add), ("DEL", &r.del)] {
            let agent = calls
                .agent_cpu
                .map_or("-".to_owned(), |s| format!("{:.2}", s * 1000.0));
            let _ = writeln!(
                out,
                "| | {mode} | {verb} | {:.2} | {agent} |",
                calls.plugin_cpu * 1000.0
            );
        }
    }
    if args.timings {
        for (mode, r) in &modes {
            for (verb, calls) in [("ADD", &r.add), ("DEL", &r.del)] {
                out.push('\n');
                let _ = writeln!(out, "{} {mode} {verb}: felix-cni's steps (ms)", args.label);
                let _ = writeln!(out, "| step | p50 | p90 | p99 | mean |");
                let _ = writeln!(out, "| --- | --- | --- | --- | --- |");
                for name in &calls.order {
                    let mut values = calls.steps.get(name).cloned().unwrap_or_default();
                    values.sort_by(f64::total_cmp);
                    let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
                    let _ = writeln!(
                        out,
                        "| {name} | {:.2} | {:.2} | {:.2} | {mean:.2} |",
                        rank(&values, 50),
                        rank(&values, 90),
                        rank(&values, 99)
                    );
                }
            }
        }
    }
    match &args.details {
        Some(path) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(format!("\n{out}").as_bytes()))
            .with_context(|| format!("{}", path.display()))?,
        None => print!("\n{out}"),
    }
    Ok(())
}

/// The nearest-rank percentile of sorted values.
fn rank(sorted: &[f64], p: usize) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let r = (p * sorted.len()).div_ceil(100).max(1);
    sorted[r - 1]
}

/// CPU seconds (user + system) from /proc/PID/stat: the process's own
/// (fields 14, 15) or its reaped children's (16, 17).
fn cpu_seconds(pid: &str, children: bool) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; count after its ')'.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3.
    let first = if children { 16 - 3 } else { 14 - 3 };
    let mut ticks = 0u64;
    for field in &fields[first..first + 2] {
        ticks += field.parse::<u64>()?;
    }
    let hz = 100.0; // USER_HZ, fixed at 100 in the Linux ABI
    Ok(ticks as f64 / hz)
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
        add: Calls::default(),
        del: Calls::default(),
    };
    for command in ["ADD", "DEL"] {
        let next = Mutex::new(0usize);
        let times = Mutex::new(Vec::new());
        let reports = Mutex::new(Vec::new());
        let failure = Mutex::new(None);
        let plugin_cpu_before = cpu_seconds("self", true)?;
        let agent_pid = args.agent_pid.map(|p| p.to_string());
        let agent_cpu_before = agent_pid
            .as_deref()
            .map(|p| cpu_seconds(p, false))
            .transpose()?;
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
                        Ok((t, report)) => {
                            times.lock().unwrap_or_else(|e| e.into_inner()).push(t);
                            if let Some(report) = report {
                                reports
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .push(report);
                            }
                        }
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
        let latency = times.into_inner().unwrap_or_else(|e| e.into_inner());
        let n = latency.len().max(1) as f64;
        let mut calls = Calls {
            plugin_cpu: (cpu_seconds("self", true)? - plugin_cpu_before) / n,
            agent_cpu: match (agent_pid.as_deref(), agent_cpu_before) {
                (Some(pid), Some(before)) => Some((cpu_seconds(pid, false)? - before) / n),
                _ => None,
            },
            latency,
            ..Calls::default()
        };
        for report in reports.into_inner().unwrap_or_else(|e| e.into_inner()) {
            for (name, value) in report {
                if !calls.steps.contains_key(&name) {
                    calls.order.push(name.clone());
                }
                calls.steps.entry(name).or_default().push(value);
            }
        }
        match command {
            "ADD" => result.add = calls,
            _ => result.del = calls,
        }
    }
    Ok(result)
}

/// A step report: (step, ms), as felix-cni printed it.
type Report = Vec<(String, f64)>;

/// One plugin run, timed from spawn to exit, with felix-cni's step report
/// when `--timings` asked for one.
fn call(
    args: &Args,
    conf: &[u8],
    command: &str,
    id: &str,
    pod: &str,
) -> anyhow::Result<(Duration, Option<Report>)> {
    let mut command_line = Command::new(&args.plugin);
    command_line.env_clear();
    if args.timings {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
        command_line.env(felix_cni::timings::ENV, now.to_string());
    }
    let started = Instant::now();
    let mut child = command_line
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
    let report = String::from_utf8_lossy(&out.stderr)
        .lines()
        .find_map(felix_cni::timings::parse_line)
        .map(|mut report| {
            report.push(("spawn to exit".to_owned(), ms(elapsed)));
            report
        });
    Ok((elapsed, report))
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
