//! The `felix` binary: `felix bgp decode` prints one JSON object per message
//! and exits 0 (all decoded), 1 (a message had an error) or 2 (usage/IO).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use bgp::wire::{
    AddPathFamilies, AsPath, AttributeValue, Family, Message, Nlri, Open, Origin, PathAttribute,
    SessionParams, Update,
};
use bytes::Bytes;
use felix_rs::pcap::write_bgp_pcap;
use serde_json::Value;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn felix(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_felix"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run felix");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.unwrap_or_default())
        .expect("write stdin");
    drop(input);
    child.wait_with_output().expect("felix output")
}

fn json_lines(output: &Output) -> Vec<Value> {
    String::from_utf8(output.stdout.clone())
        .expect("UTF-8 output")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn tmp_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-test-{name}"))
}

fn open(asn: u32, id: [u8; 4]) -> Open {
    Open::new(asn, 90, Ipv4Addr::from(id), vec![])
}

fn update(path_id: Option<u32>) -> Update {
    let prefix = "192.0.2.0/24".parse().expect("prefix");
    Update {
        withdrawn: vec![],
        attributes: vec![
            PathAttribute::new(AttributeValue::Origin(Origin::Igp)),
            PathAttribute::new(AttributeValue::AsPath(AsPath::sequence(vec![
                4_200_000_001,
            ]))),
            PathAttribute::new(AttributeValue::NextHop(Ipv4Addr::new(10, 0, 0, 1))),
        ],
        nlri: vec![match path_id {
            Some(id) => Nlri::with_path_id(prefix, id),
            None => Nlri::new(prefix),
        }],
        faults: vec![],
    }
}

#[test]
fn help_lists_bgp_decode() {
    let top = felix(&["--help"], None);
    assert!(top.status.success());
    assert!(String::from_utf8_lossy(&top.stdout).contains("bgp"));
    let bgp = felix(&["bgp", "--help"], None);
    assert!(String::from_utf8_lossy(&bgp.stdout).contains("decode"));
}

#[test]
fn decodes_a_capture_to_json_lines() {
    let client = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 40000);
    let server = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 179);
    let four_octet = SessionParams {
        four_octet_as: true,
        ..SessionParams::default()
    };
    let default = SessionParams::default();
    let payloads = vec![
        (
            true,
            Message::Open(open(4_200_000_001, [10, 0, 0, 1])).to_bytes(&default),
        ),
        (
            false,
            Message::Open(open(65002, [10, 0, 0, 2])).to_bytes(&default),
        ),
        (true, Message::Keepalive.to_bytes(&default)),
        (true, Message::Update(update(None)).to_bytes(&four_octet)),
    ];
    let payloads: Vec<(bool, Bytes)> = payloads
        .into_iter()
        .map(|(c, b)| (c, b.expect("encode")))
        .collect();
    let path = tmp_path("session.pcap");
    write_bgp_pcap(&path, client, server, &payloads).expect("write");

    let output = felix(
        &["bgp", "decode", "--pcap", path.to_str().expect("path")],
        None,
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines = json_lines(&output);
    assert_eq!(lines.len(), 4);
    let first = &lines[0];
    assert_eq!(first["frame"], 4);
    assert_eq!(first["src"], "10.0.0.1:40000");
    assert_eq!(first["dst"], "10.0.0.2:179");
    assert_eq!(first["length"], payloads[0].1.len());
    assert!((first["time"].as_f64().expect("time") - 1_700_000_000.003).abs() < 1e-6);
    assert_eq!(first["message"]["type"], "OPEN");
    assert_eq!(lines[1]["src"], "10.0.0.2:179");
    assert_eq!(lines[2]["message"]["type"], "KEEPALIVE");
    // Decoded with the negotiated 4-octet AS: the path comes out whole.
    let update = &lines[3];
    assert_eq!(update["frame"], 7);
    assert_eq!(update["message"]["type"], "UPDATE");
    let as_path = update["message"]["attributes"]
        .as_array()
        .expect("attributes")
        .iter()
        .find_map(|a| a.get("as-path"))
        .expect("AS_PATH in JSON");
    assert!(as_path.to_string().contains("4200000001"), "{as_path}");
    // Same answer through stdin.
    let data = std::fs::read(&path).expect("read");
    let piped = felix(&["bgp", "decode", "--pcap", "-"], Some(&data));
    assert_eq!(piped.stdout, output.stdout);
}

#[test]
fn decodes_raw_stream_with_flags() {
    let params = SessionParams {
        four_octet_as: true,
        extended_message: false,
        add_path: AddPathFamilies::default().with(Family::IPV4_UNICAST),
    };
    let mut stream = Vec::new();
    stream.extend_from_slice(&Message::Keepalive.to_bytes(&params).expect("encode"));
    stream.extend_from_slice(
        &Message::Update(update(Some(42)))
            .to_bytes(&params)
            .expect("encode"),
    );
    let path = tmp_path("stream.bin");
    std::fs::write(&path, &stream).expect("write");
    let path = path.to_str().expect("path");

    let output = felix(
        &[
            "bgp",
            "decode",
            "--four-octet-as",
            "--add-path",
            "ipv4-unicast",
            path,
        ],
        None,
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines = json_lines(&output);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["offset"], 0);
    assert_eq!(lines[0]["length"], 19);
    assert_eq!(lines[1]["offset"], 19);
    assert_eq!(lines[1]["message"]["nlri"][0]["path_id"], 42);
    assert!(lines[0].get("frame").is_none());

    // Without --add-path the same bytes mean something else: the path id is
    // read as prefixes, and the tool says so with exit code 1.
    let output = felix(&["bgp", "decode", "--four-octet-as", path], None);
    assert_eq!(output.status.code(), Some(1));
    let lines = json_lines(&output);
    assert!(lines[1].get("error").is_some(), "{}", lines[1]);
    assert!(lines[1]["raw"]
        .as_str()
        .expect("raw hex")
        .starts_with("ffffffff"));
    assert!(lines[1]["reason"].is_string());
}

#[test]
fn truncated_stream_is_reported_with_exit_code_1() {
    let keepalive = Message::Keepalive
        .to_bytes(&SessionParams::default())
        .expect("encode");
    let mut data = keepalive.to_vec();
    data.extend_from_slice(&keepalive[..10]);
    let output = felix(&["bgp", "decode", "-"], Some(&data));
    assert_eq!(output.status.code(), Some(1));
    let lines = json_lines(&output);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["offset"], 19);
    assert_eq!(lines[1]["error"]["kind"]["truncated"]["available"], 10);
    assert_eq!(lines[1]["raw"], "ff".repeat(10));
}

#[test]
fn usage_and_io_errors_exit_2() {
    let missing = tmp_path("no-such-file");
    let output = felix(&["bgp", "decode", missing.to_str().expect("path")], None);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no-such-file"));

    let output = felix(&["bgp", "decode", "--add-path", "ipv5-unicast", "-"], None);
    assert_eq!(output.status.code(), Some(2));

    let output = felix(&["bgp", "decode", "--pcap", "-"], Some(b"not a capture"));
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a pcap"));

    // `felix node run` with a configuration that cannot be read.
    let output = felix(
        &["node", "run", "--config", missing.to_str().expect("path")],
        None,
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no-such-file"));
}
