#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The Kubernetes manifests in deploy/ (except deploy/containerlab/, the
//! lab's): every YAML parses, every object is of a known apiVersion/kind,
//! each kustomization names files that exist and every manifest is in one,
//! the workloads reference only ServiceAccounts, ConfigMaps (and keys) and
//! Secrets that the same installation creates (or mark them optional), the
//! RBAC names real resources, felix's own objects pass their CRDs, the
//! configuration files inside the ConfigMaps are accepted by the parsers
//! that will read them, the CNI install script installs atomically, and
//! `yamllint` passes. With `kubectl` on the machine each installation is
//! also rendered by `kubectl kustomize`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use ipam::store::Kind;
use serde::Deserialize;
use serde_json::Value;

mod common;

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every YAML file under deploy/, the lab's containerlab/ excepted.
fn yaml_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if path.file_name().unwrap() != "containerlab" {
                    walk(&path, out);
                }
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&deploy_dir(), &mut out);
    out.sort();
    out
}

/// The documents of a YAML file (empty documents skipped).
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

/// The (apiVersion, kind) pairs the manifests may use.
fn known_kinds() -> BTreeSet<(String, String)> {
    let mut known: BTreeSet<(String, String)> = [
        ("v1", "Namespace"),
        ("v1", "ServiceAccount"),
        ("v1", "ConfigMap"),
        ("v1", "Secret"),
        ("apps/v1", "DaemonSet"),
        ("apps/v1", "Deployment"),
        ("batch/v1", "Job"),
        ("rbac.authorization.k8s.io/v1", "ClusterRole"),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition"),
        ("kustomize.config.k8s.io/v1beta1", "Kustomization"),
    ]
    .into_iter()
    .map(|(a, k)| (a.to_owned(), k.to_owned()))
    .collect();
    for kind in Kind::ALL {
        known.insert(("crd.felix-rs.io/v1".to_owned(), kind.crd_kind().to_owned()));
    }
    known
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

fn name_of(v: &Value) -> String {
    str_at(v, "/metadata/name")
        .unwrap_or("<unnamed>")
        .to_owned()
}

/// One installation as kustomize would build it: the objects of its
/// resources (recursively) with its patches merged (strategic merge of
/// maps, and of lists of named items by `name`, as for containers,
/// volumes, env and volumeMounts).
#[derive(Default)]
struct Installation {
    objects: Vec<Value>,
}

fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, pv) in p {
                match b.get_mut(k) {
                    Some(bv) => merge(bv, pv),
                    None => {
                        b.insert(k.clone(), pv.clone());
                    }
                }
            }
        }
        (Value::Array(b), Value::Array(p))
            if p.iter().all(|x| x.get("name").is_some())
                && b.iter().all(|x| x.get("name").is_some()) =>
        {
            for pv in p {
                match b.iter_mut().find(|bv| bv["name"] == pv["name"]) {
                    Some(bv) => merge(bv, pv),
                    None => b.push(pv.clone()),
                }
            }
        }
        (b, p) => *b = p.clone(),
    }
}

fn build(dir: &Path) -> Installation {
    let kustomization = dir.join("kustomization.yaml");
    let k = documents(&kustomization).remove(0);
    let mut inst = Installation::default();
    let namespace = str_at(&k, "/namespace").map(str::to_owned);
    for r in k["resources"].as_array().into_iter().flatten() {
        let path = dir.join(r.as_str().unwrap());
        assert!(
            path.exists(),
            "{}: resource {r} does not exist",
            kustomization.display()
        );
        if path.is_dir() {
            inst.objects.extend(build(&path).objects);
        } else {
            inst.objects.extend(documents(&path));
        }
    }
    for p in k["patches"].as_array().into_iter().flatten() {
        let path = dir.join(str_at(p, "/path").unwrap());
        assert!(
            path.exists(),
            "{}: patch {} does not exist",
            kustomization.display(),
            path.display()
        );
        for patch in documents(&path) {
            let target = inst.objects.iter_mut().find(|o| {
                o["kind"] == patch["kind"] && o["metadata"]["name"] == patch["metadata"]["name"]
            });
            let target = target.unwrap_or_else(|| {
                panic!(
                    "{}: patch for {} {} matches no object",
                    path.display(),
                    patch["kind"],
                    name_of(&patch)
                )
            });
            merge(target, &patch);
        }
    }
    if let Some(ns) = namespace {
        for o in &mut inst.objects {
            if o["metadata"].get("namespace").is_some() {
                o["metadata"]["namespace"] = Value::String(ns.clone());
            }
        }
    }
    inst
}

