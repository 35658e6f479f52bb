//! The pod's network namespace, named by `CNI_NETNS`.
//!
//! A netlink socket stays in the namespace it was opened in, so the plugin
//! enters the pod's namespace with `setns(2)` only to open one, and goes
//! straight back: the socket keeps working in the pod's namespace. (This
//! was a short-lived thread that entered the namespace and ended; starting
//! and joining it cost a scheduler round trip each, which under load was
//! ~1 ms of every ADD.)

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

    /// Opens a netlink route socket inside this namespace: the calling
    /// thread enters it, opens the socket and returns to the namespace it
    /// was in (held open by its `/proc/thread-self/ns/net` file
    /// meanwhile). Failing to return is an error: the caller then must not
    /// go on, since a thread left in the pod's namespace would see the
    /// pod's `/proc/sys/net`.
    pub fn route_socket(&self) -> Result<RouteSocket, NetnsError> {
        let home_path = Path::new("/proc/thread-self/ns/net");
        let home = File::open(home_path).map_err(|source| NetnsError::Io {
            path: home_path.to_owned(),
            source,
        })?;
        setns(&self.file, CloneFlags::CLONE_NEWNET)
            .map_err(|e| NetnsError::NotNetwork(self.path.clone(), e))?;
        let socket = RouteSocket::open();
        setns(&home, CloneFlags::CLONE_NEWNET).map_err(|e| NetnsError::Io {
            path: home_path.to_owned(),
            source: io::Error::other(format!(
                "cannot return to the node's network namespace: {e}"
            )),
        })?;
        socket.map_err(|source| NetnsError::Io {
            path: self.path.clone(),
            source,
        })
    }
}
