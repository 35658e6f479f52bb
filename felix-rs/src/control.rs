//! The control socket of `felix bgp run`: a unix stream socket, readable
//! and writable by its owner only (root, in production), on which
//! `felix bgp status` and `felix bgp routes` ask the daemon what it knows.
//!
//! Protocol: the client writes one JSON request per line and reads one
//! JSON response line per request:
//!
//! ```text
//! {"cmd":"status"}                         -> SpeakerStatus as JSON
//! {"cmd":"routes"}                         -> [RouteView, ...]
//! {"cmd":"routes","prefix":"10.0.0.0/8"}   -> [RouteView, ...] (that prefix and the ones inside it)
//! {"cmd":"refresh","peer":"10.0.0.2"}      -> {"refreshed":"10.0.0.2"} (ROUTE-REFRESH sent)
//! anything wrong                           -> {"error":"..."}
//! ```

use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fs::{self, DirBuilder, Permissions};
use std::future::Future;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

/// Longest request line the server reads.
pub const MAX_REQUEST: usize = 64 * 1024;

/// How long the client waits for an answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// A request on the control socket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    /// The speaker and its peers.
    Status,
    /// The Loc-RIB, or only `prefix` and the prefixes inside it.
    Routes {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prefix: Option<IpNet>,
    },
    /// Ask the neighbour `peer` for a ROUTE-REFRESH (RFC 2918).
    Refresh { peer: std::net::IpAddr },
}

/// The body of an error response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: String,
}

/// What answers requests: the daemon's speaker, or a stand-in in tests.
pub trait Handler: Send + Sync + 'static {
    /// The JSON answer to `request`, or an error message for the client.
    fn handle(
        &self,
        request: Request,
    ) -> impl Future<Output = Result<serde_json::Value, String>> + Send;
}

/// Why the control socket could not be set up.
#[derive(Debug, Error)]
pub enum ControlError {
    #[error("another felix bgp daemon is answering on {0}")]
    AlreadyRunning(PathBuf),
    #[error("{0} exists and is not a socket; not removing it")]
    NotASocket(PathBuf),
    #[error("control socket {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ControlError + '_ {
    move |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How long [`ControlSocket::bind`] waits for a daemon already on the path
/// to answer before it counts as running.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether a daemon answers a status request on `path`. Accepting the
/// connection is not enough: a dead daemon's listening socket can outlive
/// it for a moment in a child process forked before its exec (the socket
/// is close-on-exec) and accept into its backlog without ever answering; it
/// then closes the connection unanswered. A daemon too busy to answer
/// within [`PROBE_TIMEOUT`] counts as running (its socket is not taken).
fn daemon_answers(path: &Path) -> bool {
    let Ok(stream) = UnixStream::connect(path) else {
        return false;
    };
    let asked = stream
        .set_read_timeout(Some(PROBE_TIMEOUT))
        .and_then(|()| (&stream).write_all(b"{\"cmd\":\"status\"}\n"));
    if asked.is_err() {
        return false;
    }
    let mut answer = String::new();
    match BufReader::new(&stream).read_line(&mut answer) {
        Ok(n) => n > 0,
        Err(e) => matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ),
    }
}

/// A bound control socket; the socket file is removed when it is dropped.
#[derive(Debug)]
pub struct ControlSocket {
    listener: tokio::net::UnixListener,
    path: PathBuf,
}

