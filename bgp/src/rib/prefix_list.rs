//! Prefix lists: ordered `(prefix, ge, le, action)` rules with a default,
//! the usual router-configuration filter for import and export policy.
//!
//! A rule matches a route's prefix `p` when `p` lies inside the rule's
//! prefix (same family, at least as long, same leading bits) and `p`'s
//! length is in the rule's length range: exactly the rule's length when
//! neither `ge` nor `le` is given, otherwise `ge` (default: the rule's
//! length) to `le` (default: 32 or 128). The first matching rule decides;
//! when none matches, the list's default does.

use ipnet::IpNet;
use thiserror::Error;

/// What a matching rule does with a prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Permit,
    Deny,
}

/// A rule that cannot match anything the way it was written.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum PrefixListError {
    #[error("prefix-list rule {prefix}: ge {ge} is shorter than the prefix length")]
    GeShorterThanPrefix { prefix: IpNet, ge: u8 },
    #[error("prefix-list rule {prefix}: le {le} is shorter than ge {ge}")]
    LeShorterThanGe { prefix: IpNet, ge: u8, le: u8 },
    #[error("prefix-list rule {prefix}: length {len} exceeds the family's {max} bits")]
    LengthTooLong { prefix: IpNet, len: u8, max: u8 },
}

/// One rule of a [`PrefixList`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PrefixRule {
    prefix: IpNet,
    min_len: u8,
    max_len: u8,
    action: Action,
}

impl PrefixRule {
    /// A rule for `prefix` with optional `ge`/`le` length bounds; checks
    /// `len(prefix) <= ge <= le <= max` for the family.
    pub fn new(
        prefix: IpNet,
        ge: Option<u8>,
        le: Option<u8>,
        action: Action,
    ) -> Result<Self, PrefixListError> {
        let prefix = prefix.trunc();
        let len = prefix.prefix_len();
        let max = prefix.max_prefix_len();
        let (min_len, max_len) = match (ge, le) {
            (None, None) => (len, len),
            (ge, le) => (ge.unwrap_or(len), le.unwrap_or(max)),
        };
        if min_len < len {
            return Err(PrefixListError::GeShorterThanPrefix {
                prefix,
                ge: min_len,
            });
        }
        if max_len < min_len {
            return Err(PrefixListError::LeShorterThanGe {
                prefix,
                ge: min_len,
                le: max_len,
            });
        }
        if max_len > max {
            return Err(PrefixListError::LengthTooLong {
                prefix,
                len: max_len,
                max,
            });
        }
        Ok(PrefixRule {
            prefix,
            min_len,
            max_len,
            action,
        })
    }

    /// Exactly `prefix` (no ge/le).
    pub fn exact(prefix: IpNet, action: Action) -> Self {
        let prefix = prefix.trunc();
        let len = prefix.prefix_len();
        PrefixRule {
            prefix,
            min_len: len,
            max_len: len,
            action,
        }
    }

    /// `prefix` and every longer prefix inside it (`le` = family maximum).
    pub fn or_longer(prefix: IpNet, action: Action) -> Self {
        let prefix = prefix.trunc();
        PrefixRule {
            prefix,
            min_len: prefix.prefix_len(),
            max_len: prefix.max_prefix_len(),
            action,
        }
    }

    pub fn prefix(&self) -> IpNet {
        self.prefix
    }
    pub fn action(&self) -> Action {
        self.action
    }
    /// The accepted prefix lengths, inclusive.
    pub fn lengths(&self) -> (u8, u8) {
        (self.min_len, self.max_len)
    }

    /// Whether `candidate` falls under this rule.
    pub fn matches(&self, candidate: &IpNet) -> bool {
        let len = candidate.prefix_len();
        len >= self.min_len && len <= self.max_len && self.prefix.contains(candidate)
    }
}

/// An ordered list of rules; the first match decides, else `default`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PrefixList {
    pub rules: Vec<PrefixRule>,
    pub default: Action,
}

impl Default for PrefixList {
    /// Permits everything.
    fn default() -> Self {
        PrefixList::permit_all()
    }
}

impl PrefixList {
    /// No rules, default permit.
    pub fn permit_all() -> Self {
        PrefixList {
            rules: Vec::new(),
            default: Action::Permit,
        }
    }

    /// No rules, default deny.
    pub fn deny_all() -> Self {
        PrefixList {
            rules: Vec::new(),
            default: Action::Deny,
        }
    }

    /// Permits exactly the given prefixes, denies the rest (e.g. "export
    /// only my pod blocks").
    pub fn only_exact(prefixes: impl IntoIterator<Item = IpNet>) -> Self {
        PrefixList {
            rules: prefixes
                .into_iter()
                .map(|p| PrefixRule::exact(p, Action::Permit))
                .collect(),
            default: Action::Deny,
        }
    }

