//! The pod API: what the plugin asks the node agent over a unix socket.
//!
//! One request per connection: the plugin writes one JSON object and a
//! newline, the agent answers with one JSON object and closes. Small on
//! purpose: the plugin needs no async runtime, and the agent keeps the only
//! datastore connection (a pod start opens none).

use std::io::{self, BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The largest message either side accepts (a GC request lists every valid
/// attachment of a node; 4 MiB is far beyond any node's pod count).
pub const MAX_MESSAGE_BYTES: u64 = 4 << 20;

/// One pod attachment: a network, a container and its interface. The IPAM
/// handle is derived from it, so a retried ADD finds its own addresses.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
}

/// The prefix of every handle felix-cni makes.
pub const HANDLE_PREFIX: &str = "felix-cni:";

impl Attachment {
    /// The IPAM handle id: `felix-cni:NETWORK:CONTAINER:IFNAME`. `:` occurs
    /// in none of the three (network names and container ids are
    /// `[A-Za-z0-9_.-]`, Linux forbids it in interface names), so the id is
    /// unambiguous and a network's handles share the prefix
    /// [`Attachment::network_prefix`].
    pub fn handle_id(&self) -> String {
        format!(
            "{HANDLE_PREFIX}{}:{}:{}",
            self.network, self.container_id, self.ifname
        )
    }

    /// The prefix of the handle ids of one network's attachments.
    pub fn network_prefix(network: &str) -> String {
        format!("{HANDLE_PREFIX}{network}:")
    }

    /// The attachment a handle id names, if felix-cni made it.
    pub fn from_handle_id(id: &str) -> Option<Attachment> {
        let rest = id.strip_prefix(HANDLE_PREFIX)?;
        let mut parts = rest.split(':');
        let (network, container_id, ifname) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || network.is_empty() || container_id.is_empty() {
            return None;
        }
        Some(Attachment {
            network: network.to_owned(),
            container_id: container_id.to_owned(),
            ifname: ifname.to_owned(),
        })
    }
}

/// A request from the plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Addresses for an attachment. Idempotent: an attachment that already
    /// holds addresses gets the same ones back.
    Assign {
        attachment: Attachment,
        /// From `K8S_POD_NAMESPACE` / `K8S_POD_NAME` in `CNI_ARGS`.
        pod_namespace: Option<String>,
        pod_name: Option<String>,
        num_v4: u32,
        num_v6: u32,
    },
    /// The addresses an attachment holds (CHECK).
    Lookup { attachment: Attachment },
    /// Releases an attachment's addresses; releasing nothing is not an error.
    Release { attachment: Attachment },
    /// Releases the addresses of this network's attachments not in `valid`.
    Gc {
        network: String,
        valid: Vec<Attachment>,
    },
    /// Whether the agent can serve ADD requests.
    Status,
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    /// Assign / Lookup: the attachment's addresses, each with the prefix
    /// length of the block it came from.
    Addresses(Vec<IpNet>),
    /// Release: how many addresses were freed.
    Released(u32),
    /// GC: the attachments whose addresses were freed.
    Collected(Vec<Attachment>),
    /// Status.
    Ready {
        node: String,
    },
    Error(ApiError),
}

/// A typed failure from the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind:?}: {message}")]
#[serde(deny_unknown_fields)]
pub struct ApiError {
    pub kind: ApiErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiErrorKind {
    /// No pool has a free address for this node.
    Exhausted,
    /// The attachment holds no addresses (Lookup).
    NotFound,
    /// The request is malformed.
    Invalid,
    /// The datastore cannot be reached now: try again later.
    Unavailable,
    /// Anything else on the agent's side.
    Internal,
}

/// What can go wrong talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the felix agent at {socket}: {source}")]
    Unreachable { socket: String, source: io::Error },
    #[error("the felix agent at {socket} did not answer: {source}")]
    NoAnswer { socket: String, source: io::Error },
    #[error("the felix agent's answer cannot be decoded: {0}")]
    Decode(String),
    #[error("the felix agent refused: {0}")]
    Refused(ApiError),
}

