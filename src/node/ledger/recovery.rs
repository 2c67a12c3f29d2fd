//! Rebuilding the queues from the store at start: copies go back where they were; orphans are
//! **dead-lettered**, unreadable copies **purged**.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::cold::Back;
use super::queue::ColdCopy;
use super::{DeadLetter, Ledger, Notice, Queue, QueueId};
use crate::lanes::Entry;
use crate::message::{MessageId, Precedence, from_millis};
use crate::node::events::Event;
use crate::receipt;
use crate::store::{LiveCopies, Op};
use crate::wire::pb;

impl Ledger {
    /// Puts the live copies recovered from the store back where they were: waiting copies to
    /// their queue's lanes, dead letters to its dead letters. A copy whose queue no longer exists
    /// (a peer removed from the config) is **dead-lettered** in the orphans queue, for an
    /// operator; one that does not decode (damage the checksum missed) is **purged**.
    ///
    /// Analytical copies waiting in a queue go back **cold** (see [`super::cold`]): nothing of
    /// them is read but the store's index, so a restart with a million queued copies does not
    /// parse a million messages. Time-sensitive copies and dead letters are read back whole.
    pub async fn recover(&self, recovered: LiveCopies) {
        let below = recovered.max_seq().map_or(0, |seq| seq + 1);
        let copies = recovered.len();
        self.0.recovered_below.store(below, Ordering::Relaxed);
        let (mut waiting, mut dead, mut orphaned, mut unreadable) = (0, 0, 0, 0);
        let mut whole = Vec::new();
        for m in recovered {
            let id = MessageId::from_slice(&m.message_id);
            let precedence = pb::Precedence::try_from(i32::from(m.precedence))
                .ok()
                .and_then(Precedence::from_pb);
            let (Some(precedence), Some(_)) = (precedence, id) else {
                self.purged(m.seq, id, &m.queue, "the stored copy does not decode");
                unreadable += 1;
                continue;
            };
            let entry: Entry<ColdCopy> = Entry {
                precedence,
                expires_at: from_millis(m.expires_at_ms),
                item: m.seq,
            };
            let queue = match QueueId::parse(&m.queue, &self.0.agency) {
                Some(QueueId::Mailbox(mb)) => self.mailbox(&mb),
                Some(QueueId::Outbox(peer)) => self.outbox(&peer),
                Some(QueueId::Orphans) | None => None,
            };
            let to = match (queue, m.dead) {
                (Some(q), None) if !precedence.is_time_sensitive() => {
                    q.push_cold(entry, from_millis(m.received_at_ms));
                    waiting += 1;
                    continue;
                }
                (Some(q), None) => Place::Waiting(q),
                // An orphan stays one: its queue is still gone.
                (q, Some(reason)) => {
                    Place::Dead(q.unwrap_or_else(|| self.0.orphans.clone()), reason)
                }
                (None, None) => Place::Orphan(m.queue),
            };
            whole.push((entry, to));
        }
        for part in whole.chunks(WHOLE_AT_ONCE) {
            let cold: Vec<_> = part.iter().map(|(e, _)| e.clone()).collect();
            for ((c, to), back) in part.iter().zip(self.read_whole(&cold).await) {
                let entry = match back {
                    Back::Whole(entry) => entry,
                    Back::Unreadable(why) => {
                        let queue = match to {
                            Place::Waiting(q) | Place::Dead(q, _) => q.name(),
                            Place::Orphan(name) => name,
                        };
                        self.purged(c.item, None, queue, &why);
                        unreadable += 1;
                        continue;
                    }
                    Back::Unavailable => continue,
                };
                let message = entry.item.message.clone();
                // A resend of a recovered message is a duplicate, not a second copy.
                self.0.ids.lock().expect("ids lock poisoned").remember(
                    message.id,
                    crate::dedup::fingerprint(&message),
                    message.expires_at,
                );
                match to {
                    Place::Waiting(q) => {
                        if matches!(q.id(), QueueId::Mailbox(_))
                            && receipt::wants_response(&message)
                        {
                            // An action copy still waiting here owes its originator an answer.
                            self.notify(Notice::Waiting { message });
                        }
                        q.push_checked(entry);
                        waiting += 1;
                    }
                    Place::Dead(q, reason) => {
                        q.dead_letter(DeadLetter {
                            entry,
                            reason: reason.clone(),
                            at: SystemTime::now(),
                        });
                        dead += 1;
                    }
                    Place::Orphan(name) => {
                        let reason = format!("queue {name} no longer exists in the configuration");
                        self.0.events.record_about(
                            &message,
                            Event::DeadLettered {
                                id: message.id,
                                queue: self.0.orphans.name().to_owned(),
                                reason: reason.clone(),
                            },
                        );
                        self.record_later(vec![Op::DeadLetter(c.item, reason.clone())]);
                        self.0.orphans.dead_letter(DeadLetter {
                            entry,
                            reason,
                            at: SystemTime::now(),
                        });
                        orphaned += 1;
                    }
                }
            }
        }
        tracing::info!(
            node = %self.0.node,
            copies, waiting, dead, orphaned, unreadable,
            "recovered queues from the store"
        );
    }

    /// **Purged**: a stored copy is removed without being delivered.
    pub(super) fn purged(&self, seq: u64, id: Option<MessageId>, queue: &str, why: &str) {
        self.0.events.record(Event::Purged {
            id,
            queue: queue.to_owned(),
            reason: why.to_owned(),
        });
        self.record_later(vec![Op::Done(seq)]);
    }
}

/// Copies read back whole at start in one request to the store.
const WHOLE_AT_ONCE: usize = 4096;

/// Where a copy recovered whole goes.
enum Place {
    Waiting(Arc<Queue>),
    Dead(Arc<Queue>, String),
    /// Its queue (named) no longer exists.
    Orphan(String),
}
