//! Network namespaces for the route-programmer tests: unique names (pid +
//! tag), removed by a Drop guard also when the test fails, and a way to run
//! async code with its sockets inside a namespace.
#![allow(dead_code)]

use std::fs::File;
use std::future::Future;
use std::process::Command;

use nix::sched::{setns, CloneFlags};

/// A network namespace that is deleted when dropped.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    /// Creates `frt-<pid>-<tag>` with `lo` up.
    pub fn new(tag: &str) -> NetNs {
        let name = format!("frt-{}-{tag}", std::process::id());
        if std::path::Path::new(&format!("/var/run/netns/{name}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
        sh(&format!("ip netns add {name}"));
        let ns = NetNs { name };
        ns.ip("link set lo up");
        ns
    }

    /// Runs `ip -n NS ARGS`, panicking on failure.
    pub fn ip(&self, args: &str) {
        sh(&format!("ip -n {} {args}", self.name));
    }

    /// Runs `ip -n NS ARGS` and returns whether it succeeded.
    pub fn try_ip(&self, args: &str) -> bool {
        Command::new("sh")
            .arg("-c")
            .arg(format!("ip -n {} {args}", self.name))
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// `ip -n NS ARGS` output.
    pub fn out(&self, args: &str) -> String {
        let o = Command::new("sh")
            .arg("-c")
            .arg(format!("ip -n {} {args}", self.name))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "ip {args}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs a command inside the namespace; returns whether it succeeded.
    pub fn exec_ok(&self, cmd: &str) -> bool {
        Command::new("sh")
            .arg("-c")
            .arg(format!("ip netns exec {} {cmd}", self.name))
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Runs the future on a fresh single-threaded tokio runtime in a thread
    /// that has entered this namespace, so that netlink sockets opened by the
    /// future talk to this namespace's kernel tables.
    pub fn run<F, Fut, T>(&self, f: F) -> T
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let fd = File::open(&path).unwrap();
            setns(&fd, CloneFlags::CLONE_NEWNET).unwrap();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(f())
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Runs a shell command, panicking with its stderr on failure.
pub fn sh(cmd: &str) {
    let o = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        o.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Felix's routes in `ns`, one line each, as `ip` prints them.
pub fn felix_routes(ns: &NetNs) -> Vec<String> {
    let mut v: Vec<String> = ns
        .out("route show proto 102")
        .lines()
        .chain(ns.out("-6 route show proto 102").lines())
        .map(|l| l.trim().to_string())
        .collect();
    v.sort();
    v
}
