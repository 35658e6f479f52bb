//! Shared helpers for the interop tests: a pair of network namespaces joined
//! by a veth, cleaned up on drop (daemons killed, namespaces deleted), and a
//! thread that runs a felix session inside one of them.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Prints why the test is skipped; returns true if it must be.
pub fn skip_unless(tools: &[&str]) -> bool {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if uid != "0" {
        println!("SKIPPED: needs root (network namespaces)");
        return true;
    }
    for tool in tools {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            println!("SKIPPED: {tool} is not installed");
            return true;
        }
    }
    false
}

fn run(args: &[&str]) {
    let status = Command::new(args[0])
        .args(&args[1..])
        .status()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(status.success(), "{args:?} failed: {status}");
}

/// Two namespaces, `peer` (the daemon's, address `peer_ip`) and `felix`
/// (`felix_ip`), joined by a veth on 10.x.y.0/30.
pub struct NetnsPair {
    pub peer: String,
    pub felix: String,
    pub peer_ip: String,
    pub felix_ip: String,
    pub dir: PathBuf,
    /// Daemon pid files to kill on drop.
    pub pid_files: Vec<PathBuf>,
}

impl NetnsPair {
    pub fn new(tag: &str) -> NetnsPair {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let id = format!("{}{}", pid % 100_000, n);
        let dir = std::env::temp_dir().join(format!("felix-{tag}-{id}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let pair = NetnsPair {
            peer: format!("fx{tag}p{id}"),
            felix: format!("fx{tag}f{id}"),
            peer_ip: format!("10.{}.{}.1", 200 + (pid % 50), n % 250),
            felix_ip: format!("10.{}.{}.2", 200 + (pid % 50), n % 250),
            dir,
            pid_files: Vec::new(),
        };
        let (vp, vf) = (format!("v{id}p"), format!("v{id}f"));
        run(&["ip", "netns", "add", &pair.peer]);
        run(&["ip", "netns", "add", &pair.felix]);
        run(&[
            "ip",
            "link",
            "add",
            &vp,
            "netns",
            &pair.peer,
            "type",
            "veth",
            "peer",
            "name",
            &vf,
            "netns",
            &pair.felix,
        ]);
        for (ns, dev, ip) in [
            (&pair.peer, &vp, &pair.peer_ip),
            (&pair.felix, &vf, &pair.felix_ip),
        ] {
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
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Runs a command inside the peer namespace and returns its stdout.
    pub fn exec_peer(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.peer])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    /// Runs `f` on a thread that has entered the felix namespace (with its
    /// own current-thread tokio runtime), and waits for it.
    pub fn in_felix<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::Result<T> {
        let ns = Path::new("/var/run/netns").join(&self.felix);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&ns).unwrap();
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for pf in &self.pid_files {
            if let Ok(pid) = std::fs::read_to_string(pf) {
                let _ = Command::new("kill").arg(pid.trim()).status();
            }
        }
        // Anything still running in the namespaces (daemons that did not
        // write a pid file yet).
        for ns in [&self.peer, &self.felix] {
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

/// Polls `f` until it returns true or `limit` passes.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}
