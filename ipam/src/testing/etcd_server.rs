//! A real `etcd` (Debian `etcd-server`) for tests: one member on free
//! loopback ports, data in a temporary directory, tuned to start fast
//! (`--heartbeat-interval=10 --election-timeout=100`, and `--unsafe-no-fsync`
//! unless [`EtcdOptions::fsync`]; test use only). Dropping the fixture kills
//! etcd and removes its directory, whether the test passed or panicked.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::store::etcd::{EtcdConfig, EtcdStore};
use crate::store::StoreError;

/// Why the fixture could not run etcd.
#[derive(Debug, thiserror::Error)]
pub enum EtcdFixtureError {
    #[error(
        "cannot run {binary:?} ({source}); install Debian's etcd-server (scripts/test.sh does)"
    )]
    NotInstalled {
        binary: String,
        source: std::io::Error,
    },
    #[error("etcd fixture I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("etcd did not become healthy within {waited:?}; its log:\n{log}")]
    NotReady { waited: Duration, log: String },
    #[error("etcd exited early ({status}); its log:\n{log}")]
    Exited { status: String, log: String },
}

/// A running single-member etcd.
#[derive(Debug)]
pub struct EtcdServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    /// Plain-HTTP `/health` listener (`--listen-metrics-urls`), also when
    /// clients must use TLS.
    health_port: u16,
    options: EtcdOptions,
}

/// How to run the test etcd.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EtcdOptions {
    /// Serve clients over TLS.
    pub tls: Option<ServerTls>,
    /// fsync the WAL on every commit, as production etcd does (default
    /// off: `--unsafe-no-fsync`, which survives etcd being killed but not
    /// the machine losing power).
    pub fsync: bool,
    /// `--max-txn-ops` (etcd's default, 128, when `None`).
    pub max_txn_ops: Option<u32>,
}

/// TLS for the client listener (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// With `client_cert_auth`, clients must show a certificate this CA
    /// signed (`--client-cert-auth --trusted-ca-file`).
    pub ca: PathBuf,
    pub client_cert_auth: bool,
}

/// Ready-wait limit: etcd starts in ~0.1 s with the fast flags, but the
/// machine is shared with compilers.
const READY_WITHIN: Duration = Duration::from_secs(20);

impl EtcdServer {
    /// Starts etcd on two free loopback ports (retried with new ports when
    /// another process took one in between).
    pub async fn start() -> Result<Self, EtcdFixtureError> {
        Self::start_with(EtcdOptions::default()).await
    }

    /// Starts etcd with TLS or fsync as `options` say.
    pub async fn start_with(options: EtcdOptions) -> Result<Self, EtcdFixtureError> {
        let mut last = None;
        for _ in 0..3 {
            let dir = tempfile::Builder::new().prefix("felix-etcd-").tempdir()?;
            let mut server = EtcdServer {
                child: None,
                dir,
                client_port: free_port()?,
                peer_port: free_port()?,
                health_port: free_port()?,
                options: options.clone(),
            };
            match server.launch().await {
                Ok(()) => return Ok(server),
                Err(e @ EtcdFixtureError::NotInstalled { .. }) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(EtcdFixtureError::NotReady {
            waited: READY_WITHIN,
            log: String::new(),
        }))
    }

    /// `127.0.0.1:PORT` of the client listener.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// The `etcd://` datastore URL.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.endpoint())
    }

    /// A client configuration with short deadlines (tests kill etcd); no
    /// TLS settings: a TLS server's tests add their own.
    pub fn config(&self) -> EtcdConfig {
        let mut config = EtcdConfig::new(vec![self.endpoint()]);
        config.request_timeout = Duration::from_secs(2);
        config.connect_timeout = Duration::from_millis(500);
        config
    }

    /// A store connected to this server.
    pub async fn store(&self) -> Result<EtcdStore, StoreError> {
        EtcdStore::connect(self.config()).await
    }

    /// The data directory (kept across [`EtcdServer::kill`] / [`EtcdServer::restart`]).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// SIGKILLs etcd and reaps it; the data directory stays.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same data directory and ports.
    pub async fn restart(&mut self) -> Result<(), EtcdFixtureError> {
        self.kill();
        self.launch().await
    }

    async fn launch(&mut self) -> Result<(), EtcdFixtureError> {
        let scheme = if self.options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let client = format!("{scheme}://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut extra_args = Vec::new();
        if !self.options.fsync {
            extra_args.push("--unsafe-no-fsync".to_owned());
        }
        if let Some(n) = self.options.max_txn_ops {
            extra_args.push(format!("--max-txn-ops={n}"));
        }
        if let Some(tls) = &self.options.tls {
            extra_args.push(format!("--cert-file={}", tls.cert.display()));
            extra_args.push(format!("--key-file={}", tls.key.display()));
            if tls.client_cert_auth {
                extra_args.push("--client-cert-auth".to_owned());
                extra_args.push(format!("--trusted-ca-file={}", tls.ca.display()));
            }
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let child = Command::new("etcd")
            .arg("--name=felix-test")
            .arg(format!("--data-dir={}", self.data_dir().display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=felix-test={peer}"))
            .arg(format!(
                "--listen-metrics-urls=http://127.0.0.1:{}",
                self.health_port
            ))
            .args(&extra_args)
            .args([
                "--heartbeat-interval=10",
                "--election-timeout=100",
                "--log-level=warn",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|source| EtcdFixtureError::NotInstalled {
                binary: "etcd".into(),
                source,
            })?;
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(EtcdFixtureError::Exited {
                        status: status.to_string(),
                        log: self.log(),
                    });
                }
            }
            if healthy(self.health_port) {
                return Ok(());
            }
            if started.elapsed() > READY_WITHIN {
                self.kill();
                return Err(EtcdFixtureError::NotReady {
                    waited: READY_WITHIN,
                    log: self.log(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// etcd's own output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The fixture's temporary directory (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
        // TempDir removes the directory when its own drop runs next.
    }
}

fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    Ok(listener.local_addr()?.port())
}

/// etcd's `/health` answers `{"health":"true"}` once the member has a
/// leader and serves requests.
fn healthy(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut conn) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
    let request = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if conn.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    answer.contains("\"health\":\"true\"")
}
