//! Every kind of bad input, through the real binary: refused with the
//! spec's code and a message that names the problem, and nothing made —
//! no veth on the node, no interface in the pod, no address taken.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

struct Case {
    what: &'static str,
    code: u64,
    needle: &'static str,
}

fn assert_refused(node: &Node, agent: &Agent, pod: &Netns, run: &Run, case: &Case) {
    assert!(!run.ok, "{}: accepted: {:?}", case.what, run.json);
    assert_eq!(
        run.code(),
        Some(case.code),
        "{}: {:?} {}",
        case.what,
        run.json,
        run.stderr
    );
    assert!(
        run.msg().contains(case.needle),
        "{}: message {:?} does not name {:?}",
        case.what,
        run.msg(),
        case.needle
    );
    assert!(node.felix_links().is_empty(), "{}: veth left", case.what);
    assert!(agent.in_use().is_empty(), "{}: address taken", case.what);
    let out = pod.exec(&["ip", "-o", "link"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        1,
        "{}: pod has more than lo",
        case.what
    );
}

#[test]
fn bad_environment_is_refused_with_code_4_and_leaves_nothing() {
    if skip_unless_root("bad_environment") {
        return;
    }
    let node = Node::new("bad-env");
    let agent = Agent::start("10.98.0.0/16");
    let pod = Netns::new("bad-env-pod");
    let conf = agent.conf("1.1.0", "");
    let good_path = pod.path();
    let relative = std::path::PathBuf::from("var/run/netns/x");
    let not_netns = std::path::PathBuf::from("/etc/hostname");
    let missing =
        std::path::PathBuf::from(format!("/var/run/netns/fxc{}-none", std::process::id()));
    let dotdot = std::path::PathBuf::from("/var/run/netns/../netns/x");
    let cases: Vec<(Call<'_>, Case)> = vec![
        (
            Call {
                command: "FROB",
                ..Call::new("ADD", "c1", Some(&good_path))
            },
            Case {
                what: "unknown command",
                code: 4,
                needle: "CNI_COMMAND",
            },
        ),
        (
            Call::new("ADD", "c1", Some(&relative)),
            Case {
                what: "relative netns",
                code: 4,
                needle: "not an absolute path",
            },
        ),
        (
            Call::new("ADD", "c1", Some(&dotdot)),
            Case {
                what: "netns with ..",
                code: 4,
                needle: "..",
            },
        ),
        (
            Call::new("ADD", "c1", Some(&not_netns)),
            Case {
                what: "netns not a namespace",
                code: 4,
                needle: "not a namespace",
            },
        ),
        (
            Call::new("ADD", "c1", Some(&missing)),
            Case {
                what: "netns missing",
                code: 4,
                needle: "does not exist",
            },
        ),
        (
            Call::new("ADD", "c1", None),
            Case {
                what: "no netns",
                code: 4,
                needle: "CNI_NETNS",
            },
        ),
        (
            Call {
                ifname: "",
                ..Call::new("ADD", "c1", Some(&good_path))
            },
            Case {
                what: "empty ifname",
                code: 4,
                needle: "CNI_IFNAME",
            },
        ),
        (
            Call {
                ifname: "sixteen-bytes-xx",
                ..Call::new("ADD", "c1", Some(&good_path))
            },
            Case {
                what: "long ifname",
                code: 4,
                needle: "longer than 15",
            },
        ),
        (
            Call {
                ifname: "eth/0",
                ..Call::new("ADD", "c1", Some(&good_path))
            },
            Case {
                what: "ifname with /",
                code: 4,
                needle: "CNI_IFNAME",
            },
        ),
        (
            Call::new("ADD", "../../etc/passwd", Some(&good_path)),
            Case {
                what: "container id with path",
                code: 4,
                needle: "CNI_CONTAINERID",
            },
        ),
        (
            Call::new("ADD", "a/b", Some(&good_path)),
            Case {
                what: "container id with /",
                code: 4,
                needle: "CNI_CONTAINERID",
            },
        ),
        (
            Call::new("ADD", "", Some(&good_path)),
            Case {
                what: "empty container id",
                code: 4,
                needle: "CNI_CONTAINERID",
            },
        ),
        (
            Call {
                args: "K8S_POD_NAME",
                ..Call::new("ADD", "c1", Some(&good_path))
            },
            Case {
                what: "CNI_ARGS not KEY=VALUE",
                code: 4,
                needle: "CNI_ARGS",
            },
        ),
    ];
    for (call, case) in &cases {
        let run = felix(&node, call, &conf);
        assert_refused(&node, &agent, &pod, &run, case);
    }
}

#[test]
fn bad_config_is_refused_with_codes_1_2_6_7_and_leaves_nothing() {
    if skip_unless_root("bad_config") {
        return;
    }
    let node = Node::new("bad-conf");
    let agent = Agent::start("10.99.0.0/16");
    let pod = Netns::new("bad-conf-pod");
    let path = pod.path();
    let socket = agent.socket.display().to_string();
    let with = |extra: &str| agent.conf("1.1.0", extra);
    let cases: Vec<(String, Case)> = vec![
        (
            "{".into(),
            Case {
                what: "not JSON",
                code: 6,
                needle: "JSON",
            },
        ),
        (
            format!(
                r#"{{"cniVersion":"0.2.0","name":"n","type":"felix-cni","agent_socket":"{socket}"}}"#
            ),
            Case {
                what: "old version",
                code: 1,
                needle: "0.2.0",
            },
        ),
        (
            with(r#","mut":1400"#),
            Case {
                what: "unknown field",
                code: 2,
                needle: "\"mut\": 1400",
            },
        ),
        (
            with(r#","ipam":{"type":"host-local"}"#),
            Case {
                what: "ipam section",
                code: 2,
                needle: "ipam",
            },
        ),
        (
            agent
                .conf("1.1.0", "")
                .replace(r#""mtu":1400"#, r#""mtu":0"#),
            Case {
                what: "mtu 0",
                code: 7,
                needle: "mtu 0",
            },
        ),
        (
            agent
                .conf("1.1.0", "")
                .replace(r#""mtu":1400"#, r#""mtu":1000000"#),
            Case {
                what: "mtu huge",
                code: 7,
                needle: "mtu 1000000",
            },
        ),
        (
            agent
                .conf("1.1.0", r#","assign_ipv6":true"#)
                .replace(r#""mtu":1400"#, r#""mtu":1200"#),
            Case {
                what: "mtu below IPv6 minimum",
                code: 7,
                needle: "1280",
            },
        ),
        (
            agent
                .conf("1.1.0", "")
                .replace(r#""name":"felix-test""#, r#""name":"a b""#),
            Case {
                what: "bad network name",
                code: 7,
                needle: "name",
            },
        ),
        (
            with(r#","agent_socket":"relative.sock""#),
            Case {
                what: "relative socket",
                code: 7,
                needle: "agent_socket",
            },
        ),
    ];
    for (conf, case) in &cases {
        let run = felix(&node, &Call::new("ADD", "c1", Some(&path)), conf);
        assert_refused(&node, &agent, &pod, &run, case);
    }
    // CHECK does not exist before 0.4.0, STATUS and GC before 1.1.0.
    let old = agent.conf("0.3.1", "");
    let run = felix(&node, &Call::new("CHECK", "c1", Some(&path)), &old);
    assert_refused(
        &node,
        &agent,
        &pod,
        &run,
        &Case {
            what: "CHECK in 0.3.1",
            code: 1,
            needle: "0.4.0",
        },
    );
    assert_eq!(run.json.as_ref().unwrap()["cniVersion"], "0.3.1");
    let v1 = agent.conf("1.0.0", "");
    let run = felix(&node, &Call::new("GC", "", None), &v1);
    assert_refused(
        &node,
        &agent,
        &pod,
        &run,
        &Case {
            what: "GC in 1.0.0",
            code: 1,
            needle: "1.1.0",
        },
    );
}
