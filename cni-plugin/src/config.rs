//! The network configuration on stdin: the spec's standard keys plus
//! felix's own, read strictly (an unknown key is refused with code 2, so a
//! typo such as `"mut": 1400` is not silently ignored).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::api::Attachment;
use crate::spec::{CniError, CniResult, CniVersion, ErrorCode};

/// Where the agent's pod API listens unless the config says otherwise.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/felix/pod-api.sock";
/// The MTU of pod interfaces unless the config says otherwise.
pub const DEFAULT_MTU: u32 = 1500;
/// IPv4's minimum link MTU (RFC 791: 68 octets).
pub const MIN_MTU_V4: u32 = 68;
/// IPv6's minimum link MTU (RFC 8200 §5: 1280 octets).
pub const MIN_MTU_V6: u32 = 1280;
/// The largest MTU a veth takes.
pub const MAX_MTU: u32 = 65535;

/// Keys the spec defines or runtimes inject; accepted and, except for the
/// ones read below, ignored.
const STANDARD_KEYS: &[&str] = &[
    "cniVersion",
    "cniVersions",
    "name",
    "type",
    "args",
    "ipMasq",
    "ipam",
    "dns",
    "runtimeConfig",
    "capabilities",
    "prevResult",
    "disableCheck",
    "disableGC",
    "cni.dev/valid-attachments",
    "cni.dev/attachments",
];

/// felix-cni's own keys.
const FELIX_KEYS: &[&str] = &[
    "mtu",
    "agent_socket",
    "agent_timeout_ms",
    "assign_ipv4",
    "assign_ipv6",
];

/// The keys of felix-ipam's `ipam` object.
const IPAM_KEYS: &[&str] = &[
    "type",
    "agent_socket",
    "agent_timeout_ms",
    "assign_ipv4",
    "assign_ipv6",
];

/// What both modes need to reach the agent and how many addresses to ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSettings {
    pub socket: PathBuf,
    pub timeout: Duration,
    pub num_v4: u32,
    pub num_v6: u32,
}

/// A parsed, validated network configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub version: CniVersion,
    pub name: String,
    pub plugin_type: String,
    pub mtu: u32,
    pub agent: AgentSettings,
    pub dns: Option<Value>,
    pub prev_result: Option<CniResult>,
    /// GC's `cni.dev/valid-attachments`.
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// Which binary is reading the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `felix-cni`: the whole pod interface; felix's keys at the top level.
    Interface,
    /// `felix-ipam`: addresses only, felix's keys in the `ipam` object; the
    /// top level belongs to the delegating plugin and is not checked.
    Ipam,
}

/// Reads only `cniVersion` (VERSION, and the version to answer an early
/// error in).
pub fn peek_version(bytes: &[u8]) -> Option<CniVersion> {
    let value: Value = serde_json::from_slice(bytes).ok()?;
    CniVersion::parse(value.get("cniVersion")?.as_str()?).ok()
}

