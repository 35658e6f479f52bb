//! The interop matrix against GoBGP (issue 3): felix's `Speaker` and
//! gobgpd in two network namespaces joined by a dual-stack veth, one
//! session over IPv4 (afi-safi ipv4-unicast) and one over IPv6
//! (ipv6-unicast); eBGP and iBGP; prefixes both ways and withdrawals both
//! ways; TCP MD5 (`auth-password`) with the right key (full exchange) and a
//! wrong one (never Established, `TcpExtTCPMD5Failure` grows). See
//! docs/interop.md.
//!
//! GoBGP's routes are added and deleted with `gobgp global rib add/del`;
//! its table is read with `gobgp global rib -a ipv4|ipv6 PREFIX`. Root,
//! gobgpd and gobgp needed; otherwise SKIPPED.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod interop_common;
mod interop_matrix_common;

use interop_common::{skip_unless, wait_until, NetnsPair};
use interop_matrix_common::{
    add_ipv6, run_matrix_exchange, run_matrix_md5_wrong, run_single_ipv4_session,
    wait_bgp_listening, MatrixAddrs, MatrixCase, MatrixDaemon,
};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

const FELIX_AS: u32 = 65020;
const GOBGP_AS: u32 = 65030;
/// gRPC port of gobgpd inside its namespace (each namespace has its own
/// loopback, so a fixed port cannot clash).
const API: &str = "50071";
const GOBGP_PREFIXES: [&str; 2] = ["198.51.100.0/24", "2001:db8:30::/48"];
const FELIX_PREFIXES: [&str; 2] = ["10.98.0.0/24", "2001:db8:20::/48"];

struct Gobgp {
    ns: String,
    log: PathBuf,
}

/// Kills and reaps gobgpd (declared after the `NetnsPair`, so it goes
/// first).
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn afi(prefix: &str) -> &'static str {
    if prefix.contains(':') {
        "ipv6"
    } else {
        "ipv4"
    }
}

impl Gobgp {
    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, "gobgp", "-p", API])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }
}

impl MatrixDaemon for Gobgp {
    fn name(&self) -> String {
        "GoBGP".into()
    }

    fn has_route(&self, prefix: &str, next_hop: &str) -> bool {
        let out = self.cli(&["global", "rib", "-a", afi(prefix), prefix]);
        // "Network not in table" when absent.
        !out.contains("not in table")
            && out.contains(prefix)
            && (next_hop.is_empty() || out.contains(next_hop))
    }

    fn withdraw(&self, prefix: &str) {
        let out = self.cli(&["global", "rib", "-a", afi(prefix), "del", prefix]);
        assert!(
            !out.contains("rror"),
            "gobgp global rib del {prefix}: {out}"
        );
    }

