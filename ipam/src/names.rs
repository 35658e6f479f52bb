//! Object names: every stored object's name must be a valid Kubernetes
//! object name (a DNS-1123 subdomain, Kubernetes API conventions), because
//! the `kubernetes` backend stores them as CRD objects unchanged.

use std::net::IpAddr;

use ipnet::IpNet;

/// The longest Kubernetes object name (DNS-1123 subdomain).
pub const MAX_NAME_LEN: usize = 253;

/// True when `name` is a DNS-1123 subdomain: at most 253 bytes of
/// lower-case alphanumerics, `-` and `.`, every dot-separated label
/// starting and ending with an alphanumeric.
pub fn is_valid_object_name(name: &str) -> bool {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return false;
    }
    name.split('.').all(|label| {
        let bytes = label.as_bytes();
        match (bytes.first(), bytes.last()) {
            (Some(first), Some(last)) => {
                (first.is_ascii_lowercase() || first.is_ascii_digit())
                    && (last.is_ascii_lowercase() || last.is_ascii_digit())
                    && bytes
                        .iter()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            }
            _ => false,
        }
    })
}

/// A block's (and a pool's default) name from its CIDR: `10.244.0.0/26` ->
/// `10-244-0-0-26`; IPv6 uses all eight groups, so no `::` is needed:
/// `fd00::/122` -> `fd00-0-0-0-0-0-0-0-122`.
pub fn cidr_name(cidr: &IpNet) -> String {
    let addr = match cidr.network() {
        IpAddr::V4(a) => a
            .octets()
            .iter()
            .map(u8::to_string)
            .collect::<Vec<_>>()
            .join("-"),
        IpAddr::V6(a) => a
            .segments()
            .iter()
            .map(|s| format!("{s:x}"))
            .collect::<Vec<_>>()
            .join("-"),
    };
    format!("{addr}-{}", cidr.prefix_len())
}

/// The CIDR a block's name stands for ([`cidr_name`] read back); `None`
/// for a name that is not one.
pub fn parse_cidr_name(name: &str) -> Option<IpNet> {
    let (addr, len) = name.rsplit_once('-')?;
    let len: u8 = len.parse().ok()?;
    let parts: Vec<&str> = addr.split('-').collect();
    let ip = match parts.len() {
        4 => {
            let mut octets = [0u8; 4];
            for (o, p) in octets.iter_mut().zip(&parts) {
                *o = p.parse().ok()?;
            }
            IpAddr::from(octets)
        }
        8 => {
            let mut segments = [0u16; 8];
            for (s, p) in segments.iter_mut().zip(&parts) {
                *s = u16::from_str_radix(p, 16).ok()?;
            }
            IpAddr::from(segments)
        }
        _ => return None,
    };
    let cidr = IpNet::new(ip, len).ok()?;
    (cidr_name(&cidr) == name).then_some(cidr)
}

/// A block affinity's name: `NODE-BLOCKNAME` (Calico's shape), hashed down
/// when a long node name would push it past the limit.
pub fn affinity_name(node: &str, block: &IpNet) -> String {
    fit(&format!("{node}-{}", cidr_name(block)))
}

/// A handle's object name. Handle ids are free-form (a container id plus an
/// interface, `k8s-pod-network.<id>`); a valid name is kept as is, any other
/// becomes a sanitized prefix plus a hash of the whole id, so two ids never
/// share a name by accident (the stored handle keeps the exact id).
pub fn handle_name(handle_id: &str) -> String {
    if is_valid_object_name(handle_id) {
        return handle_id.to_owned();
    }
    hashed(handle_id)
}

/// `raw` when it is a valid name, else its hashed form.
fn fit(raw: &str) -> String {
    if is_valid_object_name(raw) {
        raw.to_owned()
    } else {
        hashed(raw)
    }
}

fn hashed(raw: &str) -> String {
    let mut sanitized: String = raw
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .take(200)
        .collect();
    sanitized = sanitized.trim_matches('-').to_owned();
    let hash = format!(
        "{:016x}{:016x}",
        fnv1a(raw.as_bytes(), 0),
        fnv1a(raw.as_bytes(), 1)
    );
    if sanitized.is_empty() {
        format!("h-{hash}")
    } else {
        format!("{sanitized}-{hash}")
    }
}

/// FNV-1a, 64 bits, with a seed byte so two independent hashes give 128 bits.
fn fnv1a(bytes: &[u8], seed: u8) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in std::iter::once(&seed).chain(bytes) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn valid_names() {
        assert!(is_valid_object_name("node1"));
        assert!(is_valid_object_name("a.b-c"));
        assert!(!is_valid_object_name(""));
        assert!(!is_valid_object_name("-a"));
        assert!(!is_valid_object_name("a-"));
        assert!(!is_valid_object_name("A"));
        assert!(!is_valid_object_name("a..b"));
        assert!(!is_valid_object_name("a_b"));
        assert!(!is_valid_object_name(&"a".repeat(254)));
    }

    #[test]
    fn cidr_names() {
        let v4: IpNet = "10.244.0.0/26".parse().unwrap();
        assert_eq!(cidr_name(&v4), "10-244-0-0-26");
        let v6: IpNet = "fd00::/122".parse().unwrap();
        assert_eq!(cidr_name(&v6), "fd00-0-0-0-0-0-0-0-122");
        let zero: IpNet = "::/122".parse().unwrap();
        assert!(is_valid_object_name(&cidr_name(&zero)));
        assert_eq!(affinity_name("node1", &v4), "node1-10-244-0-0-26");
        assert_eq!(parse_cidr_name("10-244-0-0-26"), Some(v4));
        assert_eq!(parse_cidr_name("fd00-0-0-0-0-0-0-0-122"), Some(v6));
        assert_eq!(parse_cidr_name(&cidr_name(&zero)), Some(zero));
        for bad in [
            "node1",
            "10-244-0-0",
            "10-244-0-1-26",
            "10-244-0-0-33",
            "010-0-0-0-8",
        ] {
            assert_eq!(parse_cidr_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn handle_names_are_valid_and_distinct() {
        assert_eq!(handle_name("pod-a"), "pod-a");
        let a = handle_name("k8s-pod-network.ABC_def/eth0");
        let b = handle_name("k8s-pod-network.abc_def/eth0");
        assert!(is_valid_object_name(&a));
        assert!(is_valid_object_name(&b));
        assert_ne!(a, b);
        let long = handle_name(&"X".repeat(1000));
        assert!(is_valid_object_name(&long));
        assert!(is_valid_object_name(&handle_name("___")));
        let node = "n".repeat(250);
        let v4: IpNet = "10.0.0.0/26".parse().unwrap();
        assert!(is_valid_object_name(&affinity_name(&node, &v4)));
    }
}