impl NetConf {
    pub fn parse(bytes: &[u8], mode: Mode) -> Result<Self, CniError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(
                ErrorCode::Decode,
                format!("network configuration is not valid JSON: {e}"),
            )
        })?;
        let Value::Object(top) = value else {
            return Err(CniError::new(
                ErrorCode::Decode,
                "network configuration is not a JSON object",
            ));
        };
        let version = match top.get("cniVersion") {
            Some(Value::String(v)) => CniVersion::parse(v)?,
            Some(other) => return Err(invalid(format!("cniVersion {other} is not a string"))),
            None => return Err(invalid("cniVersion is missing".into())),
        };
        let name = required_str(&top, "name")?;
        validate_network_name(&name)?;
        let plugin_type = required_str(&top, "type")?;

        let own: &Map<String, Value> = match mode {
            Mode::Interface => {
                refuse_unknown(&top, &[STANDARD_KEYS, FELIX_KEYS], "")?;
                if let Some(ipam) = top.get("ipam") {
                    if !ipam.as_object().is_some_and(Map::is_empty) {
                        return Err(CniError::new(
                            ErrorCode::UnsupportedField,
                            format!(
                                "unsupported field \"ipam\": {ipam}: felix-cni takes its addresses \
                                 from the felix agent; leave ipam out"
                            ),
                        ));
                    }
                }
                &top
            }
            Mode::Ipam => {
                let Some(Value::Object(ipam)) = top.get("ipam") else {
                    return Err(invalid("felix-ipam needs an \"ipam\" object".into()));
                };
                refuse_unknown(ipam, &[IPAM_KEYS], "ipam.")?;
                ipam
            }
        };

        let mtu = match own.get("mtu") {
            None => DEFAULT_MTU,
            Some(v) => v
                .as_u64()
                .and_then(|m| u32::try_from(m).ok())
                .ok_or_else(|| invalid(format!("mtu {v} is not a whole number")))?,
        };
        let assign_ipv4 = bool_field(own, "assign_ipv4", true)?;
        let assign_ipv6 = bool_field(own, "assign_ipv6", false)?;
        if !assign_ipv4 && !assign_ipv6 {
            return Err(invalid(
                "assign_ipv4 and assign_ipv6 are both false: the pod would get no address".into(),
            ));
        }
        if mode == Mode::Interface {
            let min = if assign_ipv6 { MIN_MTU_V6 } else { MIN_MTU_V4 };
            if !(min..=MAX_MTU).contains(&mtu) {
                return Err(invalid(format!(
                    "mtu {mtu} is out of range ({min}..={MAX_MTU}{})",
                    if assign_ipv6 {
                        ", IPv6 needs at least 1280"
                    } else {
                        ""
                    }
                )));
            }
        }
        let socket = match own.get("agent_socket") {
            None => PathBuf::from(DEFAULT_AGENT_SOCKET),
            Some(Value::String(s)) if s.starts_with('/') => PathBuf::from(s),
            Some(other) => {
                return Err(invalid(format!(
                    "agent_socket {other} is not an absolute path"
                )))
            }
        };
        let timeout_ms = match own.get("agent_timeout_ms") {
            None => 5_000,
            Some(v) => v
                .as_u64()
                .filter(|ms| (1..=120_000).contains(ms))
                .ok_or_else(|| invalid(format!("agent_timeout_ms {v} is not in 1..=120000")))?,
        };
        let prev_result = match top.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(v) => Some(CniResult::from_json(v)?),
        };
        let valid_attachments = match top.get("cni.dev/valid-attachments") {
            None | Some(Value::Null) => None,
            Some(Value::Array(list)) => Some(
                list.iter()
                    .map(|a| parse_attachment(a, &name))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Some(other) => {
                return Err(invalid(format!(
                    "cni.dev/valid-attachments {other} is not a list"
                )))
            }
        };
        Ok(NetConf {
            version,
            name,
            plugin_type,
            mtu,
            agent: AgentSettings {
                socket,
                timeout: Duration::from_millis(timeout_ms),
                num_v4: u32::from(assign_ipv4),
                num_v6: u32::from(assign_ipv6),
            },
            dns: top.get("dns").cloned(),
            prev_result,
            valid_attachments,
        })
    }
}

fn invalid(msg: String) -> CniError {
    CniError::new(ErrorCode::InvalidNetworkConfig, msg)
}

fn required_str(obj: &Map<String, Value>, key: &str) -> Result<String, CniError> {
    match obj.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(other) => Err(invalid(format!("{key} {other} is not a non-empty string"))),
        None => Err(invalid(format!("{key} is missing"))),
    }
}

fn bool_field(obj: &Map<String, Value>, key: &str, default: bool) -> Result<bool, CniError> {
    match obj.get(key) {
        None => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(invalid(format!("{key} {other} is not true or false"))),
    }
}

fn refuse_unknown(
    obj: &Map<String, Value>,
    known: &[&[&str]],
    prefix: &str,
) -> Result<(), CniError> {
    for (key, value) in obj {
        if !known.iter().any(|set| set.contains(&key.as_str())) {
            // Code 2's message must name the key and its value (spec 1.1).
            return Err(CniError::new(
                ErrorCode::UnsupportedField,
                format!("unsupported field \"{prefix}{key}\": {value}"),
            ));
        }
    }
    Ok(())
}

/// Network names follow the container id rule (CNI spec 1.1,
/// "Configuration format": alphanumerics, `_`, `.`, `-`).
fn validate_network_name(name: &str) -> Result<(), CniError> {
    let ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "name {name:?} is not a valid network name (letters, digits, '_', '.', '-')"
        )))
    }
}

