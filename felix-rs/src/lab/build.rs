//! Making and removing a lab: namespaces and links through `ip`, agents
//! as detached `felix node run` processes, pods through the `felix-cni`
//! binary, and the ping matrix.

use super::plan::{
    LabEncapsulation, LabPlan, NodePlan, Tor, UnderlayHost, CLUSTER_AS, ETCD_CLIENT_PORT, POD_POOL,
    POD_POOL_V6, TOR_AS, UNDERLAY_V6_LEN,
};
use super::state::{state_dir, LabPod, LabProcess, LabState};
use super::tor;
use crate::agent::status::{self, AgentStatus};
use std::fmt::Write as _;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Why a lab step failed.
#[derive(Debug, Error)]
pub enum LabError {
    #[error("lab {prefix:?} exists already ({dir}); run `felix lab down --prefix {prefix}` first")]
    Exists { prefix: String, dir: PathBuf },
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Plan(#[from] super::plan::PlanError),
    #[error("{0}")]
    NotReady(String),
    #[error("{0}")]
    Unsupported(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
    let what = what.into();
    move |source| LabError::Io { what, source }
}

/// Runs a command, returns its stdout; a failure carries its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String, LabError> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(io(format!("running {program}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(LabError::Command {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn ip(args: &[&str]) -> Result<String, LabError> {
    run("ip", args)
}

fn in_ns(ns: &str, args: &[&str]) -> Result<String, LabError> {
    let mut all = vec!["netns", "exec", ns];
    all.extend_from_slice(args);
    ip(&all)
}

/// The binaries the lab runs.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub felix: PathBuf,
    pub cni: PathBuf,
}

impl Binaries {
    /// `felix` is this executable; `felix-cni` lies next to it.
    pub fn beside_current_exe() -> Result<Binaries, LabError> {
        let felix = std::env::current_exe().map_err(io("locating the felix binary"))?;
        let cni = felix.with_file_name("felix-cni");
        Ok(Binaries { felix, cni })
    }
}

/// A lab being built: the plan, where its files go, what is made so far.
struct Builder<'a> {
    plan: &'a LabPlan,
    dir: PathBuf,
    state: LabState,
    bins: &'a Binaries,
}

impl Builder<'_> {
    fn save(&self) -> Result<(), LabError> {
        self.state
            .save(&self.dir)
            .map_err(io("writing the lab state"))
    }

    fn netns(&mut self, name: &str) -> Result<(), LabError> {
        // Recorded first: a namespace half made is still swept.
        self.state.namespaces.push(name.to_string());
        self.save()?;
        ip(&["netns", "add", name])?;
        in_ns(name, &["ip", "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// A veth from the lab namespace's bridge `bridge` to `eth0` in `ns`.
    fn underlay_link(&self, lab_link: &str, ns: &str, bridge: &str) -> Result<(), LabError> {
        let lab = &self.plan.lab_netns;
        ip(&[
            "link", "add", lab_link, "netns", lab, "type", "veth", "peer", "name", "eth0", "netns",
            ns,
        ])?;
        ip(&["-n", lab, "link", "set", lab_link, "master", bridge, "up"])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        Ok(())
    }

    /// A namespace with one address on subnet 0 (route reflector, ToR,
    /// etcd), its default route via the lab router.
    fn underlay_host(&mut self, h: &UnderlayHost) -> Result<(), LabError> {
        self.netns(&h.netns)?;
        self.underlay_link(&h.lab_link, &h.netns, "br0")?;
        let addr = format!("{}/24", h.address);
        ip(&["-n", &h.netns, "addr", "add", &addr, "dev", "eth0"])?;
        ip(&[
            "-n",
            &h.netns,
            "route",
            "add",
            "default",
            "via",
            "10.0.0.254",
        ])?;
        if let Some(v6) = h.address_v6 {
            let addr = format!("{v6}/{UNDERLAY_V6_LEN}");
            ip(&["-n", &h.netns, "addr", "add", &addr, "dev", "eth0", "nodad"])?;
        }
        Ok(())
    }

    fn spawn(
        &mut self,
        ns: &str,
        what: &str,
        log: &Path,
        program: &Path,
        args: &[&str],
    ) -> Result<u32, LabError> {
        let process = spawn_detached(ns, what, log, program, args)?;
        let pid = process.pid;
        self.state.processes.push(process);
        self.save()?;
        Ok(pid)
    }
}

/// Starts `program` in namespace `ns`, in its own process group, output
/// appended to `log`.
fn spawn_detached(
    ns: &str,
    what: &str,
    log: &Path,
    program: &Path,
    args: &[&str],
) -> Result<LabProcess, LabError> {
    let logfile = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io(format!("creating {}", log.display())))?;
    let errfile = logfile.try_clone().map_err(io("log file"))?;
    // `ip netns exec` execs the program: the pid is the program's.
    let child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(logfile)
        .stderr(errfile)
        .process_group(0)
        .spawn()
        .map_err(io(format!("starting {what}")))?;
    let marker = program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(LabProcess {
        pid: child.id(),
        what: what.to_string(),
        cmdline_contains: marker,
    })
}

fn agent_toml(plan: &LabPlan, node: &NodePlan, dir: &Path) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "node_name = \"{}\"", node.name);
    let _ = writeln!(t, "node_address = \"{}/{}\"", node.address, node.prefix_len);
    if let Some(v6) = node.address_v6 {
        // node-1 detects its IPv6 address (the global address of the
        // interface holding the IPv6 default route); the others are
        // configured with it: both ways run in every dual-stack lab.
        if node.name == "node-1" {
            let _ = writeln!(t, "node_address_v6 = \"autodetect\"");
        } else {
            let _ = writeln!(t, "node_address_v6 = \"{v6}/{UNDERLAY_V6_LEN}\"");
        }
    }
    let _ = writeln!(t, "datastore = \"{}\"", plan.datastore_url(dir));
    let _ = writeln!(
        t,
        "control_socket = \"{}\"",
        dir.join(format!("{}.sock", node.name)).display()
    );
    let _ = writeln!(
        t,
        "pod_api_socket = \"{}\"",
        dir.join(format!("{}-pod-api.sock", node.name)).display()
    );
    let _ = writeln!(t, "http_listen = \"{}:9099\"", node.address);
    let _ = writeln!(t, "resync_seconds = 30");
    let _ = writeln!(t, "labels = {{ subnet = \"s{}\" }}", node.subnet);
    let _ = writeln!(t, "\n[bgp]");
    let _ = writeln!(t, "asNumber = {CLUSTER_AS}");
    let _ = writeln!(
        t,
        "nodeToNodeMeshEnabled = {}",
        plan.route_reflector.is_none()
    );
    if let Some(rr) = &plan.route_reflector {
        let _ = writeln!(t, "\n[[bgp_peers]]\nname = \"route-reflector\"");
        let _ = writeln!(t, "peerIP = \"{}\"\nasNumber = {CLUSTER_AS}", rr.address);
    }
    if let Some(tor) = &plan.tor {
        let _ = writeln!(t, "\n[[bgp_peers]]\nname = \"tor\"");
        let _ = writeln!(t, "peerIP = \"{}\"\nasNumber = {TOR_AS}", tor.address);
        if let Some(v6) = tor.address_v6 {
            let _ = writeln!(t, "\n[[bgp_peers]]\nname = \"tor-v6\"");
            let _ = writeln!(t, "peerIP = \"{v6}\"\nasNumber = {TOR_AS}");
        }
    }
    t
}

