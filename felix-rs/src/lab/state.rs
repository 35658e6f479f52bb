//! What a lab made, written to `/run/felix-lab/PREFIX/state.json` after
//! every step, so that `felix lab down` can remove it all even when
//! `felix lab up` crashed half-way.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where lab state directories live.
pub const STATE_ROOT: &str = "/run/felix-lab";

/// A process the lab started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabProcess {
    pub pid: u32,
    /// What it is, e.g. `agent node-1`.
    pub what: String,
    /// A word its /proc/PID/cmdline must contain before it is killed (a
    /// pid reused by an unrelated process is left alone).
    pub cmdline_contains: String,
}

/// A pod that got its interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabPod {
    pub name: String,
    pub node: String,
    pub netns: String,
    pub address: String,
    /// Its IPv6 address (`--dual-stack`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_v6: Option<String>,
}

/// Everything made so far.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabState {
    pub prefix: String,
    /// The plan's options, as JSON (for `felix lab status`).
    pub options: serde_json::Value,
    pub namespaces: Vec<String>,
    pub processes: Vec<LabProcess>,
    pub pods: Vec<LabPod>,
    /// Node name → control socket.
    pub control_sockets: Vec<(String, PathBuf)>,
    pub complete: bool,
}

/// The state directory of lab `prefix`.
pub fn state_dir(prefix: &str) -> PathBuf {
    Path::new(STATE_ROOT).join(prefix)
}

impl LabState {
    /// Writes the state atomically (temp file + rename).
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join("state.json.tmp");
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, json)?;
        std::fs::rename(tmp, dir.join("state.json"))
    }

    /// Reads the state; `Ok(None)` when there is none.
    pub fn load(dir: &Path) -> std::io::Result<Option<LabState>> {
        match std::fs::read(dir.join("state.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}