    fn diag(&self) -> String {
        self.cli(&["neighbor"])
            + &self.cli(&["global", "rib", "-a", "ipv4"])
            + &self.cli(&["global", "rib", "-a", "ipv6"])
            + &std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// `single`: one neighbour (felix's IPv4 address) with both families.
fn gobgp_config(a: &MatrixAddrs, asn: u32, password: Option<&str>, single: bool) -> String {
    let password = password
        .map(|p| format!("    auth-password = \"{p}\"\n"))
        .unwrap_or_default();
    let mut conf = format!(
        r#"[global.config]
  as = {asn}
  router-id = "{peer4}"
  port = 179
  local-address-list = ["{peer4}", "{peer6}"]
"#,
        peer4 = a.peer4,
        peer6 = a.peer6,
    );
    let neighbors = if single {
        vec![(a.felix4.to_string(), vec!["ipv4-unicast", "ipv6-unicast"])]
    } else {
        vec![
            (a.felix4.to_string(), vec!["ipv4-unicast"]),
            (a.felix6.to_string(), vec!["ipv6-unicast"]),
        ]
    };
    for (felix, families) in neighbors {
        conf += &format!(
            r#"
[[neighbors]]
  [neighbors.config]
    neighbor-address = "{felix}"
    peer-as = {FELIX_AS}
{password}  [neighbors.timers.config]
    connect-retry = 1
    hold-time = 9
    keepalive-interval = 3
"#
        );
        for family in families {
            conf += &format!(
                "  [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"{family}\"\n"
            );
        }
    }
    conf
}

fn start_gobgp(
    pair: &NetnsPair,
    a: &MatrixAddrs,
    asn: u32,
    password: Option<&str>,
    single: bool,
) -> (Arc<Gobgp>, Daemon) {
    let conf = pair.path("gobgpd.toml");
    std::fs::write(&conf, gobgp_config(a, asn, password, single)).unwrap();
    let log = std::fs::File::create(pair.path("gobgpd.log")).unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", &pair.peer, "gobgpd", "-f"])
        .arg(&conf)
        .args([
            "--api-hosts",
            &format!("127.0.0.1:{API}"),
            "--pprof-disable",
        ])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let daemon = Daemon(child);
    let g = Arc::new(Gobgp {
        ns: pair.peer.clone(),
        log: pair.path("gobgpd.log"),
    });
    assert!(
        wait_until(Duration::from_secs(10), || g
            .cli(&["global"])
            .contains(&pair.peer_ip)),
        "gobgpd did not start: {}",
        g.diag()
    );
    for prefix in GOBGP_PREFIXES {
        let out = g.cli(&["global", "rib", "-a", afi(prefix), "add", prefix]);
        assert!(
            !out.contains("rror"),
            "gobgp global rib add {prefix}: {out}"
        );
    }
    assert!(
        wait_bgp_listening(pair, Duration::from_secs(10)),
        "gobgpd does not listen: {}",
        g.diag()
    );
    (g, daemon)
}

fn skip() -> bool {
    skip_unless(&["gobgpd", "gobgp", "ip", "ss"])
}

fn case(asn: u32, password: Option<&str>) -> MatrixCase {
    MatrixCase {
        felix_as: FELIX_AS,
        peer_as: asn,
        peer_prefixes: GOBGP_PREFIXES,
        felix_prefixes: FELIX_PREFIXES,
        password: password.map(str::to_string),
    }
}

#[test]
fn gobgp_ebgp_ipv4_ipv6_both_ways() {
    if skip() {
        return;
    }
    let pair = NetnsPair::new("mge");
    let a = add_ipv6(&pair);
    let (g, _daemon) = start_gobgp(&pair, &a, GOBGP_AS, None, false);
    run_matrix_exchange(&pair, &a, g, case(GOBGP_AS, None));
}

#[test]
fn gobgp_ibgp_ipv4_ipv6_both_ways() {
    if skip() {
        return;
    }
    let pair = NetnsPair::new("mgi");
    let a = add_ipv6(&pair);
    let (g, _daemon) = start_gobgp(&pair, &a, FELIX_AS, None, false);
    run_matrix_exchange(&pair, &a, g, case(FELIX_AS, None));
}

#[test]
fn gobgp_md5_matching_key() {
    if skip() {
        return;
    }
    let pair = NetnsPair::new("mgm");
    let a = add_ipv6(&pair);
    let (g, _daemon) = start_gobgp(&pair, &a, GOBGP_AS, Some("s3cret-gobgp"), false);
    run_matrix_exchange(&pair, &a, g, case(GOBGP_AS, Some("s3cret-gobgp")));
}

#[test]
fn gobgp_md5_wrong_key_never_established() {
    if skip() {
        return;
    }
    let pair = NetnsPair::new("mgw");
    let a = add_ipv6(&pair);
    let (g, _daemon) = start_gobgp(&pair, &a, GOBGP_AS, Some("s3cret-gobgp"), false);
    run_matrix_md5_wrong(
        &pair,
        &a,
        g,
        case(GOBGP_AS, Some("not-the-key")),
        Duration::from_secs(5),
    );
}

/// IPv6 over the IPv4 session: GoBGP sends its IPv6 route with an
/// IPv4-mapped next hop (`::ffff:PEER4`), unresolvable at felix; felix does not export IPv6 routes
/// on a session without an IPv6 local address.
#[test]
fn gobgp_one_ipv4_session_both_families() {
    if skip() {
        return;
    }
    let pair = NetnsPair::new("mgs");
    let a = add_ipv6(&pair);
    let (g, _daemon) = start_gobgp(&pair, &a, GOBGP_AS, None, true);
    let r = run_single_ipv4_session(&pair, &a, g, case(GOBGP_AS, None));
    assert!(r.v4_at_felix && r.v4_at_daemon, "{r:?}");
    // The IPv6 route arrives (received counts it beside the IPv4 one) with
    // next hop ::ffff:PEER4, which nothing can forward to: unresolvable, so
    // it is not in felix's Loc-RIB (docs/bgp-speaker.md, resolvable next
    // hops).
    assert!(r.received >= 2, "{r:?}");
    assert_eq!(r.v6_at_felix, None, "{r:?}");
    assert!(!r.v6_at_daemon, "{r:?}");
}
