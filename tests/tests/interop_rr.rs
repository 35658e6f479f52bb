//! felix (`felix bgp run`) as an iBGP route reflector between a BIRD 2
//! client and a GoBGP client, each in its own network namespace joined to
//! felix's by a veth (root, bird2, gobgpd and the `felix` binary needed;
//! otherwise the test prints SKIPPED).
//!
//! BIRD originates 192.0.2.0/24, GoBGP 198.51.100.0/24. Each receives the
//! other's route from felix with ORIGINATOR_ID = the originator's router id
//! and CLUSTER_LIST = [felix's cluster id]; neither gets its own route back
//! (BIRD's table for the felix protocol, GoBGP's adj-in, felix's
//! per-peer advertised counts).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod interop_common;
mod interop_hub;

use interop_common::{skip_unless, wait_until};
use interop_hub::{birdc, felix_json, Hub};
use std::time::Duration;

const AS: u32 = 64600;
const CLUSTER_ID: &str = "10.255.0.9";
const API: &str = "50072";
const WAIT: Duration = Duration::from_secs(15);
const BIRD_PREFIX: &str = "192.0.2.0/24";
const GOBGP_PREFIX: &str = "198.51.100.0/24";

pub fn bird_conf(hub: &Hub, i: usize, asn: u32, gr: bool) -> String {
    format!(
        r#"router id {me};
log "{log}" all;
protocol device {{ }}
protocol direct {{ ipv4; }}
protocol static routes4 {{
    ipv4 {{ import all; }};
    route {BIRD_PREFIX} blackhole;
    # felix's other links: next hops of reflected routes resolve through it.
    route 10.0.0.0/8 via {felix};
}}
protocol bgp felixrr {{
    local {me} as {asn};
    neighbor {felix} as {AS};
    hold time 9;
    connect delay time 1;
    connect retry time 1;
    error wait time 1, 2;
    graceful restart {gr};
    ipv4 {{ import all; export where proto = "routes4" && net = {BIRD_PREFIX}; }};
}}
"#,
        me = hub.peer_ips[i],
        felix = hub.felix_ips[i],
        log = hub.path(&format!("bird{i}.log")).display(),
        gr = if gr { "on" } else { "off" },
    )
}

fn gobgp_conf(hub: &Hub, i: usize) -> String {
    format!(
        r#"[global.config]
  as = {AS}
  router-id = "{me}"
  port = 179
  local-address-list = ["{me}"]

[[neighbors]]
  [neighbors.config]
    neighbor-address = "{felix}"
    peer-as = {AS}
  [neighbors.timers.config]
    connect-retry = 1
    hold-time = 9
    keepalive-interval = 3
"#,
        me = hub.peer_ips[i],
        felix = hub.felix_ips[i],
    )
}

fn felix_conf(hub: &Hub) -> String {
    format!(
        r#"asn = {AS}
router_id = "{rid}"
listen = "0.0.0.0"
cluster_id = "{CLUSTER_ID}"
hold_time = 9

[[neighbor]]
address = "{bird}"
asn = {AS}
rr_client = true
local_address = "{bird_local}"

[[neighbor]]
address = "{gobgp}"
asn = {AS}
rr_client = true
local_address = "{gobgp_local}"
"#,
        rid = hub.felix_ips[0],
        bird = hub.peer_ips[0],
        bird_local = hub.felix_ips[0],
        gobgp = hub.peer_ips[1],
        gobgp_local = hub.felix_ips[1],
    )
}

fn gobgp(hub: &Hub, args: &[&str]) -> String {
    let mut all = vec!["gobgp", "-p", API];
    all.extend_from_slice(args);
    hub.exec(&hub.peers[1], &all)
}

/// The path attributes GoBGP's RIB holds for `prefix` (`global rib -j`).
fn gobgp_attrs(hub: &Hub, prefix: &str) -> Option<Vec<serde_json::Value>> {
    let out = gobgp(hub, &["global", "rib", "-a", "ipv4", "-j"]);
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    let paths = v.get(prefix)?.as_array()?;
    let path = paths.first()?;
    Some(path.get("attrs")?.as_array()?.clone())
}

fn attr(attrs: &[serde_json::Value], code: u64) -> Option<&serde_json::Value> {
    attrs.iter().find(|a| a["type"].as_u64() == Some(code))
}

fn peer_status<'a>(status: &'a serde_json::Value, addr: &str) -> &'a serde_json::Value {
    status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["address"].as_str() == Some(addr))
        .unwrap_or_else(|| panic!("{addr} not in {status}"))
}

