//! Input checks every backend applies before it touches the store, so that
//! all of them refuse the same requests the same way.

use super::{Kind, StoreError};

/// Refuses a name that is not a valid Kubernetes object name
/// ([`crate::names::is_valid_object_name`]: a DNS-1123 subdomain). The same
/// names are safe etcd key segments (no `/`).
pub fn name(kind: Kind, name: &str) -> Result<(), StoreError> {
    if crate::names::is_valid_object_name(name) {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "{kind} name {name:?} is not a valid object name (lower-case letters, digits, '-' \
             and '.', each dot-separated part starting and ending with a letter or digit, at \
             most {} bytes)",
            crate::names::MAX_NAME_LEN
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_dns_1123_subdomain_rules() {
        for good in ["a", "node-1", "10-244-0-0-26", "a.b-c.d", &"x".repeat(253)] {
            assert!(name(Kind::IpamBlock, good).is_ok(), "{good:?} refused");
        }
        for bad in [
            "",
            "A",
            "-a",
            "a-",
            "a/b",
            "a_b",
            ".a",
            "a b",
            "é",
            &"x".repeat(254),
        ] {
            assert!(
                matches!(name(Kind::IpamBlock, bad), Err(StoreError::Invalid(_))),
                "{bad:?} accepted"
            );
        }
    }
}
