//! Shared by the lab tests: the binaries, a lab guard that removes the lab
//! on drop (also when the test fails), and status helpers.

#![allow(dead_code)]

use felix_rs::agent::status::{self, AgentStatus};
use felix_rs::lab::build::{self, Binaries};
use felix_rs::lab::plan::{LabOptions, LabPlan};
use felix_rs::lab::state::LabState;
use ipam::store::Datastore;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// True (after printing SKIPPED) when the test cannot run here.
pub fn skip() -> bool {
    if !nix::unistd::Uid::effective().is_root() {
        println!("SKIPPED: needs root (network namespaces)");
        return true;
    }
    false
}

/// Set by scripts/test.sh: the `cargo nextest run --workspace` running
/// this test has just built `felix` and `felix-cni` into `target/debug`
/// (cargo builds a package's binaries for its integration tests), so
/// [`binaries`] takes them as they are.
pub const BINARIES_BUILT_ENV: &str = "FELIX_TEST_BINARIES_BUILT";

/// Builds `felix` and `felix-cni` (a no-op when up to date) and returns
/// them; with [`BINARIES_BUILT_ENV`] set, only returns them.
///
/// Why the variable: this `cargo build -p felix-rs -p felix-cni` resolves
/// dependency features without the workspace's dev-dependencies, unlike
/// the `--workspace` test build that runs the suite, so after any change
/// it compiled felix-rs and felix-cni a second time, inside the first lab
/// test, while every other lab test waited on cargo's build-directory lock
/// (a 7 s lab test took 65 s, a 21 s one 87–89 s in a full CI run). It
/// also replaced `target/debug/felix` while other tests were running it.
pub fn binaries() -> Binaries {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let built = Binaries {
        felix: target.join("debug").join("felix"),
        cni: target.join("debug").join("felix-cni"),
    };
    if std::env::var_os(BINARIES_BUILT_ENV).is_some() {
        for bin in [&built.felix, &built.cni] {
            assert!(
                bin.exists(),
                "{BINARIES_BUILT_ENV} is set but {} is missing",
                bin.display()
            );
        }
        return built;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    // The test's own package variables (CARGO_MANIFEST_DIR, CARGO_PKG_NAME,
    // …) would make build scripts that watch them (ring's) rebuild, and the
    // outer `cargo test` rebuild them again next time.
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_CFG_",
        ]
        .iter()
        .any(|p| k.starts_with(p))
            || k == "CARGO_PRIMARY_PACKAGE"
            || k == "CARGO_TARGET_TMPDIR"
            || k == "OUT_DIR"
        {
            build.env_remove(&key);
        }
    }
    let status = build
        .args([
            "build",
            "-p",
            "felix-rs",
            "-p",
            "felix-cni",
            "--bin",
            "felix",
            "--bin",
            "felix-cni",
        ])
        .current_dir(&root)
        .status()
        .unwrap();
    assert!(status.success(), "cargo build of felix / felix-cni failed");
    built
}

/// A running lab; `felix lab down` on drop.
pub struct Lab {
    pub prefix: String,
    pub state: LabState,
    pub plan: LabPlan,
    pub bins: Binaries,
}

impl Lab {
    /// `lab up` with a prefix unique to this process and `tag`.
    pub fn up(tag: &str, mut options: LabOptions) -> Lab {
        let prefix = format!("{tag}{}", std::process::id() % 100_000);
        options.prefix = prefix.clone();
        let plan = LabPlan::new(options).unwrap();
        let bins = binaries();
        let mut out = Vec::new();
        let result = build::up(&plan, &bins, &mut out);
        // A lab left by an earlier run of this test with the same pid is
        // refused by `up`: it is removed by the error path below.
        let state = match result {
            Ok(s) => s,
            Err(e) => {
                let logs = logs(&prefix);
                let _ = build::down(&prefix);
                panic!(
                    "lab up failed: {e}\n{}\n{logs}",
                    String::from_utf8_lossy(&out)
                );
            }
        };
        Lab {
            prefix,
            state,
            plan,
            bins,
        }
    }

    pub fn dir(&self) -> PathBuf {
        felix_rs::lab::state::state_dir(&self.prefix)
    }

    /// The namespace of node `node`.
    pub fn netns(&self, node: &str) -> String {
        self.plan
            .nodes
            .iter()
            .find(|n| n.name == node)
            .map(|n| n.netns.clone())
            .unwrap()
    }

