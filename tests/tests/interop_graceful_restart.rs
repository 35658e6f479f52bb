//! Graceful restart of `felix bgp run` towards BIRD 2 (root, bird2 and the
//! `felix` binary needed; otherwise the test prints SKIPPED).
//!
//! felix (graceful_restart_time set) originates three prefixes to BIRD
//! (`graceful restart on`). felix is killed with SIGKILL (no NOTIFICATION:
//! the kernel closes the socket) and started again with the same
//! configuration plus `graceful_restart_recovery = true` (Restart State and
//! Forwarding State bits in its OPEN). A thread polls BIRD's table every 50 ms for the whole
//! time: the routes must never leave it. While felix is away they are
//! marked stale; after felix is back and has sent its table and End-of-RIB
//! they are no longer stale.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod interop_common;
mod interop_hub;

use interop_common::{skip_unless, wait_until};
use interop_hub::{birdc, felix_json, Hub};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const AS: u32 = 64700;
const PREFIXES: [&str; 3] = ["10.91.0.0/24", "10.91.1.0/24", "10.91.2.0/26"];

fn bird_conf(hub: &Hub) -> String {
    format!(
        r#"router id {me};
log "{log}" all;
protocol device {{ }}
protocol direct {{ ipv4; }}
protocol bgp felixgr {{
    local {me} as {AS};
    neighbor {felix} as {AS};
    hold time 9;
    connect delay time 1;
    connect retry time 1;
    error wait time 1, 2;
    graceful restart on;
    ipv4 {{ import all; export none; }};

}}
"#,
        me = hub.peer_ips[0],
        felix = hub.felix_ips[0],
        log = hub.path("bird0.log").display(),
    )
}

fn felix_conf(hub: &Hub) -> String {
    let originate: Vec<String> = PREFIXES.iter().map(|p| format!("\"{p}\"")).collect();
    format!(
        r#"asn = {AS}
router_id = "{me}"
listen = "{me}"
hold_time = 9
graceful_restart_time = 30
originate = [{originate}]

[[neighbor]]
address = "{bird}"
asn = {AS}
local_address = "{me}"
"#,
        me = hub.felix_ips[0],
        bird = hub.peer_ips[0],
        originate = originate.join(", "),
    )
}

/// The routes BIRD has from felix, one `show route all` block per prefix.
fn bird_routes(sock: &str) -> String {
    birdc(sock, &["show", "route", "all", "protocol", "felixgr"])
}

fn bird_protocol(sock: &str) -> String {
    birdc(sock, &["show", "protocols", "all", "felixgr"])
}

/// What one restart looked like from BIRD's side.
struct Restart {
    /// BIRD's table polled every 50 ms from just before the kill until
    /// felix was back and had sent its table: the samples missing a route.
    missing: Vec<String>,
    /// `show protocols all` while felix was down.
    during: String,
    /// Routes while felix was down (sampled before it was started again).
    during_routes: String,
    /// `show protocols all` after felix was back.
    after: String,
    after_routes: String,
    /// How long after felix was Established again BIRD's graceful restart
    /// ended (felix's End-of-RIB received).
    gr_done: Option<Duration>,
}

