//! A neighbour's writer task: it owns the session's [`UpdatePacker`], so
//! that packing (grouping, sorting, building UPDATEs) runs beside the RIB
//! actor instead of on it, and sends the packed batches in order. A peer
//! whose socket is blocked never stalls the actor or the other peers.

use crate::rib::pack::{AttrSet, UpdatePacker};
use crate::session::{EncodedMessages, SessionHandle};
use crate::wire::{Family, Message, Nlri};
use bytes::BytesMut;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// One change for the packer.
pub(super) enum PackerOp {
    Announce(Nlri, Arc<AttrSet>),
    /// Announce with the set of the `Announce` before it in the same
    /// batch (the prefixes of one UPDATE: one `Arc` for all of them).
    AnnounceSame(Nlri),
    Withdraw(Nlri),
    /// BoRR/EoRR around the next flush (RFC 7313).
    BracketRefresh(Family),
}

/// What the actor hands a writer.
pub(super) enum WriterInput {
    /// A new connection is Established: its packer (End-of-RIB queued).
    Packer(UpdatePacker),
    /// Changes for the packer.
    Changes(Vec<PackerOp>),
    /// Pack what changed since the last flush and send it.
    Flush,
    /// Messages to send as they are (ROUTE-REFRESH requests).
    Messages(Vec<Message>),
}

/// An input tagged with the connection epoch it is for.
pub(super) type Outgoing = (u64, WriterInput);

/// Runs until the actor drops the sender. Inputs for an earlier connection
/// (the epoch moved on) are dropped. `rejected` is where the packer's
/// count of routes it could not send is published (for the status).
pub(super) async fn write_loop(
    handle: Arc<SessionHandle>,
    epoch: Arc<AtomicU64>,
    rejected: Arc<AtomicUsize>,
    mut outbox: mpsc::UnboundedReceiver<Outgoing>,
) {
    let mut packer: Option<(u64, UpdatePacker)> = None;
    while let Some((for_epoch, input)) = outbox.recv().await {
        if for_epoch != epoch.load(Ordering::SeqCst) {
            debug!("input for an earlier connection dropped");
            continue;
        }
        let current = packer
            .as_mut()
            .filter(|(e, _)| *e == for_epoch)
            .map(|(_, p)| p);
        let sent = match (input, current) {
            (WriterInput::Packer(p), _) => {
                rejected.store(0, Ordering::Relaxed);
                packer = Some((for_epoch, p));
                continue;
            }
            (WriterInput::Messages(m), _) => {
                if m.is_empty() {
                    continue;
                }
                handle.send_messages(m).await
            }
            (WriterInput::Changes(ops), Some(p)) => {
                apply(p, ops);
                continue;
            }
            (WriterInput::Flush, Some(p)) => {
                let mut bytes = BytesMut::new();
                let flushed = p.flush_encoded(&mut bytes);
                rejected.store(p.rejected_len(), Ordering::Relaxed);
                for r in &flushed.rejected {
                    warn!(rejected = ?r, "route could not be sent");
                }
                for e in &flushed.errors {
                    warn!("message could not be encoded: {e}");
                }
                if flushed.messages == 0 {
                    continue;
                }
                debug!(messages = flushed.messages, "sending");
                handle
                    .send_encoded(EncodedMessages {
                        bytes: bytes.freeze(),
                        params: *p.params(),
                        updates: flushed.updates > 0,
                    })
                    .await
            }
            (WriterInput::Changes(_) | WriterInput::Flush, None) => continue,
        };
        if let Err(e) = sent {
            debug!("send failed: {e}");
        }
    }
}

fn apply(packer: &mut UpdatePacker, ops: Vec<PackerOp>) {
    let mut last: Option<Arc<AttrSet>> = None;
    for op in ops {
        let (nlri, result) = match op {
            PackerOp::Announce(nlri, set) => {
                let result = packer.announce_shared(nlri, &set);
                last = Some(set);
                (nlri, result)
            }
            PackerOp::AnnounceSame(nlri) => match &last {
                Some(set) => (nlri, packer.announce_shared(nlri, set)),
                None => {
                    // A bug of the actor's: the run has no set.
                    warn!(prefix = %nlri.prefix, "route without attributes not packed");
                    continue;
                }
            },
            PackerOp::Withdraw(nlri) => (nlri, packer.withdraw(nlri)),
            PackerOp::BracketRefresh(family) => {
                packer.bracket_refresh(family);
                continue;
            }
        };
        if let Err(e) = result {
            warn!(prefix = %nlri.prefix, "route not packed: {e}");
        }
    }
}