/// Builds the lab; progress lines go to `out`. On failure the lab is left
/// as far as it got (recorded): `felix lab down` removes it.
pub fn up(plan: &LabPlan, bins: &Binaries, out: &mut dyn Write) -> Result<LabState, LabError> {
    let dir = state_dir(&plan.options.prefix);
    if dir.join("state.json").exists() {
        return Err(LabError::Exists {
            prefix: plan.options.prefix.clone(),
            dir,
        });
    }
    if !bins.felix.exists() {
        return Err(LabError::Unsupported(format!(
            "{} not found",
            bins.felix.display()
        )));
    }
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    let mut b = Builder {
        plan,
        dir: dir.clone(),
        state: LabState {
            prefix: plan.options.prefix.clone(),
            options: serde_json::to_value(&plan.options).unwrap_or_default(),
            ..Default::default()
        },
        bins,
    };
    b.save()?;
    let say = |out: &mut dyn Write, line: String| {
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };

    // The underlay: bridges in the lab namespace, which routes between them.
    let lab = plan.lab_netns.clone();
    b.netns(&lab)?;
    for k in 0..plan.options.subnets {
        let br = format!("br{k}");
        ip(&["-n", &lab, "link", "add", &br, "type", "bridge"])?;
        ip(&[
            "-n",
            &lab,
            "addr",
            "add",
            &format!("10.0.{k}.254/24"),
            "dev",
            &br,
        ])?;
        if plan.options.dual_stack {
            let gw = format!("{}/{UNDERLAY_V6_LEN}", LabPlan::gateway_v6(k));
            ip(&["-n", &lab, "addr", "add", &gw, "dev", &br, "nodad"])?;
        }
        ip(&["-n", &lab, "link", "set", &br, "up"])?;
    }
    in_ns(&lab, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    if plan.options.dual_stack {
        in_ns(&lab, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])?;
    }
    say(
        out,
        format!(
            "underlay: {} bridge(s) in namespace {lab}",
            plan.options.subnets
        ),
    );

    for node in &plan.nodes {
        b.netns(&node.netns)?;
        b.underlay_link(&node.lab_link, &node.netns, &format!("br{}", node.subnet))?;
        let addr = format!("{}/{}", node.address, node.prefix_len);
        ip(&["-n", &node.netns, "addr", "add", &addr, "dev", "eth0"])?;
        ip(&[
            "-n",
            &node.netns,
            "route",
            "add",
            "default",
            "via",
            &node.gateway.to_string(),
        ])?;
        in_ns(&node.netns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        if let Some(v6) = node.address_v6 {
            // Without DAD the address is usable at once (the lab's
            // addresses are unique by plan); the node forwards IPv6 to its
            // pods and, from the lab router, answers as a router.
            let addr = format!("{v6}/{UNDERLAY_V6_LEN}");
            ip(&[
                "-n",
                &node.netns,
                "addr",
                "add",
                &addr,
                "dev",
                "eth0",
                "nodad",
            ])?;
            let gw = LabPlan::gateway_v6(node.subnet).to_string();
            ip(&[
                "-n",
                &node.netns,
                "-6",
                "route",
                "add",
                "default",
                "via",
                &gw,
            ])?;
            in_ns(
                &node.netns,
                &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"],
            )?;
        }
    }
    say(
        out,
        format!("nodes: {} namespaces on the underlay", plan.nodes.len()),
    );

    if let Some(etcd) = &plan.etcd {
        b.underlay_host(etcd)?;
        start_etcd(&mut b, etcd)?;
        say(
            out,
            format!(
                "datastore: etcd in {} at {} (data in {})",
                etcd.netns,
                etcd.address,
                dir.join("etcd").display()
            ),
        );
    }

    if let Some(rr) = &plan.route_reflector {
        b.underlay_host(rr)?;
        let mut args: Vec<String> = vec![
            "bgp".into(),
            "run".into(),
            "--asn".into(),
            CLUSTER_AS.to_string(),
            "--router-id".into(),
            rr.address.to_string(),
            "--listen".into(),
            rr.address.to_string(),
            "--control-socket".into(),
            dir.join("rr.sock").display().to_string(),
        ];
        // The nodes as dynamic clients from their subnets (Calico's RRs
        // accept their clients the same way): the reflector never dials a
        // node, so a node whose first connection came before the
        // reflector listened is answered at its next attempt, and a
        // reflector session is never refused while the reflector waits
        // out a ConnectRetry backoff towards a node not yet listening.
        for k in 0..plan.options.subnets {
            args.push("--listen-range".into());
            args.push(format!("10.0.{k}.0/24:{CLUSTER_AS}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let ns = rr.netns.clone();
        let felix = bins.felix.clone();
        b.spawn(&ns, "route reflector", &dir.join("rr.log"), &felix, &args)?;
        say(
            out,
            format!("route reflector: felix bgp run in {ns} at {}", rr.address),
        );
    }

    if let (Some(tor), Some(kind)) = (&plan.tor, plan.options.tor) {
        b.underlay_host(tor)?;
        start_tor(&mut b, tor, kind)?;
        say(
            out,
            format!(
                "ToR: {} in {} at {}, AS {TOR_AS}",
                match kind {
                    Tor::Bird => "BIRD 2",
                    Tor::Gobgp => "GoBGP",
                    Tor::Frr => "FRR bgpd",
                },
                tor.netns,
                tor.address
            ),
        );
    }

    create_pool(plan, &dir).map_err(|e| match &plan.etcd {
        Some(_) => LabError::NotReady(format!(
            "{e}\netcd's log:\n{}",
            std::fs::read_to_string(dir.join("etcd.log")).unwrap_or_default()
        )),
        None => e,
    })?;
    for node in &plan.nodes {
        let cfg = dir.join(format!("{}.toml", node.name));
        std::fs::write(&cfg, agent_toml(plan, node, &dir)).map_err(io("writing agent config"))?;
        let cfg_s = cfg.display().to_string();
        let felix = bins.felix.clone();
        b.spawn(
            &node.netns,
            &format!("agent {}", node.name),
            &dir.join(format!("{}.log", node.name)),
            &felix,
            &["node", "run", "--config", &cfg_s],
        )?;
        b.state
            .control_sockets
            .push((node.name.clone(), dir.join(format!("{}.sock", node.name))));
        b.save()?;
    }
    say(
        out,
        format!(
            "agents: {} `felix node run` started (logs in {})",
            plan.nodes.len(),
            dir.display()
        ),
    );

    let deadline = Instant::now() + Duration::from_secs(60);
    // Each node's sessions: the mesh (or the reflector), and the ToR.
    // With dual stack the mesh has an IPv6 session to every node as well.
    let families = if plan.options.dual_stack { 2 } else { 1 };
    let peers = if plan.route_reflector.is_some() {
        1
    } else {
        (plan.nodes.len() - 1) * families
    } + plan
        .tor
        .as_ref()
        .map_or(0, |t| 1 + usize::from(t.address_v6.is_some()));
    wait_ready(&b.state, peers, deadline)?;
    say(out, "agents: every BGP session Established".into());

    let pods = create_pods(&mut b, out)?;
    if !pods.is_empty() {
        wait_routes(&b.state, deadline)?;
    }
    b.state.complete = true;
    b.save()?;
    Ok(b.state)
}

/// Waits until every agent answers ready.
fn wait_ready(state: &LabState, peers: usize, deadline: Instant) -> Result<(), LabError> {
    loop {
        let mut waiting = Vec::new();
        for (node, sock) in &state.control_sockets {
            match status::query(sock) {
                Ok(s) if s.ready && s.peers.len() >= peers => {}
                Ok(s) => waiting.push(format!("{node}: {}", summary(&s))),
                Err(e) => waiting.push(format!("{node}: {e}")),
            }
        }
        if waiting.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(LabError::NotReady(format!(
                "agents not ready in time (see the logs next to the state file):\n  {}",
                waiting.join("\n  ")
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until every agent covers every pod: its own pods' addresses in
/// its own blocks, every other pod's address in a learned route, all of
/// them programmed (a blackhole per own block, a route per learned one)
/// into its kernel. Only then can the ping matrix expect answers. (Counting
/// blocks is not enough: an agent that has not yet seen its own block's
/// affinity would count as done.)
fn wait_routes(state: &LabState, deadline: Instant) -> Result<(), LabError> {
    let pods: Vec<(String, std::net::IpAddr)> = state
        .pods
        .iter()
        .flat_map(|p| {
            std::iter::once(&p.address)
                .chain(&p.address_v6)
                .map(move |a| (p, a))
        })
        .filter_map(|(p, a)| Some((p.node.clone(), a.parse().ok()?)))
        .collect();
    loop {
        let mut waiting = Vec::new();
        for (node, sock) in &state.control_sockets {
            let s = match status::query(sock) {
                Ok(s) => s,
                Err(e) => {
                    waiting.push(format!("{node}: {e}"));
                    continue;
                }
            };
            let uncovered = pods.iter().find(|(owner, addr)| {
                if owner == node {
                    !s.blocks.iter().any(|b| b.contains(addr))
                } else {
                    !s.routes.keys().any(|r| r.contains(addr))
                }
            });
            if let Some((owner, addr)) = uncovered {
                waiting.push(format!("{node}: no block or route for {addr} (on {owner})"));
            } else if s.routes_programmed != Some(s.routes.len() + s.blocks.len()) {
                waiting.push(format!(
                    "{node}: {:?} of {} routes programmed",
                    s.routes_programmed,
                    s.routes.len() + s.blocks.len()
                ));
            }
        }
        if waiting.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(LabError::NotReady(format!(
                "not every node routes to every pod in time:\n  {}",
                waiting.join("\n  ")
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One line about an agent.
pub fn summary(s: &AgentStatus) -> String {
    let up = s.peers.iter().filter(|p| p.state == "Established").count();
    format!(
        "{} peers {up}/{} Established, {} blocks, {} routes{}",
        if s.ready { "ready" } else { "not ready" },
        s.peers.len(),
        s.blocks.len(),
        s.routes.len(),
        s.last_errors
            .last()
            .map(|e| format!(", last error: {e}"))
            .unwrap_or_default()
    )
}

/// Creates the IP pool (VXLAN or IPIP CrossSubnet with two subnets) in the
/// lab's datastore, before the agents start. An etcd lives in the lab's
/// namespaces, so the pool is written from a thread inside the lab
/// router's namespace, retried while etcd is still starting.
fn create_pool(plan: &LabPlan, dir: &Path) -> Result<(), LabError> {
    let url = plan.datastore_url(dir);
    let cidr: ipnet::IpNet = POD_POOL
        .parse()
        .map_err(|e| LabError::Unsupported(format!("{POD_POOL}: {e}")))?;
    let mut spec = ipam::pool::IpPoolSpec::new(cidr);
    if plan.options.subnets > 1 {
        match plan.options.encapsulation {
            LabEncapsulation::Vxlan => spec.vxlan_mode = ipam::pool::EncapMode::CrossSubnet,
            LabEncapsulation::Ipip => spec.ipip_mode = ipam::pool::EncapMode::CrossSubnet,
        }
    }
    let v6_spec = match plan.options.dual_stack {
        true => {
            Some(ipam::pool::IpPoolSpec::new(POD_POOL_V6.parse().map_err(
                |e| LabError::Unsupported(format!("{POD_POOL_V6}: {e}")),
            )?))
        }
        false => None,
    };
    let attempt = move || -> Result<(), String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("starting a runtime: {e}"))?;
        rt.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let result = async {
                    let store = ipam::store::open(&url)
                        .await
                        .map_err(|e| format!("datastore {url}: {e}"))?;
                    let allocator = ipam::Allocator::new(store, ipam::AllocatorConfig::default());
                    allocator
                        .create_pool("lab-pool", spec.clone())
                        .await
                        .map_err(|e| format!("creating pool {POD_POOL} in {url}: {e}"))?;
                    if let Some(v6) = &v6_spec {
                        allocator
                            .create_pool("lab-pool-v6", v6.clone())
                            .await
                            .map_err(|e| format!("creating pool {POD_POOL_V6} in {url}: {e}"))?;
                    }
                    Ok::<(), String>(())
                }
                .await;
                match result {
                    Ok(_) => return Ok(()),
                    Err(e) if Instant::now() > deadline => return Err(e),
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        })
    };
    let result = if plan.etcd.is_some() {
        in_netns(&plan.lab_netns, attempt)?
    } else {
        attempt()
    };
    result.map_err(LabError::NotReady)
}

/// Runs `f` on a thread of its own that has entered network namespace
/// `ns` (`setns(2)` changes only the calling thread; sockets made there
/// stay in `ns`). The lab uses it to reach services on the underlay.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, LabError> {
    let path = format!("/var/run/netns/{ns}");
    let file = std::fs::File::open(&path).map_err(io(format!("opening {path}")))?;
    let what = format!("entering namespace {ns}");
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::from)?;
        Ok(f())
    })
    .join()
    .map_err(|_| LabError::NotReady(format!("{what}: the thread panicked")))?
    .map_err(io(what))
}

/// Starts etcd in its namespace, data in `DIR/etcd` (removed by `down`
/// with the state directory). It listens on the underlay for the agents
/// and on the namespace's loopback for its own peer port.
fn start_etcd(b: &mut Builder<'_>, etcd: &UnderlayHost) -> Result<(), LabError> {
    let data = b.dir.join("etcd");
    std::fs::create_dir_all(&data).map_err(io(format!("creating {}", data.display())))?;
    let client = format!("http://{}:{ETCD_CLIENT_PORT}", etcd.address);
    let peer = "http://127.0.0.1:2380";
    let args = [
        "--name=lab".to_string(),
        format!("--data-dir={}", data.display()),
        format!("--listen-client-urls={client},http://127.0.0.1:{ETCD_CLIENT_PORT}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster=lab={peer}"),
        "--log-level=warn".to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let log = b.dir.join("etcd.log");
    let ns = etcd.netns.clone();
    b.spawn(&ns, "etcd", &log, Path::new("etcd"), &args)?;
    Ok(())
}

/// Writes the ToR daemon's configuration, starts it, and waits until its
/// own CLI answers (so that a daemon refusing its configuration is an
/// error here, with its log, and not a session that never comes up).
fn start_tor(b: &mut Builder<'_>, host: &UnderlayHost, kind: Tor) -> Result<(), LabError> {
    let dir = b.dir.clone();
    let nodes = &b.plan.nodes;
    let ns = host.netns.clone();
    let log = dir.join("tor.log");
    match kind {
        Tor::Bird => {
            let conf = dir.join("bird.conf");
            std::fs::write(&conf, tor::bird_conf(host, nodes)).map_err(io("writing bird.conf"))?;
            let pidfile = dir.join("bird.pid");
            // BIRD daemonises; its pid comes from its pid file.
            in_ns(
                &ns,
                &[
                    "bird",
                    "-c",
                    &conf.display().to_string(),
                    "-s",
                    &dir.join("bird.ctl").display().to_string(),
                    "-P",
                    &pidfile.display().to_string(),
                ],
            )?;
            let deadline = Instant::now() + Duration::from_secs(5);
            let pid = loop {
                let pid = std::fs::read_to_string(&pidfile)
                    .ok()
                    .and_then(|p| p.trim().parse().ok());
                match pid {
                    Some(pid) => break pid,
                    None if Instant::now() > deadline => {
                        return Err(LabError::NotReady(format!(
                            "bird wrote no pid file {}",
                            pidfile.display()
                        )))
                    }
                    None => std::thread::sleep(Duration::from_millis(50)),
                }
            };
            b.state.processes.push(LabProcess {
                pid,
                what: "ToR bird".into(),
                cmdline_contains: "bird".into(),
            });
            b.save()?;
        }
        Tor::Gobgp => {
            let conf = dir.join("gobgpd.toml");
            std::fs::write(&conf, tor::gobgp_conf(host, nodes))
                .map_err(io("writing gobgpd.toml"))?;
            let api = format!("127.0.0.1:{}", tor::GOBGP_API_PORT);
            let conf_s = conf.display().to_string();
            b.spawn(
                &ns,
                "ToR gobgpd",
                &log,
                Path::new("gobgpd"),
                &["-f", &conf_s, "--api-hosts", &api, "--pprof-disable"],
            )?;
        }
        Tor::Frr => {
            // bgpd alone (no zebra: -Z, no kernel routes: -n) as user frr,
            // which must own its directory (RECIPES.md).
            let frr = dir.join("frr");
            std::fs::create_dir_all(&frr).map_err(io(format!("creating {}", frr.display())))?;
            let conf = frr.join("bgpd.conf");
            std::fs::write(&conf, tor::frr_conf(host, nodes, &frr.join("bgpd.log")))
                .map_err(io("writing bgpd.conf"))?;
            run("chown", &["-R", "frr:frr", &frr.display().to_string()])?;
            let s = |p: &Path| p.display().to_string();
            let args = [
                "-f".to_string(),
                s(&conf),
                "-i".into(),
                s(&frr.join("bgpd.pid")),
                "-z".into(),
                s(&frr.join("zserv.api")),
                "--vty_socket".into(),
                s(&frr),
                "-Z".into(),
                "-n".into(),
                "-u".into(),
                "frr".into(),
                "-g".into(),
                "frr".into(),
            ];
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            b.spawn(&ns, "ToR bgpd", &log, Path::new(tor::FRR_BGPD), &args)?;
        }
    }
    let command = tor::sessions_command(kind, &dir);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let args: Vec<&str> = command.iter().map(String::as_str).collect();
        match in_ns(&ns, &args) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(LabError::NotReady(format!(
                    "the ToR daemon does not answer: {e}\n{log}"
                )));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The lab's ToR RIB, read with the daemon's own CLI in its namespace.
pub fn tor_rib(prefix: &str, kind: Tor) -> Result<tor::TorRib, LabError> {
    let dir = state_dir(prefix);
    let command = tor::rib_command(kind, &dir);
    let mut args = vec!["netns", "exec"];
    let ns = format!("{prefix}-tor");
    args.push(&ns);
    args.extend(command.iter().map(String::as_str));
    let text = ip(&args)?;
    tor::parse_rib(kind, &text).map_err(|e| LabError::NotReady(e.to_string()))
}

/// Creates every pod: a namespace, then `felix-cni ADD` run in the node's
/// namespace (as kubelet's runtime would), talking to the node's agent.
fn create_pods(b: &mut Builder<'_>, out: &mut dyn Write) -> Result<Vec<LabPod>, LabError> {
    let cni = b.bins.cni.clone();
    if !cni.exists() {
        return Err(LabError::Unsupported(format!(
            "{} not found (cargo build -p felix-cni)",
            cni.display()
        )));
    }
    let mut made = Vec::new();
    for node in &b.plan.nodes {
        let socket = b.dir.join(format!("{}-pod-api.sock", node.name));
        for pod in &node.pods {
            b.netns(&pod.netns)?;
            let addresses = felix_cni_addresses(
                &cni,
                &CniCall {
                    command: "ADD",
                    node_netns: &node.netns,
                    agent_socket: &socket,
                    container_id: &pod.container_id,
                    pod_netns: &pod.netns,
                    pod_name: &pod.name,
                },
                b.plan.options.dual_stack,
            )?;
            let of = |v6: bool| addresses.iter().find(|a| a.contains(':') == v6).cloned();
            let p = LabPod {
                name: pod.name.clone(),
                node: node.name.clone(),
                netns: pod.netns.clone(),
                address: of(false).unwrap_or_default(),
                address_v6: of(true),
            };
            b.state.pods.push(p.clone());
            b.save()?;
            made.push(p);
        }
    }
    let _ = writeln!(
        out,
        "pods: {} created through felix-cni (addresses from the nodes' blocks)",
        made.len()
    );
    Ok(made)
}

/// One `felix-cni` invocation, run in the node's namespace as kubelet's
/// runtime would.
#[derive(Clone, Copy, Debug)]
pub struct CniCall<'a> {
    /// `ADD`, `DEL` or `CHECK`.
    pub command: &'a str,
    pub node_netns: &'a str,
    /// The node agent's pod API socket.
    pub agent_socket: &'a Path,
    pub container_id: &'a str,
    pub pod_netns: &'a str,
    pub pod_name: &'a str,
}

/// Runs the real `felix-cni` binary; for ADD, the pod's (IPv4) address.
pub fn felix_cni(cni: &Path, call: &CniCall<'_>) -> Result<Option<String>, LabError> {
    Ok(felix_cni_addresses(cni, call, false)?.into_iter().next())
}

/// Runs the real `felix-cni` binary, asking for an IPv6 address too when
/// `dual_stack` (`assign_ipv6`); for ADD, every address of the result
/// (none for the other commands).
pub fn felix_cni_addresses(
    cni: &Path,
    call: &CniCall<'_>,
    dual_stack: bool,
) -> Result<Vec<String>, LabError> {
    let mut conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "felix-lab",
        "type": "felix-cni",
        "mtu": 1450,
        "agent_socket": call.agent_socket.display().to_string(),
    });
    if dual_stack {
        conf["assign_ipv6"] = serde_json::Value::Bool(true);
    }
    let cni_dir = cni.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut child = Command::new("ip")
        .args(["netns", "exec", call.node_netns])
        .arg(cni)
        .env("CNI_COMMAND", call.command)
        .env("CNI_CONTAINERID", call.container_id)
        .env("CNI_NETNS", format!("/var/run/netns/{}", call.pod_netns))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", &cni_dir)
        .env(
            "CNI_ARGS",
            format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME={}", call.pod_name),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io("running felix-cni"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(conf.to_string().as_bytes())
            .map_err(io("writing to felix-cni"))?;
    }
    let output = child.wait_with_output().map_err(io("running felix-cni"))?;
    let failed = || LabError::Command {
        command: format!(
            "felix-cni {} {} in {}",
            call.command, call.pod_name, call.node_netns
        ),
        stderr: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    };
    if !output.status.success() {
        return Err(failed());
    }
    if call.command != "ADD" {
        return Ok(Vec::new());
    }
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    let addresses: Vec<String> = result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .filter_map(|a| a.split('/').next())
        .map(str::to_string)
        .collect();
    if addresses.is_empty() {
        return Err(failed());
    }
    Ok(addresses)
}

/// The plan a lab was built from (its options are in its state).
pub fn plan_of(state: &LabState) -> Result<LabPlan, LabError> {
    let options: super::plan::LabOptions = serde_json::from_value(state.options.clone())
        .map_err(|e| LabError::Unsupported(format!("lab state options: {e}")))?;
    Ok(LabPlan::new(options)?)
}

fn load_state(prefix: &str) -> Result<(PathBuf, LabState), LabError> {
    let dir = state_dir(prefix);
    let state = LabState::load(&dir)
        .map_err(io(format!("reading {}", dir.display())))?
        .ok_or_else(|| LabError::Unsupported(format!("no lab {prefix:?}")))?;
    Ok((dir, state))
}

/// Stops node `node`'s agent with `signal` (SIGTERM: the agent's own
/// stop; SIGKILL: a crash) and waits until it is gone; the lab keeps its
/// kernel routes and datastore objects.
pub fn stop_agent(
    prefix: &str,
    node: &str,
    signal: nix::sys::signal::Signal,
) -> Result<(), LabError> {
    use nix::sys::signal::kill;
    use nix::unistd::Pid;
    let (dir, mut state) = load_state(prefix)?;
    let what = format!("agent {node}");
    let Some(i) = state.processes.iter().position(|p| p.what == what) else {
        return Err(LabError::Unsupported(format!("{what}: not running")));
    };
    let p = state.processes.remove(i);
    if cmdline(p.pid).is_some_and(|c| c.contains(&p.cmdline_contains)) {
        if let Ok(pid) = i32::try_from(p.pid) {
            let _ = kill(Pid::from_raw(pid), signal);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while is_running(p.pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if is_running(p.pid) {
            return Err(LabError::NotReady(format!(
                "{what} (pid {}) did not stop",
                p.pid
            )));
        }
    }
    state.save(&dir).map_err(io("writing the lab state"))
}

/// Starts node `node`'s agent again with its configuration file (log
/// appended); returns its pid.
pub fn start_agent(prefix: &str, node: &str, felix: &Path) -> Result<u32, LabError> {
    let (dir, mut state) = load_state(prefix)?;
    let plan = plan_of(&state)?;
    let Some(n) = plan.nodes.iter().find(|n| n.name == node) else {
        return Err(LabError::Unsupported(format!(
            "no node {node} in lab {prefix}"
        )));
    };
    let cfg = dir.join(format!("{node}.toml")).display().to_string();
    let process = spawn_detached(
        &n.netns,
        &format!("agent {node}"),
        &dir.join(format!("{node}.log")),
        felix,
        &["node", "run", "--config", &cfg],
    )?;
    let pid = process.pid;
    state.processes.push(process);
    state.save(&dir).map_err(io("writing the lab state"))?;
    Ok(pid)
}

/// Alive and not a zombie.
fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// Which addresses a ping matrix uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PingFamily {
    V4,
    V6,
}

impl PingFamily {
    pub fn name(self) -> &'static str {
        match self {
            PingFamily::V4 => "IPv4",
            PingFamily::V6 => "IPv6",
        }
    }
}

/// The pods with an address of `family`, each with that address as its
/// `address` (what [`ping_matrix`] pings and [`render_matrix`] shows).
pub fn pods_of_family(pods: &[LabPod], family: PingFamily) -> Vec<LabPod> {
    pods.iter()
        .filter_map(|p| {
            let address = match family {
                PingFamily::V4 => Some(p.address.clone()).filter(|a| !a.is_empty()),
                PingFamily::V6 => p.address_v6.clone(),
            }?;
            Some(LabPod {
                address,
                ..p.clone()
            })
        })
        .collect()
}

/// Pings every pod from every other pod; the matrix as rows of booleans.
pub fn ping_matrix(pods: &[LabPod]) -> Vec<Vec<Option<bool>>> {
    let mut handles = Vec::new();
    for (i, src) in pods.iter().enumerate() {
        for (j, dst) in pods.iter().enumerate() {
            if i == j {
                continue;
            }
            let ns = src.netns.clone();
            let addr = dst.address.clone();
            handles.push((
                i,
                j,
                std::thread::spawn(move || {
                    // Three probes: a cell is `ok` when any is answered, so one packet lost
                    // to a neighbour entry still resolving does not fail the cell.
                    in_ns(
                        &ns,
                        &["ping", "-c", "3", "-i", "0.3", "-W", "1", "-q", &addr],
                    )
                    .is_ok()
                }),
            ));
        }
    }
    let mut m = vec![vec![None; pods.len()]; pods.len()];
    for (i, j, h) in handles {
        m[i][j] = Some(h.join().unwrap_or(false));
    }
    m
}

/// The ping matrix as a table: `ok`, `FAIL`, `-` on the diagonal.
pub fn render_matrix(pods: &[LabPod], m: &[Vec<Option<bool>>]) -> String {
    let w = pods.iter().map(|p| p.name.len()).max().unwrap_or(4).max(4);
    // IPv6 addresses are wider than IPv4's 15.
    let a = pods
        .iter()
        .map(|p| p.address.len())
        .max()
        .unwrap_or(15)
        .max(15);
    let mut o = String::new();
    let _ = write!(o, "{:<w$} {:<a$}", "from \\ to", "");
    for p in pods {
        let _ = write!(o, " {:>a$}", p.address);
    }
    o.push('\n');
    for (i, p) in pods.iter().enumerate() {
        let _ = write!(o, "{:<w$} {:<a$}", p.name, p.address);
        for cell in &m[i] {
            let c = match cell {
                None => "-",
                Some(true) => "ok",
                Some(false) => "FAIL",
            };
            let _ = write!(o, " {c:>a$}");
        }
        o.push('\n');
    }
    o
}

/// What `down` removed.
#[derive(Debug, Default)]
pub struct DownReport {
    pub processes: usize,
    pub namespaces: usize,
}

fn cmdline(pid: u32) -> Option<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
}

fn kill_and_wait(pids: &[u32]) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    // A zombie child of ours counts as gone.
    let alive = is_running;
    for &pid in pids {
        if let Ok(p) = i32::try_from(pid) {
            let _ = kill(Pid::from_raw(p), Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for &pid in pids {
        if alive(pid) {
            if let Ok(p) = i32::try_from(pid) {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
        }
    }
}

/// Removes lab `prefix`: the processes and namespaces its state lists,
/// then every namespace (and the processes in it) and root-namespace link
/// named `PREFIX-…`, then its state directory.
pub fn down(prefix: &str) -> Result<DownReport, LabError> {
    if !super::plan::valid_prefix(prefix) {
        return Err(LabError::Plan(super::plan::PlanError::Prefix(
            prefix.into(),
        )));
    }
    let dir = state_dir(prefix);
    let state = LabState::load(&dir).map_err(io(format!("reading {}", dir.display())))?;
    let mut report = DownReport::default();
    let mut pids: Vec<u32> = state
        .iter()
        .flat_map(|s| s.processes.iter())
        .filter(|p| cmdline(p.pid).is_some_and(|c| c.contains(&p.cmdline_contains)))
        .map(|p| p.pid)
        .collect();
    let mine = format!("{prefix}-");
    let listed = ip(&["netns", "list"])?;
    let mut namespaces: Vec<String> = listed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&mine))
        .map(str::to_string)
        .collect();
    for s in state.iter() {
        for n in &s.namespaces {
            if !namespaces.contains(n)
                && listed
                    .lines()
                    .any(|l| l.split_whitespace().next() == Some(n))
            {
                namespaces.push(n.clone());
            }
        }
    }
    for ns in &namespaces {
        if let Ok(out) = ip(&["netns", "pids", ns]) {
            pids.extend(out.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
    }
    pids.sort_unstable();
    pids.dedup();
    report.processes = pids.len();
    kill_and_wait(&pids);
    for ns in &namespaces {
        ip(&["netns", "del", ns])?;
        report.namespaces += 1;
    }
    if let Ok(links) = ip(&["-o", "link", "show"]) {
        for l in links.lines() {
            let name = l
                .split(':')
                .nth(1)
                .map(|n| n.trim().split('@').next().unwrap_or(""));
            if let Some(name) = name.filter(|n| n.starts_with(&mine)) {
                let _ = ip(&["link", "del", name]);
            }
        }
    }
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(format!("removing {}", dir.display()))(e)),
    }
    Ok(report)
}

/// `felix lab status`: the state and one line per agent.
pub fn status_text(prefix: &str) -> Result<String, LabError> {
    let dir = state_dir(prefix);
    let Some(state) = LabState::load(&dir).map_err(io(format!("reading {}", dir.display())))?
    else {
        return Ok(format!(
            "no lab {prefix:?} (no {})\n",
            dir.join("state.json").display()
        ));
    };
    let mut o = String::new();
    let _ = writeln!(
        o,
        "lab {prefix}: {} ({} namespaces, {} processes, {} pods) state in {}",
        if state.complete {
            "up"
        } else {
            "INCOMPLETE (run felix lab down)"
        },
        state.namespaces.len(),
        state.processes.len(),
        state.pods.len(),
        dir.display()
    );
    let _ = writeln!(o, "options: {}", state.options);
    for p in &state.processes {
        let alive = cmdline(p.pid).is_some_and(|c| c.contains(&p.cmdline_contains));
        let _ = writeln!(
            o,
            "  pid {:<8} {:<20} {}",
            p.pid,
            p.what,
            if alive { "running" } else { "GONE" }
        );
    }
    for (node, sock) in &state.control_sockets {
        let line = match status::query(sock) {
            Ok(s) => summary(&s),
            Err(e) => e.to_string(),
        };
        let _ = writeln!(o, "  {node:<10} {line}");
    }
    let rr = dir.join("rr.sock");
    if rr.exists() {
        let line = match crate::control::request_as::<bgp::speaker::SpeakerStatus>(
            &rr,
            &crate::control::Request::Status,
        ) {
            Ok(s) => {
                let up = s.peers.iter().filter(|p| p.state == "Established").count();
                let accepted: u64 = s.peers.iter().map(|p| p.accepted).sum();
                format!(
                    "{up}/{} clients Established, {accepted} prefixes accepted",
                    s.peers.len()
                )
            }
            Err(e) => e.to_string(),
        };
        let _ = writeln!(o, "  {:<10} {line}", "reflector");
    }
    let options: Option<super::plan::LabOptions> = serde_json::from_value(state.options).ok();
    if let Some(kind) = options.and_then(|o| o.tor) {
        let line = match tor_rib(prefix, kind) {
            Ok(rib) => format!("{kind:?} RIB holds {} prefixes", rib.len()),
            Err(e) => e.to_string(),
        };
        let _ = writeln!(o, "  {:<10} {line}", "ToR");
    }
    for p in &state.pods {
        let _ = writeln!(
            o,
            "  pod {:<16} {:<10} {} {}",
            p.name,
            p.node,
            p.address,
            p.address_v6.as_deref().unwrap_or("")
        );
    }
    let _ = writeln!(
        o,
        "per node: felix status --control-socket {}/NODE.sock",
        dir.display()
    );
    Ok(o)
}
