//! The embedded default backend: one SQLite file, shared safely by several
//! processes on one machine.
//!
//! - WAL journal (readers never block the writer), `busy_timeout` so a
//!   process waits for another's write instead of failing, and every write
//!   in `BEGIN IMMEDIATE` so the write lock is taken before the revision
//!   check (no upgrade deadlock between two read-then-write transactions).
//! - One global revision counter (`meta.revision`), bumped by every write:
//!   an object's revision is the counter value of its last write, exactly
//!   like etcd's `mod_revision`.
//! - Every write also appends to a change log (`changes`); a watch polls it.
//!   The log is trimmed to the last [`SqliteOptions::log_retention`]
//!   changes; a watch that asks for a trimmed revision gets
//!   [`StoreError::Compacted`].
//! - `synchronous=NORMAL`: a committed write survives the process being
//!   killed; the last few may be lost on power loss (SQLite's WAL docs).
//! - Checkpoints (copying the WAL into the database file) run on a thread
//!   of their own, not in the commit that crosses SQLite's automatic
//!   checkpoint size: with `synchronous=NORMAL` a checkpoint syncs the WAL
//!   and the database file (6 ms each on this project's test machine), and
//!   the write that ran it, with every writer queued behind it, waited for
//!   that — every few dozen allocations (issue 4's p99). A `PASSIVE`
//!   checkpoint never waits for readers or writers. A process that closes
//!   the database last checkpoints it on close (SQLite does).
//!
//! rusqlite is blocking: reads run on tokio's blocking pool. Writes of one
//! process go through one connection owned by a thread of its own, which
//! runs them one at a time in the order they were sent (FIFO), so the
//! sleeping busy handler only comes into play between processes. (They
//! used to run on the blocking pool behind a mutex: the mutex is not fair
//! and each write woke a pool thread; with 8 allocators a write waited up
//! to 4–5 ms for it while each transaction holds it for about 0.1 ms,
//! issue 4's p99 — docs/benchmarks.md.)

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use tokio::sync::mpsc;

use super::{
    Datastore, Kind, Listing, Object, Revision, StoreError, WatchEvent, WatchStream, Write,
};

/// Tuning for [`SqliteStore`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// How long a write waits for another process holding the lock.
    pub busy_timeout: Duration,
    /// Changes kept in the log for watches.
    pub log_retention: u64,
    /// How often a watch polls the change log.
    pub watch_poll: Duration,
    /// Read connections (reads run in parallel with the writer).
    pub readers: usize,
    /// How often the checkpoint thread copies the WAL into the database
    /// file. Each checkpoint costs the next write one sync (the WAL is
    /// reused from its start), so not too often.
    pub checkpoint_interval: Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            busy_timeout: Duration::from_secs(10),
            log_retention: 100_000,
            watch_poll: Duration::from_millis(50),
            readers: 4,
            checkpoint_interval: Duration::from_secs(1),
        }
    }
}

/// How often (in revisions) a write trims the change log.
const TRIM_EVERY: u64 = 1024;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    value BLOB NOT NULL,
    revision INTEGER NOT NULL,
    PRIMARY KEY (kind, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS changes (
    revision INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    value BLOB
);
CREATE INDEX IF NOT EXISTS changes_kind ON changes (kind, revision);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (key, value) VALUES ('revision', 0), ('compacted', 0);
";

/// A write for the writer thread: runs on its connection and answers
/// through a channel of its own.
type WriteJob = Box<dyn FnOnce(&mut Connection) + Send>;

/// The thread that owns the write connection ([`SqliteStore::write`]).
struct Writer {
    jobs: Option<std::sync::mpsc::Sender<WriteJob>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn spawn(conn: Connection) -> Result<Writer, StoreError> {
        let (jobs, rx) = std::sync::mpsc::channel::<WriteJob>();
        let thread = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                let mut conn = conn;
                for job in rx {
                    job(&mut conn);
                }
            })
            .map_err(|e| unavailable(format!("starting the writer thread: {e}")))?;
        Ok(Writer {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }
}

impl Drop for Writer {
    /// Ends the thread after the writes already sent and waits for it, so
    /// the connection is closed (and the WAL checkpointed by SQLite when it
    /// is the last) when the store is dropped, as before.
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Inner {
    path: PathBuf,
    writer: Writer,
    readers: Mutex<Vec<Connection>>,
    options: SqliteOptions,
    /// Dropped with the store: the checkpoint thread sees the channel
    /// close and ends.
    _checkpointer: std::sync::mpsc::Sender<()>,
}

/// A [`Datastore`] in one SQLite file.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish()
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn open_connection(path: &Path, options: &SqliteOptions) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)
        .map_err(|e| unavailable(format!("opening {}: {e}", path.display())))?;
    conn.busy_timeout(options.busy_timeout)
        .map_err(unavailable)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(unavailable)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(unavailable)?;
    Ok(conn)
}