impl Installation {
    fn find(&self, kind: &str, name: &str) -> Option<&Value> {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && name_of(o) == name)
    }
}

/// The installations a user applies (docs/operations.md).
const INSTALLATIONS: [&str; 3] = [
    "overlays/kubernetes",
    "overlays/etcd",
    "optional/route-reflectors",
];

#[test]
fn every_yaml_parses_and_every_object_is_a_known_kind() {
    let known = known_kinds();
    let files = yaml_files();
    assert!(files.len() >= 20, "only {} YAML files found", files.len());
    for path in files {
        if path.file_name().unwrap() == ".yamllint.yaml" {
            continue;
        }
        let docs = documents(&path);
        assert!(!docs.is_empty(), "{}: no document", path.display());
        for doc in docs {
            let api = str_at(&doc, "/apiVersion").unwrap_or_default().to_owned();
            let kind = str_at(&doc, "/kind").unwrap_or_default().to_owned();
            assert!(
                known.contains(&(api.clone(), kind.clone())),
                "{}: unknown apiVersion/kind {api:?}/{kind:?}",
                path.display()
            );
            if kind != "Kustomization" {
                assert!(
                    str_at(&doc, "/metadata/name").is_some(),
                    "{}: {kind} without a name",
                    path.display()
                );
            }
        }
    }
}

/// Every manifest belongs to some kustomization (an orphan would never be
/// applied), except the examples meant to be edited and applied by hand.
#[test]
fn every_manifest_is_in_a_kustomization() {
    let mut listed = BTreeSet::new();
    for path in yaml_files() {
        if path.file_name().unwrap() != "kustomization.yaml" {
            continue;
        }
        let dir = path.parent().unwrap();
        let k = documents(&path).remove(0);
        for key in ["resources", "patches"] {
            for r in k[key].as_array().into_iter().flatten() {
                let rel = r.as_str().or_else(|| str_at(r, "/path")).unwrap();
                listed.insert(dir.join(rel).canonicalize().unwrap());
            }
        }
    }
    let by_hand = [
        "bgppeers-example.yaml",
        ".yamllint.yaml",
        "kustomization.yaml",
    ];
    for path in yaml_files() {
        let file = path.file_name().unwrap().to_str().unwrap();
        if by_hand.contains(&file) {
            continue;
        }
        assert!(
            listed.contains(&path.canonicalize().unwrap()),
            "{} is in no kustomization.yaml",
            path.display()
        );
    }
}