#[test]
fn felix_reflects_between_bird_and_gobgp() {
    if skip_unless(&["bird", "birdc", "gobgpd", "gobgp", "ip"]) {
        return;
    }
    let mut hub = Hub::new("rr", 2);
    let bird = hub.start_bird(0, &bird_conf(&hub, 0, AS, false));
    hub.start_gobgp(1, &gobgp_conf(&hub, 1), API);
    let (_, sock) = hub.start_felix(&felix_conf(&hub), "felix");
    let (bird_ip, gobgp_ip) = (hub.peer_ips[0].clone(), hub.peer_ips[1].clone());

    let established = wait_until(WAIT, || {
        felix_json(&sock, &["status"]).is_some_and(|s| {
            s["peers"]
                .as_array()
                .is_some_and(|p| p.iter().all(|p| p["state"] == "Established"))
        })
    });
    assert!(
        established,
        "sessions not up: {:?}\n{}",
        felix_json(&sock, &["status"]),
        birdc(&bird, &["show", "protocols", "all", "felixrr"])
    );
    let added = gobgp(&hub, &["global", "rib", "add", GOBGP_PREFIX]);
    assert!(!added.contains("rror"), "{added}");

    // GoBGP gets BIRD's route: ORIGINATOR_ID = BIRD's router id,
    // CLUSTER_LIST = [cluster id], next hop unchanged (BIRD).
    assert!(
        wait_until(WAIT, || gobgp_attrs(&hub, BIRD_PREFIX).is_some()),
        "BIRD's route not at GoBGP: {}",
        gobgp(&hub, &["global", "rib", "-a", "ipv4", "-j"])
    );
    let attrs = gobgp_attrs(&hub, BIRD_PREFIX).unwrap();
    let text = serde_json::to_string(&attrs).unwrap();
    let originator = attr(&attrs, 9).unwrap_or_else(|| panic!("no ORIGINATOR_ID: {text}"));
    assert_eq!(originator["value"], bird_ip, "{text}");
    let cluster = attr(&attrs, 10).unwrap_or_else(|| panic!("no CLUSTER_LIST: {text}"));
    assert_eq!(cluster["value"], serde_json::json!([CLUSTER_ID]), "{text}");
    let nh = attr(&attrs, 3).unwrap_or_else(|| panic!("no NEXT_HOP: {text}"));
    assert_eq!(nh["nexthop"], bird_ip, "{text}");

    // BIRD gets GoBGP's route with the same attributes, GoBGP's router id.
    let show = || birdc(&bird, &["show", "route", GOBGP_PREFIX, "all"]);
    assert!(
        wait_until(WAIT, || show().contains("BGP.cluster_list")),
        "GoBGP's route not at BIRD: {}",
        birdc(&bird, &["show", "route", "all"])
    );
    let s = show();
    assert!(s.contains(&format!("BGP.originator_id: {gobgp_ip}")), "{s}");
    assert!(
        s.contains(&format!("BGP.cluster_list: {CLUSTER_ID}\n")),
        "{s}"
    );

    // Nobody gets its own route back: BIRD's routes from felix are
    // GoBGP's only, GoBGP's adj-in from felix has BIRD's only, and felix
    // advertised one prefix to each.
    std::thread::sleep(Duration::from_millis(500));
    let from_felix = birdc(&bird, &["show", "route", "all", "protocol", "felixrr"]);
    assert!(from_felix.contains(GOBGP_PREFIX), "{from_felix}");
    assert!(!from_felix.contains(BIRD_PREFIX), "{from_felix}");
    let adj_in = gobgp(&hub, &["neighbor", &hub.felix_ips[1], "adj-in"]);
    assert!(adj_in.contains(BIRD_PREFIX), "{adj_in}");
    assert!(!adj_in.contains(GOBGP_PREFIX), "{adj_in}");
    let status = felix_json(&sock, &["status"]).unwrap();
    for addr in [&bird_ip, &gobgp_ip] {
        let p = peer_status(&status, addr);
        assert_eq!(p["accepted"], 1, "{status}");
        assert_eq!(p["advertised"], 1, "{status}");
        assert_eq!(p["rr_client"], true, "{status}");
    }

    // The withdrawal is reflected too.
    gobgp(&hub, &["global", "rib", "del", GOBGP_PREFIX]);
    assert!(
        wait_until(WAIT, || !show().contains(GOBGP_PREFIX)),
        "withdrawal not reflected: {}",
        show()
    );
}