fn kind_key(kind: Kind) -> &'static str {
    kind.plural()
}

fn parse_revision(rev: &Revision) -> Result<i64, StoreError> {
    rev.0
        .parse::<i64>()
        .map_err(|_| StoreError::Invalid(format!("{rev:?} is not a sqlite revision")))
}

fn revision(n: i64) -> Revision {
    Revision(n.to_string())
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`.
    pub async fn open(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        Self::open_with(path, SqliteOptions::default()).await
    }

    /// Opens the store with explicit options.
    pub async fn open_with(
        path: impl Into<PathBuf>,
        options: SqliteOptions,
    ) -> Result<Self, StoreError> {
        let path = path.into();
        tokio::task::spawn_blocking(move || Self::open_blocking(path, options))
            .await
            .map_err(unavailable)?
    }

    fn open_blocking(path: PathBuf, options: SqliteOptions) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() && !dir.exists() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| unavailable(format!("creating {}: {e}", dir.display())))?;
            }
        }
        let writer = open_connection(&path, &options)?;
        writer.execute_batch(SCHEMA).map_err(unavailable)?;
        // Checkpoints are the checkpoint thread's (module docs).
        writer
            .pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(unavailable)?;
        let checkpointer = spawn_checkpointer(&path, &options)?;
        let readers = (0..options.readers.max(1))
            .map(|_| open_connection(&path, &options))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path,
                writer: Writer::spawn(writer)?,
                readers: Mutex::new(readers),
                options,
                _checkpointer: checkpointer,
            }),
        })
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Trims the change log to its last `keep` entries (normally done by
    /// writes on their own); watches from before the cut get `Compacted`.
    pub async fn compact(&self, keep: u64) -> Result<(), StoreError> {
        self.write(move |tx| {
            let current: i64 = meta(tx, "revision")?;
            trim(tx, current, keep)?;
            Ok(())
        })
        .await
    }

    /// Runs `f` on a read connection on the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let taken = inner
                .readers
                .lock()
                .map_err(|_| unavailable("reader pool poisoned"))?
                .pop();
            let conn = match taken {
                Some(conn) => conn,
                None => open_connection(&inner.path, &inner.options)?,
            };
            let result = f(&conn);
            if let Ok(mut pool) = inner.readers.lock() {
                if pool.len() < inner.options.readers.max(1) {
                    pool.push(conn);
                }
            }
            result
        })
        .await
        .map_err(unavailable)?
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction on the writer thread
    /// (after the writes sent before it); commits when it returns `Ok`.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let stopped = || unavailable("the sqlite writer thread stopped");
        let (answer, answered) = tokio::sync::oneshot::channel();
        let job: WriteJob = Box::new(move |conn| {
            let result = (|| {
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(unavailable)?;
                let value = f(&tx)?;
                tx.commit().map_err(unavailable)?;
                Ok(value)
            })();
            let _ = answer.send(result);
        });
        self.inner
            .writer
            .jobs
            .as_ref()
            .ok_or_else(stopped)?
            .send(job)
            .map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

/// Starts the thread that checkpoints the WAL every
/// `options.checkpoint_interval` until the returned sender is dropped.
fn spawn_checkpointer(
    path: &Path,
    options: &SqliteOptions,
) -> Result<std::sync::mpsc::Sender<()>, StoreError> {
    let conn = open_connection(path, options)?;
    let interval = options.checkpoint_interval;
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || loop {
            match rx.recv_timeout(interval) {
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    let r = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "sqlite checkpoint failed; retried later");
                    }
                }
                // The store is gone (or, never sent, a message): stop.
                _ => return,
            }
        })
        .map_err(|e| unavailable(format!("starting the checkpoint thread: {e}")))?;
    Ok(tx)
}

fn meta(conn: &Connection, key: &str) -> Result<i64, StoreError> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| {
        r.get::<_, i64>(0)
    })
    .map_err(unavailable)
}

/// Bumps the global revision and records the change; returns the new
/// revision.
fn record_change(
    tx: &rusqlite::Transaction<'_>,
    kind: Kind,
    name: &str,
    value: Option<&[u8]>,
    retention: u64,
) -> Result<i64, StoreError> {
    let next = meta(tx, "revision")? + 1;
    tx.execute("UPDATE meta SET value = ?1 WHERE key = 'revision'", [next])
        .map_err(unavailable)?;
    tx.execute(
        "INSERT INTO changes (revision, kind, name, value) VALUES (?1, ?2, ?3, ?4)",
        params![next, kind_key(kind), name, value],
    )
    .map_err(unavailable)?;
    if u64::try_from(next).is_ok_and(|n| n.is_multiple_of(TRIM_EVERY)) {
        trim(tx, next, retention)?;
    }
    Ok(next)
}

fn trim(tx: &Connection, current: i64, keep: u64) -> Result<(), StoreError> {
    let cut = current - i64::try_from(keep).unwrap_or(i64::MAX);
    if cut <= 0 {
        return Ok(());
    }
    let compacted = meta(tx, "compacted")?;
    if cut <= compacted {
        return Ok(());
    }
    tx.execute("DELETE FROM changes WHERE revision <= ?1", [cut])
        .map_err(unavailable)?;
    tx.execute("UPDATE meta SET value = ?1 WHERE key = 'compacted'", [cut])
        .map_err(unavailable)?;
    Ok(())
}

/// Applies write `w` inside transaction `tx` (call on the writer): checks
/// its condition against the stored revision, records the change and
/// writes the object; the object's new revision.
fn apply_write(
    tx: &rusqlite::Transaction<'_>,
    w: Write,
    retention: u64,
) -> Result<Revision, StoreError> {
    let (kind, name, value, expected) = match w {
        Write::Create { kind, name, value } => (kind, name, Some(value), None),
        Write::Update {
            kind,
            name,
            value,
            expected,
        } => (kind, name, Some(value), Some(expected)),
        Write::Delete {
            kind,
            name,
            expected,
        } => (kind, name, None, Some(expected)),
    };
    let have = current_revision(tx, kind, &name)?;
    match (&expected, have) {
        (None, Some(_)) => return Err(StoreError::AlreadyExists { kind, name }),
        (Some(_), None) => return Err(StoreError::NotFound { kind, name }),
        (Some(want), Some(have)) if parse_revision(want)? != have => {
            return Err(StoreError::Conflict {
                kind,
                name,
                expected: want.clone(),
            })
        }
        _ => {}
    }
    let rev = record_change(tx, kind, &name, value.as_deref(), retention)?;
    match value {
        Some(value) => tx.execute(
            "INSERT INTO objects (kind, name, value, revision) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (kind, name) DO UPDATE SET value = ?3, revision = ?4",
            params![kind_key(kind), name, value, rev],
        ),
        None => tx.execute(
            "DELETE FROM objects WHERE kind = ?1 AND name = ?2",
            params![kind_key(kind), name],
        ),
    }
    .map_err(unavailable)?;
    Ok(revision(rev))
}

fn current_revision(conn: &Connection, kind: Kind, name: &str) -> Result<Option<i64>, StoreError> {
    conn.query_row(
        "SELECT revision FROM objects WHERE kind = ?1 AND name = ?2",
        params![kind_key(kind), name],
        |r| r.get::<_, i64>(0),
    )
    .optional()
    .map_err(unavailable)
}

#[async_trait::async_trait]
impl Datastore for SqliteStore {
    async fn get(&self, kind: Kind, name: &str) -> Result<Object, StoreError> {
        let name = name.to_owned();
        self.read(move |conn| {
            let row = conn
                .query_row(
                    "SELECT value, revision FROM objects WHERE kind = ?1 AND name = ?2",
                    params![kind_key(kind), name],
                    |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)),
                )
                .optional()
                .map_err(unavailable)?;
            match row {
                Some((value, rev)) => Ok(Object {
                    kind,
                    name,
                    value,
                    revision: revision(rev),
                }),
                None => Err(StoreError::NotFound { kind, name }),
            }
        })
        .await
    }

    async fn list(&self, kind: Kind, name_prefix: &str) -> Result<Listing, StoreError> {
        let prefix = name_prefix.to_owned();
        self.read(move |conn| {
            // One read transaction: the objects and the revision are one
            // snapshot (WAL), so a watch from it misses nothing.
            conn.execute_batch("BEGIN").map_err(unavailable)?;
            let result = (|| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT name, value, revision FROM objects
                         WHERE kind = ?1 AND substr(name, 1, ?3) = ?2 ORDER BY name",
                    )
                    .map_err(unavailable)?;
                let prefix_len = i64::try_from(prefix.chars().count()).unwrap_or(i64::MAX);
                let rows = stmt
                    .query_map(params![kind_key(kind), prefix, prefix_len], |r| {
                        Ok(Object {
                            kind,
                            name: r.get(0)?,
                            value: r.get(1)?,
                            revision: revision(r.get(2)?),
                        })
                    })
                    .map_err(unavailable)?;
                let objects = rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)?;
                let rev = meta(conn, "revision")?;
                Ok(Listing {
                    objects,
                    revision: revision(rev),
                })
            })();
            let _ = conn.execute_batch("COMMIT");
            result
        })
        .await
    }

    async fn list_names(&self, kind: Kind, name_prefix: &str) -> Result<Vec<String>, StoreError> {
        let prefix = name_prefix.to_owned();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT name FROM objects
                     WHERE kind = ?1 AND substr(name, 1, ?3) = ?2 ORDER BY name",
                )
                .map_err(unavailable)?;
            let prefix_len = i64::try_from(prefix.chars().count()).unwrap_or(i64::MAX);
            let rows = stmt
                .query_map(params![kind_key(kind), prefix, prefix_len], |r| r.get(0))
                .map_err(unavailable)?;
            rows.collect::<Result<Vec<String>, _>>()
                .map_err(unavailable)
        })
        .await
    }

    async fn create(&self, kind: Kind, name: &str, value: Vec<u8>) -> Result<Revision, StoreError> {
        super::checks::name(kind, name)?;
        let name = name.to_owned();
        let retention = self.inner.options.log_retention;
        self.write(move |tx| apply_write(tx, Write::Create { kind, name, value }, retention))
            .await
    }

    async fn update(
        &self,
        kind: Kind,
        name: &str,
        value: Vec<u8>,
        expected: &Revision,
    ) -> Result<Revision, StoreError> {
        parse_revision(expected)?;
        let write = Write::Update {
            kind,
            name: name.to_owned(),
            value,
            expected: expected.clone(),
        };
        let retention = self.inner.options.log_retention;
        self.write(move |tx| apply_write(tx, write, retention))
            .await
    }

    async fn delete(&self, kind: Kind, name: &str, expected: &Revision) -> Result<(), StoreError> {
        parse_revision(expected)?;
        let write = Write::Delete {
            kind,
            name: name.to_owned(),
            expected: expected.clone(),
        };
        let retention = self.inner.options.log_retention;
        self.write(move |tx| apply_write(tx, write, retention).map(drop))
            .await
    }

    fn transactional(&self) -> bool {
        true
    }

    async fn write_all(&self, writes: Vec<Write>) -> Result<Vec<Revision>, StoreError> {
        for w in &writes {
            super::checks::name(w.kind(), w.name())?;
            if let Some(expected) = w.expected() {
                parse_revision(expected)?;
            }
        }
        let retention = self.inner.options.log_retention;
        // One transaction: an error returns before the commit, and the
        // dropped transaction rolls everything back.
        self.write(move |tx| {
            let mut revisions = Vec::with_capacity(writes.len());
            for w in writes {
                revisions.push(apply_write(tx, w, retention)?);
            }
            Ok(revisions)
        })
        .await
    }

    async fn watch(&self, kind: Kind, after: Option<&Revision>) -> Result<WatchStream, StoreError> {
        let start = match after {
            Some(rev) => parse_revision(rev)?,
            None => self.read(|conn| meta(conn, "revision")).await?,
        };
        let (tx, rx) = mpsc::channel(256);
        let store = self.clone();
        let poll = self.inner.options.watch_poll;
        tokio::spawn(async move {
            let mut last = start;
            loop {
                let batch = store
                    .read(move |conn| {
                        let compacted = meta(conn, "compacted")?;
                        if last < compacted {
                            return Err(StoreError::Compacted(revision(last)));
                        }
                        let mut stmt = conn
                            .prepare_cached(
                                "SELECT revision, name, value FROM changes
                                 WHERE kind = ?1 AND revision > ?2 ORDER BY revision LIMIT 512",
                            )
                            .map_err(unavailable)?;
                        let rows = stmt
                            .query_map(params![kind_key(kind), last], |r| {
                                Ok((
                                    r.get::<_, i64>(0)?,
                                    r.get::<_, String>(1)?,
                                    r.get::<_, Option<Vec<u8>>>(2)?,
                                ))
                            })
                            .map_err(unavailable)?;
                        rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
                    })
                    .await;
                match batch {
                    Err(e) => {
                        let end = matches!(e, StoreError::Compacted(_));
                        if tx.send(Err(e)).await.is_err() || end {
                            return;
                        }
                    }
                    Ok(rows) => {
                        let full = rows.len() == 512;
                        for (rev, name, value) in rows {
                            last = rev;
                            let event = match value {
                                Some(value) => WatchEvent::Put(Object {
                                    kind,
                                    name,
                                    value,
                                    revision: revision(rev),
                                }),
                                None => WatchEvent::Deleted {
                                    kind,
                                    name,
                                    revision: revision(rev),
                                },
                            };
                            if tx.send(Ok(event)).await.is_err() {
                                return;
                            }
                        }
                        if full {
                            continue;
                        }
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(poll) => {}
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Box::pin(ReceiverStream(rx)))
    }
}

/// An mpsc receiver as a `Stream`.
struct ReceiverStream<T>(mpsc::Receiver<T>);

impl<T> futures_core::Stream for ReceiverStream<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}
