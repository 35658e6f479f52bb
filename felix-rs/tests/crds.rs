#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The CustomResourceDefinitions in deploy/crds/ against the Rust types and
//! against what felix really writes.
//!
//! - The checked-in files are exactly what `felix crds` generates.
//! - Every object felix writes through the Kubernetes datastore (captured
//!   from the mock API server, so apiVersion, kind, metadata and spec as
//!   sent) passes its CRD's OpenAPI schema — types, patterns, enums,
//!   ranges, nullability, and no field the API server would prune — and its
//!   CEL rules (evaluated with kube-cel, after applying the schema defaults
//!   as the API server does).
//! - The CRDs refuse what felix itself refuses (bad CIDRs, unknown enum
//!   values, block sizes out of range, IP-in-IP on IPv6, both peerIP and
//!   peerSelector…), each checked against felix's own validation too.

use std::collections::BTreeMap;
use std::path::PathBuf;

use felix_rs::agent::resources::{
    BgpConfigurationSpec, BgpPeerSpec, FelixNode, NodeBgp, SourceAddress,
};
use felix_rs::crds;
use ipam::pool::{AllowedUse, EncapMode, IpPoolSpec};
use ipam::store::{Datastore, Kind};
use ipam::testing::KubeUnderTest;
use ipam::{AllocationAttrs, Allocator, AllocatorConfig, AutoAssignRequest};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{json, Value};

mod common;
use common::{refusals, schema, violations};

fn crd_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds")
}

fn resource(kind: Kind, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "crd.felix-rs.io/v1",
        "kind": kind.crd_kind(),
        "metadata": {"name": name},
        "spec": spec,
    })
}

#[test]
fn checked_in_crds_are_what_the_types_generate() {
    let stale = crds::stale_files(&crd_dir()).unwrap();
    assert!(
        stale.is_empty(),
        "{stale:?} differ from the generated CRDs: run `cargo run -p felix-rs --bin felix -- crds --out-dir deploy/crds`"
    );
    // And they read back as the same definitions.
    for kind in Kind::ALL {
        let text = std::fs::read_to_string(crd_dir().join(crds::file_name(kind))).unwrap();
        let parsed: CustomResourceDefinition = serde_norway::from_str(&text).unwrap();
        assert_eq!(parsed, crds::definition(kind), "{kind}");
    }
}