/// Sends one request and reads the answer, within `timeout` for each of
/// connect, write and read.
pub fn call(socket: &Path, request: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let name = socket.display().to_string();
    let stream = UnixStream::connect(socket).map_err(|source| ClientError::Unreachable {
        socket: name.clone(),
        source,
    })?;
    let no_answer = |source| ClientError::NoAnswer {
        socket: name.clone(),
        source,
    };
    stream.set_read_timeout(Some(timeout)).map_err(no_answer)?;
    stream.set_write_timeout(Some(timeout)).map_err(no_answer)?;
    let mut line = serde_json::to_vec(request).map_err(|e| ClientError::Decode(e.to_string()))?;
    line.push(b'\n');
    (&stream).write_all(&line).map_err(no_answer)?;
    let mut reader = BufReader::new(io::Read::take(&stream, MAX_MESSAGE_BYTES));
    let mut answer = Vec::new();
    reader.read_until(b'\n', &mut answer).map_err(no_answer)?;
    if answer.is_empty() {
        return Err(no_answer(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed without an answer",
        )));
    }
    let response: Response =
        serde_json::from_slice(&answer).map_err(|e| ClientError::Decode(e.to_string()))?;
    match response {
        Response::Error(e) => Err(ClientError::Refused(e)),
        other => Ok(other),
    }
}

/// Only the addresses of one family.
pub fn of_family(addresses: &[IpNet], v4: bool) -> impl Iterator<Item = IpAddr> + '_ {
    addresses
        .iter()
        .map(IpNet::addr)
        .filter(move |a| a.is_ipv4() == v4)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn attachment() -> Attachment {
        Attachment {
            network: "k8s-pods".into(),
            container_id: "0123abc_x.y-z".into(),
            ifname: "eth0".into(),
        }
    }

    #[test]
    fn handle_id_round_trips_and_is_prefixed_by_network() {
        let a = attachment();
        let id = a.handle_id();
        assert_eq!(id, "felix-cni:k8s-pods:0123abc_x.y-z:eth0");
        assert!(id.starts_with(&Attachment::network_prefix("k8s-pods")));
        assert!(!id.starts_with(&Attachment::network_prefix("k8s")));
        assert_eq!(Attachment::from_handle_id(&id), Some(a));
        assert_eq!(Attachment::from_handle_id("k8s-pod-network.abc"), None);
        assert_eq!(Attachment::from_handle_id("felix-cni:a:b:c:d"), None);
    }

    #[test]
    fn wire_shape_is_small_and_strict() {
        let r = Request::Assign {
            attachment: attachment(),
            pod_namespace: Some("default".into()),
            pod_name: Some("web-0".into()),
            num_v4: 1,
            num_v6: 0,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.starts_with(r#"{"op":"assign","attachment":{"network":"k8s-pods""#));
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r);
        assert!(serde_json::from_str::<Request>(
            r#"{"op":"release","attachment":{"network":"n","container_id":"c","ifname":"e"},"extra":1}"#
        )
        .is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"frob"}"#).is_err());
        let answer = Response::Addresses(vec!["10.65.0.7/26".parse().unwrap()]);
        let text = serde_json::to_string(&answer).unwrap();
        assert_eq!(text, r#"{"addresses":["10.65.0.7/26"]}"#);
        let err = Response::Error(ApiError {
            kind: ApiErrorKind::Exhausted,
            message: "no free address".into(),
        });
        assert_eq!(
            serde_json::to_string(&err).unwrap(),
            r#"{"error":{"kind":"exhausted","message":"no free address"}}"#
        );
    }

    #[test]
    fn unreachable_socket_is_a_typed_error() {
        let e = call(
            Path::new("/nonexistent/felix-test.sock"),
            &Request::Status,
            Duration::from_millis(100),
        )
        .unwrap_err();
        assert!(matches!(e, ClientError::Unreachable { .. }), "{e}");
    }
}