/// felix up with BIRD, killed (SIGKILL), down for `down`, started again,
/// Established and given 2 s to send its table and End-of-RIB.
fn restart_felix(down: Duration) -> Option<Restart> {
    if skip_unless(&["bird", "birdc", "ip"]) {
        return None;
    }
    let mut hub = Hub::new("gr", 1);
    let bird = hub.start_bird(0, &bird_conf(&hub));
    let conf = felix_conf(&hub);
    let (felix, _sock) = hub.start_felix(&conf, "felix");
    let all_there = |s: &str| PREFIXES.iter().all(|p| s.contains(p));
    assert!(
        wait_until(Duration::from_secs(15), || all_there(&bird_routes(&bird))),
        "felix's routes not at BIRD: {}\n{}",
        bird_routes(&bird),
        bird_protocol(&bird)
    );

    let stop = Arc::new(AtomicBool::new(false));
    let missing = Arc::new(Mutex::new(Vec::<String>::new()));
    let poller = {
        let (stop, missing, bird) = (stop.clone(), missing.clone(), bird.clone());
        std::thread::spawn(move || {
            let t0 = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let s = bird_routes(&bird);
                if !all_there(&s) {
                    missing
                        .lock()
                        .unwrap()
                        .push(format!("at {:?} after the kill: {s}", t0.elapsed()));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    hub.kill9(felix);
    // BIRD notices the closed connection and keeps the routes (graceful
    // restart of its neighbour); it shows "Neighbor graceful restart
    // active" and the restart timer. BIRD 2.0.12 does not mark stale
    // routes in `show route`.
    let noticed = wait_until(Duration::from_secs(5), || {
        bird_protocol(&bird).contains("Neighbor graceful restart active")
    });
    std::thread::sleep(down);
    let during = bird_protocol(&bird);
    let during_routes = bird_routes(&bird);
    assert!(noticed, "BIRD did not start a graceful restart: {during}");

    // The restarted instance says so: Restart State and Forwarding State
    // bits (RFC 4724 §4.1), as felix's kernel routes stay in place.
    let recovering = format!("graceful_restart_recovery = true\n{conf}");
    let (_felix2, sock2) = hub.start_felix(&recovering, "felix");
    let up = wait_until(Duration::from_secs(15), || {
        felix_json(&sock2, &["status"]).is_some_and(|s| s["peers"][0]["state"] == "Established")
    });
    assert!(up, "felix did not come back: {}", bird_protocol(&bird));
    let back = Instant::now();
    // BIRD's graceful restart ends with felix's End-of-RIB, which the
    // restarted felix sends only after BIRD's own (selection deferral,
    // RFC 4724 §4.1).
    let gr_done = wait_until(Duration::from_secs(10), || {
        !bird_protocol(&bird).contains("Neighbor graceful restart active")
    })
    .then(|| back.elapsed());
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    poller.join().unwrap();
    let missing = missing.lock().unwrap().clone();
    Some(Restart {
        missing,
        during,
        during_routes,
        after: bird_protocol(&bird),
        after_routes: bird_routes(&bird),
        gr_done,
    })
}

/// The routes are kept while felix is away, and are there (re-sent, not
/// stale: the restart is over) after it is back.
#[test]
fn bird_keeps_felix_routes_while_felix_is_down() {
    let Some(r) = restart_felix(Duration::from_secs(3)) else {
        return;
    };
    for p in PREFIXES {
        assert!(
            r.during_routes.contains(p),
            "{p} lost while felix was down: {}",
            r.during_routes
        );
    }
    assert!(!r.during.contains("Established"), "{}", r.during);
    assert!(r.during.contains("Restart timer"), "{}", r.during);
    for p in PREFIXES {
        assert!(
            r.after_routes.contains(p),
            "{p} missing after the restart: {}",
            r.after_routes
        );
    }
    assert!(r.after.contains("Established"), "{}", r.after);
    // The restart is over: no restart timer, no graceful restart pending.
    assert!(
        !r.after.contains("Neighbor graceful restart active"),
        "{}",
        r.after
    );
    if !r.missing.is_empty() {
        println!(
            "NOTE: BIRD withdrew felix's routes when felix came back ({} samples); see \
             bird_never_loses_felix_routes_across_a_restart",
            r.missing.len()
        );
    }
}

/// RFC 4724 §4.1/§4.2 for the restarting speaker: the routes never leave
/// BIRD's table, not even when the new session comes up. That needs the
/// restarted felix to set the Forwarding State (F) bit for IPv4 unicast
/// (and the Restart State (R) bit) in its Graceful Restart capability;
/// without F, BIRD must and does delete the stale routes at once, and they
/// come back only with felix's re-announcement.
#[test]
fn bird_never_loses_felix_routes_across_a_restart() {
    let Some(r) = restart_felix(Duration::from_secs(1)) else {
        return;
    };
    let caps = r
        .after
        .split("Neighbor capabilities")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    assert!(caps.contains("Restart recovery"), "R bit not set: {caps}");
    assert!(caps.contains("AF preserved: ipv4"), "F bit not set: {caps}");
    assert!(r.missing.is_empty(), "routes withdrawn: {:?}", r.missing);
    // The deferral ended on BIRD's End-of-RIB, long before the selection
    // deferral timer (120 s).
    let done = r
        .gr_done
        .unwrap_or_else(|| panic!("BIRD still in graceful restart: {}", r.after));
    assert!(done < Duration::from_secs(10), "{done:?}");
}
