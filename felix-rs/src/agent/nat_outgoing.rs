//! NAT outgoing (Calico's `natOutgoing`): traffic from a pod address in a
//! pool with `natOutgoing` to a destination in no pool is masqueraded to
//! the node's address as it leaves the node; traffic between pods (any
//! pool, any node) keeps its source.
//!
//! The agent owns one nftables table, `table inet felix`, and nothing
//! else: the desired table ([`NatOutgoing`], from the pools) is rendered
//! ([`render`]) as one `nft -f` batch that adds the table, deletes it and
//! defines it again, so the kernel replaces it in one transaction (an
//! nftables batch is atomic: no packet sees a half-built table). With no
//! pool wanting NAT the batch only removes the table. Calico keeps the
//! same two sets (its `cali40masq-ipam-pools` and `cali40all-ipam-pools`
//! ipsets): the pools to masquerade from, and every pool as destinations
//! that are never masqueraded. Disabled pools count too, as in Calico:
//! their pods keep their addresses.
//!
//! The `nft` program (Debian `nftables`) applies the batch and lists the
//! table ([`NftTable`]); [`NatOutgoingReconciler`] decides when the agent
//! writes it: the pools changed, the kernel's table no longer reads as it
//! did after the last write (checked at every resync), a retry after an
//! error.

use ipam::pool::IpPoolSpec;
use ipnet::IpNet;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use thiserror::Error;

/// The table's family and name: `inet` holds the IPv4 and IPv6 rules in
/// one table (nat in the inet family needs Linux 5.2).
pub const TABLE: &str = "inet felix";

/// After a failed write the table is tried again this soon (or at the
/// resync, when that is sooner).
pub const RETRY_AFTER_ERROR: Duration = Duration::from_secs(10);

/// The desired NAT outgoing state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatOutgoing {
    /// Pools whose pods' traffic leaving the cluster is masqueraded.
    pub masquerade: BTreeSet<IpNet>,
    /// Every pool: destinations that are never masqueraded.
    pub all_pools: BTreeSet<IpNet>,
}

impl NatOutgoing {
    /// From the current pools (their CIDRs with host bits cleared).
    pub fn from_pools<'a>(pools: impl IntoIterator<Item = &'a IpPoolSpec>) -> NatOutgoing {
        let mut nat = NatOutgoing::default();
        for p in pools {
            let cidr = p.cidr.trunc();
            nat.all_pools.insert(cidr);
            if p.nat_outgoing {
                nat.masquerade.insert(cidr);
            }
        }
        nat
    }

    /// True when no pool wants NAT: the table is removed.
    pub fn is_empty(&self) -> bool {
        self.masquerade.is_empty()
    }
}

/// The `nft -f` batch that makes the kernel's `table inet felix` what
/// `desired` says (or removes it), in one transaction. Overlapping or
/// adjacent CIDRs are merged (an interval set refuses overlaps).
pub fn render(desired: &NatOutgoing) -> String {
    let mut o = String::new();
    // `add` first, so that `delete` never fails on a missing table.
    let _ = writeln!(o, "add table {TABLE}");
    let _ = writeln!(o, "delete table {TABLE}");
    if desired.is_empty() {
        return o;
    }
    let _ = writeln!(o, "table {TABLE} {{");
    let sets = [
        ("masq_pools_v4", "ipv4_addr", &desired.masquerade, true),
        ("all_pools_v4", "ipv4_addr", &desired.all_pools, true),
        ("masq_pools_v6", "ipv6_addr", &desired.masquerade, false),
        ("all_pools_v6", "ipv6_addr", &desired.all_pools, false),
    ];
    for (name, kind, cidrs, v4) in sets {
        let family: Vec<IpNet> = cidrs
            .iter()
            .filter(|c| matches!(c, IpNet::V4(_)) == v4)
            .copied()
            .collect();
        let elements: Vec<String> = IpNet::aggregate(&family)
            .iter()
            .map(ToString::to_string)
            .collect();
        let _ = writeln!(o, "\tset {name} {{");
        let _ = writeln!(o, "\t\ttype {kind}");
        let _ = writeln!(o, "\t\tflags interval");
        if !elements.is_empty() {
            let _ = writeln!(o, "\t\telements = {{ {} }}", elements.join(", "));
        }
        let _ = writeln!(o, "\t}}");
    }
    let _ = writeln!(o, "\tchain postrouting {{");
    let _ = writeln!(
        o,
        "\t\ttype nat hook postrouting priority srcnat; policy accept;"
    );
    let _ = writeln!(
        o,
        "\t\tip saddr @masq_pools_v4 ip daddr != @all_pools_v4 masquerade fully-random"
    );
    let _ = writeln!(
        o,
        "\t\tip6 saddr @masq_pools_v6 ip6 daddr != @all_pools_v6 masquerade fully-random"
    );
    let _ = writeln!(o, "\t}}");
    let _ = writeln!(o, "}}");
    o
}

