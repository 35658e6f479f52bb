//! `felix bgp run`, `status` and `routes` as an operator uses them: real
//! processes of the built binary peering over loopback (127.0.0.1 and
//! 127.0.0.2, unprivileged ports), asked over their control sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use felix_rs::control;
use serde_json::Value;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

const FELIX: &str = env!("CARGO_BIN_EXE_felix");

fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn felix(args: &[&str]) -> Output {
    Command::new(FELIX).args(args).output().unwrap()
}

/// A `felix bgp run` process, killed if the test ends without stopping it.
struct Daemon {
    child: Child,
    socket: PathBuf,
}

impl Daemon {
    fn start(args: &[&str], socket: &Path) -> Daemon {
        let child = Command::new(FELIX)
            .args(["bgp", "run", "--control-socket"])
            .arg(socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut daemon = Daemon {
            child,
            socket: socket.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        // Ready once the daemon answers on the control socket. A socket
        // that accepts is not enough: a stale one (the test makes one) can
        // still accept while a child process forked before its close holds
        // it, and then this daemon was not even bound yet.
        while control::request(socket, &control::Request::Status).is_err() {
            if let Some(status) = daemon.child.try_wait().unwrap() {
                panic!("felix bgp run exited early: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "no answer on the control socket after 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        daemon
    }

    fn query(&self, args: &[&str]) -> Value {
        let out = Command::new(FELIX)
            .arg("bgp")
            .args(args)
            .args(["--output", "json", "--control-socket"])
            .arg(&self.socket)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "felix bgp {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn status(&self) -> Value {
        self.query(&["status"])
    }

    /// SIGTERM, then the exit status and what it wrote to stderr.
    fn terminate(mut self) -> (ExitStatus, String) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "no exit 20 s after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            use std::io::Read;
            pipe.read_to_string(&mut stderr).unwrap();
        }
        (status, stderr)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `daemon`'s status until `check` holds for its only peer.
fn wait_for_peer(daemon: &Daemon, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = daemon.status();
        let peer = &status["peers"][0];
        if check(peer) {
            return status;
        }
        assert!(Instant::now() < deadline, "{what}: last status {status:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn two_speakers_peer_announce_and_stop() {
    let dir = tempfile::tempdir().unwrap();
    let (port_a, port_b) = (free_port("127.0.0.1"), free_port("127.0.0.2"));
    // A: everything from the file, as a route reflector would be set up.
    let config_a = dir.path().join("a.toml");
    std::fs::write(
        &config_a,
        format!(
            r#"
asn = 65001
router_id = "127.0.0.1"
listen = "127.0.0.1:{port_a}"
hold_time = 30
originate = [{{ prefix = "10.1.0.0/24", communities = ["65001:7"] }}]

[[neighbor]]
address = "127.0.0.2"
asn = 65002
port = {port_b}
local_address = "127.0.0.1"
"#
        ),
    )
    .unwrap();
    // B: the neighbour's port from a file, the rest from flags.
    let config_b = dir.path().join("b.toml");
    std::fs::write(
        &config_b,
        format!(
            r#"
[[neighbor]]
address = "127.0.0.1"
asn = 65001
port = {port_a}
local_address = "127.0.0.2"
"#
        ),
    )
    .unwrap();
    let socket_a = dir.path().join("a/bgp.sock");
    let socket_b = dir.path().join("b/bgp.sock");
    let a = Daemon::start(&["--config", config_a.to_str().unwrap()], &socket_a);
    let listen_b = format!("127.0.0.2:{port_b}");
    let b = Daemon::start(
        &[
            "--config",
            config_b.to_str().unwrap(),
            "--asn",
            "65002",
            "--router-id",
            "127.0.0.2",
            "--listen",
            &listen_b,
            "--originate",
            "10.2.0.0/24",
        ],
        &socket_b,
    );

    let established = |p: &Value| p["state"] == "Established";
    wait_for_peer(&a, "A's peer up", |p| established(p) && p["received"] == 1);
    let status_b = wait_for_peer(&b, "B's peer up", |p| {
        established(p) && p["received"] == 1 && p["advertised"] == 1
    });
    assert_eq!(status_b["asn"], 65002);
    assert_eq!(status_b["router_id"], "127.0.0.2");
    assert_eq!(status_b["listen"], listen_b.as_str());
    let peer = &status_b["peers"][0];
    assert_eq!(peer["address"], "127.0.0.1");
    assert_eq!(peer["asn"], 65001);
    assert_eq!(peer["accepted"], 1);
    assert_eq!(peer["rr_client"], false);
    assert!(peer["uptime_secs"].as_u64().is_some());

    // B learned A's prefix, with A's AS and community.
    let routes = b.query(&["routes"]);
    let learned = routes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["prefix"] == "10.1.0.0/24")
        .unwrap_or_else(|| panic!("10.1.0.0/24 missing: {routes:#}"));
    let path = &learned["paths"][0];
    assert_eq!(path["best"], true);
    assert_eq!(path["from"], "127.0.0.1");
    assert_eq!(path["next_hop"], "127.0.0.1");
    assert_eq!(path["as_path"], "65001");
    assert_eq!(path["communities"], serde_json::json!(["65001:7"]));
    // A prefix filter: only what lies inside it.
    let filtered = b.query(&["routes", "10.1.0.0/16"]);
    assert_eq!(filtered.as_array().unwrap().len(), 1, "{filtered:#}");
    assert_eq!(filtered[0]["prefix"], "10.1.0.0/24");
    // And A learned B's.
    let routes_a = a.query(&["routes", "10.2.0.0/24"]);
    assert_eq!(routes_a[0]["paths"][0]["as_path"], "65002");

    // The tables, as an operator reads them.
    let out = felix(&[
        "bgp",
        "status",
        "--control-socket",
        socket_b.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("BGP speaker AS 65002, router id 127.0.0.2"),
        "{text}"
    );
    assert!(text.contains("Recv/Acc/Adv"), "{text}");
    let line = text.lines().find(|l| l.starts_with("127.0.0.1")).unwrap();
    assert!(
        line.contains("Established") && line.contains("1/1/1"),
        "{text}"
    );
    let out = felix(&[
        "bgp",
        "routes",
        "--control-socket",
        socket_b.to_str().unwrap(),
    ]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("*  10.1.0.0/24  127.0.0.1  127.0.0.1  65001"),
        "{text}"
    );

    // ROUTE-REFRESH through the control socket.
    let out = felix(&[
        "bgp",
        "refresh",
        "127.0.0.2",
        "--control-socket",
        socket_a.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text, "Route refresh requested from 127.0.0.2\n");
    let refreshed = a.query(&["refresh", "127.0.0.2"]);
    assert_eq!(refreshed["refreshed"], "127.0.0.2");
    let out = felix(&[
        "bgp",
        "refresh",
        "127.0.0.9",
        "--control-socket",
        socket_a.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no neighbor 127.0.0.9"), "{stderr}");
    // B answers the refresh by sending its route again: A still has it.
    let routes_a = a.query(&["routes", "10.2.0.0/24"]);
    assert_eq!(routes_a[0]["paths"][0]["as_path"], "65002");

    // SIGTERM: clean exit, socket gone, the peer told why.
    let (status, stderr) = a.terminate();
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.contains("SIGTERM"), "{stderr}");
    assert!(!socket_a.exists());
    let status_b = wait_for_peer(&b, "B sees A leave", |p| !established(p));
    let error = status_b["peers"][0]["last_error"].as_str().unwrap_or("");
    assert!(error.contains("shutting down"), "{status_b:#}");
    assert!(b
        .query(&["routes", "10.1.0.0/24"])
        .as_array()
        .unwrap()
        .is_empty());
    let (status, stderr) = b.terminate();
    assert!(status.success(), "{status}: {stderr}");
    assert!(!socket_b.exists());
}

#[test]
fn one_daemon_per_socket_and_stale_sockets_are_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("bgp.sock");
    // A socket file left behind by a daemon that died.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let first = Daemon::start(&["--asn", "65000", "--router-id", "192.0.2.1"], &socket);
    let status = first.status();
    assert_eq!(status["asn"], 65000);
    assert_eq!(status["listen"], Value::Null);
    assert_eq!(status["peers"], serde_json::json!([]));

    let out = Command::new(FELIX)
        .args(["bgp", "run", "--asn", "65000", "--router-id", "192.0.2.1"])
        .arg("--control-socket")
        .arg(&socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("another felix bgp daemon is answering on"),
        "{stderr}"
    );
    // The first one is unharmed.
    assert_eq!(first.status()["asn"], 65000);
    let (status, _) = first.terminate();
    assert!(status.success());
    assert!(!socket.exists());
}

#[test]
fn bad_configuration_exits_2_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("never.sock");
    let socket = socket.to_str().unwrap();
    let file = dir.path().join("f.toml");
    std::fs::write(
        &file,
        "asn = 65000\nrouter_id = \"192.0.2.1\"\n[[neighbor]]\naddress = \"192.0.2.2\"\nasn = 65001\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["--asn", "x", "--router-id", "192.0.2.1"],
            "bad AS number \"x\"",
        ),
        (&["--asn", "65000"], "no router id"),
        (
            &["--asn", "65000", "--router-id", "192.0.2"],
            "bad router id \"192.0.2\"",
        ),
        (
            &[
                "--asn",
                "65000",
                "--router-id",
                "192.0.2.1",
                "--neighbor",
                "2001:db8::1:65001",
            ],
            "brackets",
        ),
        (
            &[
                "--asn",
                "65000",
                "--router-id",
                "192.0.2.1",
                "--rr-client",
                "192.0.2.9",
            ],
            "--rr-client 192.0.2.9: no such neighbor",
        ),
        (
            &["--config", file, "--neighbor", "192.0.2.2:65001"],
            "neighbor 192.0.2.2 is configured twice",
        ),
        (
            &["--config", "/nonexistent.toml"],
            "reading /nonexistent.toml",
        ),
    ];
    for (args, message) in cases {
        let out = Command::new(FELIX)
            .args(["bgp", "run", "--control-socket", socket])
            .args(*args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
    // A flag clap does not know is a usage error too.
    let out = felix(&["bgp", "run", "--asm", "65000"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!Path::new(socket).exists());
}

#[test]
fn status_without_a_daemon_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("bgp.sock");
    for cmd in ["status", "routes"] {
        let out = Command::new(FELIX)
            .args(["bgp", cmd, "--control-socket"])
            .arg(&socket)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("no felix bgp daemon at {}", socket.display())),
            "{stderr}"
        );
    }
}
