//! The CNI specification layer (CNI spec 1.1): versions, verbs, the `CNI_*`
//! environment, the error object and the result object in each version's
//! shape. Nothing here touches the kernel or the agent.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde_json::{json, Map, Value};

/// The spec versions this plugin speaks; it answers in the version asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CniVersion {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl CniVersion {
    pub const ALL: [CniVersion; 5] = [
        CniVersion::V0_3_0,
        CniVersion::V0_3_1,
        CniVersion::V0_4_0,
        CniVersion::V1_0_0,
        CniVersion::V1_1_0,
    ];
    pub const LATEST: CniVersion = CniVersion::V1_1_0;

    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_3_0 => "0.3.0",
            CniVersion::V0_3_1 => "0.3.1",
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }

    /// Parses a `cniVersion`; any other version is error code 1.
    pub fn parse(s: &str) -> Result<Self, CniError> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                CniError::new(
                    ErrorCode::IncompatibleVersion,
                    format!(
                        "cniVersion {s:?} is not supported (supported: {})",
                        supported_list()
                    ),
                )
            })
    }

    /// Whether the verb exists in this version: CHECK came with 0.4.0,
    /// STATUS and GC with 1.1.0.
    pub fn has(self, command: Command) -> bool {
        match command {
            Command::Add | Command::Del | Command::Version => true,
            Command::Check => self >= CniVersion::V0_4_0,
            Command::Status | Command::Gc => self >= CniVersion::V1_1_0,
        }
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn supported_list() -> String {
    CniVersion::ALL
        .iter()
        .map(|v| v.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Result<Self, CniError> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            other => {
                return Err(CniError::new(
                    ErrorCode::InvalidEnvironment,
                    format!(
                        "CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, STATUS, GC, VERSION"
                    ),
                ))
            }
        })
    }
}

/// The spec's well-known error codes plus this plugin's own (>= 100).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 1: incompatible CNI version.
    IncompatibleVersion,
    /// 2: unsupported field in the network configuration.
    UnsupportedField,
    /// 3: container unknown or does not exist.
    UnknownContainer,
    /// 4: invalid necessary environment variables.
    InvalidEnvironment,
    /// 5: I/O failure.
    Io,
    /// 6: failed to decode content.
    Decode,
    /// 7: invalid network config.
    InvalidNetworkConfig,
    /// 11: try again later (the agent is unreachable or busy).
    TryAgainLater,
    /// 50: STATUS: the plugin cannot service ADD requests.
    NotAvailable,
    /// 100: a kernel (netlink, sysctl, netns) operation failed.
    Kernel,
    /// 101: the agent has no address to give (pool exhausted, no pool).
    NoAddress,
    /// 102: the agent refused or failed the request.
    Agent,
    /// 103: CHECK found a difference.
    CheckFailed,
    /// 104: an address the agent gave is already routed elsewhere on the node.
    AddressConflict,
    /// 105: the pod's interface name is already taken in its netns.
    InterfaceExists,
}

impl ErrorCode {
    pub fn code(self) -> u32 {
        match self {
            ErrorCode::IncompatibleVersion => 1,
            ErrorCode::UnsupportedField => 2,
            ErrorCode::UnknownContainer => 3,
            ErrorCode::InvalidEnvironment => 4,
            ErrorCode::Io => 5,
            ErrorCode::Decode => 6,
            ErrorCode::InvalidNetworkConfig => 7,
            ErrorCode::TryAgainLater => 11,
            ErrorCode::NotAvailable => 50,
            ErrorCode::Kernel => 100,
            ErrorCode::NoAddress => 101,
            ErrorCode::Agent => 102,
            ErrorCode::CheckFailed => 103,
            ErrorCode::AddressConflict => 104,
            ErrorCode::InterfaceExists => 105,
        }
    }
}

/// The spec's error object (CNI spec 1.1, "Error"): printed on stdout with a
/// non-zero exit status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CNI error {}: {msg}{}", code.code(), details.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
pub struct CniError {
    pub code: ErrorCode,
    pub msg: String,
    pub details: Option<String>,
}