/// Why the table could not be written.
#[derive(Debug, Error)]
pub enum NatError {
    #[error("{program}: not found; NAT outgoing needs the nft program (Debian package nftables)")]
    NftMissing { program: String },
    #[error("running {program}: {source}")]
    Run {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} -f - refused the {TABLE} batch ({status}): {stderr}")]
    Refused {
        program: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("{program} list table {TABLE} failed ({status}): {stderr}")]
    List {
        program: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("the nft task stopped: {0}")]
    Task(String),
}

/// Where the agent writes the table (the kernel through `nft`, or a
/// test's recorder).
#[async_trait::async_trait]
pub trait NatOutgoingSink: Send {
    /// Makes the kernel's table what `desired` says.
    async fn write(&mut self, desired: &NatOutgoing) -> Result<(), NatError>;
    /// The kernel's table as text (compared with what it read after the
    /// last write, to find changes made behind the agent's back); `None`
    /// when there is no table.
    async fn read(&mut self) -> Result<Option<String>, NatError>;
}

/// The kernel's `table inet felix`, written with `nft -f -` in the
/// agent's network namespace.
#[derive(Clone, Debug)]
pub struct NftTable {
    program: PathBuf,
}

impl Default for NftTable {
    fn default() -> Self {
        NftTable {
            program: PathBuf::from("nft"),
        }
    }
}

impl NftTable {
    /// `program` instead of `nft` from `PATH`.
    pub fn with_program(program: impl Into<PathBuf>) -> NftTable {
        NftTable {
            program: program.into(),
        }
    }

