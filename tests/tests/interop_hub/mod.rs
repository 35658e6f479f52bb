//! Helpers of the route-reflector, graceful-restart and failure interop
//! tests: a hub of network namespaces (felix's, joined by a veth to each
//! peer's), starting BIRD, GoBGP and `felix bgp run` in them, and asking
//! the felix daemon over its control socket. Kept apart from
//! `interop_common` (which other tests extend concurrently); uses its
//! `wait_until`.

#![allow(dead_code)]

use crate::interop_common::wait_until;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

fn run(args: &[&str]) {
    let status = Command::new(args[0])
        .args(&args[1..])
        .status()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(status.success(), "{args:?} failed: {status}");
}

/// The `felix` binary of this workspace (`target/debug/felix`, or under
/// `CARGO_TARGET_DIR`). `cargo test --workspace` builds it; when it is
/// missing (e.g. `cargo test -p felix-tests` on a clean tree) it is built
/// here with `cargo build -p felix-rs --bin felix`.
pub fn felix_bin() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let bin = target.join("debug").join("felix");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "felix-rs", "--bin", "felix"])
            .current_dir(&root)
            .status()
            .unwrap();
        assert!(status.success(), "cargo build of felix failed");
    }
    bin
}

/// `birdc -s SOCK ARGS…` (the control socket is a path: no namespace
/// needed), stdout.
pub fn birdc(sock: &str, args: &[&str]) -> String {
    let out = Command::new("birdc")
        .args(["-s", sock])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A hub: the felix namespace with one veth (its own /30) to each of
/// `n` peer namespaces. Peer `i` has `peer_ips[i]`, felix's end of that
/// link `felix_ips[i]`. Everything in the namespaces is killed and the
/// namespaces deleted on drop.
pub struct Hub {
    pub felix: String,
    pub peers: Vec<String>,
    pub felix_ips: Vec<String>,
    pub peer_ips: Vec<String>,
    pub dir: PathBuf,
    /// Daemon pid files to kill on drop.
    pub pid_files: Vec<PathBuf>,
    /// Daemons started here (killed and reaped on drop).
    pub children: Vec<std::process::Child>,
}

impl Hub {
    pub fn new(tag: &str, n: usize) -> Hub {
        static N: AtomicU32 = AtomicU32::new(0);
        let k = N.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let id = format!("{}{}", pid % 100_000, k);
        let dir = std::env::temp_dir().join(format!("felix-{tag}-{id}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // 10.{100+pid%50}.{k*8+i}.0/30 per link: distinct from NetnsPair's
        // 10.200-249 range.
        let second = 100 + (pid % 50);
        let mut hub = Hub {
            felix: format!("fx{tag}f{id}"),
            peers: Vec::new(),
            felix_ips: Vec::new(),
            peer_ips: Vec::new(),
            dir,
            pid_files: Vec::new(),
            children: Vec::new(),
        };
        run(&["ip", "netns", "add", &hub.felix]);
        run(&["ip", "-n", &hub.felix, "link", "set", "lo", "up"]);
        for i in 0..n {
            let ns = format!("fx{tag}p{i}{id}");
            run(&["ip", "netns", "add", &ns]);
            hub.peers.push(ns.clone());
            let third = (k as usize * 8 + i) % 250;
            let peer_ip = format!("10.{second}.{third}.1");
            let felix_ip = format!("10.{second}.{third}.2");
            let (vp, vf) = (format!("h{id}p{i}"), format!("h{id}f{i}"));
            run(&[
                "ip", "link", "add", &vp, "netns", &ns, "type", "veth", "peer", "name", &vf,
                "netns", &hub.felix,
            ]);
            for (ns, dev, ip) in [(&ns, &vp, &peer_ip), (&hub.felix, &vf, &felix_ip)] {
                run(&[
                    "ip",
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{ip}/30"),
                    "dev",
                    dev,
                ]);
                run(&["ip", "-n", ns, "link", "set", dev, "up"]);
            }
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            hub.peer_ips.push(peer_ip);
            hub.felix_ips.push(felix_ip);
        }
        hub
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Runs a command inside namespace `ns`, returns stdout + stderr.
    pub fn exec(&self, ns: &str, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    /// Starts BIRD in peer namespace `i` with `conf`; returns its control
    /// socket once it answers.
    pub fn start_bird(&mut self, i: usize, conf: &str) -> String {
        let file = self.path(&format!("bird{i}.conf"));
        std::fs::write(&file, conf).unwrap();
        let sock = self.path(&format!("bird{i}.ctl")).display().to_string();
        let pid = self.path(&format!("bird{i}.pid"));
        self.pid_files.push(pid.clone());
        let ns = self.peers[i].clone();
        let out = self.exec(
            &ns,
            &[
                "bird",
                "-c",
                &file.display().to_string(),
                "-s",
                &sock,
                "-P",
                &pid.display().to_string(),
            ],
        );
        assert!(
            wait_until(Duration::from_secs(5), || birdc(&sock, &["show", "status"])
                .contains("Daemon is up")),
            "BIRD did not start: {out}"
        );
        sock
    }

    /// Starts gobgpd in peer namespace `i` with `conf` (TOML), API on
    /// 127.0.0.1:`api` of that namespace.
    pub fn start_gobgp(&mut self, i: usize, conf: &str, api: &str) {
        let file = self.path(&format!("gobgpd{i}.toml"));
        std::fs::write(&file, conf).unwrap();
        let log = std::fs::File::create(self.path(&format!("gobgpd{i}.log"))).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.peers[i], "gobgpd", "-f"])
            .arg(&file)
            .args([
                "--api-hosts",
                &format!("127.0.0.1:{api}"),
                "--pprof-disable",
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.children.push(child);
    }

    /// Starts `felix bgp run --config FILE` in the felix namespace with
    /// `conf` (TOML; `control_socket` is set here); returns the index of
    /// the daemon in `children` (`ip netns exec` execs felix: the child is
    /// felix) and the control socket path, once the socket answers.
    pub fn start_felix(&mut self, conf: &str, name: &str) -> (usize, String) {
        let sock = self.path(&format!("{name}.sock")).display().to_string();
        let file = self.path(&format!("{name}.toml"));
        std::fs::write(&file, format!("control_socket = \"{sock}\"\n{conf}")).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(&format!("{name}.log")))
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.felix])
            .arg(felix_bin())
            .args(["bgp", "run", "--config"])
            .arg(&file)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        assert!(
            wait_until(Duration::from_secs(10), || felix_json(&sock, &["status"])
                .is_some()),
            "felix bgp run did not answer on {sock}: {}",
            std::fs::read_to_string(self.path(&format!("{name}.log"))).unwrap_or_default()
        );
        self.children.push(child);
        (self.children.len() - 1, sock)
    }

    /// SIGKILL to `children[i]`, reaped.
    pub fn kill9(&mut self, i: usize) {
        let _ = self.children[i].kill();
        let _ = self.children[i].wait();
    }
}

/// `felix bgp ARGS… --output json --control-socket SOCK`, parsed; `None`
/// when the daemon does not answer.
pub fn felix_json(sock: &str, args: &[&str]) -> Option<serde_json::Value> {
    let out = Command::new(felix_bin())
        .args(["bgp"])
        .args(args)
        .args(["--output", "json", "--control-socket", sock])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

impl Drop for Hub {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for pf in &self.pid_files {
            if let Ok(pid) = std::fs::read_to_string(pf) {
                let _ = Command::new("kill").arg(pid.trim()).status();
            }
        }
        for ns in self.peers.iter().chain(std::iter::once(&self.felix)) {
            let _ = Command::new("ip")
                .args(["netns", "pids", ns])
                .output()
                .map(|o| {
                    for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                        let _ = Command::new("kill").args(["-9", pid]).status();
                    }
                });
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        if std::env::var_os("FELIX_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
