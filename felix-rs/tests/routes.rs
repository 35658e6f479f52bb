//! The route programmer against a real kernel, each test in its own network
//! namespace (root needed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod netns_support;

use std::net::IpAddr;

use felix_rs::routes::{
    DesiredRoute, DesiredRoutes, NextHop, ProgrammerConfig, RouteError, RouteOp, RouteProgrammer,
};
use ipnet::IpNet;
use netns_support::{felix_routes, NetNs};

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}
fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A namespace with a pod-like veth `fxpod1` and an underlay `under0` on
/// 192.0.2.1/24 (gateways 192.0.2.2 and .3 are on-link there).
fn node(tag: &str) -> NetNs {
    let ns = NetNs::new(tag);
    ns.ip("link add fxpod1 type veth peer name fxpod1p");
    ns.ip("link add under0 type veth peer name under0p");
    for dev in ["fxpod1", "fxpod1p", "under0", "under0p"] {
        ns.ip(&format!("link set {dev} up"));
    }
    ns.ip("addr add 192.0.2.1/24 dev under0");
    ns.ip("-6 addr add 2001:db8::1/64 dev under0 nodad");
    ns
}

fn sample_table() -> DesiredRoutes {
    let mut t = DesiredRoutes::new();
    t.pod(ip("10.65.0.5"), "fxpod1").unwrap();
    t.blackhole(net("10.65.0.0/26")).unwrap();
    t.via_gateway(net("10.66.0.0/26"), ip("192.0.2.2")).unwrap();
    t.pod(ip("fd00:65::5"), "fxpod1").unwrap();
    t.blackhole(net("fd00:65::/122")).unwrap();
    t.via_gateway(net("fd00:66::/122"), ip("2001:db8::2"))
        .unwrap();
    t
}

#[test]
fn reconcile_installs_the_desired_routes_and_then_changes_nothing() {
    let ns = node("install");
    let (first, second) = ns.run(|| async {
        let mut p = RouteProgrammer::new().unwrap();
        p.set_desired(sample_table());
        let first = p.reconcile().await.unwrap();
        let second = p.reconcile().await.unwrap();
        (first, second)
    });
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    assert_eq!((first.added, first.deleted, first.replaced), (6, 0, 0));
    assert!(second.no_changes(), "{second:?}");
    assert_eq!(second.unchanged, 6);
    let routes = felix_routes(&ns);
    let want = [
        "10.65.0.5 dev fxpod1 scope link",
        "blackhole 10.65.0.0/26",
        "10.66.0.0/26 via 192.0.2.2 dev under0",
        "fd00:65::5 dev fxpod1 metric 1024 pref medium",
        "blackhole fd00:65::/122 dev lo metric 1024 pref medium",
        "fd00:66::/122 via 2001:db8::2 dev under0 metric 1024 pref medium",
    ];
    for w in want {
        assert!(
            routes.iter().any(|r| r == w),
            "missing {w:?} in {routes:#?}"
        );
    }
    assert_eq!(routes.len(), 6, "{routes:#?}");
}

#[test]
fn reconcile_removes_only_stale_felix_routes_and_never_touches_others() {
    let ns = node("stale");
    ns.ip("route add 10.70.0.0/26 via 192.0.2.2 proto 102"); // stale, felix's
    ns.ip("-6 route add fd00:70::/122 via 2001:db8::2 proto 102"); // stale, felix's
    ns.ip("route add 10.71.0.0/26 via 192.0.2.2 proto static");
    ns.ip("route add 10.72.0.0/26 via 192.0.2.2"); // proto boot
    ns.ip("route add 10.73.0.0/26 via 192.0.2.3 proto 80"); // Calico's number
    ns.ip("route add 10.74.0.0/26 via 192.0.2.3 proto static"); // at a prefix felix wants
    ns.ip("route add 10.75.0.0/26 via 192.0.2.3 proto 102 table 100"); // felix proto, other table
    let report = ns.run(|| async {
        let mut p = RouteProgrammer::new().unwrap();
        let mut t = sample_table();
        t.via_gateway(net("10.74.0.0/26"), ip("192.0.2.2")).unwrap();
        p.set_desired(t);
        p.reconcile().await.unwrap()
    });
    assert_eq!(report.deleted, 2, "{report:?}");
    assert_eq!(report.added, 6);
    assert_eq!(
        report.errors,
        vec![RouteError::ForeignRoute {
            route: net("10.74.0.0/26")
        }]
    );
    let all = ns.out("route show");
    assert!(!all.contains("10.70.0.0/26"), "{all}");
    assert!(!ns.out("-6 route show").contains("fd00:70::/122"));
    assert!(
        all.contains("10.71.0.0/26 via 192.0.2.2 dev under0 proto static"),
        "{all}"
    );
    assert!(
        all.contains("10.72.0.0/26 via 192.0.2.2 dev under0 \n")
            || all.contains("10.72.0.0/26 via 192.0.2.2 dev under0")
    );
    assert!(
        all.contains("10.73.0.0/26 via 192.0.2.3 dev under0 proto 80"),
        "{all}"
    );
    assert!(
        all.contains("10.74.0.0/26 via 192.0.2.3 dev under0 proto static"),
        "{all}"
    );
    assert!(ns.out("route show table 100").contains("10.75.0.0/26"));
}