/// felix configured with nothing but a listen range (with a TCP MD5 key)
/// covering both clients' addresses: BIRD and GoBGP connect, become
/// dynamic route-reflector clients, get each other's routes; when BIRD
/// shuts its session down, its neighbour disappears from felix and its
/// route from GoBGP.
#[test]
fn felix_reflects_for_dynamic_neighbors_of_a_listen_range() {
    if skip_unless(&["bird", "birdc", "gobgpd", "gobgp", "ip"]) {
        return;
    }
    const PASSWORD: &str = "range-key-1";
    let mut hub = Hub::new("dyn", 2);
    let bird_text = bird_conf(&hub, 0, AS, false).replace(
        "hold time 9;",
        &format!("hold time 9;\n    password \"{PASSWORD}\";"),
    );
    let bird = hub.start_bird(0, &bird_text);
    let gobgp_text = gobgp_conf(&hub, 1).replace(
        "    peer-as = 64600\n",
        &format!("    peer-as = 64600\n    auth-password = \"{PASSWORD}\"\n"),
    );
    assert!(gobgp_text.contains("auth-password"));
    hub.start_gobgp(1, &gobgp_text, API);
    // Both peers are in 10.X.0.0/16 (the hub's links are /30s in it).
    let second = hub.peer_ips[0].split('.').nth(1).unwrap().to_string();
    let range = format!("10.{second}.0.0/16");
    let conf = format!(
        r#"asn = {AS}
router_id = "{rid}"
listen = "0.0.0.0"
cluster_id = "{CLUSTER_ID}"
hold_time = 9

[[listen_range]]
prefix = "{range}"
asn = {AS}
rr_client = true
password = "{PASSWORD}"
"#,
        rid = hub.felix_ips[0],
    );
    let (_, sock) = hub.start_felix(&conf, "felix");
    let (bird_ip, gobgp_ip) = (hub.peer_ips[0].clone(), hub.peer_ips[1].clone());
    let status = || felix_json(&sock, &["status"]).unwrap_or_default();
    let up = wait_until(WAIT, || {
        let s = status();
        s["peers"].as_array().is_some_and(|p| {
            p.len() == 2
                && p.iter()
                    .all(|p| p["state"] == "Established" && p["dynamic"] == true)
        })
    });
    assert!(
        up,
        "dynamic sessions not up: {}\n{}",
        status(),
        birdc(&bird, &["show", "protocols", "all", "felixrr"])
    );
    let s = status();
    for addr in [&bird_ip, &gobgp_ip] {
        assert_eq!(peer_status(&s, addr)["rr_client"], true, "{s}");
    }

    let added = gobgp(&hub, &["global", "rib", "add", GOBGP_PREFIX]);
    assert!(!added.contains("rror"), "{added}");
    assert!(
        wait_until(WAIT, || gobgp_attrs(&hub, BIRD_PREFIX).is_some()),
        "BIRD's route not at GoBGP: {}",
        gobgp(&hub, &["global", "rib", "-a", "ipv4", "-j"])
    );
    let attrs = gobgp_attrs(&hub, BIRD_PREFIX).unwrap();
    assert_eq!(attr(&attrs, 9).unwrap()["value"], bird_ip);
    let show = || birdc(&bird, &["show", "route", GOBGP_PREFIX, "all"]);
    assert!(
        wait_until(WAIT, || show().contains("BGP.cluster_list")),
        "GoBGP's route not at BIRD: {}",
        birdc(&bird, &["show", "route", "all"])
    );

    // BIRD leaves: its dynamic neighbour goes, and its route with it.
    birdc(&bird, &["disable", "felixrr"]);
    assert!(
        wait_until(WAIT, || gobgp_attrs(&hub, BIRD_PREFIX).is_none()),
        "BIRD's route still at GoBGP after BIRD left"
    );
    assert!(
        wait_until(WAIT, || {
            let s = status();
            s["peers"]
                .as_array()
                .is_some_and(|p| p.len() == 1 && p[0]["address"] == gobgp_ip.as_str())
        }),
        "BIRD's dynamic neighbour not removed: {}",
        status()
    );
    // And it may come back.
    birdc(&bird, &["enable", "felixrr"]);
    assert!(
        wait_until(WAIT, || gobgp_attrs(&hub, BIRD_PREFIX).is_some()),
        "BIRD did not come back: {}",
        status()
    );
}
