//! The lab's topology, computed before anything is made: names and
//! addresses of the underlay, the nodes, the pods and the extra routers.
//! Pure, so that every name can be checked (and swept by prefix later).

use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use thiserror::Error;

/// The ToR daemons the lab can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Tor {
    Bird,
    Gobgp,
    Frr,
}

/// The datastores the lab can use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LabDatastore {
    #[default]
    Sqlite,
    Etcd,
}

/// The tunnel between the two subnets of `--subnets 2` (the pool's mode is
/// `CrossSubnet`: nodes on one subnet route to each other directly).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LabEncapsulation {
    #[default]
    Vxlan,
    Ipip,
}

/// What the user asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabOptions {
    /// Prefix of every namespace, link and the state directory's name.
    pub prefix: String,
    pub nodes: u8,
    pub pods_per_node: u8,
    pub route_reflector: bool,
    pub tor: Option<Tor>,
    /// 1, or 2 (nodes alternate between two L3 subnets behind a router).
    pub subnets: u8,
    /// The pool's tunnel with 2 subnets (ignored with one).
    #[serde(default)]
    pub encapsulation: LabEncapsulation,
    pub datastore: LabDatastore,
    /// IPv6 too: underlay IPv6 addresses, an IPv6 pool next to the IPv4
    /// one, dual-stack pods, IPv6 sessions between the agents.
    #[serde(default)]
    pub dual_stack: bool,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            prefix: "fxl".into(),
            nodes: 3,
            pods_per_node: 2,
            route_reflector: false,
            tor: None,
            subnets: 1,
            encapsulation: LabEncapsulation::Vxlan,
            datastore: LabDatastore::Sqlite,
            dual_stack: false,
        }
    }
}

/// Options that cannot make a lab.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("--nodes {0}: between 1 and 50")]
    Nodes(u8),
    #[error("--pods {0}: between 0 and 50")]
    Pods(u8),
    #[error("--subnets {0}: 1 or 2")]
    Subnets(u8),
    #[error("prefix {0:?}: 1 to 8 lower-case letters or digits, starting with a letter")]
    Prefix(String),
    #[error("--dual-stack with {0}: not built yet (the full mesh on one subnet, optionally with --tor bird)")]
    DualStack(&'static str),
}

/// The lab's cluster AS (Calico's default) and the ToR's.
pub const CLUSTER_AS: u32 = 64512;
pub const TOR_AS: u32 = 65000;
/// etcd's client port in its namespace (etcd's registered port).
pub const ETCD_CLIENT_PORT: u16 = 2379;
/// The pod pool.
pub const POD_POOL: &str = "10.244.0.0/16";
/// The IPv6 pod pool of `--dual-stack` (blocks of /122, IPAM's default).
pub const POD_POOL_V6: &str = "fd00:10:244::/48";
/// Prefix length of the lab's IPv6 underlay subnets (`fd00:0:0:K::/64`).
pub const UNDERLAY_V6_LEN: u8 = 64;

/// One node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePlan {
    /// Node name, e.g. `node-1`.
    pub name: String,
    /// Its namespace, e.g. `fxl-n1`.
    pub netns: String,
    /// Its underlay address and subnet length.
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    /// The router address on its subnet (its default gateway).
    pub gateway: Ipv4Addr,
    /// Which underlay bridge (0 or 1).
    pub subnet: u8,
    /// Its IPv6 underlay address (`--dual-stack`), on a /64
    /// ([`UNDERLAY_V6_LEN`]); the router is [`LabPlan::gateway_v6`].
    #[serde(default)]
    pub address_v6: Option<Ipv6Addr>,
    /// The lab-side end of its underlay veth.
    pub lab_link: String,
    pub pods: Vec<PodPlan>,
}

/// One pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodPlan {
    /// e.g. `node-1-pod-2`.
    pub name: String,
    /// e.g. `fxl-n1-p2`.
    pub netns: String,
    /// The CNI container id.
    pub container_id: String,
}

/// A namespace with one address on underlay subnet 0 that is not a node:
/// the route reflector, the ToR router or the etcd server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnderlayHost {
    pub netns: String,
    pub address: Ipv4Addr,
    /// Its IPv6 address on subnet 0 (the ToR of `--dual-stack`).
    #[serde(default)]
    pub address_v6: Option<Ipv6Addr>,
    pub lab_link: String,
}

/// The whole topology.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabPlan {
    pub options: LabOptions,
    /// The namespace holding the underlay bridges (and routing between them).
    pub lab_netns: String,
    pub nodes: Vec<NodePlan>,
    pub route_reflector: Option<UnderlayHost>,
    pub tor: Option<UnderlayHost>,
    /// The etcd server's namespace (`--datastore etcd`).
    pub etcd: Option<UnderlayHost>,
}

/// The underlay subnet `k`: 10.0.k.0/24, router at .254.
fn subnet_addr(k: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, k, host)
}