#[test]
fn the_checker_is_not_vacuous() {
    // One violation of each sort the checker knows, on the IPPool schema.
    let mut out = Vec::new();
    let spec = json!({"cidr": "10.0.0.0/40", "blockSize": 8, "ipipMode": "Sometimes",
                      "bogus": 1, "natOutgoing": "yes", "allowedUses": [null]});
    violations(
        &schema(Kind::IpPool)["properties"]["spec"],
        &spec,
        "spec",
        &mut out,
    );
    let text = out.join("\n");
    for needle in [
        "spec.cidr: \"10.0.0.0/40\" does not match",
        "spec.blockSize: 8 below 20",
        "spec.ipipMode: \"Sometimes\" not in",
        "spec.bogus: not in the schema",
        "spec.natOutgoing: \"yes\" is not of type boolean",
        "spec.allowedUses[0]: null but not nullable",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    let mut out = Vec::new();
    violations(
        &schema(Kind::IpPool)["properties"]["spec"],
        &json!({}),
        "spec",
        &mut out,
    );
    assert!(out.contains(&"spec.cidr: required".to_owned()), "{out:?}");
}

/// Runs the real allocator on the Kubernetes datastore (mock API server)
/// and checks every object it wrote against its CRD.
#[tokio::test]
async fn every_ipam_object_felix_writes_passes_its_crd() {
    let kube = KubeUnderTest::start().await;
    let store: std::sync::Arc<dyn Datastore> = kube.store.clone();
    let alloc = Allocator::new(store.clone(), AllocatorConfig::default());
    let mut v4 = IpPoolSpec::new("10.244.0.0/16".parse().unwrap());
    v4.vxlan_mode = EncapMode::CrossSubnet;
    v4.nat_outgoing = true;
    v4.node_selector = "rack == 'r1'".into();
    alloc.create_pool("default-ipv4", v4).await.unwrap();
    let mut v6 = IpPoolSpec::new("fd00:10:244::/56".parse().unwrap());
    v6.allowed_uses = vec![AllowedUse::Workload];
    alloc.create_pool("default-ipv6", v6).await.unwrap();

    let labels = BTreeMap::from([("rack".to_owned(), "r1".to_owned())]);
    for i in 0..5 {
        alloc
            .auto_assign(&AutoAssignRequest {
                handle: format!("felix-cni:k8s-pod-network:container{i}:eth0"),
                node: "node-1".into(),
                num_v4: 1,
                num_v6: 1,
                attrs: AllocationAttrs {
                    namespace: Some("default".into()),
                    pod: Some(format!("web-{i}")),
                    node: Some("node-1".into()),
                    interface: Some("eth0".into()),
                    ..Default::default()
                },
                node_labels: Some(labels.clone()),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    // The node's VXLAN tunnel address (its own handle, `type` attribute).
    let vtep = alloc
        .ensure_tunnel_address("node-1", ipam::TunnelKind::Vxlan, Some(labels.clone()))
        .await
        .unwrap();
    assert!(vtep.is_some());
    // A released address leaves a null slot.
    alloc
        .release_by_handle("felix-cni:k8s-pod-network:container1:eth0")
        .await
        .unwrap();
    let mut checked = BTreeMap::new();
    for kind in [
        Kind::IpPool,
        Kind::IpamBlock,
        Kind::BlockAffinity,
        Kind::IpamHandle,
    ] {
        let listing = store.list(kind, "").await.unwrap();
        assert!(!listing.objects.is_empty(), "{kind}: nothing written");
        for o in &listing.objects {
            let object = kube.server.object(kind.plural(), &o.name).unwrap();
            assert_eq!(object["apiVersion"], "crd.felix-rs.io/v1");
            assert_eq!(object["kind"], kind.crd_kind());
            let refused = refusals(kind, &object);
            assert!(
                refused.is_empty(),
                "{kind} {}: {refused:?}\n{object:#}",
                o.name
            );
            *checked.entry(kind).or_insert(0) += 1;
        }
    }
    // The block with the released address really has a null slot checked.
    let blocks = alloc.blocks().await.unwrap();
    assert!(blocks
        .iter()
        .any(|(_, b)| b.allocations.iter().any(Option::is_none) && b.in_use_count() > 0));
    assert_eq!(checked[&Kind::IpPool], 2);
    assert_eq!(checked[&Kind::IpamBlock], 2);
    assert_eq!(
        checked[&Kind::IpamHandle],
        5,
        "4 pods and the tunnel address"
    );
}

fn full_node() -> FelixNode {
    FelixNode {
        bgp: NodeBgp {
            ipv4_address: "10.0.0.1/24".parse().unwrap(),
            ipv6_address: Some("fd00::1/64".parse().unwrap()),
            as_number: Some(64512),
            route_reflector_cluster_id: Some("10.255.0.1".parse().unwrap()),
        },
        labels: BTreeMap::from([("rack".to_owned(), "r1".to_owned())]),
        ipv4_vxlan_tunnel_addr: Some("10.244.0.1".parse().unwrap()),
        vxlan_tunnel_mac_addr: Some("66:0a:f4:00:00:01".into()),
        ipv4_ipip_tunnel_addr: Some("10.244.0.2".parse().unwrap()),
    }
}

fn full_peer() -> BgpPeerSpec {
    BgpPeerSpec {
        node: None,
        node_selector: Some("rack == 'r1'".into()),
        peer_ip: Some("10.0.0.254".parse().unwrap()),
        as_number: Some(65000),
        peer_selector: None,
        password: Some("s3cret".into()),
        source_address: Some(SourceAddress::UseNodeIP),
        max_restart_time: Some("120s".into()),
        ttl_security: Some(1),
    }
}

/// The agent's kinds, every field set, written through the Kubernetes
/// datastore as the agent writes them (JSON of the spec type).
#[tokio::test]
async fn agent_objects_pass_their_crds() {
    let kube = KubeUnderTest::start().await;
    let store: std::sync::Arc<dyn Datastore> = kube.store.clone();
    let peer_v6 = BgpPeerSpec {
        peer_ip: Some("fd00::fe".parse().unwrap()),
        node_selector: None,
        node: Some("node-1".into()),
        ..full_peer()
    };
    let rr_peers = BgpPeerSpec {
        node_selector: Some("!has(role)".into()),
        peer_selector: Some("role == 'rr'".into()),
        peer_ip: None,
        as_number: None,
        ..Default::default()
    };
    let objects: Vec<(Kind, &str, Vec<u8>)> = vec![
        (
            Kind::FelixNode,
            "node-1",
            serde_json::to_vec(&full_node()).unwrap(),
        ),
        (
            Kind::BgpPeer,
            "tor",
            serde_json::to_vec(&full_peer()).unwrap(),
        ),
        (
            Kind::BgpPeer,
            "tor-v6",
            serde_json::to_vec(&peer_v6).unwrap(),
        ),
        (
            Kind::BgpPeer,
            "to-rrs",
            serde_json::to_vec(&rr_peers).unwrap(),
        ),
        (
            Kind::BgpConfiguration,
            "default",
            serde_json::to_vec(&BgpConfigurationSpec {
                node_to_node_mesh_enabled: Some(false),
                as_number: Some(64512),
                listen_port: Some(179),
            })
            .unwrap(),
        ),
        (Kind::BgpConfiguration, "empty", b"{}".to_vec()),
    ];
    for (kind, name, value) in objects {
        store.create(kind, name, value).await.unwrap();
        let object = kube.server.object(kind.plural(), name).unwrap();
        let refused = refusals(kind, &object);
        assert!(refused.is_empty(), "{kind} {name}: {refused:?}\n{object:#}");
    }
}

/// Each bad spec is refused by its CRD (schema or CEL, with the message
/// given) and by felix's own decoding/validation.
#[test]
fn the_crds_refuse_what_felix_refuses() {
    let pool = |patch: Value| {
        let mut spec =
            serde_json::to_value(IpPoolSpec::new("10.244.0.0/16".parse().unwrap())).unwrap();
        for (k, v) in patch.as_object().unwrap() {
            spec[k] = v.clone();
        }
        spec
    };
    let felix_refuses_pool = |spec: &Value| match serde_json::from_value::<IpPoolSpec>(spec.clone())
    {
        Err(_) => true,
        Ok(p) => p.validate().is_err(),
    };
    let cases = [
        (json!({"cidr": "10.244.0.0/33"}), "does not match"),
        (json!({"cidr": "10.244.0.0"}), "does not match"),
        (json!({"ipipMode": "Sometimes"}), "not in"),
        (json!({"blockSize": 19}), "below 20"),
        (
            json!({"blockSize": 116}),
            "blockSize must be 20-32 for an IPv4 pool",
        ),
        (
            json!({"cidr": "fd00::/48", "blockSize": 26}),
            "blockSize must be 20-32 for an IPv4 pool, 116-128 for an IPv6 pool",
        ),
        (
            json!({"cidr": "fd00::/48", "blockSize": 122, "ipipMode": "Always"}),
            "ipipMode must be Never for an IPv6 pool",
        ),
        (
            json!({"ipipMode": "Always", "vxlanMode": "CrossSubnet"}),
            "cannot both be enabled",
        ),
        (json!({"allowedUses": []}), "at least one allowed use"),
        (json!({"allowedUses": ["Everything"]}), "not in"),
    ];
    for (patch, expected) in cases {
        let spec = pool(patch.clone());
        let refused = refusals(Kind::IpPool, &resource(Kind::IpPool, "p", spec.clone()));
        assert!(
            refused.iter().any(|r| r.contains(expected)),
            "IPPool {patch}: expected {expected:?}, got {refused:?}"
        );
        assert!(felix_refuses_pool(&spec), "felix accepts IPPool {patch}");
    }
    // And the defaults the CRD applies are felix's.
    let valid = pool(json!({}));
    assert!(refusals(Kind::IpPool, &resource(Kind::IpPool, "p", valid)).is_empty());
    let minimal = json!({"cidr": "10.244.0.0/16", "blockSize": 26});
    assert!(refusals(Kind::IpPool, &resource(Kind::IpPool, "p", minimal.clone())).is_empty());
    let defaulted = kube::core::cel::apply_defaults(
        &schema(Kind::IpPool),
        &resource(Kind::IpPool, "p", minimal),
    );
    let from_crd: IpPoolSpec = serde_json::from_value(defaulted["spec"].clone()).unwrap();
    assert_eq!(from_crd, IpPoolSpec::new("10.244.0.0/16".parse().unwrap()));

    let peer = |patch: Value| {
        let mut spec = serde_json::to_value(full_peer()).unwrap();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                spec.as_object_mut().unwrap().remove(k);
            } else {
                spec[k] = v.clone();
            }
        }
        spec
    };
    let peer_cases = [
        (
            json!({"peerSelector": "role == 'rr'"}),
            "exactly one of peerIP and peerSelector",
        ),
        (
            json!({"peerIP": null}),
            "exactly one of peerIP and peerSelector",
        ),
        (json!({"asNumber": null}), "peerIP needs asNumber"),
        (
            json!({"node": "node-1"}),
            "node and nodeSelector cannot both be set",
        ),
        (json!({"peerIP": "10.0.0.300"}), "does not match"),
        (json!({"asNumber": 0}), "below 1"),
        (json!({"sourceAddress": "UseNodeIp"}), "not in"),
        (json!({"maxRestartTime": "2 minutes"}), "does not match"),
        (json!({"ttlSecurity": 256}), "above 255"),
        (json!({"peerIp": "10.0.0.1"}), "not in the schema"),
    ];
    for (patch, expected) in peer_cases {
        let spec = peer(patch.clone());
        let refused = refusals(Kind::BgpPeer, &resource(Kind::BgpPeer, "p", spec));
        assert!(
            refused.iter().any(|r| r.contains(expected)),
            "BGPPeer {patch}: expected {expected:?}, got {refused:?}"
        );
    }
    let node = |patch: Value| {
        let mut spec = serde_json::to_value(full_node()).unwrap();
        for (k, v) in patch.as_object().unwrap() {
            spec[k] = v.clone();
        }
        spec
    };
    for (patch, expected) in [
        (
            json!({"bgp": {"ipv4Address": "10.0.0.1"}}),
            "does not match",
        ),
        (
            json!({"bgp": {"ipv4Address": "10.0.0.1/24", "asNumber": 0}}),
            "below 1",
        ),
        (
            json!({"vxlanTunnelMACAddr": "66:0a:f4:00:00"}),
            "does not match",
        ),
        (json!({"ipv4VXLANTunnelAddr": "fd00::1"}), "does not match"),
    ] {
        let spec = node(patch.clone());
        let refused = refusals(
            Kind::FelixNode,
            &resource(Kind::FelixNode, "n", spec.clone()),
        );
        assert!(
            refused.iter().any(|r| r.contains(expected)),
            "FelixNode {patch}: expected {expected:?}, got {refused:?}"
        );
        assert!(
            serde_json::from_value::<FelixNode>(spec).is_err()
                || patch.to_string().contains("asNumber")
                || patch.to_string().contains("MAC"),
            "felix decodes FelixNode {patch}"
        );
    }
    let refused = refusals(
        Kind::BgpConfiguration,
        &resource(Kind::BgpConfiguration, "default", json!({"listenPort": 0})),
    );
    assert!(refused.iter().any(|r| r.contains("below 1")), "{refused:?}");
}

/// `felix crds --check DIR` says which files are stale, `--out-dir`
/// rewrites them, and plain `felix crds` prints every definition.
#[test]
fn felix_crds_command_checks_writes_and_prints() {
    let felix = env!("CARGO_BIN_EXE_felix");
    let run = |args: &[&std::ffi::OsStr]| {
        std::process::Command::new(felix)
            .args(args)
            .output()
            .unwrap()
    };
    let ok = run(&["crds".as_ref(), "--check".as_ref(), crd_dir().as_os_str()]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let tmp = tempfile::tempdir().unwrap();
    let wrote = run(&[
        "crds".as_ref(),
        "--out-dir".as_ref(),
        tmp.path().as_os_str(),
    ]);
    assert!(wrote.status.success());
    let edited = tmp.path().join("ippools.yaml");
    let text = std::fs::read_to_string(&edited).unwrap();
    std::fs::write(&edited, text.replace("maximum: 128.0", "maximum: 129.0")).unwrap();
    std::fs::remove_file(tmp.path().join("bgppeers.yaml")).unwrap();
    let stale = run(&["crds".as_ref(), "--check".as_ref(), tmp.path().as_os_str()]);
    assert_eq!(stale.status.code(), Some(1));
    let err = String::from_utf8_lossy(&stale.stderr);
    assert!(
        err.contains("ippools.yaml differs") && err.contains("bgppeers.yaml differs"),
        "{err}"
    );
    assert!(!err.contains("felixnodes.yaml"), "{err}");

    let printed = run(&["crds".as_ref()]);
    assert!(printed.status.success());
    let docs: Vec<CustomResourceDefinition> =
        serde_norway::Deserializer::from_slice(&printed.stdout)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
    assert_eq!(docs.len(), Kind::ALL.len());
    for (doc, kind) in docs.iter().zip(Kind::ALL) {
        assert_eq!(doc, &crds::definition(kind));
    }
}