impl CniError {
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: None,
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = Some(details.into());
        self
    }

    /// The JSON error object in `version`'s shape (the same in all supported
    /// versions).
    pub fn to_json(&self, version: CniVersion) -> Value {
        let mut obj = Map::new();
        obj.insert("cniVersion".into(), json!(version.as_str()));
        obj.insert("code".into(), json!(self.code.code()));
        obj.insert("msg".into(), json!(self.msg));
        if let Some(details) = &self.details {
            obj.insert("details".into(), json!(details));
        }
        Value::Object(obj)
    }
}

/// The `CNI_*` environment of one call, validated for the verb.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment {
    pub command: Command,
    pub container_id: Option<String>,
    pub netns: Option<PathBuf>,
    pub ifname: Option<String>,
    pub args: CniArgs,
    pub path: Option<String>,
}

impl Environment {
    /// Reads and validates the environment through `get` (a closure so
    /// tests need not touch the process environment).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let command = match get("CNI_COMMAND") {
            Some(c) => Command::parse(&c)?,
            None => {
                return Err(CniError::new(
                    ErrorCode::InvalidEnvironment,
                    "CNI_COMMAND is not set",
                ))
            }
        };
        let nonempty = |name: &str| get(name).filter(|v| !v.is_empty());
        let path = nonempty("CNI_PATH");
        let needs_attachment = matches!(command, Command::Add | Command::Del | Command::Check);
        if !needs_attachment {
            // VERSION, STATUS and GC name no attachment; runtimes pass
            // placeholders (libcni validates a conflist with VERSION and
            // CNI_NETNS=dummy), which are not ours to judge.
            return Ok(Environment {
                command,
                container_id: None,
                netns: None,
                ifname: None,
                args: CniArgs::default(),
                path,
            });
        }
        let container_id = nonempty("CNI_CONTAINERID");
        let netns = nonempty("CNI_NETNS").map(PathBuf::from);
        let ifname = nonempty("CNI_IFNAME");
        let args = CniArgs::parse(&get("CNI_ARGS").unwrap_or_default())?;
        if needs_attachment {
            let mut missing = Vec::new();
            if container_id.is_none() {
                missing.push("CNI_CONTAINERID");
            }
            if ifname.is_none() {
                missing.push("CNI_IFNAME");
            }
            // DEL may come after the netns is gone (spec 1.1, "DEL").
            if netns.is_none() && command != Command::Del {
                missing.push("CNI_NETNS");
            }
            if !missing.is_empty() {
                return Err(CniError::new(
                    ErrorCode::InvalidEnvironment,
                    format!("{} must be set for {command:?}", missing.join(", ")),
                ));
            }
        }
        if let Some(id) = &container_id {
            validate_container_id(id)?;
        }
        if let Some(name) = &ifname {
            validate_ifname(name)?;
        }
        if let Some(path) = &netns {
            validate_netns_path(path)?;
        }
        Ok(Environment {
            command,
            container_id,
            netns,
            ifname,
            args,
            path,
        })
    }
}

/// CNI spec 1.1: a container id starts with an alphanumeric character,
/// followed by alphanumerics, `_`, `.` or `-`. This also keeps path
/// separators out of anything derived from it.
pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    let bad = |why: &str| {
        Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            format!("CNI_CONTAINERID {id:?} is invalid: {why}"),
        ))
    };
    let Some(first) = id.chars().next() else {
        return bad("empty");
    };
    if !first.is_ascii_alphanumeric() {
        return bad("must start with a letter or digit");
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return bad(&format!(
            "{c:?} is not allowed (letters, digits, '_', '.', '-' only)"
        ));
    }
    if id.len() > 1024 {
        return bad("longer than 1024 bytes");
    }
    Ok(())
}

/// A Linux interface name: 1 to 15 bytes, not `.` or `..`, no `/`, `:` or
/// white space (the kernel's `dev_valid_name`).
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    let bad = |why: &str| {
        Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            format!("CNI_IFNAME {name:?} is invalid: {why}"),
        ))
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > 15 {
        return bad("longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return bad("not a name");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return bad("contains '/', ':', white space or a control character");
    }
    Ok(())
}

