#![allow(dead_code)]
//! Shared by the deploy/ tests: a structural OpenAPI v3 check, the parts
//! of CustomResourceDefinition validation felix's schemas use.

use felix_rs::crds;
use ipam::store::Kind;
use kube::core::cel::Validator;
use regex::Regex;
use serde_json::Value;

/// The openAPIV3Schema of `kind`'s CRD as JSON.
pub fn schema(kind: Kind) -> Value {
    let crd = crds::definition(kind);
    serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap()
}

/// Schema violations plus CEL rule failures (defaults applied first, as
/// the API server does) of a whole custom resource.
pub fn refusals(kind: Kind, object: &Value) -> Vec<String> {
    let schema = schema(kind);
    let mut out = Vec::new();
    // metadata is the API server's business; check what felix owns.
    let spec_schema = &schema["properties"]["spec"];
    violations(spec_schema, &object["spec"], "spec", &mut out);
    if let Err(errors) = Validator::new().validate_with_defaults(&schema, object, None) {
        out.push(errors.to_string());
    }
    out
}

/// A structural check of `value` against an OpenAPI v3 schema, the parts
/// of CRD validation felix's schemas use. Returns every violation with its
/// path. A property the schema does not declare is a violation: the API
/// server would silently prune it, losing data felix wrote.
pub fn violations(schema: &Value, value: &Value, path: &str, out: &mut Vec<String>) {
    if value.is_null() {
        if schema.get("nullable") != Some(&Value::Bool(true)) {
            out.push(format!("{path}: null but not nullable"));
        }
        return;
    }
    if let Some(Value::Array(options)) = schema.get("enum") {
        if !options.contains(value) {
            out.push(format!("{path}: {value} not in {options:?}"));
        }
    }
    let ty = schema.get("type").and_then(Value::as_str);
    match (ty, value) {
        (Some("string"), Value::String(s)) => {
            if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
                if !Regex::new(p).unwrap().is_match(s) {
                    out.push(format!("{path}: {s:?} does not match {p}"));
                }
            }
            let len = s.chars().count() as u64;
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
                if len > max {
                    out.push(format!("{path}: longer than {max}"));
                }
            }
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
                if len < min {
                    out.push(format!("{path}: shorter than {min}"));
                }
            }
        }
        (Some("integer"), Value::Number(n)) if n.is_i64() || n.is_u64() => {
            let x = n.as_f64().unwrap();
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
                if x < min {
                    out.push(format!("{path}: {x} below {min}"));
                }
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
                if x > max {
                    out.push(format!("{path}: {x} above {max}"));
                }
            }
        }
        (Some("boolean"), Value::Bool(_)) => {}
        (Some("array"), Value::Array(items)) => {
            let item_schema = schema.get("items").unwrap_or(&Value::Null);
            for (i, item) in items.iter().enumerate() {
                violations(item_schema, item, &format!("{path}[{i}]"), out);
            }
        }
        (Some("object"), Value::Object(map)) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let extra = schema.get("additionalProperties");
            for (k, v) in map {
                let sub = format!("{path}.{k}");
                match (props.and_then(|p| p.get(k)), extra) {
                    (Some(s), _) => violations(s, v, &sub, out),
                    (None, Some(s)) if s.is_object() => violations(s, v, &sub, out),
                    _ if schema.get("x-kubernetes-preserve-unknown-fields")
                        == Some(&Value::Bool(true)) => {}
                    _ => out.push(format!("{sub}: not in the schema (would be pruned)")),
                }
            }
            for r in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let r = r.as_str().unwrap();
                if !map.contains_key(r) {
                    out.push(format!("{path}.{r}: required"));
                }
            }
        }
        (None, _) => {}
        (Some(t), v) => out.push(format!("{path}: {v} is not of type {t}")),
    }
}
