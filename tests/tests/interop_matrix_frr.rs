//! The interop matrix against FRR bgpd (issue 3): felix's `Speaker` and
//! FRR in two network namespaces joined by a dual-stack veth, one session
//! over IPv4 (IPv4 unicast) and one over IPv6 (IPv6 unicast); eBGP and
//! iBGP; prefixes both ways and withdrawals both ways; TCP MD5 with the
//! right key (full exchange) and a wrong one (never Established,
//! `TcpExtTCPMD5Failure` grows). See docs/interop.md.
//!
//! bgpd runs without zebra (`-Z -n`, RECIPES), with `--vty_socket` in the
//! test directory, so `vtysh --vty_socket DIR` reads its table and removes
//! its `network` statements. Root and FRR needed; otherwise SKIPPED.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod interop_common;
mod interop_matrix_common;

use interop_common::{skip_unless, wait_until, NetnsPair};
use interop_matrix_common::{
    add_ipv6, run_matrix_exchange, run_matrix_md5_wrong, run_single_ipv4_session,
    wait_bgp_listening, MatrixAddrs, MatrixCase, MatrixDaemon,
};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

const BGPD: &str = "/usr/lib/frr/bgpd";
const FELIX_AS: u32 = 65020;
const FRR_AS: u32 = 65040;
const FRR_PREFIXES: [&str; 2] = ["198.51.100.0/24", "2001:db8:40::/48"];
const FELIX_PREFIXES: [&str; 2] = ["10.98.0.0/24", "2001:db8:20::/48"];

struct Frr {
    dir: PathBuf,
    asn: u32,
}

impl Frr {
    fn vtysh(&self, cmds: &[&str]) -> String {
        let mut c = Command::new("vtysh");
        c.arg("--vty_socket").arg(&self.dir);
        for cmd in cmds {
            c.args(["-c", cmd]);
        }
        let out = c.output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    fn afi(prefix: &str) -> &'static str {
        if prefix.contains(':') {
            "ipv6"
        } else {
            "ipv4"
        }
    }
}

impl MatrixDaemon for Frr {
    fn name(&self) -> String {
        "FRR".into()
    }

    fn has_route(&self, prefix: &str, next_hop: &str) -> bool {
        let out = self.vtysh(&[&format!("show bgp {} unicast {prefix}", Self::afi(prefix))]);
        // "% Network not in table" when absent.
        !out.contains("not in table")
            && out.contains("Paths:")
            && (next_hop.is_empty() || out.contains(next_hop))
    }

    fn withdraw(&self, prefix: &str) {
        let out = self.vtysh(&[
            "configure terminal",
            &format!("router bgp {}", self.asn),
            &format!("address-family {} unicast", Self::afi(prefix)),
            &format!("no network {prefix}"),
        ]);
        assert!(!out.contains('%'), "vtysh: {out}");
    }

    fn diag(&self) -> String {
        self.vtysh(&[
            "show bgp summary",
            "show bgp ipv4 unicast",
            "show bgp ipv6 unicast",
            "show bgp neighbors",
        ]) + &std::fs::read_to_string(self.dir.join("bgpd.log")).unwrap_or_default()
    }
}

/// `single`: one session (felix's IPv4 address) activated for both families.
fn frr_config(
    pair: &NetnsPair,
    a: &MatrixAddrs,
    asn: u32,
    password: Option<&str>,
    single: bool,
) -> String {
    let felix6 = if single {
        a.felix4.to_string()
    } else {
        a.felix6.to_string()
    };
    let mut neighbors = String::new();
    let mut felixes = vec![a.felix4.to_string()];
    if !single {
        felixes.push(a.felix6.to_string());
    }
    for felix in felixes {
        neighbors += &format!(
            " neighbor {felix} remote-as {FELIX_AS}\n neighbor {felix} timers 3 9\n neighbor {felix} timers connect 1\n"
        );
        if let Some(pw) = password {
            neighbors += &format!(" neighbor {felix} password {pw}\n");
        }
    }
    format!(
        r#"frr defaults traditional
hostname frr-matrix
log file {log} debugging
!
router bgp {asn}
 bgp router-id {peer}
 no bgp ebgp-requires-policy
 no bgp default ipv4-unicast
 no bgp network import-check
{neighbors} !
 address-family ipv4 unicast
  network {p4}
  neighbor {felix4} activate
 exit-address-family
 !
 address-family ipv6 unicast
  network {p6}
  neighbor {felix6} activate
 exit-address-family
!
"#,
        log = pair.path("bgpd.log").display(),
        peer = pair.peer_ip,
        felix4 = pair.felix_ip,
        p4 = FRR_PREFIXES[0],
        p6 = FRR_PREFIXES[1],
    )
}