#[test]
fn a_restarted_programmer_with_the_same_table_changes_nothing_then_removes_only_stale() {
    let ns = node("restart");
    let before = ns.run(|| async {
        let mut p = RouteProgrammer::new().unwrap();
        p.set_desired(sample_table());
        p.reconcile().await.unwrap()
    });
    assert_eq!(before.added, 6);
    let installed = felix_routes(&ns);
    // A new process: new socket, new programmer, same desired table.
    let (same, fewer) = ns.run(|| async {
        let mut p = RouteProgrammer::new().unwrap();
        p.set_desired(sample_table());
        let same = p.reconcile().await.unwrap();
        let mut q = RouteProgrammer::new().unwrap();
        let mut t = sample_table();
        t.remove(&net("10.66.0.0/26"));
        q.set_desired(t);
        let fewer = q.reconcile().await.unwrap();
        (same, fewer)
    });
    assert!(same.no_changes(), "{same:?}");
    assert_eq!(same.unchanged, 6);
    assert_eq!(
        (fewer.added, fewer.replaced, fewer.deleted, fewer.unchanged),
        (0, 0, 1, 5)
    );
    let after = felix_routes(&ns);
    let expected: Vec<String> = installed
        .into_iter()
        .filter(|r| !r.starts_with("10.66.0.0/26"))
        .collect();
    assert_eq!(after, expected);
}

#[test]
fn after_a_restart_unlisted_routes_stay_until_keep_unlisted_is_lifted() {
    let ns = node("keep");
    ns.run(|| async {
        let mut p = RouteProgrammer::new().unwrap();
        p.set_desired(sample_table());
        p.reconcile().await.unwrap()
    });
    let installed = felix_routes(&ns);
    // The restarted agent: it finds the previous run's routes, and while
    // its table is still partial (one route re-learned, one changed) it
    // adds and replaces but removes nothing.
    fn partial_table() -> DesiredRoutes {
        let mut t = DesiredRoutes::new();
        t.blackhole(net("10.65.0.0/26")).unwrap();
        t.via_gateway(net("10.66.0.0/26"), ip("192.0.2.3")).unwrap();
        t
    }
    let (found, partial) = ns.run(|| async {
        let mut p = RouteProgrammer::new().unwrap();
        let found = p.kernel_route_count().await.unwrap();
        p.keep_unlisted(true);
        p.set_desired(partial_table());
        (found, p.reconcile().await.unwrap())
    });
    assert_eq!(found, 6);
    assert_eq!(
        (
            partial.added,
            partial.replaced,
            partial.deleted,
            partial.unchanged
        ),
        (0, 1, 0, 1),
        "{partial:?}"
    );
    let kept = felix_routes(&ns);
    assert_eq!(kept.len(), 6, "{kept:#?}");
    assert!(kept.contains(&"10.66.0.0/26 via 192.0.2.3 dev under0".to_string()));
    // Re-learned: lifting it removes what the table does not list.
    let complete = ns.run(|| async {
        let mut p = RouteProgrammer::new().unwrap();
        p.keep_unlisted(true);
        p.set_desired(partial_table());
        p.reconcile().await.unwrap();
        p.keep_unlisted(false);
        p.reconcile().await.unwrap()
    });
    assert_eq!(complete.deleted, 4, "{complete:?}");
    let mut after = felix_routes(&ns);
    after.sort();
    assert_eq!(
        after,
        vec![
            "10.66.0.0/26 via 192.0.2.3 dev under0".to_string(),
            "blackhole 10.65.0.0/26".to_string(),
        ],
        "before: {installed:#?}"
    );
}

