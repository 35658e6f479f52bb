//! Which next hops the speaker can forward to (RFC 4271 §9.1.2.1: a path
//! whose NEXT_HOP is unresolvable is excluded from the decision process).

use crate::rib::NextHopResolver;
use std::net::IpAddr;

/// The speaker's resolver: every next hop is reachable at cost 0 (the
/// kernel's routing table decides later), except addresses nothing can be
/// forwarded to. Notably an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`),
/// which GoBGP and FRR put in MP_REACH_NLRI for IPv6 routes sent over an
/// IPv4 session without an IPv6 address to offer: no IPv6 route can point
/// at it, so such a path is unresolvable, not reachable.
#[derive(Clone, Copy, Debug, Default)]
pub struct ForwardableNextHop;

/// `next_hop` can be forwarded to.
pub fn forwardable(next_hop: IpAddr) -> bool {
    match next_hop {
        IpAddr::V4(a) => !(a.is_unspecified() || a.is_multicast() || a.is_broadcast()),
        IpAddr::V6(a) => !(a.is_unspecified() || a.is_multicast() || a.to_ipv4_mapped().is_some()),
    }
}

impl NextHopResolver for ForwardableNextHop {
    fn resolve(&self, next_hop: IpAddr) -> Option<u32> {
        forwardable(next_hop).then_some(0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn mapped_and_unusable_next_hops_are_unresolvable() {
        let r = ForwardableNextHop;
        for ok in ["10.0.0.1", "2001:db8::1", "fe80::1", "::1"] {
            assert_eq!(r.resolve(ok.parse().unwrap()), Some(0), "{ok}");
        }
        for bad in [
            "::ffff:10.0.0.1",
            "::ffff:192.0.2.1",
            "::",
            "ff02::1",
            "0.0.0.0",
            "224.0.0.5",
            "255.255.255.255",
        ] {
            assert_eq!(r.resolve(bad.parse().unwrap()), None, "{bad}");
        }
    }
}