/// The IPv6 underlay subnet `k`: fd00:0:0:k::/64, host `host` at
/// `fd00:0:0:k::HOST` (hex of the same number), router at `::fe`.
pub fn subnet_addr_v6(k: u8, host: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0, 0, u16::from(k), 0, 0, 0, u16::from(host))
}

impl LabPlan {
    /// Checks the options and lays out the lab.
    pub fn new(options: LabOptions) -> Result<LabPlan, PlanError> {
        if options.nodes == 0 || options.nodes > 50 {
            return Err(PlanError::Nodes(options.nodes));
        }
        if options.pods_per_node > 50 {
            return Err(PlanError::Pods(options.pods_per_node));
        }
        if !(1..=2).contains(&options.subnets) {
            return Err(PlanError::Subnets(options.subnets));
        }
        if !valid_prefix(&options.prefix) {
            return Err(PlanError::Prefix(options.prefix.clone()));
        }
        if options.dual_stack {
            if options.route_reflector {
                return Err(PlanError::DualStack("--route-reflector"));
            }
            if matches!(options.tor, Some(Tor::Gobgp | Tor::Frr)) {
                return Err(PlanError::DualStack("--tor gobgp|frr"));
            }
            if options.subnets > 1 {
                return Err(PlanError::DualStack("--subnets 2"));
            }
        }
        let p = &options.prefix;
        let nodes = (1..=options.nodes)
            .map(|i| {
                let subnet = (i - 1) % options.subnets;
                NodePlan {
                    name: format!("node-{i}"),
                    netns: format!("{p}-n{i}"),
                    address: subnet_addr(subnet, i),
                    prefix_len: 24,
                    gateway: subnet_addr(subnet, 254),
                    subnet,
                    address_v6: options.dual_stack.then(|| subnet_addr_v6(subnet, i)),
                    lab_link: format!("{p}-n{i}"),
                    pods: (1..=options.pods_per_node)
                        .map(|j| PodPlan {
                            name: format!("node-{i}-pod-{j}"),
                            netns: format!("{p}-n{i}-p{j}"),
                            container_id: format!("{p}-n{i}-p{j}"),
                        })
                        .collect(),
                }
            })
            .collect();
        let host = |what: &str, host: u8| UnderlayHost {
            netns: format!("{p}-{what}"),
            address: subnet_addr(0, host),
            address_v6: None,
            lab_link: format!("{p}-{what}"),
        };
        Ok(LabPlan {
            lab_netns: format!("{p}-lab"),
            nodes,
            route_reflector: options.route_reflector.then(|| host("rr", 250)),
            // The ToR of a dual-stack lab peers over IPv6 too.
            tor: options.tor.map(|_| UnderlayHost {
                address_v6: options.dual_stack.then(|| subnet_addr_v6(0, 253)),
                ..host("tor", 253)
            }),
            etcd: (options.datastore == LabDatastore::Etcd).then(|| host("etcd", 252)),
            options,
        })
    }

    /// The lab router's IPv6 address on subnet `k` (`--dual-stack`).
    pub fn gateway_v6(k: u8) -> Ipv6Addr {
        subnet_addr_v6(k, 0xfe)
    }

    /// Every namespace the lab makes, routers and pods included.
    pub fn namespaces(&self) -> Vec<String> {
        let mut all = vec![self.lab_netns.clone()];
        for n in &self.nodes {
            all.push(n.netns.clone());
            all.extend(n.pods.iter().map(|p| p.netns.clone()));
        }
        all.extend(self.route_reflector.iter().map(|r| r.netns.clone()));
        all.extend(self.tor.iter().map(|r| r.netns.clone()));
        all.extend(self.etcd.iter().map(|r| r.netns.clone()));
        all
    }

    /// The datastore URL the agents (and the lab itself) use: the SQLite
    /// file in the lab's state directory `dir`, or the lab's etcd.
    pub fn datastore_url(&self, dir: &Path) -> String {
        match &self.etcd {
            Some(etcd) => format!("etcd://{}:{ETCD_CLIENT_PORT}", etcd.address),
            None => format!("sqlite:{}", dir.join("felix.db").display()),
        }
    }
}

