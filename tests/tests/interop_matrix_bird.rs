//! The interop matrix against BIRD 2 (issue 3): felix's `Speaker` and BIRD
//! in two network namespaces joined by a dual-stack veth, one session over
//! IPv4 (IPv4 channel) and one over IPv6 (IPv6 channel); eBGP and iBGP;
//! prefixes both ways and withdrawals both ways; TCP MD5 with the right
//! key (full exchange) and a wrong one (never Established,
//! `TcpExtTCPMD5Failure` grows). See docs/interop.md.
//!
//! BIRD's routes are two static protocols (`routes4`, `routes6`); it
//! withdraws them when the test disables the protocol (`birdc disable`).
//! Root and bird2 needed; otherwise SKIPPED.

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

const FELIX_AS: u32 = 65020;
const BIRD_AS: u32 = 65010;
const BIRD_PREFIXES: [&str; 2] = ["198.51.100.0/24", "2001:db8:10::/48"];
const FELIX_PREFIXES: [&str; 2] = ["10.98.0.0/24", "2001:db8:20::/48"];

struct Bird {
    sock: String,
    log: PathBuf,
}

impl Bird {
    fn birdc(&self, args: &[&str]) -> String {
        let out = Command::new("birdc")
            .args(["-s", &self.sock])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl MatrixDaemon for Bird {
    fn name(&self) -> String {
        "BIRD".into()
    }

    fn has_route(&self, prefix: &str, next_hop: &str) -> bool {
        let out = self.birdc(&["show", "route", prefix, "all"]);
        out.contains(prefix)
            && (next_hop.is_empty() || out.contains(&format!("BGP.next_hop: {next_hop}")))
    }

    fn withdraw(&self, prefix: &str) {
        let proto = if prefix.contains(':') {
            "routes6"
        } else {
            "routes4"
        };
        let out = self.birdc(&["disable", proto]);
        assert!(out.contains("disabled"), "birdc disable {proto}: {out}");
    }

    fn diag(&self) -> String {
        self.birdc(&["show", "protocols", "all"])
            + &self.birdc(&["show", "route", "all"])
            + &std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// `single`: one session (felix's IPv4 address) with both channels.
fn bird_config(
    pair: &NetnsPair,
    a: &MatrixAddrs,
    asn: u32,
    password: Option<&str>,
    single: bool,
) -> String {
    let password = password
        .map(|p| format!("password \"{p}\";"))
        .unwrap_or_default();
    let common = format!(
        "direct; hold time 9; connect delay time 1; connect retry time 1; error wait time 1, 2; {password}"
    );
    let felix4_v6 = if single {
        format!(
            "ipv6 {{ import all; export all; next hop address {}; }};",
            a.peer6
        )
    } else {
        String::new()
    };
    let felix6 = if single {
        String::new()
    } else {
        format!(
            "protocol bgp felix6 {{\n    local {} as {asn};\n    neighbor {} as {FELIX_AS};\n    {common}\n    ipv6 {{ import all; export all; next hop self; gateway direct; }};\n}}\n",
            a.peer6, a.felix6
        )
    };
    format!(
        r#"router id {peer4};
log "{log}" all;
protocol device {{ }}
protocol static routes4 {{
    ipv4 {{ import all; }};
    route {p4} blackhole;
}}
protocol static routes6 {{
    ipv6 {{ import all; }};
    route {p6} blackhole;
}}
protocol bgp felix4 {{
    local {peer4} as {asn};
    neighbor {felix4} as {FELIX_AS};
    {common}
    ipv4 {{ import all; export all; next hop self; gateway direct; }};
    {felix4_v6}
}}
{felix6}"#,
        peer4 = a.peer4,
        felix4 = a.felix4,
        p4 = BIRD_PREFIXES[0],
        p6 = BIRD_PREFIXES[1],
        log = pair.path("bird.log").display(),
    )
}

fn start_bird(
    pair: &mut NetnsPair,
    a: &MatrixAddrs,
    asn: u32,
    password: Option<&str>,
    single: bool,
) -> Arc<Bird> {
    let conf = pair.path("bird.conf");
    std::fs::write(&conf, bird_config(pair, a, asn, password, single)).unwrap();
    let sock = pair.path("bird.ctl").display().to_string();
    let pid = pair.path("bird.pid");
    pair.pid_files.push(pid.clone());
    let out = pair.exec_peer(&[
        "bird",
        "-c",
        &conf.display().to_string(),
        "-s",
        &sock,
        "-P",
        &pid.display().to_string(),
    ]);
    let bird = Arc::new(Bird {
        sock,
        log: pair.path("bird.log"),
    });
    assert!(
        wait_until(Duration::from_secs(5), || bird
            .birdc(&["show", "status"])
            .contains("Daemon is up")),
        "BIRD did not start: {out}"
    );
    assert!(
        wait_bgp_listening(pair, Duration::from_secs(10)),
        "BIRD does not listen: {}",
        bird.diag()
    );
    bird
}

fn skip() -> bool {
    skip_unless(&["bird", "birdc", "ip", "ss"])
}

fn case(asn: u32, password: Option<&str>) -> MatrixCase {
    MatrixCase {
        felix_as: FELIX_AS,
        peer_as: asn,
        peer_prefixes: BIRD_PREFIXES,
        felix_prefixes: FELIX_PREFIXES,
        password: password.map(str::to_string),
    }
}

#[test]
fn bird_ebgp_ipv4_ipv6_both_ways() {
    if skip() {
        return;
    }
    let mut pair = NetnsPair::new("mbe");
    let a = add_ipv6(&pair);
    let bird = start_bird(&mut pair, &a, BIRD_AS, None, false);
    run_matrix_exchange(&pair, &a, bird, case(BIRD_AS, None));
}

#[test]
fn bird_ibgp_ipv4_ipv6_both_ways() {
    if skip() {
        return;
    }
    let mut pair = NetnsPair::new("mbi");
    let a = add_ipv6(&pair);
    let bird = start_bird(&mut pair, &a, FELIX_AS, None, false);
    run_matrix_exchange(&pair, &a, bird, case(FELIX_AS, None));
}

#[test]
fn bird_md5_matching_key() {
    if skip() {
        return;
    }
    let mut pair = NetnsPair::new("mbm");
    let a = add_ipv6(&pair);
    let bird = start_bird(&mut pair, &a, BIRD_AS, Some("s3cret-bird"), false);
    run_matrix_exchange(&pair, &a, bird, case(BIRD_AS, Some("s3cret-bird")));
}

#[test]
fn bird_md5_wrong_key_never_established() {
    if skip() {
        return;
    }
    let mut pair = NetnsPair::new("mbw");
    let a = add_ipv6(&pair);
    let bird = start_bird(&mut pair, &a, BIRD_AS, Some("s3cret-bird"), false);
    run_matrix_md5_wrong(
        &pair,
        &a,
        bird,
        case(BIRD_AS, Some("not-the-key")),
        Duration::from_secs(5),
    );
}

/// IPv6 over the IPv4 session: BIRD needs `next hop address` in the IPv6
/// channel (it has no IPv6 address on the session) and sends that; felix
/// does not export IPv6 routes on a session without an IPv6 local address.
#[test]
fn bird_one_ipv4_session_both_families() {
    if skip() {
        return;
    }
    let mut pair = NetnsPair::new("mbs");
    let a = add_ipv6(&pair);
    let bird = start_bird(&mut pair, &a, BIRD_AS, None, true);
    let r = run_single_ipv4_session(&pair, &a, bird, case(BIRD_AS, None));
    assert!(r.v4_at_felix && r.v4_at_daemon, "{r:?}");
    assert_eq!(r.v6_at_felix, Some(a.peer6.into()), "{r:?}");
    assert!(!r.v6_at_daemon, "{r:?}");
}