fn parse_attachment(value: &Value, network: &str) -> Result<Attachment, CniError> {
    let field = |key: &str| {
        value
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| {
                invalid(format!(
                    "cni.dev/valid-attachments entry {value} lacks {key}"
                ))
            })
    };
    Ok(Attachment {
        network: network.to_owned(),
        container_id: field("containerID")?,
        ifname: field("ifname")?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn parse(json: &str) -> Result<NetConf, CniError> {
        NetConf::parse(json.as_bytes(), Mode::Interface)
    }

    #[test]
    fn minimal_config_takes_defaults() {
        let c = parse(r#"{"cniVersion":"1.0.0","name":"felix","type":"felix-cni"}"#).unwrap();
        assert_eq!(c.version, CniVersion::V1_0_0);
        assert_eq!(c.mtu, DEFAULT_MTU);
        assert_eq!(c.agent.socket, PathBuf::from(DEFAULT_AGENT_SOCKET));
        assert_eq!((c.agent.num_v4, c.agent.num_v6), (1, 0));
    }

    #[test]
    fn unknown_field_is_code_2_with_key_and_value() {
        let e = parse(r#"{"cniVersion":"1.0.0","name":"felix","type":"felix-cni","mut":1400}"#)
            .unwrap_err();
        assert_eq!(e.code.code(), 2);
        assert!(e.msg.contains("\"mut\": 1400"), "{}", e.msg);
        let e = parse(
            r#"{"cniVersion":"1.0.0","name":"felix","type":"felix-cni","ipam":{"type":"host-local"}}"#,
        )
        .unwrap_err();
        assert_eq!(e.code.code(), 2);
    }

    #[test]
    fn bad_values_are_code_7_or_6_or_1() {
        for (json, code, needle) in [
            ("{", 6, "JSON"),
            ("[]", 6, "object"),
            (
                r#"{"cniVersion":"0.2.0","name":"n","type":"t"}"#,
                1,
                "0.2.0",
            ),
            (r#"{"name":"n","type":"t"}"#, 7, "cniVersion"),
            (r#"{"cniVersion":"1.1.0","type":"t"}"#, 7, "name"),
            (
                r#"{"cniVersion":"1.1.0","name":"a/b","type":"t"}"#,
                7,
                "name",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"t","mtu":0}"#,
                7,
                "mtu",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"t","mtu":67}"#,
                7,
                "mtu",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"t","mtu":70000}"#,
                7,
                "mtu",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"t","mtu":-1}"#,
                7,
                "mtu",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"t","mtu":"1500"}"#,
                7,
                "mtu",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"t","mtu":1000,"assign_ipv6":true}"#,
                7,
                "1280",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"t","assign_ipv4":false}"#,
                7,
                "no address",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"t","agent_socket":"run/x.sock"}"#,
                7,
                "absolute",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"t","agent_timeout_ms":0}"#,
                7,
                "agent_timeout_ms",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"t","cni.dev/valid-attachments":[{"ifname":"eth0"}]}"#,
                7,
                "containerID",
            ),
        ] {
            let e = parse(json).expect_err(json);
            assert_eq!(e.code.code(), code, "{json}: {}", e.msg);
            assert!(e.msg.contains(needle), "{json}: {}", e.msg);
        }
    }

    #[test]
    fn ipam_mode_reads_the_ipam_object_only() {
        let c = NetConf::parse(
            br#"{"cniVersion":"0.4.0","name":"n","type":"ptp","whatever":1,
                 "ipam":{"type":"felix-ipam","assign_ipv6":true,"agent_socket":"/tmp/a.sock"}}"#,
            Mode::Ipam,
        )
        .unwrap();
        assert_eq!((c.agent.num_v4, c.agent.num_v6), (1, 1));
        assert_eq!(c.agent.socket, PathBuf::from("/tmp/a.sock"));
        let e = NetConf::parse(
            br#"{"cniVersion":"0.4.0","name":"n","type":"ptp","ipam":{"type":"felix-ipam","subnet":"10.0.0.0/8"}}"#,
            Mode::Ipam,
        )
        .unwrap_err();
        assert_eq!(e.code.code(), 2);
        assert!(e.msg.contains("ipam.subnet"));
    }

    #[test]
    fn gc_attachments_and_prev_result() {
        let c = parse(
            r#"{"cniVersion":"1.1.0","name":"n","type":"t",
                "cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}],
                "prevResult":{"cniVersion":"1.1.0","ips":[{"address":"10.0.0.1/32"}]}}"#,
        )
        .unwrap();
        let valid = c.valid_attachments.unwrap();
        assert_eq!(valid[0].container_id, "c1");
        assert_eq!(valid[0].network, "n");
        assert_eq!(c.prev_result.unwrap().ips.len(), 1);
    }

    #[test]
    fn peek_version_reads_only_the_version() {
        assert_eq!(
            peek_version(br#"{"cniVersion":"0.3.1","bogus":1}"#),
            Some(CniVersion::V0_3_1)
        );
        assert_eq!(peek_version(b"{"), None);
    }
}
