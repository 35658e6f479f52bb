//! Calico label selectors, the subset felix understands: `all()`,
//! `has(k)`, `!has(k)`, `k == 'v'`, `k != 'v'`, `k in {'a', 'b'}`,
//! `k not in {'a'}`, joined by `&&` (Calico's selector syntax,
//! docs.tigera.io "Selectors"). `||` and parentheses are refused with a
//! clear error rather than misread.

use std::collections::BTreeMap;
use thiserror::Error;

/// A selector that did not parse; names the offending text.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("selector {selector:?}: {reason}")]
pub struct SelectorError {
    pub selector: String,
    pub reason: String,
}

/// One term of a conjunction.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Term {
    All,
    Has(String),
    NotHas(String),
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A parsed selector: every term must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    terms: Vec<Term>,
}

impl Selector {
    /// Parses `text`; an empty selector selects nothing (as Calico's
    /// empty `nodeSelector` on a BGPPeer means "not this way").
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        let err = |reason: &str| SelectorError {
            selector: text.to_string(),
            reason: reason.to_string(),
        };
        if text.contains("||") {
            return Err(err(
                "only `&&` of simple terms is supported (no `||`, no grouping)",
            ));
        }
        let mut terms = Vec::new();
        for raw in text.split("&&") {
            let term = raw.trim();
            if term.is_empty() {
                return Err(err("empty term"));
            }
            terms.push(parse_term(term).map_err(|reason| err(&reason))?);
        }
        Ok(Selector { terms })
    }

    /// Whether `labels` satisfy every term.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.terms.iter().all(|term| match term {
            Term::All => true,
            Term::Has(k) => labels.contains_key(k),
            Term::NotHas(k) => !labels.contains_key(k),
            Term::Eq(k, v) => labels.get(k) == Some(v),
            Term::NotEq(k, v) => labels.get(k) != Some(v),
            Term::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Term::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
        })
    }
}

fn parse_term(term: &str) -> Result<Term, String> {
    if term == "all()" {
        return Ok(Term::All);
    }
    if let Some(inner) = term.strip_prefix("!has(").and_then(|t| t.strip_suffix(')')) {
        return Ok(Term::NotHas(label_key(inner)?));
    }
    if let Some(inner) = term.strip_prefix("has(").and_then(|t| t.strip_suffix(')')) {
        return Ok(Term::Has(label_key(inner)?));
    }
    if let Some((k, v)) = term.split_once("==") {
        return Ok(Term::Eq(label_key(k)?, quoted(v)?));
    }
    if let Some((k, v)) = term.split_once("!=") {
        return Ok(Term::NotEq(label_key(k)?, quoted(v)?));
    }
    if let Some((k, set)) = term.split_once(" not in ") {
        return Ok(Term::NotIn(label_key(k)?, value_set(set)?));
    }
    if let Some((k, set)) = term.split_once(" in ") {
        return Ok(Term::In(label_key(k)?, value_set(set)?));
    }
    Err(format!("cannot read term {term:?}"))
}

fn label_key(text: &str) -> Result<String, String> {
    let key = text.trim();
    let valid = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if valid {
        Ok(key.to_string())
    } else {
        Err(format!("invalid label key {key:?}"))
    }
}

fn quoted(text: &str) -> Result<String, String> {
    let t = text.trim();
    let inner = t
        .strip_prefix('\'')
        .and_then(|t| t.strip_suffix('\''))
        .or_else(|| t.strip_prefix('"').and_then(|t| t.strip_suffix('"')));
    match inner {
        Some(v) if !v.contains(['\'', '"']) => Ok(v.to_string()),
        _ => Err(format!("expected a quoted value, got {t:?}")),
    }
}

fn value_set(text: &str) -> Result<Vec<String>, String> {
    let t = text.trim();
    let inner = t
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .ok_or_else(|| format!("expected {{'a', 'b'}}, got {t:?}"))?;
    inner.split(',').map(quoted).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn terms_match_as_calico_defines_them() {
        let l = labels(&[("rack", "r1"), ("role", "rr")]);
        let yes = [
            "all()",
            "has(rack)",
            "!has(zone)",
            "rack == 'r1'",
            "rack != 'r2'",
            "role in {'rr', 'edge'}",
            "rack not in {'r2'}",
            "has(rack) && role == \"rr\"",
        ];
        for s in yes {
            assert!(Selector::parse(s).unwrap().matches(&l), "{s}");
        }
        let no = [
            "has(zone)",
            "!has(rack)",
            "rack == 'r2'",
            "rack != 'r1'",
            "role in {'edge'}",
            "role not in {'rr'}",
            "has(rack) && role == 'edge'",
        ];
        for s in no {
            assert!(!Selector::parse(s).unwrap().matches(&l), "{s}");
        }
        // A missing label is "not in" any set and "!=" any value.
        assert!(Selector::parse("zone != 'a'").unwrap().matches(&l));
        assert!(!Selector::parse("zone in {'a'}").unwrap().matches(&l));
    }

    #[test]
    fn unsupported_or_malformed_selectors_are_refused_by_name() {
        for s in [
            "",
            "a == 'x' || b == 'y'",
            "(a == 'x')",
            "a == x",
            "a in 'x'",
            "&& has(a)",
            "bad key == 'x'",
        ] {
            let e = Selector::parse(s).unwrap_err();
            assert_eq!(e.selector, s);
        }
    }
}
