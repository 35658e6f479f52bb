//! Label selectors: the subset of Calico's selector language felix
//! understands (docs.tigera.io, "Selectors") — `all()`, `has(k)`,
//! `!has(k)`, `k == 'v'`, `k != 'v'`, `k in {'a', 'b'}`, `k not in {'a'}`,
//! joined with `&&`. `||` and grouping are refused by name rather than
//! misread. An empty selector selects every node, like `all()` (callers
//! for which empty means "unset" check that first). Used by IP pools'
//! `nodeSelector` and by the agent's BGPPeer `nodeSelector`/`peerSelector`.

use std::collections::BTreeMap;
use std::fmt;

/// One condition on a node's labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Term {
    All,
    Has(String),
    NotHas(String),
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A parsed selector: every term must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    terms: Vec<Term>,
}

/// Why a selector did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("selector {selector:?}: {reason} (felix supports all(), has(k), !has(k), k == 'v', k != 'v', k in {{'a'}}, k not in {{'a'}} joined with &&)")]
pub struct SelectorError {
    pub selector: String,
    pub reason: String,
}

impl Selector {
    /// Parses a selector.
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        let err = |reason: &str| SelectorError {
            selector: text.to_owned(),
            reason: reason.to_owned(),
        };
        if text.trim().is_empty() {
            return Ok(Selector {
                terms: vec![Term::All],
            });
        }
        if text.contains("||") {
            return Err(err("`||` is not supported (only `&&` of simple terms)"));
        }
        let mut terms = Vec::new();
        for part in text.split("&&") {
            let part = part.trim();
            if part.is_empty() {
                return Err(err("empty term around &&"));
            }
            terms.push(parse_term(part).map_err(|r| err(&r))?);
        }
        Ok(Selector { terms })
    }

    /// True when the node's labels satisfy every term.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.terms.iter().all(|t| match t {
            Term::All => true,
            Term::Has(k) => labels.contains_key(k),
            Term::NotHas(k) => !labels.contains_key(k),
            Term::Eq(k, v) => labels.get(k) == Some(v),
            Term::Ne(k, v) => labels.get(k) != Some(v),
            // A missing label is in no set, so `not in` holds for it.
            Term::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Term::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
        })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .terms
            .iter()
            .map(|t| match t {
                Term::All => "all()".to_owned(),
                Term::Has(k) => format!("has({k})"),
                Term::NotHas(k) => format!("!has({k})"),
                Term::Eq(k, v) => format!("{k} == '{v}'"),
                Term::Ne(k, v) => format!("{k} != '{v}'"),
                Term::In(k, vs) => format!("{k} in {}", set_text(vs)),
                Term::NotIn(k, vs) => format!("{k} not in {}", set_text(vs)),
            })
            .collect();
        f.write_str(&parts.join(" && "))
    }
}

fn set_text(values: &[String]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| format!("'{v}'")).collect();
    format!("{{{}}}", quoted.join(", "))
}

fn parse_term(part: &str) -> Result<Term, String> {
    if part == "all()" {
        return Ok(Term::All);
    }
    if let Some(inner) = part.strip_prefix("!has(").and_then(|r| r.strip_suffix(')')) {
        return Ok(Term::NotHas(label_key(inner, part)?));
    }
    if let Some(inner) = part.strip_prefix("has(").and_then(|r| r.strip_suffix(')')) {
        return Ok(Term::Has(label_key(inner, part)?));
    }
    if let Some((k, v)) = part.split_once("==") {
        return Ok(Term::Eq(label_key(k, part)?, quoted(v, part)?));
    }
    if let Some((k, v)) = part.split_once("!=") {
        return Ok(Term::Ne(label_key(k, part)?, quoted(v, part)?));
    }
    if let Some((k, set)) = part.split_once(" not in ") {
        return Ok(Term::NotIn(label_key(k, part)?, value_set(set, part)?));
    }
    if let Some((k, set)) = part.split_once(" in ") {
        return Ok(Term::In(label_key(k, part)?, value_set(set, part)?));
    }
    Err(format!("unsupported term {part:?}"))
}

/// A Kubernetes-style label key: letters, digits, `.`, `_`, `/`, `-`.
fn label_key(text: &str, part: &str) -> Result<String, String> {
    let key = text.trim();
    let valid = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-'));
    if valid {
        Ok(key.to_owned())
    } else {
        Err(format!("bad label key {key:?} in {part:?}"))
    }
}

/// A value in single or double quotes, with no quote inside.
fn quoted(text: &str, part: &str) -> Result<String, String> {
    let value = text.trim();
    let inner = value
        .strip_prefix('\'')
        .and_then(|v| v.strip_suffix('\''))
        .or_else(|| value.strip_prefix('"').and_then(|v| v.strip_suffix('"')));
    match inner {
        Some(v) if !v.contains(['\'', '"']) => Ok(v.to_owned()),
        Some(_) => Err(format!("bad value {value:?} in {part:?}")),
        None => Err(format!("value {value:?} in {part:?} must be quoted")),
    }
}

/// `{'a', 'b'}`: a set of quoted values.
fn value_set(text: &str, part: &str) -> Result<Vec<String>, String> {
    let set = text.trim();
    let inner = set
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .ok_or_else(|| format!("expected a set like {{'a', 'b'}}, got {set:?} in {part:?}"))?;
    inner.split(',').map(|v| quoted(v, part)).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn parses_and_matches() {
        let l = labels(&[("zone", "a"), ("rack", "r1")]);
        assert!(Selector::parse("all()").unwrap().matches(&l));
        assert!(Selector::parse("").unwrap().matches(&l));
        assert!(Selector::parse("has(zone)").unwrap().matches(&l));
        assert!(!Selector::parse("has(gpu)").unwrap().matches(&l));
        assert!(Selector::parse("zone == 'a'").unwrap().matches(&l));
        assert!(!Selector::parse("zone == \"b\"").unwrap().matches(&l));
        assert!(Selector::parse("zone != 'b' && has(rack)")
            .unwrap()
            .matches(&l));
        assert!(!Selector::parse("zone != 'a' && has(rack)")
            .unwrap()
            .matches(&l));
        assert!(Selector::parse("gpu != 'yes'").unwrap().matches(&l));
        assert!(Selector::parse("!has(gpu)").unwrap().matches(&l));
        assert!(!Selector::parse("!has(zone)").unwrap().matches(&l));
        assert!(Selector::parse("zone in {'a', 'b'}").unwrap().matches(&l));
        assert!(!Selector::parse("zone in {'b'}").unwrap().matches(&l));
        assert!(Selector::parse("zone not in {'b'}").unwrap().matches(&l));
        assert!(!Selector::parse("zone not in {'a'}").unwrap().matches(&l));
        // A missing label is in no set and differs from every value.
        assert!(Selector::parse("gpu not in {'yes'}").unwrap().matches(&l));
        assert!(!Selector::parse("gpu in {'yes'}").unwrap().matches(&l));
        for text in [
            "zone == 'a' && has(rack)",
            "!has(gpu) && zone in {'a', 'b'} && rack not in {'r2'}",
        ] {
            let s = Selector::parse(text).unwrap();
            assert_eq!(Selector::parse(&s.to_string()).unwrap(), s, "{text}");
        }
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        for bad in [
            "zone == a",
            "zone in 'a'",
            "a && ",
            "&& has(a)",
            "has()",
            "(zone == 'a')",
            "zone || x",
            "zone == 'a' || zone == 'b'",
            "z one == 'a'",
        ] {
            let e = Selector::parse(bad).unwrap_err();
            assert_eq!(e.selector, bad);
        }
    }
}