#[test]
fn a_changed_route_is_replaced_in_place() {
    let ns = node("replace");
    let (r1, r2) = ns.run(|| async {
        let mut p = RouteProgrammer::new().unwrap();
        p.upsert(DesiredRoute::via_gateway(
            net("10.66.0.0/26"),
            ip("192.0.2.2"),
        ))
        .unwrap();
        let r1 = p.reconcile().await.unwrap();
        p.upsert(DesiredRoute::via_gateway(
            net("10.66.0.0/26"),
            ip("192.0.2.3"),
        ))
        .unwrap();
        let r2 = p.reconcile_changes().await.unwrap();
        (r1, r2)
    });
    assert_eq!(r1.added, 1);
    assert_eq!((r2.replaced, r2.added, r2.deleted), (1, 0, 0), "{r2:?}");
    assert_eq!(
        felix_routes(&ns),
        vec!["10.66.0.0/26 via 192.0.2.3 dev under0".to_string()]
    );
}

#[test]
fn ecmp_routes_get_every_next_hop_and_reconcile_stably() {
    let ns = node("ecmp");
    let (r1, r2) = ns.run(|| async {
        let mut p = RouteProgrammer::new().unwrap();
        p.upsert(DesiredRoute::multipath(
            net("10.80.0.0/26"),
            vec![
                NextHop::gateway(ip("192.0.2.2")),
                NextHop::gateway(ip("192.0.2.3")),
            ],
        ))
        .unwrap();
        p.upsert(DesiredRoute::multipath(
            net("fd00:80::/122"),
            vec![
                NextHop::via_device(ip("2001:db8::2"), "under0"),
                NextHop::via_device(ip("2001:db8::3"), "under0"),
            ],
        ))
        .unwrap();
        let r1 = p.reconcile().await.unwrap();
        let r2 = p.reconcile().await.unwrap();
        (r1, r2)
    });
    assert!(r1.errors.is_empty(), "{:?}", r1.errors);
    assert_eq!(r1.added, 2);
    assert!(
        r2.no_changes(),
        "a multipath route read back must equal what was written: {r2:?}"
    );
    let v4 = ns.out("route show 10.80.0.0/26");
    assert!(
        v4.contains("nexthop via 192.0.2.2 dev under0 weight 1"),
        "{v4}"
    );
    assert!(
        v4.contains("nexthop via 192.0.2.3 dev under0 weight 1"),
        "{v4}"
    );
    let v6 = ns.out("-6 route show fd00:80::/122");
    assert!(
        v6.contains("nexthop via 2001:db8::2 dev under0 weight 1"),
        "{v6}"
    );
    assert!(
        v6.contains("nexthop via 2001:db8::3 dev under0 weight 1"),
        "{v6}"
    );
}

/// The agent's IPv6 routes to learned blocks are gateway-only next hops
/// (no device: the kernel finds it), ECMP when BGP hands several best
/// paths; read back with the device, they must still compare equal.
#[test]
fn ipv6_ecmp_by_gateway_only_as_the_agent_writes_it_reconciles_stably() {
    let ns = node("ecmp6");
    let (r1, r2) = ns.run(|| async {
        let mut p = RouteProgrammer::new().unwrap();
        p.upsert(DesiredRoute::multipath(
            net("fd00:10:244::40/122"),
            vec![
                NextHop::gateway(ip("2001:db8::2")),
                NextHop::gateway(ip("2001:db8::3")),
            ],
        ))
        .unwrap();
        p.upsert(DesiredRoute::multipath(
            net("fd00:10:244::80/122"),
            vec![NextHop::gateway(ip("2001:db8::3"))],
        ))
        .unwrap();
        let r1 = p.reconcile().await.unwrap();
        let r2 = p.reconcile().await.unwrap();
        (r1, r2)
    });
    assert!(r1.errors.is_empty(), "{:?}", r1.errors);
    assert_eq!(r1.added, 2);
    assert!(r2.no_changes(), "read back differs: {r2:?}");
    let ecmp = ns.out("-6 route show fd00:10:244::40/122");
    for hop in ["2001:db8::2", "2001:db8::3"] {
        assert!(
            ecmp.contains(&format!("nexthop via {hop} dev under0")),
            "{ecmp}"
        );
    }
    let single = ns.out("-6 route show fd00:10:244::80/122");
    assert!(single.contains("via 2001:db8::3 dev under0"), "{single}");
}

