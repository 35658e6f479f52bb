//! `felix node pod-api` as a process: it serves the plugin's protocol on
//! its socket from a SQLite datastore, creates the pool it is given, and
//! removes its socket on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use felix_cni::api::{self, ApiErrorKind, Attachment, ClientError, Request, Response};

const FELIX: &str = env!("CARGO_BIN_EXE_felix");

#[test]
fn pod_api_serves_assign_lookup_release_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/pod-api.sock");
    let datastore = format!("sqlite:{}", dir.path().join("ipam.db").display());
    let mut child = Command::new(FELIX)
        .args([
            "node",
            "pod-api",
            "--node",
            "node-1",
            "--pool",
            "10.77.0.0/16",
        ])
        .arg("--socket")
        .arg(&socket)
        .args(["--datastore", &datastore])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "no socket after 20 s");
        assert!(child.try_wait().unwrap().is_none(), "felix exited early");
        std::thread::sleep(Duration::from_millis(20));
    }
    let t = Duration::from_secs(5);
    let status = api::call(&socket, &Request::Status, t).unwrap();
    assert_eq!(
        status,
        Response::Ready {
            node: "node-1".into()
        }
    );
    let attachment = Attachment {
        network: "k8s".into(),
        container_id: "abc".into(),
        ifname: "eth0".into(),
    };
    let assign = Request::Assign {
        attachment: attachment.clone(),
        pod_namespace: Some("default".into()),
        pod_name: Some("web".into()),
        num_v4: 1,
        num_v6: 0,
    };
    let Response::Addresses(first) = api::call(&socket, &assign, t).unwrap() else {
        panic!("no addresses")
    };
    assert_eq!(first.len(), 1);
    assert!("10.77.0.0/16"
        .parse::<ipnet::IpNet>()
        .unwrap()
        .contains(&first[0].addr()));
    // With its block's prefix length (IPv4 blocks are /26 by default).
    assert_eq!(first[0].prefix_len(), 26);
    // Assign is idempotent per attachment.
    assert_eq!(
        api::call(&socket, &assign, t).unwrap(),
        Response::Addresses(first.clone())
    );
    let lookup = Request::Lookup {
        attachment: attachment.clone(),
    };
    assert_eq!(
        api::call(&socket, &lookup, t).unwrap(),
        Response::Addresses(first)
    );
    let release = Request::Release { attachment };
    assert_eq!(
        api::call(&socket, &release, t).unwrap(),
        Response::Released(1)
    );
    assert_eq!(
        api::call(&socket, &release, t).unwrap(),
        Response::Released(0)
    );
    match api::call(&socket, &lookup, t) {
        Err(ClientError::Refused(e)) => assert_eq!(e.kind, ApiErrorKind::NotFound),
        other => panic!("lookup after release: {other:?}"),
    }
    // A second server on the same socket is refused.
    let second = Command::new(FELIX)
        .args([
            "node",
            "pod-api",
            "--node",
            "node-1",
            "--datastore",
            &datastore,
        ])
        .arg("--socket")
        .arg(&socket)
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("another process answers"));

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!socket.exists(), "socket left behind");
}

#[test]
fn a_bad_request_gets_a_typed_error_not_a_hangup() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("pod-api.sock");
    let datastore = format!("sqlite:{}", dir.path().join("ipam.db").display());
    let mut child = Command::new(FELIX)
        .args([
            "node",
            "pod-api",
            "--node",
            "node-1",
            "--datastore",
            &datastore,
        ])
        .arg("--socket")
        .arg(&socket)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    stream.write_all(b"{\"op\":\"frobnicate\"}\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let response: Response = serde_json::from_str(&answer).unwrap();
    let Response::Error(e) = response else {
        panic!("{answer}")
    };
    assert_eq!(e.kind, ApiErrorKind::Invalid);
    // No pool: assign says exhausted (no pool selects the node).
    let assign = Request::Assign {
        attachment: Attachment {
            network: "k8s".into(),
            container_id: "x".into(),
            ifname: "eth0".into(),
        },
        pod_namespace: None,
        pod_name: None,
        num_v4: 1,
        num_v6: 0,
    };
    match api::call(&socket, &assign, Duration::from_secs(5)) {
        Err(ClientError::Refused(e)) => assert_eq!(e.kind, ApiErrorKind::Exhausted, "{e}"),
        other => panic!("{other:?}"),
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}
