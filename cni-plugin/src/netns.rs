//! The pod's network namespace, named by `CNI_NETNS`.
//!
//! The plugin never moves its main thread: a short-lived thread enters the
//! namespace with `setns(2)`, opens a netlink socket there and ends; the
//! socket keeps working in the pod's namespace from any thread.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};
use nix::sys::statfs::{fstatfs, NSFS_MAGIC};

use crate::netlink::RouteSocket;

/// Why a netns path cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {0} does not exist")]
    NotFound(PathBuf),
    #[error("{0} is not a namespace file (not on nsfs)")]
    NotANamespace(PathBuf),
    #[error("{0} is not a network namespace: {1}")]
    NotNetwork(PathBuf, nix::Error),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// An open network namespace; holding the file keeps it alive.
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: PathBuf,
}

impl NetNs {
    /// Opens `path` and checks that it is a namespace file.
    pub fn open(path: &Path) -> Result<Self, NetnsError> {
        let file = File::open(path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => NetnsError::NotFound(path.to_owned()),
            _ => NetnsError::Io {
                path: path.to_owned(),
                source,
            },
        })?;
        let fs = fstatfs(&file).map_err(|e| NetnsError::Io {
            path: path.to_owned(),
            source: e.into(),
        })?;
        if fs.filesystem_type() != NSFS_MAGIC {
            return Err(NetnsError::NotANamespace(path.to_owned()));
        }
        Ok(NetNs {
            file,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Opens a netlink route socket inside this namespace (on a thread of
    /// its own, which ends after `setns`; the caller's thread stays put).
    pub fn route_socket(&self) -> Result<RouteSocket, NetnsError> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    setns(&self.file, CloneFlags::CLONE_NEWNET)
                        .map_err(|e| NetnsError::NotNetwork(self.path.clone(), e))?;
                    RouteSocket::open().map_err(|source| NetnsError::Io {
                        path: self.path.clone(),
                        source,
                    })
                })
                .join()
                .unwrap_or_else(|_| {
                    Err(NetnsError::Io {
                        path: self.path.clone(),
                        source: io::Error::other("namespace thread panicked"),
                    })
                })
        })
    }
}