    /// Runs the batch for `desired` (blocking: a short-lived process).
    /// Without `nft` and without a pool wanting NAT there is nothing to do
    /// (no error: a host without nftables needs none then).
    pub fn write_blocking(&self, desired: &NatOutgoing) -> Result<(), NatError> {
        let program = self.program.display().to_string();
        let spawned = Command::new(&self.program)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && desired.is_empty() => {
                tracing::debug!("{program} not found; no pool wants NAT outgoing");
                return Ok(());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(NatError::NftMissing { program })
            }
            Err(source) => return Err(NatError::Run { program, source }),
        };
        let batch = render(desired);
        let written = match child.stdin.take() {
            Some(mut stdin) => stdin.write_all(batch.as_bytes()),
            None => Ok(()),
        };
        let output = child.wait_with_output().map_err(|source| NatError::Run {
            program: program.clone(),
            source,
        })?;
        if !output.status.success() {
            return Err(NatError::Refused {
                program,
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        written.map_err(|source| NatError::Run { program, source })
    }

    /// `nft list table inet felix`; `None` when there is no such table
    /// (or no `nft`: then there is no table felix could have made).
    pub fn read_blocking(&self) -> Result<Option<String>, NatError> {
        let program = self.program.display().to_string();
        let run = |args: &[&str]| match Command::new(&self.program).args(args).output() {
            Ok(o) => Ok(Some(o)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(NatError::Run {
                program: program.clone(),
                source,
            }),
        };
        let Some(listed) = run(&["list", "table", "inet", "felix"])? else {
            return Ok(None);
        };
        if listed.status.success() {
            return Ok(Some(String::from_utf8_lossy(&listed.stdout).into_owned()));
        }
        // Failed: no table, or something else (told apart by the list of
        // tables).
        let Some(tables) = run(&["list", "tables", "inet"])? else {
            return Ok(None);
        };
        let absent = tables.status.success()
            && !String::from_utf8_lossy(&tables.stdout)
                .lines()
                .any(|l| l.trim() == format!("table {TABLE}"));
        if absent {
            return Ok(None);
        }
        Err(NatError::List {
            program,
            status: listed.status,
            stderr: String::from_utf8_lossy(&listed.stderr).trim().to_string(),
        })
    }
}

#[async_trait::async_trait]
impl NatOutgoingSink for NftTable {
    async fn write(&mut self, desired: &NatOutgoing) -> Result<(), NatError> {
        let table = self.clone();
        let desired = desired.clone();
        tokio::task::spawn_blocking(move || table.write_blocking(&desired))
            .await
            .map_err(|e| NatError::Task(e.to_string()))?
    }

    async fn read(&mut self) -> Result<Option<String>, NatError> {
        let table = self.clone();
        tokio::task::spawn_blocking(move || table.read_blocking())
            .await
            .map_err(|e| NatError::Task(e.to_string()))?
    }
}

/// When the agent writes the table: when the desired state differs from
/// the last one written; at every `resync` when the kernel's table does
/// not read as it did right after that write (changed or removed behind
/// the agent's back; an unchanged table is left alone); and
/// [`RETRY_AFTER_ERROR`] after a failure. Before the first write nothing
/// is touched: a restarted agent keeps the previous run's table until it
/// has read the pools.
pub struct NatOutgoingReconciler {
    sink: Box<dyn NatOutgoingSink>,
    resync: Duration,
    last: Option<Attempt>,
}

/// The last write and what the kernel showed after it.
struct Attempt {
    desired: NatOutgoing,
    /// When it was written or last found unchanged.
    at: Instant,
    /// `Some(listing)` read right after a write that succeeded; `None`
    /// after a failed one.
    read_back: Option<Option<String>>,
}

impl NatOutgoingReconciler {
    pub fn new(sink: Box<dyn NatOutgoingSink>, resync: Duration) -> NatOutgoingReconciler {
        NatOutgoingReconciler {
            sink,
            resync,
            last: None,
        }
    }

    /// Writes the table for `pools` when it is due; `None` when nothing
    /// was written, else the outcome of the write.
    pub async fn reconcile<'a>(
        &mut self,
        pools: impl IntoIterator<Item = &'a IpPoolSpec>,
        now: Instant,
    ) -> Option<Result<NatOutgoing, NatError>> {
        let desired = NatOutgoing::from_pools(pools);
        if let Some(last) = &mut self.last {
            if last.desired == desired {
                let since = now.saturating_duration_since(last.at);
                match &last.read_back {
                    None if since < self.resync.min(RETRY_AFTER_ERROR) => return None,
                    None => {}
                    Some(_) if since < self.resync => return None,
                    Some(expected) => match self.sink.read().await {
                        Ok(listed) if &listed == expected => {
                            last.at = now;
                            return None;
                        }
                        Ok(_) => tracing::warn!(
                            "table {TABLE} was changed behind the agent's back; writing it again"
                        ),
                        Err(e) => tracing::warn!("{e}; writing table {TABLE} again"),
                    },
                }
            }
        }
        let result = self.sink.write(&desired).await;
        let read_back = match &result {
            // Unreadable right after the write: a listing no kernel
            // prints, so the next resync writes again.
            Ok(()) => Some(self.sink.read().await.unwrap_or(Some(String::new()))),
            Err(_) => None,
        };
        self.last = Some(Attempt {
            desired: desired.clone(),
            at: now,
            read_back,
        });
        Some(result.map(|()| desired))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::sync::{Arc, Mutex};

    fn pool(cidr: &str, nat: bool) -> IpPoolSpec {
        let mut p = IpPoolSpec::new(cidr.parse().unwrap());
        p.nat_outgoing = nat;
        p
    }

    #[test]
    fn the_sets_hold_the_nat_pools_and_every_pool() {
        let mut disabled = pool("10.250.0.0/16", true);
        disabled.disabled = true;
        let pools = [
            pool("10.244.0.0/16", true),
            pool("10.245.0.0/16", false),
            pool("fd00:10:244::/48", true),
            disabled,
        ];
        let nat = NatOutgoing::from_pools(&pools);
        let set = |v: &[&str]| {
            v.iter()
                .map(|c| c.parse().unwrap())
                .collect::<BTreeSet<_>>()
        };
        assert_eq!(
            nat.masquerade,
            set(&["10.244.0.0/16", "10.250.0.0/16", "fd00:10:244::/48"])
        );
        assert_eq!(
            nat.all_pools,
            set(&[
                "10.244.0.0/16",
                "10.245.0.0/16",
                "10.250.0.0/16",
                "fd00:10:244::/48"
            ])
        );
        assert!(!nat.is_empty());
    }

    #[test]
    fn renders_the_whole_table_in_one_replacing_batch() {
        let pools = [
            pool("10.244.0.0/16", true),
            pool("10.245.0.0/16", false),
            pool("10.99.0.0/24", true),
            pool("fd00:10:244::/48", true),
            pool("fd00:10:245::/48", false),
        ];
        let want = "\
add table inet felix
delete table inet felix
table inet felix {
\tset masq_pools_v4 {
\t\ttype ipv4_addr
\t\tflags interval
\t\telements = { 10.99.0.0/24, 10.244.0.0/16 }
\t}
\tset all_pools_v4 {
\t\ttype ipv4_addr
\t\tflags interval
\t\telements = { 10.99.0.0/24, 10.244.0.0/15 }
\t}
\tset masq_pools_v6 {
\t\ttype ipv6_addr
\t\tflags interval
\t\telements = { fd00:10:244::/48 }
\t}
\tset all_pools_v6 {
\t\ttype ipv6_addr
\t\tflags interval
\t\telements = { fd00:10:244::/47 }
\t}
\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tip saddr @masq_pools_v4 ip daddr != @all_pools_v4 masquerade fully-random
\t\tip6 saddr @masq_pools_v6 ip6 daddr != @all_pools_v6 masquerade fully-random
\t}
}
";
        assert_eq!(render(&NatOutgoing::from_pools(&pools)), want);
    }

    #[test]
    fn the_batch_in_docs_agent_md_is_the_rendered_one() {
        let doc = include_str!("../../../docs/agent.md");
        let pools = [
            pool("10.244.0.0/16", true),
            pool("10.245.0.0/16", false),
            pool("fd00:10:244::/48", true),
        ];
        let text = render(&NatOutgoing::from_pools(&pools));
        assert!(doc.contains(&format!("```\n{text}```\n")), "{text}");
    }

    #[test]
    fn an_ipv4_only_cluster_gets_empty_ipv6_sets() {
        let text = render(&NatOutgoing::from_pools(&[pool("10.244.0.0/16", true)]));
        assert!(
            text.contains("\tset masq_pools_v6 {\n\t\ttype ipv6_addr\n\t\tflags interval\n\t}\n")
        );
        assert!(text.contains("\t\telements = { 10.244.0.0/16 }\n"));
    }

    #[test]
    fn no_pool_with_nat_outgoing_removes_the_table() {
        let want = "add table inet felix\ndelete table inet felix\n";
        assert_eq!(render(&NatOutgoing::default()), want);
        let nat = NatOutgoing::from_pools(&[pool("10.244.0.0/16", false)]);
        assert!(nat.is_empty());
        assert_eq!(render(&nat), want);
    }

    #[test]
    fn a_missing_nft_is_named() {
        let table = NftTable::with_program("/nonexistent/felix-test/nft");
        let nat = NatOutgoing::from_pools(&[pool("10.244.0.0/16", true)]);
        let err = table.write_blocking(&nat).unwrap_err();
        assert!(matches!(err, NatError::NftMissing { .. }), "{err:?}");
        assert!(err.to_string().contains("Debian package nftables"), "{err}");
        // No pool wants NAT: nothing to remove, no error without nft.
        table.write_blocking(&NatOutgoing::default()).unwrap();
    }

    #[test]
    fn a_refused_batch_carries_nft_s_message() {
        // `false` stands in for an nft that refuses the batch.
        let table = NftTable::with_program("false");
        let err = table.write_blocking(&NatOutgoing::default()).unwrap_err();
        assert!(matches!(err, NatError::Refused { .. }), "{err:?}");
    }

    /// Records every write into a pretend kernel table (the rendered
    /// text); fails while `fail` is set.
    struct Recorder {
        writes: Arc<Mutex<Vec<NatOutgoing>>>,
        kernel: Arc<Mutex<Option<String>>>,
        fail: Arc<Mutex<bool>>,
    }

    #[async_trait::async_trait]
    impl NatOutgoingSink for Recorder {
        async fn write(&mut self, desired: &NatOutgoing) -> Result<(), NatError> {
            self.writes.lock().unwrap().push(desired.clone());
            if *self.fail.lock().unwrap() {
                return Err(NatError::Task("failing on purpose".into()));
            }
            *self.kernel.lock().unwrap() = (!desired.is_empty()).then(|| render(desired));
            Ok(())
        }

        async fn read(&mut self) -> Result<Option<String>, NatError> {
            Ok(self.kernel.lock().unwrap().clone())
        }
    }

    #[tokio::test]
    async fn writes_on_change_and_on_drift_and_retries_an_error_sooner() {
        let writes = Arc::new(Mutex::new(Vec::new()));
        let kernel = Arc::new(Mutex::new(None));
        let fail = Arc::new(Mutex::new(false));
        let sink = Recorder {
            writes: writes.clone(),
            kernel: kernel.clone(),
            fail: fail.clone(),
        };
        let resync = Duration::from_secs(60);
        let mut r = NatOutgoingReconciler::new(Box::new(sink), resync);
        let t0 = Instant::now();
        let on = [pool("10.244.0.0/16", true)];
        let off = [pool("10.244.0.0/16", false)];
        // First call writes; the same pools again do not.
        assert!(r.reconcile(&on, t0).await.unwrap().is_ok());
        assert!(r
            .reconcile(&on, t0 + Duration::from_secs(1))
            .await
            .is_none());
        // A change writes at once.
        let written = r.reconcile(&off, t0 + Duration::from_secs(2)).await;
        assert!(written.unwrap().unwrap().is_empty());
        assert!(kernel.lock().unwrap().is_none());
        // The resync finds the kernel as written: nothing written.
        let at = |secs| t0 + Duration::from_secs(secs);
        assert!(r.reconcile(&off, at(62)).await.is_none());
        assert!(r.reconcile(&on, at(63)).await.is_some());
        assert!(r.reconcile(&on, at(124)).await.is_none());
        assert_eq!(writes.lock().unwrap().len(), 3);
        // Changed behind the agent's back: written again at the next
        // resync (not before).
        *kernel.lock().unwrap() = Some("table inet felix {}".into());
        assert!(r.reconcile(&on, at(125)).await.is_none());
        assert!(r.reconcile(&on, at(184)).await.is_some());
        let want = render(&NatOutgoing::from_pools(&on));
        assert_eq!(*kernel.lock().unwrap(), Some(want));
        // A failure is retried after RETRY_AFTER_ERROR, not at every call.
        *fail.lock().unwrap() = true;
        assert!(r.reconcile(&off, at(200)).await.unwrap().is_err());
        assert!(r.reconcile(&off, at(209)).await.is_none());
        *fail.lock().unwrap() = false;
        let retried = r.reconcile(&off, at(200) + RETRY_AFTER_ERROR).await;
        assert!(retried.unwrap().is_ok());
        assert_eq!(writes.lock().unwrap().len(), 6);
    }
}
