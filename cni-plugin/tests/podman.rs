//! An independent driver: podman 4.3 (Debian) with its CNI backend (which
//! is libcni, the library containerd and CRI-O use) runs a container on a
//! felix-cni network, chained with portmap. The container sees its felix
//! address and default route and pings the node; after `--rm`, podman's
//! DEL has left nothing behind.
//!
//! podman runs in the node's network namespace through `nsenter --net`
//! (not `ip netns exec`, whose fresh /sys hides the cgroup mounts runc
//! needs), with `runc` and explicit ulimits (RECIPES.md).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn available(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn podman_runs_a_container_on_a_felix_network() {
    if skip_unless_root("podman") {
        return;
    }
    for tool in ["podman", "runc", "nsenter"] {
        if !available(tool) {
            println!("SKIPPED: {tool} is not installed (scripts/test.sh installs it)");
            return;
        }
    }
    if !Path::new("/bin/busybox").exists() {
        println!("SKIPPED: /bin/busybox is missing (apt-get install busybox-static)");
        return;
    }
    let node = Node::new("podman");
    let agent = Agent::start("10.108.0.0/16");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // CNI plugin dir with felix-cni; a conflist naming the network.
    std::fs::create_dir_all(d.join("bin")).unwrap();
    std::os::unix::fs::symlink(FELIX_CNI, d.join("bin/felix-cni")).unwrap();
    std::fs::create_dir_all(d.join("net.d")).unwrap();
    std::fs::write(
        d.join("net.d/felixnet.conflist"),
        format!(
            r#"{{"cniVersion":"1.0.0","name":"felixnet","plugins":[
                {{"type":"felix-cni","agent_socket":"{}","mtu":1400}},
                {{"type":"portmap","capabilities":{{"portMappings":true}}}}]}}"#,
            agent.socket.display()
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("containers.conf"),
        format!(
            "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{bin}\", \"{REFERENCE_PLUGINS}\"]\n\
             network_config_dir = \"{netd}\"\n[engine]\ncgroup_manager = \"cgroupfs\"\n\
             events_logger = \"file\"\nruntime = \"runc\"\n",
            bin = d.join("bin").display(),
            netd = d.join("net.d").display()
        ),
    )
    .unwrap();
    // A busybox root file system.
    let rootfs = d.join("rootfs");
    for sub in ["bin", "proc", "sys", "dev", "etc", "tmp"] {
        std::fs::create_dir_all(rootfs.join(sub)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for tool in ["sh", "ip", "ping"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(tool)).unwrap();
    }

    let out = Command::new("nsenter")
        .arg(format!("--net={}", node.ns.path().display()))
        .arg("podman")
        .arg("--root")
        .arg(d.join("root"))
        .arg("--runroot")
        .arg(d.join("runroot"))
        .args(["--storage-driver", "vfs", "run", "--rm"])
        .args([
            "--ulimit",
            "nofile=4096:4096",
            "--ulimit",
            "nproc=4096:4096",
        ])
        .args(["--network", "felixnet", "-p", "18081:8080"])
        .arg("--rootfs")
        .arg(&rootfs)
        .args([
            "/bin/sh",
            "-c",
            &format!("ip -4 -o addr show eth0; ip route; ping -c1 -W3 {NODE_ADDRESS}"),
        ])
        .env("CONTAINERS_CONF", d.join("containers.conf"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "podman: {stdout}\n{stderr}");
    // The container's address is felix's, from the node's block, as a /32.
    let address = stdout
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .unwrap_or_else(|| panic!("no address in {stdout}"));
    let (ip, len) = address.split_once('/').unwrap();
    assert_eq!(len, "32", "{stdout}");
    let ip: std::net::IpAddr = ip.parse().unwrap();
    assert!(agent.node_blocks().iter().any(|b| b.contains(&ip)), "{ip}");
    assert!(
        stdout.contains("default via 169.254.1.1 dev eth0"),
        "{stdout}"
    );
    assert!(stdout.contains("1 packets received"), "{stdout}");
    // podman's DEL (after --rm) took everything away.
    assert!(node.felix_links().is_empty(), "{:?}", node.felix_links());
    assert!(node.felix_routes().is_empty());
    assert!(agent.in_use().is_empty(), "{:?}", agent.in_use());
}