/// A lab prefix: short enough that `PREFIX-nNN-pNN` fits a namespace name
/// and `PREFIX-nNN` an interface name (15 bytes).
pub fn valid_prefix(p: &str) -> bool {
    (1..=8).contains(&p.len())
        && p.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && p.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn default_lab_three_nodes_two_pods_one_subnet() {
        let plan = LabPlan::new(LabOptions::default()).unwrap();
        assert_eq!(plan.nodes.len(), 3);
        assert_eq!(plan.nodes[2].address, Ipv4Addr::new(10, 0, 0, 3));
        assert_eq!(plan.nodes[2].pods[1].netns, "fxl-n3-p2");
        assert_eq!(plan.namespaces().len(), 1 + 3 + 6);
        assert!(plan.namespaces().iter().all(|n| n.starts_with("fxl-")));
        assert!(plan.route_reflector.is_none() && plan.tor.is_none() && plan.etcd.is_none());
        assert_eq!(
            plan.datastore_url(Path::new("/run/felix-lab/fxl")),
            "sqlite:/run/felix-lab/fxl/felix.db"
        );
    }

    #[test]
    fn dual_stack_nodes_get_distinct_ipv6_addresses_on_the_router_subnet() {
        let plan = LabPlan::new(LabOptions {
            dual_stack: true,
            nodes: 20,
            ..Default::default()
        })
        .unwrap();
        let v6: Vec<Ipv6Addr> = plan.nodes.iter().map(|n| n.address_v6.unwrap()).collect();
        assert_eq!(v6[0], "fd00::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(v6[19], "fd00::14".parse::<Ipv6Addr>().unwrap());
        let mut sorted = v6.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 20);
        let subnet: ipnet::Ipv6Net = "fd00::/64".parse().unwrap();
        assert!(v6.iter().all(|a| subnet.contains(a)));
        assert!(subnet.contains(&LabPlan::gateway_v6(0)) && !v6.contains(&LabPlan::gateway_v6(0)));
        // A BIRD ToR gets an IPv6 address too.
        let plan = LabPlan::new(LabOptions {
            dual_stack: true,
            tor: Some(Tor::Bird),
            ..Default::default()
        })
        .unwrap();
        let tor6 = plan.tor.as_ref().unwrap().address_v6.unwrap();
        assert_eq!(tor6, "fd00::fd".parse::<Ipv6Addr>().unwrap());
        assert!(plan.nodes.iter().all(|n| n.address_v6 != Some(tor6)));
        // Without the option: IPv4 only.
        let plan = LabPlan::new(LabOptions {
            tor: Some(Tor::Bird),
            ..Default::default()
        })
        .unwrap();
        assert!(plan.nodes.iter().all(|n| n.address_v6.is_none()));
        assert_eq!(plan.tor.unwrap().address_v6, None);
    }

    #[test]
    fn etcd_lab_has_an_etcd_namespace_and_url() {
        let plan = LabPlan::new(LabOptions {
            datastore: LabDatastore::Etcd,
            route_reflector: true,
            tor: Some(Tor::Frr),
            ..Default::default()
        })
        .unwrap();
        let etcd = plan.etcd.as_ref().unwrap();
        assert_eq!(etcd.netns, "fxl-etcd");
        assert_eq!(
            plan.datastore_url(Path::new("/x")),
            "etcd://10.0.0.252:2379"
        );
        // Every extra host has its own address, none a node's or the router's.
        let mut addrs: Vec<Ipv4Addr> = plan.nodes.iter().map(|n| n.address).collect();
        addrs.push(Ipv4Addr::new(10, 0, 0, 254));
        for h in [&plan.route_reflector, &plan.tor, &plan.etcd] {
            addrs.push(h.as_ref().unwrap().address);
        }
        let n = addrs.len();
        addrs.sort();
        addrs.dedup();
        assert_eq!(addrs.len(), n);
        assert_eq!(plan.namespaces().len(), 1 + 3 + 6 + 3);
    }

    #[test]
    fn two_subnets_alternate_and_names_fit_interface_limits() {
        let plan = LabPlan::new(LabOptions {
            prefix: "fxt12345".into(),
            nodes: 50,
            subnets: 2,
            route_reflector: true,
            tor: Some(Tor::Bird),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(plan.nodes[0].address, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(plan.nodes[1].address, Ipv4Addr::new(10, 0, 1, 2));
        assert_eq!(plan.nodes[1].gateway, Ipv4Addr::new(10, 0, 1, 254));
        for n in &plan.nodes {
            assert!(n.lab_link.len() <= 15, "{}", n.lab_link);
        }
        assert!(plan.tor.as_ref().unwrap().lab_link.len() <= 15);
    }

    #[test]
    fn bad_options_are_refused() {
        let bad = |o: LabOptions| LabPlan::new(o).unwrap_err();
        assert_eq!(
            bad(LabOptions {
                nodes: 0,
                ..Default::default()
            }),
            PlanError::Nodes(0)
        );
        assert_eq!(
            bad(LabOptions {
                subnets: 3,
                ..Default::default()
            }),
            PlanError::Subnets(3)
        );
        for (o, what) in [
            (
                LabOptions {
                    route_reflector: true,
                    ..Default::default()
                },
                "--route-reflector",
            ),
            (
                LabOptions {
                    tor: Some(Tor::Frr),
                    ..Default::default()
                },
                "--tor gobgp|frr",
            ),
            (
                LabOptions {
                    subnets: 2,
                    ..Default::default()
                },
                "--subnets 2",
            ),
        ] {
            let o = LabOptions {
                dual_stack: true,
                ..o
            };
            assert_eq!(bad(o), PlanError::DualStack(what));
        }
        for p in ["", "UP", "1abc", "toolongname", "a-b"] {
            assert_eq!(
                bad(LabOptions {
                    prefix: p.into(),
                    ..Default::default()
                }),
                PlanError::Prefix(p.into())
            );
        }
    }
}