    /// Permits the given prefixes and anything inside them, denies the rest
    /// (e.g. "import only pool CIDRs").
    pub fn only_within(prefixes: impl IntoIterator<Item = IpNet>) -> Self {
        PrefixList {
            rules: prefixes
                .into_iter()
                .map(|p| PrefixRule::or_longer(p, Action::Permit))
                .collect(),
            default: Action::Deny,
        }
    }

    /// The action for `prefix`.
    pub fn evaluate(&self, prefix: &IpNet) -> Action {
        self.rules
            .iter()
            .find(|r| r.matches(prefix))
            .map_or(self.default, |r| r.action)
    }

    pub fn permits(&self, prefix: &IpNet) -> bool {
        self.evaluate(prefix) == Action::Permit
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn exact_rule_matches_only_that_length() {
        let r = PrefixRule::new(net("10.0.0.0/8"), None, None, Action::Permit).unwrap();
        assert!(r.matches(&net("10.0.0.0/8")));
        assert!(!r.matches(&net("10.1.0.0/16")));
        assert!(!r.matches(&net("0.0.0.0/0")));
    }

    #[test]
    fn ge_le_bound_the_length() {
        let r = PrefixRule::new(net("10.0.0.0/8"), Some(16), Some(24), Action::Permit).unwrap();
        assert!(!r.matches(&net("10.0.0.0/8")));
        assert!(r.matches(&net("10.1.0.0/16")));
        assert!(r.matches(&net("10.1.2.0/24")));
        assert!(!r.matches(&net("10.1.2.0/25")));
        assert!(!r.matches(&net("11.1.0.0/16")));
        let ge_only = PrefixRule::new(net("10.0.0.0/8"), Some(24), None, Action::Permit).unwrap();
        assert_eq!(ge_only.lengths(), (24, 32));
        let le_only = PrefixRule::new(net("10.0.0.0/8"), None, Some(16), Action::Permit).unwrap();
        assert_eq!(le_only.lengths(), (8, 16));
    }

    #[test]
    fn families_do_not_mix() {
        let r = PrefixRule::or_longer(net("::/0"), Action::Permit);
        assert!(r.matches(&net("fd00::/64")));
        assert!(!r.matches(&net("10.0.0.0/8")));
    }

    #[test]
    fn invalid_rules_are_rejected() {
        assert!(matches!(
            PrefixRule::new(net("10.0.0.0/16"), Some(8), None, Action::Deny),
            Err(PrefixListError::GeShorterThanPrefix { .. })
        ));
        assert!(matches!(
            PrefixRule::new(net("10.0.0.0/8"), Some(24), Some(16), Action::Deny),
            Err(PrefixListError::LeShorterThanGe { .. })
        ));
        assert!(matches!(
            PrefixRule::new(net("10.0.0.0/8"), None, Some(33), Action::Deny),
            Err(PrefixListError::LengthTooLong { .. })
        ));
    }

    #[test]
    fn first_match_wins_then_default() {
        let list = PrefixList {
            rules: vec![
                PrefixRule::exact(net("10.0.5.0/24"), Action::Deny),
                PrefixRule::or_longer(net("10.0.0.0/16"), Action::Permit),
            ],
            default: Action::Deny,
        };
        assert!(!list.permits(&net("10.0.5.0/24")));
        assert!(list.permits(&net("10.0.5.0/25")));
        assert!(list.permits(&net("10.0.0.0/16")));
        assert!(!list.permits(&net("192.168.0.0/24")));
        assert!(PrefixList::default().permits(&net("192.168.0.0/24")));
        assert!(!PrefixList::deny_all().permits(&net("192.168.0.0/24")));
    }

    #[test]
    fn pod_blocks_and_pools() {
        // Export only my pod blocks.
        let export = PrefixList::only_exact([net("10.244.1.0/26"), net("fd00:1:2::/122")]);
        assert!(export.permits(&net("10.244.1.0/26")));
        assert!(export.permits(&net("fd00:1:2::/122")));
        assert!(!export.permits(&net("10.244.1.0/27")));
        assert!(!export.permits(&net("10.244.2.0/26")));
        assert!(!export.permits(&net("0.0.0.0/0")));
        // Import only pool CIDRs.
        let import = PrefixList::only_within([net("10.244.0.0/16"), net("fd00:1::/48")]);
        assert!(import.permits(&net("10.244.7.64/26")));
        assert!(import.permits(&net("10.244.7.65/32")));
        assert!(import.permits(&net("fd00:1:0:9::/122")));
        assert!(!import.permits(&net("fd00:1:9::/122")));
        assert!(!import.permits(&net("10.0.0.0/8")));
        assert!(!import.permits(&net("10.245.0.0/26")));
    }
}
