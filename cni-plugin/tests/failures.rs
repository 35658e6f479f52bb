//! Failures half-way and the verbs around them: the agent down or dying
//! mid-ADD, an address already routed on the node, the pod's netns deleted
//! between calls, an interface name taken, a partial earlier ADD, GC,
//! STATUS. Each rolls back everything and says what happened.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

fn pod_links(pod: &Netns) -> usize {
    let out = pod.exec(&["ip", "-o", "link"]);
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[test]
fn agent_down_at_add_rolls_back_the_veth_and_status_says_so() {
    if skip_unless_root("agent_down") {
        return;
    }
    let node = Node::new("down");
    let mut agent = Agent::start("10.100.0.0/16");
    let pod = Netns::new("down-pod");
    let path = pod.path();
    let conf = agent.conf("1.1.0", "");
    let status = felix(&node, &Call::new("STATUS", "", None), &conf);
    assert!(status.ok, "{:?}", status.json);

    agent.stop();
    let run = felix(&node, &Call::new("ADD", "c-down", Some(&path)), &conf);
    assert!(!run.ok);
    assert_eq!(run.code(), Some(11), "{:?}", run.json);
    assert!(
        run.msg().contains("cannot reach the felix agent"),
        "{}",
        run.msg()
    );
    let details = run.json.as_ref().unwrap()["details"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(details.contains("deleted veth fx"), "{details}");
    assert!(node.felix_links().is_empty());
    assert_eq!(pod_links(&pod), 1);
    let status = felix(&node, &Call::new("STATUS", "", None), &conf);
    assert_eq!(status.code(), Some(50), "{:?}", status.json);

    // Back up: the same ADD works.
    agent.serve();
    let run = felix(&node, &Call::new("ADD", "c-down", Some(&path)), &conf);
    assert!(run.ok, "{:?}", run.json);
    assert!(felix(&node, &Call::new("DEL", "c-down", Some(&path)), &conf).ok);
    assert!(agent.in_use().is_empty());
}

#[test]
fn agent_dying_mid_add_rolls_back_and_asks_for_release() {
    if skip_unless_root("agent_dying") {
        return;
    }
    let node = Node::new("dying");
    let pod = Netns::new("dying-pod");
    let path = pod.path();
    // The agent reads the assign and hangs up; then answers the release.
    let agent = ScriptedAgent::start(vec![None, Some(r#"{"released":1}"#)]);
    let run = felix(
        &node,
        &Call::new("ADD", "c-dying", Some(&path)),
        &agent.conf(),
    );
    assert_eq!(run.code(), Some(11), "{:?}", run.json);
    assert!(run.msg().contains("did not answer"), "{}", run.msg());
    assert!(node.felix_links().is_empty());
    assert_eq!(pod_links(&pod), 1);
    let requests = agent.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[0]["op"], "assign");
    assert_eq!(requests[1]["op"], "release");
    assert_eq!(requests[1]["attachment"]["container_id"], "c-dying");
}

#[test]
fn address_already_routed_is_a_conflict_and_everything_is_undone() {
    if skip_unless_root("address_conflict") {
        return;
    }
    let node = Node::new("conflict");
    let pod = Netns::new("conflict-pod");
    let path = pod.path();
    // Something else on the node routes 10.101.0.5 already.
    node.ns.ip(&["route", "add", "10.101.0.5/32", "dev", "up0"]);
    let agent = ScriptedAgent::start(vec![
        Some(r#"{"addresses":["10.101.0.5/32"]}"#),
        Some(r#"{"released":1}"#),
    ]);
    let run = felix(
        &node,
        &Call::new("ADD", "c-conflict", Some(&path)),
        &agent.conf(),
    );
    assert_eq!(run.code(), Some(104), "{:?}", run.json);
    assert!(
        run.msg().contains("10.101.0.5 is already routed"),
        "{}",
        run.msg()
    );
    assert!(node.felix_links().is_empty());
    assert_eq!(pod_links(&pod), 1);
    // The other route is untouched.
    assert!(node
        .ns
        .ip(&["route", "show", "10.101.0.5"])
        .contains("dev up0"));
    let requests = agent.requests();
    assert_eq!(requests[1]["op"], "release", "{requests:?}");
}

#[test]
fn netns_deleted_between_calls() {
    if skip_unless_root("netns_deleted") {
        return;
    }
    let node = Node::new("gone");
    let agent = Agent::start("10.102.0.0/16");
    let mut pod = Netns::new("gone-pod");
    let path = pod.path();
    let conf = agent.conf("1.1.0", "");
    let run = felix(&node, &Call::new("ADD", "c-gone", Some(&path)), &conf);
    assert!(run.ok, "{:?}", run.json);
    assert_eq!(agent.in_use().len(), 1);

    pod.delete();
    let check = felix(&node, &Call::new("CHECK", "c-gone", Some(&path)), &conf);
    assert_eq!(check.code(), Some(4), "{:?}", check.json);
    assert!(check.msg().contains("does not exist"), "{}", check.msg());
    // DEL succeeds with the netns gone, and frees the address.
    let del = felix(&node, &Call::new("DEL", "c-gone", Some(&path)), &conf);
    assert!(del.ok, "{:?}", del.json);
    assert!(agent.in_use().is_empty());
    assert!(node.felix_links().is_empty());
    assert!(node.felix_routes().is_empty());
    // And without CNI_NETNS at all.
    let del = felix(&node, &Call::new("DEL", "c-gone", None), &conf);
    assert!(del.ok, "{:?}", del.json);
    // ADD into the deleted netns is refused before anything is made.
    let add = felix(&node, &Call::new("ADD", "c-gone", Some(&path)), &conf);
    assert_eq!(add.code(), Some(4), "{:?}", add.json);
    assert!(agent.in_use().is_empty());
    assert!(node.felix_links().is_empty());
}

#[test]
fn interface_name_taken_in_the_pod_is_refused_without_touching_it() {
    if skip_unless_root("ifname_taken") {
        return;
    }
    let node = Node::new("taken");
    let agent = Agent::start("10.103.0.0/16");
    let pod = Netns::new("taken-pod");
    pod.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
    ]);
    let path = pod.path();
    let run = felix(
        &node,
        &Call::new("ADD", "c-taken", Some(&path)),
        &agent.conf("1.1.0", ""),
    );
    assert_eq!(run.code(), Some(105), "{:?}", run.json);
    assert!(run.msg().contains("eth0 already exists"), "{}", run.msg());
    assert!(agent.in_use().is_empty());
    assert!(node.felix_links().is_empty());
    assert_eq!(pod_links(&pod), 3, "lo, eth0 and other0 are still there");
}

#[test]
fn check_names_the_difference_and_add_repairs_a_partial_attachment() {
    if skip_unless_root("check_and_repair") {
        return;
    }
    let node = Node::new("repair");
    let agent = Agent::start("10.104.0.0/16");
    let pod = Netns::new("repair-pod");
    let path = pod.path();
    let conf = agent.conf("1.1.0", "");
    let first = felix(&node, &Call::new("ADD", "c-repair", Some(&path)), &conf);
    assert!(first.ok, "{:?}", first.json);
    let address = first.addresses()[0];
    let with_prev =
        |json: &serde_json::Value| agent.conf("1.1.0", &format!(r#","prevResult":{json}"#));
    let check = felix(
        &node,
        &Call::new("CHECK", "c-repair", Some(&path)),
        &with_prev(first.json.as_ref().unwrap()),
    );
    assert!(check.ok, "{:?}", check.json);

    // The node loses its route to the pod: CHECK says exactly that.
    node.ns.ip(&["route", "del", &format!("{address}/32")]);
    let check = felix(
        &node,
        &Call::new("CHECK", "c-repair", Some(&path)),
        &with_prev(first.json.as_ref().unwrap()),
    );
    assert_eq!(check.code(), Some(103), "{:?}", check.json);
    assert_eq!(
        check.msg(),
        format!("the node has no route to {address}/32")
    );
    // The pod's MTU changed: CHECK names it.
    pod.ip(&["link", "set", "eth0", "mtu", "1300"]);
    let check = felix(&node, &Call::new("CHECK", "c-repair", Some(&path)), &conf);
    let details = check.json.as_ref().unwrap()["details"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        details.contains("eth0 has MTU 1300, the config says 1400"),
        "{details}"
    );
    // A prevResult that disagrees with the allocation is named too.
    let wrong = serde_json::json!({"cniVersion":"1.1.0","ips":[{"address":"10.9.9.9/32"}]});
    let check = felix(
        &node,
        &Call::new("CHECK", "c-repair", Some(&path)),
        &with_prev(&wrong),
    );
    let all = format!(
        "{} {}",
        check.msg(),
        check.json.as_ref().unwrap()["details"]
    );
    assert!(
        all.contains("10.9.9.9 is in prevResult but not allocated"),
        "{all}"
    );

    // ADD again (the runtime's retry) repairs it with the same address.
    let again = felix(&node, &Call::new("ADD", "c-repair", Some(&path)), &conf);
    assert!(again.ok, "{:?}", again.json);
    assert_eq!(again.addresses(), vec![address]);
    let check = felix(&node, &Call::new("CHECK", "c-repair", Some(&path)), &conf);
    assert!(check.ok, "{:?}", check.json);
    assert_eq!(node.felix_links().len(), 1);
    assert_eq!(agent.in_use().len(), 1);
    assert!(felix(&node, &Call::new("DEL", "c-repair", Some(&path)), &conf).ok);
}

#[test]
fn gc_releases_only_this_networks_stale_attachments_on_this_node() {
    if skip_unless_root("gc") {
        return;
    }
    let node = Node::new("gc");
    let agent = Agent::start("10.105.0.0/16");
    let conf = agent.conf("1.1.0", "");
    let pods: Vec<Netns> = (0..3).map(|i| Netns::new(&format!("gc{i}"))).collect();
    for (i, pod) in pods.iter().enumerate() {
        let path = pod.path();
        let id = format!("c-gc{i}");
        assert!(felix(&node, &Call::new("ADD", &id, Some(&path)), &conf).ok);
    }
    // Another node's attachment of the same network, and this node's
    // allocation under a handle felix-cni did not make.
    agent
        .runtime
        .block_on(agent.allocator.auto_assign(&ipam::AutoAssignRequest {
            handle: "felix-cni:felix-test:c-elsewhere:eth0".into(),
            node: "node-b".into(),
            num_v4: 1,
            ..Default::default()
        }))
        .unwrap();
    agent
        .runtime
        .block_on(agent.allocator.auto_assign(&ipam::AutoAssignRequest {
            handle: "k8s-pod-network.other".into(),
            node: "node-a".into(),
            num_v4: 1,
            ..Default::default()
        }))
        .unwrap();
    assert_eq!(agent.in_use().len(), 5);

    let gc_conf = agent.conf(
        "1.1.0",
        r#","cni.dev/valid-attachments":[{"containerID":"c-gc0","ifname":"eth0"}]"#,
    );
    let run = felix(&node, &Call::new("GC", "", None), &gc_conf);
    assert!(run.ok, "{:?}", run.json);
    let mut handles: Vec<String> = agent.in_use().into_iter().map(|(_, h)| h).collect();
    handles.sort();
    assert_eq!(
        handles,
        vec![
            "felix-cni:felix-test:c-elsewhere:eth0".to_owned(),
            "felix-cni:felix-test:c-gc0:eth0".to_owned(),
            "k8s-pod-network.other".to_owned(),
        ]
    );
    // GC without the list is a config error.
    let run = felix(&node, &Call::new("GC", "", None), &conf);
    assert_eq!(run.code(), Some(7), "{:?}", run.json);
}