impl ControlSocket {
    /// Binds `path` (mode 0600), creating its directory (mode 0700) if
    /// missing. A socket file left by a daemon that is gone is replaced; one
    /// that a daemon still answers on is an error. Must be called within a
    /// tokio runtime.
    pub fn bind(path: &Path) -> Result<Self, ControlError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(io_err(dir))?;
            }
        }
        match fs::symlink_metadata(path) {
            Ok(meta) => {
                if !meta.file_type().is_socket() {
                    return Err(ControlError::NotASocket(path.to_path_buf()));
                }
                if daemon_answers(path) {
                    return Err(ControlError::AlreadyRunning(path.to_path_buf()));
                }
                fs::remove_file(path).map_err(io_err(path))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(path)(e)),
        }
        // Bind under a temporary name, restrict it, then move it into place,
        // so that the socket is never reachable with looser permissions.
        let mut tmp_name = path.as_os_str().to_owned();
        tmp_name.push(format!(".{}.tmp", std::process::id()));
        let tmp = PathBuf::from(tmp_name);
        let _ = fs::remove_file(&tmp);
        let listener = std::os::unix::net::UnixListener::bind(&tmp).map_err(io_err(path))?;
        let placed = fs::set_permissions(&tmp, Permissions::from_mode(0o600))
            .and_then(|()| fs::rename(&tmp, path));
        if let Err(e) = placed {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(path)(e));
        }
        let listener = listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixListener::from_std(listener));
        match listener {
            Ok(listener) => Ok(ControlSocket {
                listener,
                path: path.to_path_buf(),
            }),
            Err(e) => {
                let _ = fs::remove_file(path);
                Err(io_err(path)(e))
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Answers connections until the future is dropped; each connection is
    /// served on its own task.
    pub async fn serve<H: Handler>(&self, handler: Arc<H>) {
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    let handler = Arc::clone(&handler);
                    tokio::spawn(async move {
                        if let Err(e) = serve_connection(stream, handler.as_ref()).await {
                            tracing::debug!("control connection: {e}");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("control socket accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

async fn serve_connection<H: Handler>(
    stream: tokio::net::UnixStream,
    handler: &H,
) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = tokio::io::BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_REQUEST as u64 + 1)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        let too_long = line.len() > MAX_REQUEST;
        let response = if too_long {
            Err(format!("request longer than {MAX_REQUEST} bytes"))
        } else {
            match serde_json::from_slice::<Request>(&line) {
                Ok(request) => handler.handle(request).await,
                Err(e) => Err(format!("bad request: {e}")),
            }
        };
        let mut text = match response {
            Ok(value) => serde_json::to_vec(&value),
            Err(error) => serde_json::to_vec(&ErrorResponse { error }),
        }
        .map_err(io::Error::other)?;
        text.push(b'\n');
        write.write_all(&text).await?;
        write.flush().await?;
        if too_long {
            return Ok(());
        }
    }
}

/// Why a client request failed.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("no felix bgp daemon at {0} (is `felix bgp run` running? --control-socket names another socket)")]
    NoDaemon(PathBuf),
    #[error("permission denied on {0}: the control socket is for root only")]
    PermissionDenied(PathBuf),
    #[error("control socket {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("unexpected answer from the daemon: {0}")]
    BadResponse(String),
    #[error("the daemon says: {0}")]
    Daemon(String),
}

/// Sends one request to the daemon at `path` and returns its answer.
pub fn request(path: &Path, request: &Request) -> Result<serde_json::Value, ClientError> {
    let io_err = |source: io::Error| ClientError::Io {
        path: path.to_path_buf(),
        source,
    };
    let stream = UnixStream::connect(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
            ClientError::NoDaemon(path.to_path_buf())
        }
        io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(path.to_path_buf()),
        _ => io_err(e),
    })?;
    stream
        .set_read_timeout(Some(CLIENT_TIMEOUT))
        .map_err(io_err)?;
    let mut line =
        serde_json::to_vec(request).map_err(|e| ClientError::BadResponse(e.to_string()))?;
    line.push(b'\n');
    (&stream).write_all(&line).map_err(io_err)?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(io_err)?;
    if answer.is_empty() {
        return Err(ClientError::BadResponse(
            "the connection closed without an answer".into(),
        ));
    }
    let value: serde_json::Value =
        serde_json::from_str(&answer).map_err(|e| ClientError::BadResponse(e.to_string()))?;
    if let Some(error) = value
        .as_object()
        .filter(|o| o.len() == 1)
        .and_then(|o| o.get("error"))
        .and_then(|e| e.as_str())
    {
        return Err(ClientError::Daemon(error.to_string()));
    }
    Ok(value)
}

/// [`request`], with the answer decoded as `T`.
pub fn request_as<T: DeserializeOwned>(path: &Path, req: &Request) -> Result<T, ClientError> {
    let value = request(path, req)?;
    serde_json::from_value(value).map_err(|e| ClientError::BadResponse(e.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Echo;

    impl Handler for Echo {
        async fn handle(&self, request: Request) -> Result<serde_json::Value, String> {
            match request {
                Request::Status => Ok(json!({"ok": true})),
                Request::Routes { prefix: Some(p) } => Ok(json!([p.to_string()])),
                Request::Routes { prefix: None } => Err("no routes today".into()),
                Request::Refresh { peer } => Ok(json!({ "refreshed": peer })),
            }
        }
    }

    #[test]
    fn request_json_forms() {
        assert_eq!(
            serde_json::to_string(&Request::Status).unwrap(),
            r#"{"cmd":"status"}"#
        );
        assert_eq!(
            serde_json::to_string(&Request::Routes {
                prefix: Some("10.0.0.0/8".parse().unwrap())
            })
            .unwrap(),
            r#"{"cmd":"routes","prefix":"10.0.0.0/8"}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"routes"}"#).unwrap(),
            Request::Routes { prefix: None }
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"reboot"}"#).is_err());
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"refresh","peer":"10.0.0.2"}"#).unwrap(),
            Request::Refresh {
                peer: "10.0.0.2".parse().unwrap()
            }
        );
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn serve_answers_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/bgp.sock");
        let rt = runtime();
        let socket = rt.block_on(async { ControlSocket::bind(&path) }).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);

        let client_path = path.clone();
        let client = std::thread::spawn(move || {
            let status = request(&client_path, &Request::Status).unwrap();
            let routes = request(
                &client_path,
                &Request::Routes {
                    prefix: Some("10.1.0.0/16".parse().unwrap()),
                },
            )
            .unwrap();
            let err = request(&client_path, &Request::Routes { prefix: None }).unwrap_err();
            // A second daemon must refuse to take the socket over.
            let again = ControlSocket::bind(&client_path);
            (status, routes, err.to_string(), again.map(|_| ()))
        });
        let (status, routes, err, again) = rt.block_on(async {
            tokio::select! {
                () = socket.serve(Arc::new(Echo)) => unreachable!(),
                r = tokio::task::spawn_blocking(move || client.join().unwrap()) => r.unwrap(),
            }
        });
        assert_eq!(status, json!({"ok": true}));
        assert_eq!(routes, json!(["10.1.0.0/16"]));
        assert_eq!(err, "the daemon says: no routes today");
        assert!(matches!(again, Err(ControlError::AlreadyRunning(_))));

        drop(socket);
        assert!(!path.exists());
        match request(&path, &Request::Status) {
            Err(ClientError::NoDaemon(p)) => assert_eq!(p, path),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn stale_socket_is_replaced_other_files_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bgp.sock");
        // A socket file nobody listens on any more.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let rt = runtime();
        let socket = rt.block_on(async { ControlSocket::bind(&path) }).unwrap();
        drop(socket);

        fs::write(&path, b"not a socket").unwrap();
        let err = rt
            .block_on(async { ControlSocket::bind(&path) })
            .unwrap_err();
        assert!(matches!(err, ControlError::NotASocket(_)), "{err}");
    }

    #[test]
    fn listener_that_never_answers_then_closes_is_stale() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bgp.sock");
        // Listening, but nobody accepts: what a dead daemon's socket looks
        // like while a forked child still holds it. It goes away shortly.
        let lingering = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let closer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(lingering);
        });
        let rt = runtime();
        let socket = rt.block_on(async { ControlSocket::bind(&path) });
        closer.join().unwrap();
        let socket = socket.expect("a socket that never answered was taken for a daemon");
        // And the new socket is the one on the path now.
        let client_path = path.clone();
        let client = std::thread::spawn(move || request(&client_path, &Request::Status));
        let answer = rt.block_on(async {
            tokio::select! {
                () = socket.serve(Arc::new(Echo)) => unreachable!(),
                r = tokio::task::spawn_blocking(move || client.join().unwrap()) => r.unwrap(),
            }
        });
        assert_eq!(answer.unwrap(), json!({"ok": true}));
    }

    #[test]
    fn bad_request_gets_error_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bgp.sock");
        let rt = runtime();
        let socket = rt.block_on(async { ControlSocket::bind(&path) }).unwrap();
        let client_path = path.clone();
        let client = std::thread::spawn(move || {
            let stream = UnixStream::connect(&client_path).unwrap();
            (&stream).write_all(b"{\"cmd\":\"reboot\"}\n").unwrap();
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).unwrap();
            line
        });
        let line = rt.block_on(async {
            tokio::select! {
                () = socket.serve(Arc::new(Echo)) => unreachable!(),
                r = tokio::task::spawn_blocking(move || client.join().unwrap()) => r.unwrap(),
            }
        });
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert!(value["error"].as_str().unwrap().starts_with("bad request"));
    }
}