    /// `ip ARGS` inside node `node`'s namespace; stdout.
    pub fn ip(&self, node: &str, args: &[&str]) -> String {
        let mut all = vec!["-n".to_string(), self.netns(node)];
        all.extend(args.iter().map(|a| a.to_string()));
        let out = Command::new("ip").args(&all).output().unwrap();
        assert!(
            out.status.success(),
            "ip {all:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Destinations of the kernel routes of node `node` (main table).
    pub fn route_destinations(&self, node: &str) -> Vec<String> {
        self.ip(node, &["route", "show"])
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                match w.next() {
                    Some("blackhole" | "unreachable" | "prohibit") => w.next(),
                    other => other,
                }
            })
            .map(str::to_string)
            .collect()
    }

    pub fn socket(&self, node: &str) -> PathBuf {
        felix_rs::lab::state::state_dir(&self.prefix).join(format!("{node}.sock"))
    }

    pub fn status(&self, node: &str) -> AgentStatus {
        status::query(&self.socket(node)).unwrap()
    }

    /// The agents' datastore: the SQLite file, or the lab's etcd (reachable
    /// only from inside the lab's namespaces: see [`build::in_netns`]).
    pub fn datastore_url(&self) -> String {
        self.plan
            .datastore_url(&felix_rs::lab::state::state_dir(&self.prefix))
    }

    /// Runs `f` on the lab's datastore, opened on a runtime of its own.
    pub fn with_store<T, F>(&self, f: impl FnOnce(Arc<dyn Datastore>) -> F) -> T
    where
        F: Future<Output = T>,
    {
        with_store_at(&self.datastore_url(), f)
    }

    /// `node`'s `/metrics` text, fetched inside its namespace from its
    /// `address`; `None` (saying so) when curl is missing here.
    pub fn metrics(&self, node: &str, address: &str) -> Option<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.netns(node)])
            .args(["curl", "-sf", &format!("http://{address}:9099/metrics")])
            .output()
            .unwrap();
        if out.status.success() {
            Some(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            println!("curl not available: metrics not checked here");
            None
        }
    }

    /// Pings every pod from every other pod; panics naming the failed pairs.
    pub fn assert_full_ping_matrix(&self) {
        let pods = &self.state.pods;
        let m = build::ping_matrix(pods);
        let mut failed = Vec::new();
        for (i, a) in pods.iter().enumerate() {
            for (j, b) in pods.iter().enumerate() {
                if i != j && m[i][j] != Some(true) {
                    failed.push(format!("{} -> {} ({})", a.name, b.name, b.address));
                }
            }
        }
        assert!(
            failed.is_empty(),
            "{} of {} pings failed: {failed:?}\n{}",
            failed.len(),
            pods.len() * (pods.len() - 1),
            build::render_matrix(pods, &m)
        );
    }

    pub fn logs(&self) -> String {
        logs(&self.prefix)
    }
}

fn logs(prefix: &str) -> String {
    let dir = felix_rs::lab::state::state_dir(prefix);
    let mut all = String::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "log") {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                all.push_str(&format!("== {}\n", e.path().display()));
                for l in tail.into_iter().rev() {
                    all.push_str(l);
                    all.push('\n');
                }
            }
        }
    }
    all
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = build::down(&self.prefix) {
            eprintln!("lab down {}: {e}", self.prefix);
        }
    }
}

/// Polls `f` every 100 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Established peers of a node, by address.
pub fn established(s: &AgentStatus) -> Vec<String> {
    let mut v: Vec<String> = s
        .peers
        .iter()
        .filter(|p| p.state == "Established")
        .map(|p| p.address.to_string())
        .collect();
    v.sort();
    v
}

/// Namespaces whose name starts with `prefix-`.
pub fn namespaces_with(prefix: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .map(str::to_string)
        .collect()
}

/// The agent's status, `None` while it does not answer.
pub fn status_ok(socket: &Path) -> Option<AgentStatus> {
    status::query(socket).ok()
}

/// `ping -i 0.01 -c COUNT` from pod namespace `ns` to `to`, in the background.
pub fn start_ping(ns: &str, to: &str, count: u32) -> std::process::Child {
    Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-q", "-n", "-i", "0.01", "-W", "1",
        ])
        .args(["-c", &count.to_string(), to])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// (transmitted, received) from ping's summary.
pub fn ping_result(child: std::process::Child) -> (u32, u32, String) {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary: {text}"));
    let nums: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .take(2)
        .map(|w| w.parse().unwrap())
        .collect();
    (nums[0], nums[1], text)
}

/// Runs `f` on the datastore at `url`, opened on a runtime of its own (for
/// a caller that cannot lend the [`Lab`], e.g. inside another namespace).
pub fn with_store_at<T, F>(url: &str, f: impl FnOnce(Arc<dyn Datastore>) -> F) -> T
where
    F: Future<Output = T>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = ipam::store::open(url).await.unwrap();
        f(store).await
    })
}