/// `CNI_NETNS` must be an absolute path without `..`; whether it names a
/// network namespace is checked when it is opened ([`crate::netns`]).
pub fn validate_netns_path(path: &Path) -> Result<(), CniError> {
    if !path.is_absolute() {
        return Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            format!("CNI_NETNS {:?} is not an absolute path", path.display()),
        ));
    }
    if path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            format!("CNI_NETNS {:?} contains '..'", path.display()),
        ));
    }
    Ok(())
}

/// `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs(pub BTreeMap<String, String>);

impl CniArgs {
    pub fn parse(s: &str) -> Result<Self, CniError> {
        let mut map = BTreeMap::new();
        for pair in s.split(';').filter(|p| !p.is_empty()) {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(CniError::new(
                    ErrorCode::InvalidEnvironment,
                    format!("CNI_ARGS: {pair:?} is not KEY=VALUE"),
                ));
            };
            map.insert(key.to_owned(), value.to_owned());
        }
        Ok(CniArgs(map))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
}

/// One interface of a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    /// The netns path for a pod-side interface; `None` on the host side.
    pub sandbox: Option<String>,
    pub mtu: Option<u32>,
}

/// One address of a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
    /// Index into the result's interfaces.
    pub interface: Option<usize>,
}

/// One route of a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
}

/// A result (CNI spec 1.1, "Success"), rendered in the version asked.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<RouteConfig>,
    /// Passed through from the configuration's `dns`.
    pub dns: Option<Value>,
}

impl CniResult {
    /// The result JSON in `version`'s shape: 0.3.x and 0.4.0 carry an IP
    /// `version` field, 1.1.0 adds interface `mtu`.
    pub fn to_json(&self, version: CniVersion) -> Value {
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut obj = Map::new();
                obj.insert("name".into(), json!(i.name));
                obj.insert("mac".into(), json!(i.mac));
                if let Some(sandbox) = &i.sandbox {
                    obj.insert("sandbox".into(), json!(sandbox));
                }
                if let (Some(mtu), true) = (i.mtu, version >= CniVersion::V1_1_0) {
                    obj.insert("mtu".into(), json!(mtu));
                }
                Value::Object(obj)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut obj = Map::new();
                if version < CniVersion::V1_0_0 {
                    let family = if ip.address.addr().is_ipv4() {
                        "4"
                    } else {
                        "6"
                    };
                    obj.insert("version".into(), json!(family));
                }
                obj.insert("address".into(), json!(ip.address.to_string()));
                if let Some(gw) = ip.gateway {
                    obj.insert("gateway".into(), json!(gw.to_string()));
                }
                if let Some(index) = ip.interface {
                    obj.insert("interface".into(), json!(index));
                }
                Value::Object(obj)
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut obj = Map::new();
                obj.insert("dst".into(), json!(r.dst.to_string()));
                if let Some(gw) = r.gw {
                    obj.insert("gw".into(), json!(gw.to_string()));
                }
                Value::Object(obj)
            })
            .collect();
        let mut obj = Map::new();
        obj.insert("cniVersion".into(), json!(version.as_str()));
        if !interfaces.is_empty() {
            obj.insert("interfaces".into(), Value::Array(interfaces));
        }
        obj.insert("ips".into(), Value::Array(ips));
        if !routes.is_empty() {
            obj.insert("routes".into(), Value::Array(routes));
        }
        obj.insert(
            "dns".into(),
            self.dns
                .clone()
                .unwrap_or_else(|| Value::Object(Map::new())),
        );
        Value::Object(obj)
    }

    /// Reads a `prevResult` (any supported version's shape) so that a
    /// plugin later in a chain can append to it.
    pub fn from_json(value: &Value) -> Result<Self, CniError> {
        let bad = |what: String| {
            CniError::new(
                ErrorCode::Decode,
                format!("prevResult cannot be decoded: {what}"),
            )
        };
        let obj = value
            .as_object()
            .ok_or_else(|| bad("not an object".into()))?;
        let mut result = CniResult::default();
        if let Some(list) = obj.get("interfaces").and_then(Value::as_array) {
            for i in list {
                result.interfaces.push(Interface {
                    name: str_field(i, "name")
                        .ok_or_else(|| bad("interface without name".into()))?,
                    mac: str_field(i, "mac").unwrap_or_default(),
                    sandbox: str_field(i, "sandbox"),
                    mtu: i
                        .get("mtu")
                        .and_then(Value::as_u64)
                        .and_then(|m| u32::try_from(m).ok()),
                });
            }
        }
        if let Some(list) = obj.get("ips").and_then(Value::as_array) {
            for ip in list {
                let address = str_field(ip, "address")
                    .ok_or_else(|| bad("ip without address".into()))?
                    .parse::<IpNet>()
                    .map_err(|e| bad(format!("ip address: {e}")))?;
                let gateway = match str_field(ip, "gateway") {
                    Some(g) => Some(
                        g.parse::<IpAddr>()
                            .map_err(|e| bad(format!("gateway {g:?}: {e}")))?,
                    ),
                    None => None,
                };
                let interface = ip
                    .get("interface")
                    .and_then(Value::as_u64)
                    .and_then(|i| usize::try_from(i).ok());
                result.ips.push(IpConfig {
                    address,
                    gateway,
                    interface,
                });
            }
        }
        if let Some(list) = obj.get("routes").and_then(Value::as_array) {
            for r in list {
                let dst = str_field(r, "dst")
                    .ok_or_else(|| bad("route without dst".into()))?
                    .parse::<IpNet>()
                    .map_err(|e| bad(format!("route dst: {e}")))?;
                let gw = match str_field(r, "gw") {
                    Some(g) => Some(
                        g.parse::<IpAddr>()
                            .map_err(|e| bad(format!("route gw {g:?}: {e}")))?,
                    ),
                    None => None,
                };
                result.routes.push(RouteConfig { dst, gw });
            }
        }
        result.dns = obj.get("dns").cloned();
        Ok(result)
    }

    /// Appends `other` (this plugin's own interfaces, addresses and routes)
    /// to a previous plugin's result, renumbering interface indexes.
    pub fn append(mut self, other: CniResult) -> CniResult {
        let offset = self.interfaces.len();
        self.interfaces.extend(other.interfaces);
        self.ips.extend(other.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + offset);
            ip
        }));
        self.routes.extend(other.routes);
        if other.dns.is_some() {
            self.dns = other.dns;
        }
        self
    }
}

