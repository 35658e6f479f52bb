//! What the plugin's integration tests share: network namespaces that
//! clean up after themselves, a "node" namespace with an uplink, the real
//! agent side (felix_rs::pod_api over the ipam Allocator on SQLite) served
//! in-process, and the real `felix-cni` / `felix-ipam` binaries run inside
//! the node namespace.
//!
//! Everything runs as root; names carry the test's pid so that parallel
//! runs do not collide; every namespace is removed by a Drop guard.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use felix_rs::pod_api::{PodApi, PodApiServer};
use ipam::store::sqlite::SqliteStore;
use ipam::{Allocator, AllocatorConfig};
use ipnet::IpNet;
use serde_json::Value;

pub const FELIX_CNI: &str = env!("CARGO_BIN_EXE_felix-cni");
pub const FELIX_IPAM: &str = env!("CARGO_BIN_EXE_felix-ipam");
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// Whether this process may make namespaces.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Runs a command; panics with its output when it fails.
pub fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace made by `ip netns add`, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("fxc{}-{tag}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh("ip", &["netns", "add", &name]);
        Netns { name }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.name))
    }

    /// Runs `ip -n NAME ARGS…`.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        sh("ip", &full)
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .unwrap()
    }

    /// Deletes it now (the drop then does nothing).
    pub fn delete(&mut self) {
        if !self.name.is_empty() {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .output();
            self.name.clear();
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.delete();
    }
}

/// The node's uplink address (RFC 5737 documentation range, never left
/// the node namespace: the uplink is a veth with both ends in it).
pub const NODE_ADDRESS: &str = "192.0.2.1";

/// A node: a namespace that forwards, with an uplink and a default route
/// (proxy ARP answers for 169.254.1.1 only when the node has a route to
/// it, which every real node's default route gives).
pub struct Node {
    pub ns: Netns,
}