#[test]
fn bad_routes_fail_alone_with_an_error_naming_them() {
    let ns = node("bad");
    ns.ip("link add fxpod2 type veth peer name fxpod2p");
    ns.ip("link set fxpod2 up");
    let (r1, r2) = {
        let ns_name = ns.name.clone();
        ns.run(move || async move {
            let mut p = RouteProgrammer::new().unwrap();
            let mut t = sample_table();
            t.pod(ip("10.65.0.9"), "fxnone").unwrap(); // no such device
            t.pod(ip("10.65.0.6"), "fxpod2").unwrap();
            // Not on a connected subnet and not on-link: the kernel refuses it.
            t.via_gateway(net("10.67.0.0/26"), ip("203.0.113.1"))
                .unwrap();
            p.set_desired(t);
            let r1 = p.reconcile().await.unwrap();
            // The veth goes away (pod deleted) while its route is still desired.
            netns_support::sh(&format!("ip -n {ns_name} link del fxpod2"));
            let r2 = p.reconcile().await.unwrap();
            (r1, r2)
        })
    };
    assert_eq!(r1.added, 7, "every good route is installed: {r1:?}");
    assert_eq!(r1.errors.len(), 2, "{:?}", r1.errors);
    assert!(r1.errors.contains(&RouteError::DeviceNotFound {
        route: net("10.65.0.9/32"),
        device: "fxnone".into()
    }));
    let unreachable = r1
        .errors
        .iter()
        .find(|e| e.route() == net("10.67.0.0/26"))
        .unwrap();
    assert!(matches!(
        unreachable,
        RouteError::Kernel {
            op: RouteOp::Add,
            errno: libc::ENETUNREACH,
            ..
        }
    ));
    assert!(unreachable
        .to_string()
        .starts_with("route 10.67.0.0/26: kernel refused add: "));
    assert!(r2
        .errors
        .iter()
        .any(|e| matches!(e, RouteError::DeviceNotFound { device, .. } if device == "fxpod2")));
    assert!(r2.no_changes(), "{r2:?}");
    assert_eq!(r2.unchanged, 6);
}

#[test]
fn the_spawned_task_applies_changes_and_bursts() {
    let ns = node("task");
    let ns_name = ns.name.clone();
    ns.run(move || async move {
        let p = RouteProgrammer::new().unwrap();
        let (handle, task) = p.spawn(ProgrammerConfig::default());
        handle.set_desired(sample_table());
        let first = handle.flush().await.unwrap();
        assert!(first.full, "the first reconcile is a full one");
        assert_eq!(first.added, 6);
        for i in 0..200u32 {
            let block = IpNet::new(
                IpAddr::from([10, 90, (i / 4) as u8, ((i % 4) * 64) as u8]),
                26,
            )
            .unwrap();
            handle
                .upsert(DesiredRoute::via_gateway(block, ip("192.0.2.2")))
                .unwrap();
        }
        handle.remove(net("10.66.0.0/26"));
        let burst = handle.flush().await.unwrap();
        assert!(!burst.full);
        assert_eq!((burst.added, burst.deleted), (200, 1), "{burst:?}");
        assert!(handle
            .upsert(DesiredRoute::blackhole(net("10.1.0.1/26")))
            .is_err());
        let status = handle.status().borrow().clone();
        assert!(status.reconciles >= 2);
        assert!(status.last_error.is_none());
        // A route deleted behind felix's back comes back at the next resync.
        netns_support::sh(&format!("ip -n {ns_name} route del 10.90.0.0/26"));
        let repaired = handle.resync().await.unwrap();
        assert!(repaired.full);
        assert_eq!(repaired.added, 1);
        task.abort();
    });
    assert_eq!(felix_routes(&ns).len(), 205);
}