fn str_field(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// The VERSION answer.
pub fn version_json(version: CniVersion) -> Value {
    json!({
        "cniVersion": version.as_str(),
        "supportedVersions": CniVersion::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<Environment, CniError> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Environment::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn versions_round_trip_and_unknown_is_code_1() {
        for v in CniVersion::ALL {
            assert_eq!(CniVersion::parse(v.as_str()).unwrap(), v);
        }
        let e = CniVersion::parse("0.2.0").unwrap_err();
        assert_eq!(e.code.code(), 1);
        assert!(e.msg.contains("0.2.0"));
    }

    #[test]
    fn verbs_by_version() {
        assert!(!CniVersion::V0_3_1.has(Command::Check));
        assert!(CniVersion::V0_4_0.has(Command::Check));
        assert!(!CniVersion::V1_0_0.has(Command::Gc));
        assert!(CniVersion::V1_1_0.has(Command::Status));
    }

    #[test]
    fn add_needs_id_netns_ifname() {
        let e = env(&[("CNI_COMMAND", "ADD")]).unwrap_err();
        assert_eq!(e.code.code(), 4);
        assert!(e.msg.contains("CNI_CONTAINERID"));
        assert!(e.msg.contains("CNI_NETNS"));
        assert!(e.msg.contains("CNI_IFNAME"));
        // DEL does not need the netns.
        env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap();
    }

    #[test]
    fn bad_environment_values_are_code_4() {
        let base = |k: &'static str, v: &'static str| {
            let mut pairs = vec![
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "c1"),
                ("CNI_NETNS", "/var/run/netns/x"),
                ("CNI_IFNAME", "eth0"),
            ];
            pairs.retain(|(key, _)| *key != k);
            pairs.push((k, v));
            env(&pairs)
        };
        for (k, v, needle) in [
            ("CNI_COMMAND", "FROB", "CNI_COMMAND"),
            ("CNI_CONTAINERID", "../etc", "CNI_CONTAINERID"),
            ("CNI_CONTAINERID", "a/b", "CNI_CONTAINERID"),
            ("CNI_CONTAINERID", "-x", "CNI_CONTAINERID"),
            ("CNI_IFNAME", "a-name-of-16-byt", "CNI_IFNAME"),
            ("CNI_IFNAME", "eth/0", "CNI_IFNAME"),
            ("CNI_IFNAME", "eth 0", "CNI_IFNAME"),
            ("CNI_IFNAME", "..", "CNI_IFNAME"),
            ("CNI_NETNS", "var/run/netns/x", "CNI_NETNS"),
            ("CNI_NETNS", "/var/run/netns/../x", "CNI_NETNS"),
            ("CNI_ARGS", "K8S_POD_NAME", "CNI_ARGS"),
        ] {
            let e = base(k, v).expect_err(v);
            assert_eq!(e.code.code(), 4, "{k}={v}");
            assert!(e.msg.contains(needle), "{k}={v}: {}", e.msg);
        }
        base("CNI_IFNAME", "a-name-of-15-by").unwrap();
    }

    #[test]
    fn version_status_gc_ignore_placeholders() {
        // libcni validates a conflist by calling VERSION with CNI_NETNS=dummy.
        for command in ["VERSION", "STATUS", "GC"] {
            let e = env(&[
                ("CNI_COMMAND", command),
                ("CNI_NETNS", "dummy"),
                ("CNI_CONTAINERID", "../x"),
            ])
            .unwrap();
            assert_eq!(e.netns, None);
        }
    }

    #[test]
    fn cni_args_pairs() {
        let a = CniArgs::parse("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p-0").unwrap();
        assert_eq!(a.get("K8S_POD_NAMESPACE"), Some("ns"));
        assert_eq!(a.get("K8S_POD_NAME"), Some("p-0"));
        assert_eq!(a.get("K8S_POD_UID"), None);
    }

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "fx0123456789a".into(),
                    mac: "ee:ee:ee:ee:ee:ee".into(),
                    sandbox: None,
                    mtu: Some(1450),
                },
                Interface {
                    name: "eth0".into(),
                    mac: "02:00:00:00:00:01".into(),
                    sandbox: Some("/var/run/netns/p".into()),
                    mtu: Some(1450),
                },
            ],
            ips: vec![IpConfig {
                address: "10.65.0.7/32".parse().unwrap(),
                gateway: None,
                interface: Some(1),
            }],
            routes: vec![RouteConfig {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("169.254.1.1".parse().unwrap()),
            }],
            dns: None,
        }
    }

    #[test]
    fn result_shape_follows_version() {
        let old = sample().to_json(CniVersion::V0_3_1);
        assert_eq!(old["cniVersion"], "0.3.1");
        assert_eq!(old["ips"][0]["version"], "4");
        assert!(old["interfaces"][0].get("mtu").is_none());
        let v1 = sample().to_json(CniVersion::V1_0_0);
        assert!(v1["ips"][0].get("version").is_none());
        assert!(v1["interfaces"][1].get("mtu").is_none());
        let v11 = sample().to_json(CniVersion::V1_1_0);
        assert_eq!(v11["interfaces"][1]["mtu"], 1450);
        assert_eq!(v11["ips"][0]["address"], "10.65.0.7/32");
        assert_eq!(v11["ips"][0]["interface"], 1);
        assert_eq!(v11["routes"][0]["gw"], "169.254.1.1");
    }

    #[test]
    fn prev_result_round_trips_and_appends() {
        for v in CniVersion::ALL {
            let back = CniResult::from_json(&sample().to_json(v)).unwrap();
            assert_eq!(back.ips, sample().ips);
            assert_eq!(back.routes, sample().routes);
        }
        let joined = sample().append(sample());
        assert_eq!(joined.interfaces.len(), 4);
        assert_eq!(joined.ips[1].interface, Some(3));
    }

    #[test]
    fn error_object_carries_code_and_details() {
        let e = CniError::new(ErrorCode::TryAgainLater, "agent down").with_details("ECONNREFUSED");
        let j = e.to_json(CniVersion::V1_0_0);
        assert_eq!(j["code"], 11);
        assert_eq!(j["msg"], "agent down");
        assert_eq!(j["details"], "ECONNREFUSED");
        assert_eq!(j["cniVersion"], "1.0.0");
    }
}