impl Node {
    pub fn new(tag: &str) -> Node {
        let ns = Netns::new(tag);
        ns.ip(&["link", "set", "lo", "up"]);
        ns.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up1"]);
        ns.ip(&["link", "set", "up0", "up"]);
        ns.ip(&["link", "set", "up1", "up"]);
        ns.ip(&["addr", "add", &format!("{NODE_ADDRESS}/24"), "dev", "up0"]);
        ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            "192.0.2.254",
            "dev",
            "up0",
        ]);
        let out = ns.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        assert!(out.status.success());
        let out = ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        assert!(out.status.success());
        Node { ns }
    }

    /// The host-side veths felix made (`fx…`).
    pub fn felix_links(&self) -> Vec<String> {
        self.ns
            .ip(&["-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_owned())
            .filter(|n| n.starts_with("fx"))
            .collect()
    }

    /// The routes carrying felix's protocol number, both families.
    pub fn felix_routes(&self) -> Vec<String> {
        let proto = felix_cni::ROUTE_PROTOCOL.to_string();
        let mut routes: Vec<String> = self
            .ns
            .ip(&["-4", "route", "show", "proto", &proto])
            .lines()
            .map(str::to_owned)
            .collect();
        routes.extend(
            self.ns
                .ip(&["-6", "route", "show", "proto", &proto])
                .lines()
                .map(str::to_owned),
        );
        routes
    }
}

/// The agent side, served in-process on its own runtime.
pub struct Agent {
    pub runtime: tokio::runtime::Runtime,
    pub allocator: Arc<Allocator>,
    pub socket: PathBuf,
    pub node: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Agent {
    /// An agent for node `node-a` with one pool.
    pub fn start(pool: &str) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let db = dir.path().join("ipam.db");
        let allocator = runtime.block_on(async {
            let store = SqliteStore::open(&db).await.unwrap();
            let allocator = Arc::new(Allocator::new(Arc::new(store), AllocatorConfig::default()));
            allocator
                .create_pool(
                    "test-pool",
                    ipam::pool::IpPoolSpec::new(pool.parse().unwrap()),
                )
                .await
                .unwrap();
            allocator
        });
        let socket = dir.path().join("pod-api.sock");
        let mut agent = Agent {
            runtime,
            allocator,
            socket,
            node: "node-a".into(),
            stop: None,
            served: None,
            _dir: dir,
        };
        agent.serve();
        agent
    }

    /// (Re)starts serving on the socket.
    pub fn serve(&mut self) {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let api = Arc::new(PodApi::new(Arc::clone(&self.allocator), self.node.clone()));
        let socket = self.socket.clone();
        let server = self.runtime.block_on(PodApiServer::bind(&socket)).unwrap();
        self.served = Some(self.runtime.spawn(async move {
            server
                .serve(api, async {
                    let _ = stopped.await;
                })
                .await;
        }));
        self.stop = Some(stop);
    }

    /// Stops serving and removes the socket: the agent is "down".
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(served) = self.served.take() {
            self.runtime.block_on(served).unwrap();
        }
    }

    /// Every address in use, with its handle.
    pub fn in_use(&self) -> Vec<(IpAddr, String)> {
        self.runtime.block_on(async {
            let blocks = self.allocator.blocks().await.unwrap();
            blocks
                .iter()
                .flat_map(|(_, spec)| spec.in_use())
                .map(|u| (u.ip, u.handle_id.unwrap_or_default()))
                .collect()
        })
    }

    /// The blocks affine to this agent's node.
    pub fn node_blocks(&self) -> Vec<IpNet> {
        self.runtime
            .block_on(self.allocator.blocks_affine_to(&self.node))
            .unwrap()
    }

    /// A network config for felix-cni talking to this agent.
    pub fn conf(&self, version: &str, extra: &str) -> String {
        format!(
            r#"{{"cniVersion":"{version}","name":"felix-test","type":"felix-cni","mtu":1400,"agent_socket":"{}"{extra}}}"#,
            self.socket.display()
        )
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One plugin run's outcome.
#[derive(Debug)]
pub struct Run {
    pub ok: bool,
    pub json: Option<Value>,
    pub stderr: String,
}

impl Run {
    /// The CNI error code, if it failed.
    pub fn code(&self) -> Option<u64> {
        self.json.as_ref()?.get("code")?.as_u64()
    }

    pub fn msg(&self) -> String {
        self.json
            .as_ref()
            .and_then(|j| j.get("msg"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    }

    /// The pod addresses of a success.
    pub fn addresses(&self) -> Vec<IpAddr> {
        self.json
            .as_ref()
            .and_then(|j| j.get("ips"))
            .and_then(Value::as_array)
            .map(|ips| {
                ips.iter()
                    .filter_map(|ip| ip["address"].as_str())
                    .map(|a| a.parse::<IpNet>().unwrap().addr())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A CNI invocation's environment.
#[derive(Debug, Clone, Default)]
pub struct Call<'a> {
    pub command: &'a str,
    pub container_id: &'a str,
    pub netns: Option<&'a Path>,
    pub ifname: &'a str,
    pub args: &'a str,
    pub path: &'a str,
}

impl<'a> Call<'a> {
    pub fn new(command: &'a str, container_id: &'a str, netns: Option<&'a Path>) -> Self {
        Call {
            command,
            container_id,
            netns,
            ifname: "eth0",
            args: "",
            path: REFERENCE_PLUGINS,
        }
    }
}

/// Runs `binary` inside the node namespace with `call`'s environment and
/// `conf` on stdin.
pub fn run_plugin(node: &Node, binary: &str, call: &Call<'_>, conf: &str) -> Run {
    use std::io::Write;
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", &node.ns.name, binary])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", call.command)
        .env("CNI_CONTAINERID", call.container_id)
        .env("CNI_IFNAME", call.ifname)
        .env("CNI_ARGS", call.args)
        .env("CNI_PATH", call.path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(netns) = call.netns {
        command.env("CNI_NETNS", netns);
    }
    let mut child = command.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = if stdout.trim().is_empty() {
        None
    } else {
        Some(
            serde_json::from_str(&stdout)
                .unwrap_or_else(|e| panic!("plugin printed non-JSON {stdout:?}: {e}")),
        )
    };
    Run {
        ok: out.status.success(),
        json,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// felix-cni with `call` and `conf`.
pub fn felix(node: &Node, call: &Call<'_>, conf: &str) -> Run {
    run_plugin(node, FELIX_CNI, call, conf)
}

/// Distinct values, asserting there were no duplicates.
pub fn distinct<T: Ord + Clone + std::fmt::Debug>(items: &[T]) -> BTreeSet<T> {
    let set: BTreeSet<T> = items.iter().cloned().collect();
    assert_eq!(set.len(), items.len(), "duplicates in {items:?}");
    set
}

/// Skips (returning true) when not root, saying so.
pub fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        false
    } else {
        println!("SKIPPED: {test} needs root (network namespaces)");
        true
    }
}

/// A stand-in agent for the failure cases the real one cannot be made to
/// show on cue: it reads each request and answers with the next scripted
/// line, or hangs up without answering (`None`: the agent died mid-call).
pub struct ScriptedAgent {
    pub socket: PathBuf,
    thread: Option<std::thread::JoinHandle<Vec<Value>>>,
    _dir: tempfile::TempDir,
}

impl ScriptedAgent {
    pub fn start(script: Vec<Option<&'static str>>) -> ScriptedAgent {
        use std::io::{BufRead, BufReader, Write};
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("scripted.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            // Stops waiting after 10 s, so a plugin that never calls back
            // fails the test instead of hanging it.
            listener.set_nonblocking(true).unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            for answer in script {
                let stream = loop {
                    match listener.accept() {
                        Ok((stream, _)) => break Some(stream),
                        Err(_) if std::time::Instant::now() < deadline => {
                            std::thread::sleep(std::time::Duration::from_millis(5));
                        }
                        Err(_) => break None,
                    }
                };
                let Some(stream) = stream else {
                    break;
                };
                stream.set_nonblocking(false).unwrap();
                let mut line = String::new();
                BufReader::new(&stream).read_line(&mut line).unwrap();
                seen.push(serde_json::from_str(&line).unwrap());
                if let Some(answer) = answer {
                    (&stream).write_all(answer.as_bytes()).unwrap();
                    (&stream).write_all(b"\n").unwrap();
                }
            }
            seen
        });
        ScriptedAgent {
            socket,
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// Waits for the script to finish; the requests it read.
    pub fn requests(mut self) -> Vec<Value> {
        self.thread.take().unwrap().join().unwrap()
    }

    pub fn conf(&self) -> String {
        format!(
            r#"{{"cniVersion":"1.1.0","name":"felix-test","type":"felix-cni","mtu":1400,"agent_socket":"{}"}}"#,
            self.socket.display()
        )
    }
}
