//! `felix lab up --datastore etcd`: the lab starts a real etcd in its own
//! namespace on the underlay; the agents (and, through their pod API, the
//! CNI plugin's IPAM) use `etcd://10.0.0.252:2379`. `felix lab down`
//! stops etcd and removes its data, also after `up` was killed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod lab_common;

use felix_rs::lab::build::{self, in_netns};
use felix_rs::lab::plan::{LabDatastore, LabOptions};
use felix_rs::lab::state::{state_dir, LabState};
use ipam::store::Kind;
use lab_common::{established, namespaces_with, wait_until, Lab};
use std::process::{Command, Stdio};
use std::time::Duration;

fn skip() -> bool {
    if lab_common::skip() {
        return true;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    if !std::env::split_paths(&path).any(|d| d.join("etcd").exists()) {
        println!("SKIPPED: etcd is not installed (package etcd-server)");
        return true;
    }
    false
}

/// A process is gone (or a zombie, or a reused pid running something else).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.contains(") Z ") || !stat.contains("(etcd)"),
        Err(_) => true,
    }
}

fn etcd_pid(state: &LabState) -> u32 {
    state
        .processes
        .iter()
        .find(|p| p.what == "etcd")
        .expect("etcd recorded in the lab state")
        .pid
}

/// Names of the objects of `kind` in the lab's etcd, read from inside the
/// lab router's namespace (etcd is not reachable from the root namespace).
fn names_in_etcd(lab: &Lab, kind: Kind) -> Vec<String> {
    let url = lab.datastore_url();
    in_netns(&format!("{}-lab", lab.prefix), move || {
        lab_common::with_store_at(&url, |store| async move {
            let listing = store.list(kind, "").await.unwrap();
            listing.objects.into_iter().map(|o| o.name).collect()
        })
    })
    .unwrap()
}

#[test]
fn three_nodes_on_etcd_full_ping_matrix_then_down_stops_etcd() {
    if skip() {
        return;
    }
    let (prefix, pid);
    {
        let lab = Lab::up(
            "fxe",
            LabOptions {
                datastore: LabDatastore::Etcd,
                ..Default::default()
            },
        );
        prefix = lab.prefix.clone();
        pid = etcd_pid(&lab.state);
        assert!(!gone(pid), "etcd not running");
        assert!(state_dir(&prefix).join("etcd").join("member").exists());
        for i in 1..=3 {
            let node = format!("node-{i}");
            let s = lab.status(&node);
            assert_eq!(s.datastore, "etcd://10.0.0.252:2379", "{node}");
            assert!(s.datastore_ok && s.ready, "{node}: {s:?}");
            // The mesh comes from the registrations in etcd.
            assert_eq!(s.nodes.len(), 3, "{node}: {:?}", s.nodes);
            assert_eq!(established(&s).len(), 2, "{node}: {:?}", s.peers);
            assert_eq!(s.routes.len(), 2, "{node}: {:?}", s.routes);
        }
        // What the agents and the pod API wrote is in etcd: the three
        // registrations, one block affinity per node, one handle per pod.
        assert_eq!(
            names_in_etcd(&lab, Kind::FelixNode),
            ["node-1", "node-2", "node-3"]
        );
        assert_eq!(names_in_etcd(&lab, Kind::BlockAffinity).len(), 3);
        assert_eq!(names_in_etcd(&lab, Kind::IpamHandle).len(), 6);
        assert_eq!(names_in_etcd(&lab, Kind::IpPool).len(), 1);
        assert_eq!(lab.state.pods.len(), 6);
        lab.assert_full_ping_matrix();
    }
    // Dropped: `lab down` ran.
    assert!(gone(pid), "etcd {pid} survived lab down");
    assert!(namespaces_with(&prefix).is_empty());
    assert!(!state_dir(&prefix).exists());
}

/// Removes the lab on drop, for the crash test.
struct DownOnDrop(String);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        let _ = build::down(&self.0);
    }
}

#[test]
fn down_after_up_was_killed_stops_etcd_and_removes_its_data() {
    if skip() {
        return;
    }
    let bins = lab_common::binaries();
    let prefix = format!("fxk{}", std::process::id() % 100_000);
    let _guard = DownOnDrop(prefix.clone());
    let mut up = Command::new(&bins.felix)
        .args(["lab", "up", "--datastore", "etcd", "--nodes", "2"])
        .args(["--prefix", &prefix])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed once etcd runs and the first agent has started.
    let dir = state_dir(&prefix);
    let started = wait_until(Duration::from_secs(60), || {
        LabState::load(&dir)
            .ok()
            .flatten()
            .is_some_and(|s| s.processes.iter().any(|p| p.what == "agent node-1"))
    });
    up.kill().unwrap();
    up.wait().unwrap();
    assert!(started, "lab up never started an agent");
    let state = LabState::load(&dir).unwrap().unwrap();
    assert!(!state.complete);
    let pid = etcd_pid(&state);
    assert!(!gone(pid), "etcd should outlive the killed `lab up`");
    assert!(dir.join("etcd").exists());

    let report = build::down(&prefix).unwrap();
    assert!(report.processes >= 2, "{report:?}");
    assert!(gone(pid), "etcd {pid} survived lab down");
    assert!(namespaces_with(&prefix).is_empty());
    assert!(!dir.exists(), "{} left behind", dir.display());
}
