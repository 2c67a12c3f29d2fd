//! Cold copies: a queue keeps at most [`HOT_COPIES`] copies of an analytical lane whole (parsed,
//! with their bytes); the others wait **cold**, as their place in the store (see
//! [`crate::lanes`]). So a backlog costs the node a few dozen bytes a copy, and a restart reads
//! the store's index back, not every message in it. Here the ledger brings cold copies back
//! whole: read from the store, parsed as when the node took them, and appended to their lanes in
//! order, before the lane runs dry. A copy that no longer reads back is **purged**.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use prost::Message as _;

use super::queue::ColdCopy;
use super::{Copy, Ledger, Notice, Queue, QueueId, Seq, Transit};
use crate::lanes::Entry;
use crate::message::{Message, from_millis};
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
    /// Brings back, in the background, the cold copies of `queue` that
    /// [`crate::lanes::Lanes::take_refill`] handed out when a consumer took from it; the
    /// queue's consumers are woken when they are back.
    pub(super) fn refill(&self, queue: &Arc<Queue>, cold: Vec<Entry<ColdCopy>>) {
        let (ledger, queue) = (self.clone(), queue.clone());
        tokio::spawn(async move { ledger.bring_back(&queue, cold).await });
    }

    async fn bring_back(&self, queue: &Arc<Queue>, cold: Vec<Entry<ColdCopy>>) {
        let back = self.read_whole(&cold).await;
        let mut items = Vec::new();
        let mut waiting = Vec::new();
        for (c, b) in cold.iter().zip(back) {
            match b {
                Back::Whole(e) => {
                    if self.recovered(c.item)
                        && matches!(queue.id(), QueueId::Mailbox(_))
                        && receipt::wants_response(&e.item.message)
                    {
                        waiting.push(e.item.message.clone());
                    }
                    items.push(e);
                }
                Back::Unreadable(why) => {
                    self.purged(c.item, None, queue.name(), &why);
                }
                Back::Unavailable => {}
            }
        }
        queue.refilled(cold.iter().map(|c| c.precedence), items);
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
                    Back::Unreadable(why) => ledger.purged(c.item, None, queue.name(), &why),
                    Back::Unavailable => {}
                }
            }
            ledger.expire(&queue, whole);
        });
    }

    /// Reads cold copies back whole, in order (the parsing on a blocking thread: a refill is
    /// hundreds of messages, and the node's workers serve alerts).
    pub(super) async fn read_whole(&self, cold: &[Entry<ColdCopy>]) -> Vec<Back> {
        let seqs = cold.iter().map(|c| c.item).collect();
        let read = match self.0.store.read(seqs).await {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(error = %e, copies = cold.len(), "cold copies not read back");
                return cold.iter().map(|_| Back::Unavailable).collect();
            }
        };
        let parsed = tokio::task::spawn_blocking(move || {
            read.into_iter()
                .map(|r| {
                    r.and_then(|c| match decode(c.bytes) {
                        Some(parsed) => Ok((parsed, c.received_at_ms, c.attempts)),
                        None => Err("it does not decode".into()),
                    })
                })
                .collect::<Vec<_>>()
        })
        .await
        .expect("parsing stored copies does not panic");
        cold.iter()
            .zip(parsed)
            .map(|(c, p)| match p {
                Ok(((message, transit), received_at_ms, attempts)) => Back::Whole(Entry {
                    precedence: c.precedence,
                    // Its own deadline (the earlier of its expiry and the end of its retention
                    // period, as when it was queued), not the cold copy's rounded one.
                    expires_at: message.deadline(),
                    item: Copy {
                        message: Arc::new(message),
                        transit: Arc::new(transit),
                        seq: Seq::durable(c.item),
                        received_at: from_millis(received_at_ms),
                        attempts,
                    },
                }),
                Err(why) => Back::Unreadable(format!("the stored copy does not read back: {why}")),
            })
            .collect()
    }
}

impl Ledger {
    /// Whether the copy with this seq was recovered from the store at start (its respond-by
    /// deadline is then tracked again when it comes back).
    pub(super) fn recovered(&self, seq: u64) -> bool {
        seq < self.0.recovered_below.load(Ordering::Relaxed)
    }
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
