//! felix-cni in a conflist chain with the reference plugins from Debian's
//! `containernetworking-plugins`, run the way libcni runs a chain (each
//! plugin gets the previous one's result as `prevResult`):
//! - felix-cni -> portmap -> tuning: a host port on the node answers from
//!   the pod, tuning's sysctl lands in the pod;
//! - ptp with `felix-ipam` as its `ipam`: the standard IPAM delegation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Runs `f` on a thread inside the network namespace at `path`.
fn in_netns<T: Send + 'static>(path: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = std::fs::File::open(path).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

fn reference_plugin(name: &str) -> Option<String> {
    let path = format!("{REFERENCE_PLUGINS}/{name}");
    if Path::new(&path).exists() {
        Some(path)
    } else {
        println!("SKIPPED: {path} is missing (apt-get install containernetworking-plugins)");
        None
    }
}

#[test]
fn portmap_and_tuning_after_felix_cni() {
    if skip_unless_root("portmap_chain") {
        return;
    }
    let (Some(portmap), Some(tuning)) = (reference_plugin("portmap"), reference_plugin("tuning"))
    else {
        return;
    };
    let node = Node::new("chain");
    let agent = Agent::start("10.106.0.0/16");
    let server_pod = Netns::new("chain-srv");
    let client_pod = Netns::new("chain-cli");
    let (server_path, client_path) = (server_pod.path(), client_pod.path());
    let host_port = 18080u16;

    // The chain for the server pod: felix-cni, then portmap, then tuning.
    let felix_conf = agent.conf("1.0.0", "");
    let add = felix(
        &node,
        &Call::new("ADD", "chain-srv", Some(&server_path)),
        &felix_conf,
    );
    assert!(add.ok, "{:?}", add.json);
    let server_ip = add.addresses()[0];
    let portmap_conf = json!({
        "cniVersion": "1.0.0",
        "name": "felix-test",
        "type": "portmap",
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": [
            {"hostPort": host_port, "containerPort": 8080, "protocol": "tcp"}
        ]},
        "prevResult": add.json.clone().unwrap(),
    });
    let call = Call::new("ADD", "chain-srv", Some(&server_path));
    let pm = run_plugin(&node, &portmap, &call, &portmap_conf.to_string());
    assert!(pm.ok, "portmap: {:?} {}", pm.json, pm.stderr);
    // portmap passes felix's result on unchanged.
    assert_eq!(pm.addresses(), vec![server_ip]);
    let tuning_conf = json!({
        "cniVersion": "1.0.0",
        "name": "felix-test",
        "type": "tuning",
        "sysctl": {"net.ipv4.conf.eth0.accept_local": "1"},
        "prevResult": pm.json.clone().unwrap(),
    });
    let tu = run_plugin(&node, &tuning, &call, &tuning_conf.to_string());
    assert!(tu.ok, "tuning: {:?} {}", tu.json, tu.stderr);
    assert_eq!(tu.addresses(), vec![server_ip]);
    let out = server_pod.exec(&["sysctl", "-n", "net.ipv4.conf.eth0.accept_local"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");

    // A client pod without port mappings.
    let add_client = felix(
        &node,
        &Call::new("ADD", "chain-cli", Some(&client_path)),
        &felix_conf,
    );
    assert!(add_client.ok, "{:?}", add_client.json);

    // The server listens on the pod's port 8080; the client connects to
    // the node's address and host port.
    let listener = in_netns(&server_path, || TcpListener::bind("0.0.0.0:8080").unwrap());
    let server = std::thread::spawn(move || {
        let (mut stream, peer) = listener.accept().unwrap();
        stream.write_all(b"felix-pong\n").unwrap();
        peer
    });
    let answer = in_netns(&client_path, move || {
        let target: SocketAddr = format!("{NODE_ADDRESS}:{host_port}").parse().unwrap();
        let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(5)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    });
    assert_eq!(answer, "felix-pong\n");
    server.join().unwrap();

    // CHECK through the chain (felix with the final result), then DEL in
    // reverse order, as libcni does.
    let final_result = tu.json.clone().unwrap();
    let check_conf = agent.conf("1.0.0", &format!(r#","prevResult":{final_result}"#));
    let check = felix(
        &node,
        &Call::new("CHECK", "chain-srv", Some(&server_path)),
        &check_conf,
    );
    assert!(check.ok, "{:?}", check.json);
    let mut del_tuning = tuning_conf.clone();
    del_tuning["prevResult"] = final_result.clone();
    assert!(
        run_plugin(
            &node,
            &tuning,
            &Call::new("DEL", "chain-srv", Some(&server_path)),
            &del_tuning.to_string()
        )
        .ok
    );
    let mut del_pm = portmap_conf.clone();
    del_pm["prevResult"] = final_result;
    let pm_del = run_plugin(
        &node,
        &portmap,
        &Call::new("DEL", "chain-srv", Some(&server_path)),
        &del_pm.to_string(),
    );
    assert!(pm_del.ok, "{:?}", pm_del.json);
    for (id, path) in [("chain-srv", &server_path), ("chain-cli", &client_path)] {
        let del = felix(&node, &Call::new("DEL", id, Some(path)), &felix_conf);
        assert!(del.ok, "{:?}", del.json);
    }
    assert!(node.felix_links().is_empty());
    assert!(agent.in_use().is_empty());
    // portmap took its DNAT rule for the pod away again.
    let rules = node.ns.exec(&["iptables-save", "-t", "nat"]);
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(!rules.contains(&server_ip.to_string()), "{rules}");
}

#[test]
fn felix_ipam_as_the_ipam_of_the_reference_ptp_plugin() {
    if skip_unless_root("ptp_felix_ipam") {
        return;
    }
    let Some(_) = reference_plugin("ptp") else {
        return;
    };
    let node = Node::new("ptp");
    let agent = Agent::start("10.107.0.0/16");
    let pod = Netns::new("ptp-pod");
    let path = pod.path();
    // CNI_PATH holds felix-ipam next to the reference plugins.
    let bin = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(FELIX_IPAM, bin.path().join("felix-ipam")).unwrap();
    let cni_path = format!("{}:{REFERENCE_PLUGINS}", bin.path().display());
    let conf = json!({
        "cniVersion": "0.4.0",
        "name": "felix-ptp",
        "type": "ptp",
        "ipam": {"type": "felix-ipam", "agent_socket": agent.socket},
    })
    .to_string();
    let mut call = Call::new("ADD", "ptp-c1", Some(&path));
    call.path = &cni_path;
    let add = run_plugin(&node, &format!("{REFERENCE_PLUGINS}/ptp"), &call, &conf);
    assert!(add.ok, "{:?} {}", add.json, add.stderr);
    let json: Value = add.json.clone().unwrap();
    assert_eq!(json["cniVersion"], "0.4.0");
    let address = add.addresses()[0];
    assert!(agent.node_blocks().iter().any(|b| b.contains(&address)));
    // The node reaches the pod over ptp's veth with felix's address.
    let out = node
        .ns
        .exec(&["ping", "-n", "-c1", "-W3", &address.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // IPAM CHECK through ptp, then DEL releases the address.
    let mut check_conf: Value = serde_json::from_str(&conf).unwrap();
    check_conf["prevResult"] = json;
    let mut check = Call::new("CHECK", "ptp-c1", Some(&path));
    check.path = &cni_path;
    let run = run_plugin(
        &node,
        &format!("{REFERENCE_PLUGINS}/ptp"),
        &check,
        &check_conf.to_string(),
    );
    assert!(run.ok, "CHECK: {:?} {}", run.json, run.stderr);
    let mut del = Call::new("DEL", "ptp-c1", Some(&path));
    del.path = &cni_path;
    let run = run_plugin(&node, &format!("{REFERENCE_PLUGINS}/ptp"), &del, &conf);
    assert!(run.ok, "DEL: {:?} {}", run.json, run.stderr);
    assert!(agent.in_use().is_empty());
}
