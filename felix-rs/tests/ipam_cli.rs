#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `felix ipam …` end to end through the binary, on a SQLite datastore.

use std::process::{Command, Output};

use serde_json::Value;

struct Ipam {
    _dir: tempfile::TempDir,
    url: String,
}

impl Ipam {
    fn new() -> Ipam {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("ipam.db").display());
        Ipam { _dir: dir, url }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_felix"))
            .arg("ipam")
            .arg("--datastore")
            .arg(&self.url)
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "felix ipam {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    fn fails(&self, args: &[&str], code: i32, needle: &str) {
        let out = self.run(args);
        assert_eq!(out.status.code(), Some(code), "felix ipam {args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn pools_allocate_show_release() {
    let ipam = Ipam::new();
    ipam.ok(&["pools", "create", "--name", "v4", "--cidr", "10.244.0.0/16"]);
    ipam.ok(&[
        "pools",
        "create",
        "--name",
        "v6",
        "--cidr",
        "fd00:10:244::/56",
        "--vxlan-mode",
        "CrossSubnet",
    ]);
    ipam.fails(
        &["pools", "create", "--cidr", "10.244.8.0/24"],
        2,
        "overlaps pool \"v4\"",
    );
    ipam.fails(
        &["pools", "create", "--cidr", "10.0.0.0/99"],
        2,
        "not a CIDR",
    );
    ipam.fails(
        &[
            "pools",
            "create",
            "--cidr",
            "10.9.0.0/16",
            "--block-size",
            "8",
        ],
        2,
        "out of range",
    );
    ipam.fails(
        &[
            "pools",
            "create",
            "--cidr",
            "10.9.0.0/16",
            "--node-selector",
            "a in b",
        ],
        2,
        "selector",
    );
    let pools = ipam.json(&["pools", "list"]);
    assert_eq!(pools.as_array().unwrap().len(), 2);
    assert_eq!(pools[1]["spec"]["vxlanMode"], "CrossSubnet");
    assert_eq!(pools[1]["spec"]["blockSize"], 122);

    let text = ipam.ok(&[
        "allocate", "--node", "node1", "--handle", "pod-a", "--ipv4", "2", "--ipv6", "1",
    ]);
    let ips: Vec<&str> = text.lines().collect();
    assert_eq!(ips, ["10.244.0.0", "10.244.0.1", "fd00:10:244::"]);
    let fixed = ipam.json(&[
        "allocate",
        "--node",
        "node2",
        "--handle",
        "pod-b",
        "--ip",
        "10.244.5.9",
        "--pod",
        "b",
        "--namespace",
        "ns",
    ]);
    assert_eq!(fixed[0]["ip"], "10.244.5.9");
    assert_eq!(fixed[0]["block"], "10.244.5.0/26");
    ipam.fails(
        &[
            "allocate",
            "--node",
            "node3",
            "--handle",
            "pod-c",
            "--ip",
            "10.244.5.9",
        ],
        1,
        "already in use",
    );

    let show = ipam.ok(&["show"]);
    assert!(show.contains("10.244.0.0/16"), "{show}");
    assert!(show.contains("3 (0%)"), "{show}");
    let blocks = ipam.json(&["show", "--blocks"]);
    let rows: Vec<(String, String, u64)> = blocks
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["cidr"].as_str().unwrap().to_owned(),
                r["name"].as_str().unwrap().to_owned(),
                r["in_use"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(rows.contains(&("10.244.0.0/26".into(), "host:node1".into(), 2)));
    assert!(rows.contains(&("10.244.5.0/26".into(), "host:node2".into(), 1)));
    let who = ipam.ok(&["show", "--ip", "10.244.5.9"]);
    assert!(
        who.contains("handle pod-b") && who.contains("pod: b"),
        "{who}"
    );
    assert!(ipam
        .ok(&["show", "--ip", "10.244.5.10"])
        .contains("not in use"));

    // Release by address: a free address is a clear no-op.
    let out = ipam.ok(&["release", "--ip", "10.244.0.0", "--ip", "10.244.0.50"]);
    assert!(out.contains("released 10.244.0.0 (handle pod-a)"), "{out}");
    assert!(out.contains("10.244.0.50 was not allocated"), "{out}");
    // A release naming the wrong sequence is refused (exit 1), nothing freed.
    let refused = ipam.run(&["release", "--ip", "10.244.5.9", "--sequence", "99"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stdout).contains("refused"));
    assert!(ipam.ok(&["show", "--ip", "10.244.5.9"]).contains("in use"));
    let by_handle = ipam.json(&["release", "--handle", "pod-a"]);
    assert_eq!(by_handle["released"].as_array().unwrap().len(), 2);
    assert!(ipam
        .ok(&["release", "--handle", "pod-a"])
        .contains("nothing to do"));

    ipam.fails(&["pools", "delete", "v4"], 2, "in use");
    ipam.ok(&["release", "--handle", "pod-b"]);
    ipam.ok(&["pools", "delete", "v4"]);
    assert_eq!(ipam.json(&["pools", "list"]).as_array().unwrap().len(), 1);
}

#[test]
fn check_and_gc() {
    let ipam = Ipam::new();
    ipam.ok(&["pools", "create", "--cidr", "10.50.0.0/24"]);
    for (node, handle) in [("node1", "live"), ("node1", "dead"), ("node2", "gone-node")] {
        ipam.ok(&["allocate", "--node", node, "--handle", handle]);
    }
    let dir = tempfile::tempdir().unwrap();
    let owners = dir.path().join("owners");
    std::fs::write(&owners, "# live pods\nlive\ngone-node\n").unwrap();
    let owners = owners.to_str().unwrap();

    assert!(ipam.ok(&["check"]).contains("consistent"));
    let out = ipam.run(&["check", "--owners", owners, "--nodes", "node1"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("leaked address 10.50.0.1"), "{text}");
    assert!(text.contains("handle dead"), "{text}");
    assert!(text.contains("unknown node node2"), "{text}");
    assert!(!text.contains("handle live"), "{text}");

    let gc = ipam.json(&["gc", "--owners", owners, "--nodes", "node1"]);
    let released: Vec<&str> = gc["released"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(released.contains(&"10.50.0.1"), "{gc}");
    assert!(released.contains(&"10.50.0.64"), "{gc}");
    assert_eq!(released.len(), 2, "{gc}");
    assert!(ipam
        .ok(&["check", "--owners", owners, "--nodes", "node1"])
        .contains("consistent"));
    assert!(ipam
        .ok(&["show", "--ip", "10.50.0.0"])
        .contains("handle live"));
}

#[test]
fn bad_datastore_and_corrupt_store() {
    let ipam = Ipam::new();
    let out = Command::new(env!("CARGO_BIN_EXE_felix"))
        .args(["ipam", "--datastore", "mysql://x", "show"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected sqlite:PATH"));
    ipam.ok(&["pools", "create", "--cidr", "10.60.0.0/24"]);
    ipam.ok(&["allocate", "--node", "n1", "--handle", "h"]);
    // Garbage in a block: a clear error naming it, no panic.
    let db = ipam.url.strip_prefix("sqlite:").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use ipam::store::{Datastore, Kind};
        let store = ipam::store::sqlite::SqliteStore::open(db).await.unwrap();
        let obj = store.get(Kind::IpamBlock, "10-60-0-0-26").await.unwrap();
        store
            .update(
                Kind::IpamBlock,
                "10-60-0-0-26",
                b"\x00garbage".to_vec(),
                &obj.revision,
            )
            .await
            .unwrap();
    });
    for args in [
        &["show", "--blocks"][..],
        &["allocate", "--node", "n1", "--handle", "h2"],
    ] {
        let out = ipam.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("IPAMBlock \"10-60-0-0-26\" holds a corrupt value"),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    let out = ipam.run(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("corrupt: IPAMBlock \"10-60-0-0-26\""));
}
