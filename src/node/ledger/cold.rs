//! Cold copies: a queue keeps at most [`HOT_COPIES`] copies of an analytical lane whole (parsed,
//! with their bytes); the others wait **cold**, as their place in the store (see
//! [`crate::lanes`]). So a backlog costs the node a few dozen bytes a copy, and a restart reads
//! the store's index back, not every message in it. Here the ledger brings cold copies back
//! whole: read from the store, parsed as when the node took them, and appended to their lanes in
//! order, before the lane runs dry. A copy that no longer reads back is **purged**.

use std::sync::Arc;

use bytes::Bytes;
use prost::Message as _;

use super::queue::ColdCopy;
use super::{Copy, Ledger, Notice, Queue, QueueId, Seq, Transit};
use crate::lanes::Entry;
use crate::message::{Message, Precedence};
use crate::receipt;
use crate::wire::pb;

/// A cold copy, read back.
pub(super) enum Back {
    Whole(Entry<Copy>),
    /// It no longer reads back as the copy it was (damage the checksum missed): why.
    Unreadable(String),
    /// The store is closed or failed: the copy stays on disk, for the next start.
    Unavailable,
}

impl Ledger {
    /// Starts bringing back the cold copies `queue` wants now (see
    /// [`crate::lanes::Lanes::take_refill`]), in the background; the queue's consumers are woken
    /// when they are back. Called before a consumer takes from the queue.
    pub(super) fn refill(&self, queue: &Arc<Queue>) {
        let cold = queue.take_refill();
        if cold.is_empty() {
            return;
        }
        let (ledger, queue) = (self.clone(), queue.clone());
        tokio::spawn(async move { ledger.bring_back(&queue, cold).await });
    }

    async fn bring_back(&self, queue: &Arc<Queue>, cold: Vec<Entry<ColdCopy>>) {
        let back = self.read_whole(&cold).await;
        let mut lanes: [(usize, Vec<Entry<Copy>>); 5] = Default::default();
        let mut waiting = Vec::new();
        for (c, b) in cold.iter().zip(back) {
            let lane = &mut lanes[lane_of(c.precedence)];
            lane.0 += 1;
            match b {
                Back::Whole(e) => {
                    if c.item.recovered
                        && matches!(queue.id(), QueueId::Mailbox(_))
                        && receipt::wants_response(&e.item.message)
                    {
                        waiting.push(e.item.message.clone());
                    }
                    lane.1.push(e);
                }
                Back::Unreadable(why) => {
                    self.purged(c.item.seq, None, queue.name(), &why);
                }
                Back::Unavailable => {}
            }
        }
        for (p, (taken, items)) in Precedence::ALL.into_iter().zip(lanes) {
            if taken > 0 {
                queue.refilled(p, taken, items);
            }
        }
        // An action copy recovered at start still owes its originator an answer.
        for message in waiting {
            self.notify(Notice::Waiting { message });
        }
    }

    /// Expired cold copies: read back, then expired as any other (the originator is told).
    pub(super) fn expire_cold(&self, queue: &Arc<Queue>, cold: Vec<Entry<ColdCopy>>) {
        let (ledger, queue) = (self.clone(), queue.clone());
        tokio::spawn(async move {
            let mut whole = Vec::new();
            for (c, b) in cold.iter().zip(ledger.read_whole(&cold).await) {
                match b {
                    Back::Whole(e) => whole.push(e),
                    Back::Unreadable(why) => ledger.purged(c.item.seq, None, queue.name(), &why),
                    Back::Unavailable => {}
                }
            }
            ledger.expire(&queue, whole);
        });
    }

    /// Reads cold copies back whole, in order (the parsing on a blocking thread: a refill is
    /// hundreds of messages, and the node's workers serve alerts).
    pub(super) async fn read_whole(&self, cold: &[Entry<ColdCopy>]) -> Vec<Back> {
        let seqs = cold.iter().map(|c| c.item.seq).collect();
        let read = match self.0.store.read(seqs).await {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(error = %e, copies = cold.len(), "cold copies not read back");
                return cold.iter().map(|_| Back::Unavailable).collect();
            }
        };
        let parsed = tokio::task::spawn_blocking(move || {
            read.into_iter()
                .map(|r| r.and_then(|b| decode(b).ok_or_else(|| "it does not decode".into())))
                .collect::<Vec<_>>()
        })
        .await
        .expect("parsing stored copies does not panic");
        cold.iter()
            .zip(parsed)
            .map(|(c, p)| match p {
                Ok((message, transit)) => Back::Whole(Entry {
                    precedence: c.precedence,
                    expires_at: c.expires_at,
                    item: Copy {
                        message: Arc::new(message),
                        transit: Arc::new(transit),
                        seq: Seq::durable(c.item.seq),
                        received_at: c.item.received_at,
                        attempts: c.item.attempts,
                    },
                }),
                Err(why) => Back::Unreadable(format!("the stored copy does not read back: {why}")),
            })
            .collect()
    }
}

/// A lane's index, FLASH first (as [`Precedence::ALL`]).
fn lane_of(p: Precedence) -> usize {
    Precedence::ALL
        .iter()
        .position(|q| *q == p)
        .expect("every precedence has a lane")
}

/// One stored copy's envelope, parsed as when the node took it; `None` if it does not decode.
pub(super) fn decode(bytes: Bytes) -> Option<(Message, Transit)> {
    let s = pb::SignedEnvelope::decode(bytes).ok()?;
    let message = Message::parse(s.envelope, s.signature).ok()?;
    let transit = Transit {
        hops: s.hops,
        route_to: s.route_to,
        signer_chain: s.signer_chain.into(),
    };
    Some((message, transit))
}
