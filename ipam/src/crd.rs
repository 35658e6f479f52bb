//! What felix's Kubernetes custom resources share: the OpenAPI schemas of
//! address fields, so that the API server refuses a malformed CIDR or
//! address at `kubectl apply` instead of felix reporting a `Corrupt` object
//! later.
//!
//! Each stored spec type derives `kube::CustomResource` itself (group
//! `crd.felix-rs.io`, version `v1`: [`crate::store::kubernetes::GROUP`] and
//! [`crate::store::kubernetes::VERSION`]; the derive needs them as
//! literals), so the CustomResourceDefinitions are generated from the very
//! types the code reads and writes (`felix crds`). The patterns are RE2
//! expressions, the dialect the API server evaluates (Kubernetes
//! "Validation" of CRDs: `pattern` is an ECMA-262 subset checked with Go's
//! regexp); they check the shape, felix still checks the meaning (host bits,
//! block size against the family).

use schemars::{json_schema, Schema, SchemaGenerator};

/// One IPv4 octet, 0–255 without leading zeros.
const OCTET: &str = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";
/// An IPv6 prefix length, 0–128.
const V6_LEN: &str = "(12[0-8]|1[01][0-9]|[1-9]?[0-9])";
/// An IPv4 prefix length, 0–32.
const V4_LEN: &str = "(3[0-2]|[12]?[0-9])";
/// An IPv6 address, loosely: hex groups and colons with at least one `::` or
/// seven `:`, optionally ending in dotted IPv4. Exactness is felix's job.
const V6: &str = "([0-9a-fA-F]{0,4}:){2,7}([0-9a-fA-F]{0,4}|[0-9.]{7,15})";

fn v4() -> String {
    format!("{OCTET}(\\.{OCTET}){{3}}")
}

/// `^A.B.C.D/LEN$` or `^IPV6/LEN$`: a pool's or block's CIDR.
pub fn cidr_pattern() -> String {
    format!("^({}/{V4_LEN}|{V6}/{V6_LEN})$", v4())
}

/// `^A.B.C.D$` or an IPv6 address.
pub fn ip_pattern() -> String {
    format!("^({}|{V6})$", v4())
}

/// `^A.B.C.D/LEN$`: an IPv4 interface address with its prefix length (host
/// bits allowed: a node's `ipv4Address`).
pub fn ipv4_interface_pattern() -> String {
    format!("^{}/{V4_LEN}$", v4())
}

/// `^IPV6/LEN$`: an IPv6 interface address with its prefix length (a
/// node's `ipv6Address`).
pub fn ipv6_interface_pattern() -> String {
    format!("^{V6}/{V6_LEN}$")
}

/// `^A.B.C.D$`.
pub fn ipv4_pattern() -> String {
    format!("^{}$", v4())
}

/// Schema of a CIDR string field (`ipnet::IpNet`).
pub fn cidr_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "maxLength": 64,
        "pattern": cidr_pattern(),
        "description": "A CIDR, IPv4 (10.244.0.0/16) or IPv6 (fd00:10:244::/56)."
    })
}

/// Schema of an optional CIDR string field (nullable).
pub fn optional_cidr_schema(g: &mut SchemaGenerator) -> Schema {
    nullable(cidr_schema(g))
}

/// Schema of an IP address field (`std::net::IpAddr`).
pub fn ip_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "maxLength": 64,
        "pattern": ip_pattern(),
        "description": "An IPv4 or IPv6 address."
    })
}

/// Schema of an optional IP address field (nullable).
pub fn optional_ip_schema(g: &mut SchemaGenerator) -> Schema {
    nullable(ip_schema(g))
}

/// Schema of an IPv4 address with prefix length (`ipnet::Ipv4Net` holding
/// an interface address).
pub fn ipv4_interface_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "maxLength": 18,
        "pattern": ipv4_interface_pattern(),
        "description": "An IPv4 address with the prefix length of its subnet (10.0.0.1/24)."
    })
}

/// Schema of an optional IPv6 address with prefix length (`ipnet::Ipv6Net`
/// holding an interface address; nullable).
pub fn optional_ipv6_interface_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "nullable": true,
        "maxLength": 43,
        "pattern": ipv6_interface_pattern(),
        "description": "An IPv6 address with the prefix length of its subnet (fd00::1/64)."
    })
}

/// Schema of an optional IPv4 address field (nullable).
pub fn optional_ipv4_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "nullable": true,
        "maxLength": 15,
        "pattern": ipv4_pattern(),
        "description": "An IPv4 address."
    })
}

fn nullable(mut schema: Schema) -> Schema {
    schema.insert("nullable".to_owned(), serde_json::Value::Bool(true));
    schema
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use regex::Regex;

    // Rust's `regex` implements RE2's syntax and semantics, as Go's regexp
    // (the API server's) does.
    fn re(p: String) -> Regex {
        Regex::new(&p).unwrap()
    }

    #[test]
    fn cidr_pattern_takes_what_felix_writes_and_refuses_garbage() {
        let cidr = re(cidr_pattern());
        for ok in [
            "10.244.0.0/16",
            "0.0.0.0/0",
            "255.255.255.255/32",
            "10.244.3.0/26",
            "fd00:10:244::/56",
            "fd00:10:244::40/122",
            "::/0",
            "2001:db8:0:0:0:0:0:0/128",
            "::ffff:10.0.0.0/104",
        ] {
            assert!(cidr.is_match(ok), "{ok}");
            // Whatever the pattern takes that ipnet writes must be ipnet's own form.
            let _: ipnet::IpNet = ok.parse().unwrap();
        }
        for bad in [
            "10.244.0.0",
            "10.244.0.0/33",
            "256.0.0.0/8",
            "10.244.0/16",
            "010.1.0.0/16",
            "fd00::/129",
            "fd00::",
            "10.244.0.0/16 ",
            "a/16",
            "",
        ] {
            assert!(!cidr.is_match(bad), "{bad}");
        }
    }

    #[test]
    fn address_patterns() {
        let ip = re(ip_pattern());
        for ok in ["10.0.0.254", "fd00::1", "::1", "2001:db8::10.0.0.1"] {
            assert!(ip.is_match(ok), "{ok}");
        }
        for bad in ["10.0.0.256", "10.0.0.1/32", "host", "10.0.0", ""] {
            assert!(!ip.is_match(bad), "{bad}");
        }
        let iface = re(ipv4_interface_pattern());
        assert!(iface.is_match("10.0.0.1/24"));
        assert!(!iface.is_match("10.0.0.1"));
        assert!(!iface.is_match("fd00::1/64"));
        let v4 = re(ipv4_pattern());
        assert!(v4.is_match("10.255.0.1"));
        assert!(!v4.is_match("fd00::1"));
    }
}
