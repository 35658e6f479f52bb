//! Node selectors: the subset of Calico's selector language felix
//! understands — `all()`, `has(key)`, `key == 'v'`, `key != 'v'`, joined
//! with `&&`. An empty selector selects every node, like `all()`.

use std::collections::BTreeMap;
use std::fmt;

/// One condition on a node's labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Term {
    All,
    Has(String),
    Eq(String, String),
    Ne(String, String),
}

/// A parsed selector: every term must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    terms: Vec<Term>,
}

/// Why a selector did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("selector {selector:?}: {reason} (felix supports all(), has(k), k == 'v', k != 'v' joined with &&)")]
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
            Term::Eq(k, v) => labels.get(k) == Some(v),
            Term::Ne(k, v) => labels.get(k) != Some(v),
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
                Term::Eq(k, v) => format!("{k} == '{v}'"),
                Term::Ne(k, v) => format!("{k} != '{v}'"),
            })
            .collect();
        f.write_str(&parts.join(" && "))
    }
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-'))
}

fn parse_term(part: &str) -> Result<Term, String> {
    if part == "all()" {
        return Ok(Term::All);
    }
    if let Some(inner) = part.strip_prefix("has(").and_then(|r| r.strip_suffix(')')) {
        let key = inner.trim();
        return if valid_key(key) {
            Ok(Term::Has(key.to_owned()))
        } else {
            Err(format!("bad label key {key:?} in {part:?}"))
        };
    }
    for (op, eq) in [("==", true), ("!=", false)] {
        if let Some((key, value)) = part.split_once(op) {
            let key = key.trim();
            if !valid_key(key) {
                return Err(format!("bad label key {key:?} in {part:?}"));
            }
            let value = value.trim();
            let unquoted = value
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .or_else(|| value.strip_prefix('"').and_then(|v| v.strip_suffix('"')))
                .ok_or_else(|| format!("value {value:?} in {part:?} must be quoted"))?;
            if unquoted.contains(['\'', '"']) {
                return Err(format!("bad value {value:?} in {part:?}"));
            }
            let (k, v) = (key.to_owned(), unquoted.to_owned());
            return Ok(if eq { Term::Eq(k, v) } else { Term::Ne(k, v) });
        }
    }
    Err(format!("unsupported term {part:?}"))
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
        let s = Selector::parse("zone == 'a' && has(rack)").unwrap();
        assert_eq!(Selector::parse(&s.to_string()).unwrap(), s);
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        for bad in [
            "zone == a",
            "zone in {'a'}",
            "a && ",
            "has()",
            "!has(x)",
            "zone || x",
            "z one == 'a'",
        ] {
            assert!(Selector::parse(bad).is_err(), "{bad}");
        }
    }
}