/// Starts bgpd in the peer namespace; waits until it listens on port 179.
fn start_frr(
    pair: &mut NetnsPair,
    a: &MatrixAddrs,
    asn: u32,
    password: Option<&str>,
    single: bool,
) -> Arc<Frr> {
    let conf = pair.path("bgpd.conf");
    std::fs::write(&conf, frr_config(pair, a, asn, password, single)).unwrap();
    let status = Command::new("chown")
        .args(["-R", "frr:frr"])
        .arg(&pair.dir)
        .status()
        .unwrap();
    assert!(status.success());
    let pid = pair.path("bgpd.pid");
    pair.pid_files.push(pid.clone());
    let dir = pair.dir.display().to_string();
    let out = pair.exec_peer(&[
        BGPD,
        "-d",
        "-f",
        &conf.display().to_string(),
        "-i",
        &pid.display().to_string(),
        "-z",
        &format!("{dir}/zserv.api"),
        "--vty_socket",
        &dir,
        "-Z",
        "-n",
        "-u",
        "frr",
        "-g",
        "frr",
    ]);
    let frr = Arc::new(Frr {
        dir: pair.dir.clone(),
        asn,
    });
    assert!(
        wait_bgp_listening(pair, Duration::from_secs(10)),
        "bgpd did not start: {out}\n{}",
        std::fs::read_to_string(pair.path("bgpd.log")).unwrap_or_default()
    );
    assert!(
        wait_until(Duration::from_secs(5), || frr
            .vtysh(&["show bgp summary"])
            .contains("BGP router identifier")),
        "vtysh cannot reach bgpd: {}",
        frr.vtysh(&["show bgp summary"])
    );
    frr
}

fn skip() -> bool {
    skip_unless(&[BGPD, "vtysh", "ip", "ss"])
}

fn case(asn: u32, password: Option<&str>) -> MatrixCase {
    MatrixCase {
        felix_as: FELIX_AS,
        peer_as: asn,
        peer_prefixes: FRR_PREFIXES,
        felix_prefixes: FELIX_PREFIXES,
        password: password.map(str::to_string),
    }
}

#[test]
fn frr_ebgp_ipv4_ipv6_both_ways() {
    if skip() {
        return;
    }
    let mut pair = NetnsPair::new("mfe");
    let a = add_ipv6(&pair);
    let frr = start_frr(&mut pair, &a, FRR_AS, None, false);
    run_matrix_exchange(&pair, &a, frr, case(FRR_AS, None));
}

#[test]
fn frr_ibgp_ipv4_ipv6_both_ways() {
    if skip() {
        return;
    }
    let mut pair = NetnsPair::new("mfi");
    let a = add_ipv6(&pair);
    let frr = start_frr(&mut pair, &a, FELIX_AS, None, false);
    run_matrix_exchange(&pair, &a, frr, case(FELIX_AS, None));
}

#[test]
fn frr_md5_matching_key() {
    if skip() {
        return;
    }
    let mut pair = NetnsPair::new("mfm");
    let a = add_ipv6(&pair);
    let frr = start_frr(&mut pair, &a, FRR_AS, Some("s3cret-frr"), false);
    run_matrix_exchange(&pair, &a, frr, case(FRR_AS, Some("s3cret-frr")));
}

#[test]
fn frr_md5_wrong_key_never_established() {
    if skip() {
        return;
    }
    let mut pair = NetnsPair::new("mfw");
    let a = add_ipv6(&pair);
    let frr = start_frr(&mut pair, &a, FRR_AS, Some("s3cret-frr"), false);
    run_matrix_md5_wrong(
        &pair,
        &a,
        frr,
        case(FRR_AS, Some("not-the-key")),
        Duration::from_secs(5),
    );
}

/// IPv6 over the IPv4 session (the neighbour activated in both address
/// families): bgpd without zebra knows no interface address and sends an
/// IPv4-mapped next hop (`::ffff:PEER4`), unresolvable at felix; felix does not export IPv6 routes
/// on a session without an IPv6 local address.
#[test]
fn frr_one_ipv4_session_both_families() {
    if skip() {
        return;
    }
    let mut pair = NetnsPair::new("mfs");
    let a = add_ipv6(&pair);
    let frr = start_frr(&mut pair, &a, FRR_AS, None, true);
    let r = run_single_ipv4_session(&pair, &a, frr, case(FRR_AS, None));
    assert!(r.v4_at_felix && r.v4_at_daemon, "{r:?}");
    // The IPv6 route arrives (received counts it beside the IPv4 one) with
    // next hop ::ffff:PEER4, which nothing can forward to: unresolvable, so
    // it is not in felix's Loc-RIB (docs/bgp-speaker.md, resolvable next
    // hops).
    assert!(r.received >= 2, "{r:?}");
    assert_eq!(r.v6_at_felix, None, "{r:?}");
    assert!(!r.v6_at_daemon, "{r:?}");
}