/// Workloads reference only what their installation creates.
#[test]
fn workloads_reference_only_existing_service_accounts_config_maps_and_keys() {
    for dir in INSTALLATIONS {
        let inst = build(&deploy_dir().join(dir));
        let workloads: Vec<&Value> = inst
            .objects
            .iter()
            .filter(|o| matches!(o["kind"].as_str(), Some("DaemonSet" | "Deployment" | "Job")))
            .collect();
        assert!(!workloads.is_empty(), "{dir}: no workload");
        for w in workloads {
            let what = format!("{dir}: {} {}", w["kind"], name_of(w));
            let pod = &w["spec"]["template"]["spec"];
            let sa = str_at(pod, "/serviceAccountName").expect("serviceAccountName set");
            assert!(
                inst.find("ServiceAccount", sa).is_some(),
                "{what}: ServiceAccount {sa} is not created by {dir}"
            );
            let config_map = |name: &str| inst.find("ConfigMap", name);
            for v in pod["volumes"].as_array().into_iter().flatten() {
                if let Some(cm) = str_at(v, "/configMap/name") {
                    assert!(
                        config_map(cm).is_some(),
                        "{what}: volume ConfigMap {cm} missing"
                    );
                }
                if let Some(secret) = str_at(v, "/secret/secretName") {
                    assert!(
                        inst.find("Secret", secret).is_some()
                            || v["secret"]["optional"] == Value::Bool(true),
                        "{what}: Secret {secret} neither created nor optional"
                    );
                }
            }
            let volumes: BTreeSet<&str> = pod["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v["name"].as_str())
                .collect();
            let containers = pod["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(pod["initContainers"].as_array().into_iter().flatten());
            for c in containers {
                for m in c["volumeMounts"].as_array().into_iter().flatten() {
                    let v = m["name"].as_str().unwrap();
                    assert!(
                        volumes.contains(v),
                        "{what}: mount of undeclared volume {v}"
                    );
                }
                for e in c["env"].as_array().into_iter().flatten() {
                    if let Some(r) = e.pointer("/valueFrom/configMapKeyRef") {
                        let (cm, key) = (str_at(r, "/name").unwrap(), str_at(r, "/key").unwrap());
                        let map = config_map(cm)
                            .unwrap_or_else(|| panic!("{what}: env ConfigMap {cm} missing"));
                        assert!(
                            map["data"].get(key).is_some(),
                            "{what}: ConfigMap {cm} has no key {key}"
                        );
                    }
                }
                // A file of a mounted ConfigMap named on the command line exists.
                let command: Vec<&str> = c["command"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                for m in c["volumeMounts"].as_array().into_iter().flatten() {
                    let mount = m["mountPath"].as_str().unwrap();
                    let volume = pod["volumes"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|v| v["name"] == m["name"])
                        .unwrap();
                    let Some(cm) = str_at(volume, "/configMap/name") else {
                        continue;
                    };
                    for arg in &command {
                        if let Some(file) = arg.strip_prefix(&format!("{mount}/")) {
                            assert!(
                                config_map(cm).unwrap()["data"].get(file).is_some(),
                                "{what}: {arg} is not a key of ConfigMap {cm}"
                            );
                        }
                    }
                }
            }
        }
        // Bindings name existing roles and accounts.
        for b in inst
            .objects
            .iter()
            .filter(|o| o["kind"] == "ClusterRoleBinding")
        {
            let role = str_at(b, "/roleRef/name").unwrap();
            assert!(
                inst.find("ClusterRole", role).is_some(),
                "{dir}: ClusterRole {role}"
            );
            for s in b["subjects"].as_array().unwrap() {
                let sa = str_at(s, "/name").unwrap();
                assert!(
                    inst.find("ServiceAccount", sa).is_some(),
                    "{dir}: ServiceAccount {sa}"
                );
            }
        }
    }
}

#[test]
fn the_node_agent_daemonset_is_what_the_docs_promise() {
    for dir in ["overlays/kubernetes", "overlays/etcd"] {
        let inst = build(&deploy_dir().join(dir));
        let ds = inst.find("DaemonSet", "felix-node").unwrap();
        let pod = &ds["spec"]["template"]["spec"];
        assert_eq!(pod["hostNetwork"], true);
        assert_eq!(
            pod["tolerations"][0]["operator"], "Exists",
            "runs on every node"
        );
        let felix = &pod["containers"][0];
        let env: BTreeMap<&str, &Value> = felix["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap(), e))
            .collect();
        assert_eq!(
            env["FELIX_NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"],
            "spec.nodeName"
        );
        let caps: BTreeSet<&str> = felix["securityContext"]["capabilities"]["add"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert_eq!(caps, BTreeSet::from(["NET_ADMIN", "NET_BIND_SERVICE"]));
        assert_eq!(felix["securityContext"]["capabilities"]["drop"][0], "ALL");
        assert_ne!(felix["securityContext"]["privileged"], true);
        assert_eq!(felix["livenessProbe"]["httpGet"]["path"], "/livez");
        assert_eq!(felix["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert!(felix["resources"]["requests"]["cpu"].is_string());
        assert_eq!(ds["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"], 0);
        let init = &pod["initContainers"][0];
        assert_eq!(init["name"], "install-cni");

        // The probes reach what the agent serves.
        let config = inst.find("ConfigMap", "felix-config").unwrap();
        let agent =
            felix_rs::agent::config::parse_file(config["data"]["agent.toml"].as_str().unwrap())
                .unwrap();
        let listen = agent.http_listen.unwrap();
        assert_eq!(felix["livenessProbe"]["httpGet"]["port"], listen.port());
        assert_eq!(
            felix["livenessProbe"]["httpGet"]["host"].as_str().unwrap(),
            listen.ip().to_string()
        );
        // The datastore the overlay sets is a URL felix opens.
        let url = config["data"]["datastore"].as_str().unwrap();
        let parsed: ipam::store::DatastoreUrl = url.parse().unwrap();
        let expected = if dir.ends_with("kubernetes") {
            "kubernetes"
        } else {
            "etcd://"
        };
        assert!(url.starts_with(expected), "{dir}: {url} ({parsed:?})");
        // The token is mounted only where the agent talks to the API server.
        assert_eq!(
            pod["automountServiceAccountToken"],
            Value::Bool(dir.ends_with("kubernetes"))
        );
        // The CNI config the init container installs is one felix-cni
        // accepts, pointing at the socket the agent serves.
        let conflist: Value =
            serde_json::from_str(config["data"]["10-felix.conflist"].as_str().unwrap()).unwrap();
        let mut plugin = conflist["plugins"][0].clone();
        plugin["cniVersion"] = conflist["cniVersion"].clone();
        plugin["name"] = conflist["name"].clone();
        let conf = felix_cni::config::NetConf::parse(
            &serde_json::to_vec(&plugin).unwrap(),
            felix_cni::config::Mode::Interface,
        )
        .unwrap();
        assert_eq!(Some(conf.agent.socket), agent.pod_api_socket);
    }
}

/// The resources `role` grants verbs on, after checking that they are
/// felix's CRDs (installed, cluster-scoped) and that the verbs are plain.
fn granted_by<'a>(inst: &'a Installation, role: &str) -> BTreeSet<&'a str> {
    let plurals: BTreeSet<&str> = Kind::ALL.iter().map(|k| k.plural()).collect();
    let role = inst.find("ClusterRole", role).unwrap();
    let mut granted = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        assert_eq!(rule["apiGroups"], serde_json::json!(["crd.felix-rs.io"]));
        for r in rule["resources"].as_array().unwrap() {
            let r = r.as_str().unwrap();
            assert!(plurals.contains(r), "{r} is no felix CRD");
            granted.insert(r);
            let crd = inst
                .find("CustomResourceDefinition", &format!("{r}.crd.felix-rs.io"))
                .unwrap_or_else(|| panic!("no CRD installed for {r}"));
            assert_eq!(crd["spec"]["scope"], "Cluster");
        }
        for v in rule["verbs"].as_array().unwrap() {
            let v = v.as_str().unwrap();
            assert!(
                ["get", "list", "watch", "create", "update", "delete"].contains(&v),
                "verb {v}"
            );
        }
    }
    granted
}

/// The ClusterRoles grant verbs only on felix's CRDs, each of them
/// existing: the agent's on every kind but the pool index (pools are the
/// operator's), the pool admin's on pools and their index.
#[test]
fn the_cluster_role_names_real_resources_and_no_wildcards() {
    let inst = build(&deploy_dir().join("overlays/kubernetes"));
    let agent_kinds: BTreeSet<&str> = Kind::ALL
        .iter()
        .filter(|k| **k != Kind::IpPoolIndex)
        .map(|k| k.plural())
        .collect();
    assert_eq!(
        granted_by(&inst, "felix-node"),
        agent_kinds,
        "every kind the agent uses is granted"
    );
    let admin = granted_by(&inst, "felix-pool-admin");
    assert!(
        admin.contains("ippools") && admin.contains("ippoolindexes"),
        "{admin:?}"
    );
}

/// felix's own objects in the manifests pass their CRDs (schema and CEL).
#[test]
fn felix_objects_in_the_manifests_pass_their_crds() {
    let mut checked = 0;
    for path in yaml_files() {
        for doc in documents(&path) {
            if doc["apiVersion"] != "crd.felix-rs.io/v1" {
                continue;
            }
            let kind = Kind::ALL
                .into_iter()
                .find(|k| doc["kind"] == k.crd_kind())
                .unwrap();
            let refused = common::refusals(kind, &doc);
            assert!(refused.is_empty(), "{}: {refused:?}", path.display());
            // And felix decodes the spec.
            let spec = serde_json::to_vec(&doc["spec"]).unwrap();
            match kind {
                Kind::IpPool => {
                    let p: ipam::pool::IpPoolSpec = serde_json::from_slice(&spec).unwrap();
                    p.validate().unwrap();
                }
                Kind::BgpPeer => {
                    serde_json::from_slice::<felix_rs::agent::resources::BgpPeerSpec>(&spec)
                        .unwrap();
                }
                Kind::BgpConfiguration => {
                    serde_json::from_slice::<felix_rs::agent::resources::BgpConfigurationSpec>(
                        &spec,
                    )
                    .unwrap();
                }
                other => panic!("{}: {other} objects are felix's to write", path.display()),
            }
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} felix objects found");
}

#[test]
fn the_route_reflector_configuration_is_accepted_by_felix_bgp_run() {
    let inst = build(&deploy_dir().join("optional/route-reflectors"));
    let cm = inst.find("ConfigMap", "felix-route-reflector").unwrap();
    let file =
        felix_rs::bgp_run::parse_file_config(cm["data"]["rr.toml"].as_str().unwrap()).unwrap();
    let dep = inst.find("Deployment", "felix-route-reflector").unwrap();
    let c = &dep["spec"]["template"]["spec"]["containers"][0];
    let command: Vec<&str> = c["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(&command[..3], ["felix", "bgp", "run"]);
    // The probe asks the socket the file configures.
    let probe = c["livenessProbe"]["exec"]["command"].as_array().unwrap();
    let socket = probe.last().unwrap().as_str().unwrap();
    assert_eq!(file.control_socket.as_deref(), Some(Path::new(socket)));
}

/// The init container's script, run for real: it installs both binaries
/// (executable) and the conflist, leaves no temporary file, and replaces
/// an older install by rename (the old inode survives for a running
/// felix-cni).
#[test]
fn install_cni_script_installs_atomically() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let inst = build(&deploy_dir().join("base"));
    let cm = inst.find("ConfigMap", "felix-config").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (src_bin, src_conf) = (tmp.path().join("bin"), tmp.path().join("conf"));
    let (bin_dir, net_dir) = (
        tmp.path().join("opt/cni/bin"),
        tmp.path().join("etc/cni/net.d"),
    );
    std::fs::create_dir_all(&src_bin).unwrap();
    std::fs::create_dir_all(&src_conf).unwrap();
    std::fs::create_dir_all(&bin_dir).unwrap();
    for b in ["felix-cni", "felix-ipam"] {
        std::fs::write(src_bin.join(b), format!("#!/bin/sh\necho new {b}\n")).unwrap();
    }
    for key in ["10-felix.conflist", "install-cni.sh"] {
        std::fs::write(src_conf.join(key), cm["data"][key].as_str().unwrap()).unwrap();
    }
    std::fs::write(bin_dir.join("felix-cni"), "old").unwrap();
    let old_inode = std::fs::metadata(bin_dir.join("felix-cni")).unwrap().ino();
    let out = Command::new("/bin/sh")
        .arg(src_conf.join("install-cni.sh"))
        .env("FELIX_BIN_DIR", &src_bin)
        .env("FELIX_CONFIG_DIR", &src_conf)
        .env("CNI_BIN_DIR", &bin_dir)
        .env("CNI_NET_DIR", &net_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for b in ["felix-cni", "felix-ipam"] {
        let meta = std::fs::metadata(bin_dir.join(b)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o755, "{b}");
        assert_eq!(
            std::fs::read_to_string(bin_dir.join(b)).unwrap(),
            format!("#!/bin/sh\necho new {b}\n")
        );
    }
    assert_ne!(
        std::fs::metadata(bin_dir.join("felix-cni")).unwrap().ino(),
        old_inode,
        "replaced by rename, not rewritten in place"
    );
    assert_eq!(
        std::fs::read_to_string(net_dir.join("10-felix.conflist")).unwrap(),
        cm["data"]["10-felix.conflist"].as_str().unwrap()
    );
    let leftovers: Vec<_> = std::fs::read_dir(&bin_dir)
        .unwrap()
        .chain(std::fs::read_dir(&net_dir).unwrap())
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

/// The image build copies the binaries the workspace really builds.
#[test]
fn the_containerfile_builds_the_workspace_binaries() {
    let text = std::fs::read_to_string(deploy_dir().join("Containerfile")).unwrap();
    let root = deploy_dir().join("..");
    let felix = std::fs::read_to_string(root.join("felix-rs/Cargo.toml")).unwrap();
    let cni = std::fs::read_to_string(root.join("cni-plugin/Cargo.toml")).unwrap();
    for (bin, manifest) in [("felix", &felix), ("felix-cni", &cni), ("felix-ipam", &cni)] {
        assert!(
            manifest.contains(&format!("name = \"{bin}\"")),
            "{bin} is no [[bin]]"
        );
    }
    assert!(text.contains("--bin felix "), "felix not built");
    assert!(
        text.contains("cp target/release/felix "),
        "felix not copied"
    );
    // The plugins are built as shipped (static) by scripts/build-cni.sh,
    // which builds the felix-cni package (both of its binaries) and prints
    // the directory they are in.
    let build_cni = std::fs::read_to_string(root.join("scripts/build-cni.sh")).unwrap();
    assert!(
        build_cni.contains("-p felix-cni"),
        "build-cni.sh builds no felix-cni"
    );
    assert!(
        text.contains("cni=$(bash scripts/build-cni.sh)"),
        "plugins not built by scripts/build-cni.sh"
    );
    for bin in ["felix-cni", "felix-ipam"] {
        assert!(
            text.contains(&format!("\"$cni/{bin}\"")),
            "{bin} not copied"
        );
    }
    assert!(text.matches("\nFROM ").count() >= 2, "multi-stage");
    // The agent writes its NAT outgoing table with `nft`.
    assert!(
        text.contains("install -y --no-install-recommends iproute2 nftables"),
        "nft not in the image"
    );
}

#[test]
fn yamllint_passes() {
    let out = Command::new("yamllint")
        .args(["--strict", "-c"])
        .arg(deploy_dir().join(".yamllint.yaml"))
        .arg(deploy_dir())
        .output()
        .expect("yamllint (Debian package yamllint; scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "yamllint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `v` with lists of named items (containers, volumes, mounts, env) in name
/// order: strategic merge appends or prepends, the order means nothing.
fn sorted(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.into_iter().map(|(k, v)| (k, sorted(v))).collect()),
        Value::Array(items) => {
            let mut items: Vec<Value> = items.into_iter().map(sorted).collect();
            if items.iter().all(|x| x["name"].is_string()) {
                items.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
            }
            Value::Array(items)
        }
        other => other,
    }
}

/// With kubectl on the machine, kustomize (built into kubectl) renders
/// every installation, with the objects this test's own builder finds.
#[test]
fn kubectl_kustomize_renders_every_installation() {
    if Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_err()
    {
        println!("SKIPPED: kubectl is not installed (the other tests check the manifests)");
        return;
    }
    for dir in INSTALLATIONS.iter().chain(["base", "crds"].iter()) {
        let out = Command::new("kubectl")
            .arg("kustomize")
            .arg(deploy_dir().join(dir))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{dir}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rendered: Vec<Value> = serde_norway::Deserializer::from_slice(&out.stdout)
            .map(|d| Value::deserialize(d).unwrap())
            .collect();
        let ours = build(&deploy_dir().join(dir));
        let names = |objs: &[Value]| -> BTreeSet<(String, String)> {
            objs.iter()
                .map(|o| (o["kind"].as_str().unwrap().to_owned(), name_of(o)))
                .collect()
        };
        assert_eq!(names(&rendered), names(&ours.objects), "{dir}");
        // The patches landed as this test's builder merges them.
        for o in &rendered {
            if matches!(o["kind"].as_str(), Some("ConfigMap" | "DaemonSet")) {
                let mine = ours.find(o["kind"].as_str().unwrap(), &name_of(o)).unwrap();
                let mut pruned = o.clone();
                pruned["metadata"] = mine["metadata"].clone();
                assert_eq!(
                    sorted(pruned),
                    sorted(mine.clone()),
                    "{dir}: {} {}",
                    o["kind"],
                    name_of(o)
                );
            }
        }
    }
}

/// The ToR examples of docs/operations.md are configurations the real
/// daemons accept (their own syntax checkers: `bird -p`, `vtysh -C`,
/// `gobgpd -d`; each of these exits non-zero on an unknown statement or
/// key). Whether they peer with felix as intended is not checked here.
#[test]
fn tor_examples_pass_the_daemons_own_config_checks() {
    let dir = deploy_dir().join("examples/tor");
    let checks: [(&str, Vec<std::ffi::OsString>); 3] = [
        (
            "bird",
            vec!["-p".into(), "-c".into(), dir.join("bird.conf").into()],
        ),
        (
            "vtysh",
            vec!["-C".into(), "-f".into(), dir.join("frr.conf").into()],
        ),
        (
            "gobgpd",
            vec!["-d".into(), "-f".into(), dir.join("gobgpd.toml").into()],
        ),
    ];
    for (daemon, args) in checks {
        let out = match Command::new(daemon).args(&args).output() {
            Ok(out) => out,
            Err(e) => {
                println!("SKIPPED: {daemon} not runnable ({e}); scripts/test.sh installs it");
                continue;
            }
        };
        assert!(
            out.status.success(),
            "{daemon} refuses its example:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
