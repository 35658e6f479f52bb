//! NAT outgoing end to end: two lab nodes running `felix node run`, and an
//! "outside" host the test attaches to the lab's underlay bridge
//! (10.0.0.200, no route to any pod). The lab pool's `natOutgoing` is
//! switched in the datastore while the agents run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod lab_common;

use felix_rs::lab::plan::LabOptions;
use ipam::pool::IpPoolSpec;
use ipam::store::Kind;
use lab_common::{ping_result, start_ping, wait_until, Lab};
use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

const OUTSIDE: &str = "10.0.0.200";

/// The outside host: a namespace of the test's own on the lab's bridge
/// br0; removed on drop (its veth goes with it).
struct Outside {
    netns: String,
}

impl Outside {
    fn attach(lab: &Lab) -> Outside {
        let netns = format!("fxnat-out-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &netns])
            .stderr(std::process::Stdio::null())
            .status();
        run("ip", &["netns", "add", &netns]);
        let outside = Outside { netns };
        let lab_ns = &lab.plan.lab_netns;
        let link = format!("fxo{}", std::process::id() % 100_000);
        run(
            "ip",
            &[
                "link",
                "add",
                &link,
                "netns",
                lab_ns,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &outside.netns,
            ],
        );
        run(
            "ip",
            &["-n", lab_ns, "link", "set", &link, "master", "br0", "up"],
        );
        let ns = outside.netns.as_str();
        run("ip", &["-n", ns, "link", "set", "lo", "up"]);
        run(
            "ip",
            &[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{OUTSIDE}/24"),
                "dev",
                "eth0",
            ],
        );
        run("ip", &["-n", ns, "link", "set", "eth0", "up"]);
        outside
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

fn run(program: &str, args: &[&str]) -> String {
    let o = Command::new(program).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn nft(ns: &str, args: &[&str]) -> String {
    let mut all = vec!["netns", "exec", ns, "nft"];
    all.extend(args);
    run("ip", &all)
}

/// Whether `table inet felix` exists in `ns`.
fn has_table(ns: &str) -> bool {
    nft(ns, &["list", "tables"])
        .lines()
        .any(|l| l.trim() == "table inet felix")
}

/// A table in `ns` counting echo requests per source prefix (named
/// counters).
fn probe(ns: &str, counters: &[(&str, &str)]) {
    let mut batch = String::from("table ip probe {\n");
    for (name, _) in counters {
        batch.push_str(&format!("\tcounter {name} {{ }}\n"));
    }
    batch.push_str("\tchain input {\n\t\ttype filter hook input priority 0; policy accept;\n");
    for (name, source) in counters {
        batch.push_str(&format!(
            "\t\tip saddr {source} icmp type echo-request counter name {name}\n"
        ));
    }
    batch.push_str("\t}\n}\n");
    let path = std::env::temp_dir().join(format!("{ns}-probe.nft"));
    std::fs::write(&path, batch).unwrap();
    nft(ns, &["-f", &path.display().to_string()]);
    let _ = std::fs::remove_file(path);
}

fn packets(ns: &str, name: &str) -> u64 {
    let text = nft(ns, &["list", "counter", "ip", "probe", name]);
    let words: Vec<&str> = text.split_whitespace().collect();
    let i = words.iter().position(|w| *w == "packets").unwrap();
    words[i + 1].parse().unwrap()
}

/// `ping -c COUNT` from pod namespace `ns`; true when all were answered.
fn ping(ns: &str, to: &str, count: u32) -> bool {
    Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-q", "-n", "-i", "0.2", "-W", "1",
        ])
        .args(["-c", &count.to_string(), to])
        .output()
        .unwrap()
        .status
        .success()
}

/// Sets the lab pool's `natOutgoing` in the datastore.
fn set_nat_outgoing(lab: &Lab, on: bool) {
    lab.with_store(|store| async move {
        let o = store.get(Kind::IpPool, "lab-pool").await.unwrap();
        let mut spec: IpPoolSpec = serde_json::from_slice(&o.value).unwrap();
        spec.nat_outgoing = on;
        store
            .update(
                Kind::IpPool,
                "lab-pool",
                serde_json::to_vec(&spec).unwrap(),
                &o.revision,
            )
            .await
            .unwrap();
    });
}

/// Waits until every node's table and status say `on`.
fn wait_nat(lab: &Lab, on: bool) {
    let pools: BTreeSet<ipnet::IpNet> = if on {
        ["10.244.0.0/16".parse().unwrap()].into()
    } else {
        BTreeSet::new()
    };
    for node in ["node-1", "node-2"] {
        let ns = lab.netns(node);
        assert!(
            wait_until(Duration::from_secs(15), || {
                has_table(&ns) == on
                    && lab_common::status_ok(&lab.socket(node))
                        .is_some_and(|s| s.nat_outgoing.as_ref() == Some(&pools))
            }),
            "{node}: NAT outgoing not {on}:\n{}",
            lab.logs()
        );
    }
}

#[test]
fn nat_outgoing_follows_the_pool_and_survives_a_restart() {
    if lab_common::skip() {
        return;
    }
    let lab = Lab::up(
        "fxn",
        LabOptions {
            nodes: 2,
            pods_per_node: 1,
            ..LabOptions::default()
        },
    );
    let outside = Outside::attach(&lab);
    probe(
        &outside.netns,
        &[
            ("from_nodes", "10.0.0.0/24"),
            ("from_pods", "10.244.0.0/16"),
        ],
    );
    let pod = |node: &str| lab.state.pods.iter().find(|p| p.node == node).unwrap();
    let (p1, p2) = (pod("node-1"), pod("node-2"));
    probe(
        &p2.netns,
        &[
            ("from_pod", &format!("{}/32", p1.address)),
            ("from_nodes", "10.0.0.0/24"),
        ],
    );

    // The lab pool has no natOutgoing: no table, and the outside host sees
    // the pod's address (and cannot answer it).
    wait_nat(&lab, false);
    assert!(!ping(&p1.netns, OUTSIDE, 2));
    assert!(packets(&outside.netns, "from_pods") >= 2);
    assert_eq!(packets(&outside.netns, "from_nodes"), 0);

    // natOutgoing switched on at run time: every agent writes the table;
    // the pod reaches the outside host as its node.
    set_nat_outgoing(&lab, true);
    wait_nat(&lab, true);
    let pods_before = packets(&outside.netns, "from_pods");
    assert!(ping(&p1.netns, OUTSIDE, 3), "{}", lab.logs());
    assert!(ping(&p2.netns, OUTSIDE, 3), "{}", lab.logs());
    assert_eq!(packets(&outside.netns, "from_nodes"), 6);
    assert_eq!(packets(&outside.netns, "from_pods"), pods_before);
    let table = nft(&lab.netns("node-1"), &["list", "table", "inet", "felix"]);
    assert!(table.contains("elements = { 10.244.0.0/16 }"), "{table}");
    let screen = felix_rs::agent::status::render(&lab.status("node-1"));
    assert!(
        screen.contains("nat outgoing pools 10.244.0.0/16 (table inet felix)"),
        "{screen}"
    );

    // Pod to pod across nodes keeps the pod's address.
    assert!(ping(&p1.netns, &p2.address, 3));
    assert_eq!(packets(&p2.netns, "from_pod"), 3);
    assert_eq!(packets(&p2.netns, "from_nodes"), 0);

    // The agent restarts (SIGTERM, then started again) while the pod pings
    // the outside host at 100/s: the table stays through the stop and is
    // written again after the start; no echo is lost.
    let pinging = start_ping(&p1.netns, OUTSIDE, 400);
    std::thread::sleep(Duration::from_millis(500));
    felix_rs::lab::build::stop_agent(&lab.prefix, "node-1", nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    assert!(
        has_table(&lab.netns("node-1")),
        "the table went with the agent"
    );
    felix_rs::lab::build::start_agent(&lab.prefix, "node-1", &lab.bins.felix).unwrap();
    wait_nat(&lab, true);
    let (sent, received, text) = ping_result(pinging);
    assert!(sent >= 380, "{text}");
    assert_eq!(sent, received, "echoes lost across the restart: {text}");

    // natOutgoing switched off: the table goes on every node, the pod's
    // address shows again.
    set_nat_outgoing(&lab, false);
    wait_nat(&lab, false);
    let nodes_before = packets(&outside.netns, "from_nodes");
    let pods_before = packets(&outside.netns, "from_pods");
    assert!(!ping(&p1.netns, OUTSIDE, 2));
    assert_eq!(packets(&outside.netns, "from_nodes"), nodes_before);
    assert!(packets(&outside.netns, "from_pods") >= pods_before + 2);
    drop(outside);
}
