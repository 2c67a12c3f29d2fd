//! Rebuilding the queues from the store at start: copies go back where they were; orphans are
//! **dead-lettered**, unreadable copies **purged**.

use std::sync::Arc;
use std::time::SystemTime;

use prost::Message as _;

use super::{Copy, DeadLetter, Ledger, Notice, QueueId, Seq, Transit};
use crate::lanes::Entry;
use crate::message::{Message, MessageId, Precedence, from_millis};
use crate::node::events::Event;
use crate::receipt;
use crate::store::{Op, StoredMessage};
use crate::wire::pb;

impl Ledger {
    /// Puts the live copies recovered from the store back where they were: waiting copies to
    /// their queue's lanes, dead letters to its dead letters. A copy whose queue no longer exists
    /// (a peer removed from the config) is **dead-lettered** in the orphans queue, for an
    /// operator; one that does not decode (damage the checksum missed) is **purged**.
    pub fn recover(&self, recovered: Vec<StoredMessage>) {
        let (mut waiting, mut dead, mut orphaned, mut unreadable) = (0, 0, 0, 0);
        let decoded = decode_all(&recovered);
        for (m, copy) in recovered.into_iter().zip(decoded) {
            let id = MessageId::from_slice(&m.message_id);
            let precedence = pb::Precedence::try_from(i32::from(m.precedence))
                .ok()
                .and_then(Precedence::from_pb);
            let (Some((message, transit)), Some(precedence), Some(_)) = (copy, precedence, id)
            else {
                let queue = m.queue.clone();
                self.purged(m.seq, id, &queue, "the stored copy does not decode");
                unreadable += 1;
                continue;
            };
            let message = Arc::new(message);
            // A resend of a recovered message is a duplicate, not a second copy.
            self.0.ids.lock().expect("ids lock poisoned").remember(
                message.id,
                crate::dedup::fingerprint(&message),
                message.expires_at,
            );
            let entry = Entry {
                precedence,
                expires_at: from_millis(m.expires_at_ms),
                item: Copy {
                    message: message.clone(),
                    transit: Arc::new(transit),
                    seq: Seq::durable(m.seq),
                    received_at: from_millis(m.received_at_ms),
                    attempts: m.attempts,
                },
            };
            let queue = match QueueId::parse(&m.queue, &self.0.agency) {
                Some(QueueId::Mailbox(mb)) => self.mailbox(&mb),
                Some(QueueId::Outbox(peer)) => self.outbox(&peer),
                Some(QueueId::Orphans) | None => None,
            };
            match (queue, m.dead) {
                (Some(q), None) => {
                    if matches!(q.id(), QueueId::Mailbox(_)) && receipt::wants_response(&message) {
                        // An action copy still waiting here owes its originator an answer.
                        self.notify(Notice::Waiting { message });
                    }
                    q.push_checked(entry);
                    waiting += 1;
                }
                (q, Some(reason)) => {
                    // An orphan stays one: its queue is still gone.
                    let q = q.unwrap_or_else(|| self.0.orphans.clone());
                    q.dead_letter(DeadLetter {
                        entry,
                        reason,
                        at: SystemTime::now(),
                    });
                    dead += 1;
                }
                (None, None) => {
                    let reason = format!("queue {} no longer exists in the configuration", m.queue);
                    self.0.events.record_about(
                        &entry.item.message,
                        Event::DeadLettered {
                            id: entry.item.id(),
                            queue: self.0.orphans.name().to_owned(),
                            reason: reason.clone(),
                        },
                    );
                    self.record_later(vec![Op::DeadLetter(m.seq, reason.clone())]);
                    self.0.orphans.dead_letter(DeadLetter {
                        entry,
                        reason,
                        at: SystemTime::now(),
                    });
                    orphaned += 1;
                }
            }
        }
        tracing::info!(
            node = %self.0.node,
            waiting, dead, orphaned, unreadable,
            "recovered queues from the store"
        );
    }

    /// **Purged**: a stored copy is removed without being delivered.
    fn purged(&self, seq: u64, id: Option<MessageId>, queue: &str, why: &str) {
        self.0.events.record(Event::Purged {
            id,
            queue: queue.to_owned(),
            reason: why.to_owned(),
        });
        self.record_later(vec![Op::Done(seq)]);
    }
}

/// Below this many copies, decoding on one thread is quicker than starting others.
const PARALLEL_FROM: usize = 4096;

/// Decodes the recovered copies' envelopes, in order, on up to 4 threads (as many as the machine
/// has cores): with a large backlog, parsing is most of what a restart costs, and each copy
/// parses on its own.
fn decode_all(recovered: &[StoredMessage]) -> Vec<Option<(Message, Transit)>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    if threads == 1 || recovered.len() < PARALLEL_FROM {
        return recovered.iter().map(decode).collect();
    }
    let chunk = recovered.len().div_ceil(threads);
    std::thread::scope(|s| {
        let parts: Vec<_> = recovered
            .chunks(chunk)
            .map(|part| s.spawn(move || part.iter().map(decode).collect::<Vec<_>>()))
            .collect();
        parts
            .into_iter()
            .flat_map(|p| p.join().expect("a decoding thread panicked"))
            .collect()
    })
}

/// One stored copy's envelope, parsed as when the node took it; `None` if it does not decode.
fn decode(m: &StoredMessage) -> Option<(Message, Transit)> {
    let s = pb::SignedEnvelope::decode(m.bytes.clone()).ok()?;
    let message = Message::parse(s.envelope, s.signature).ok()?;
    let transit = Transit {
        hops: s.hops,
        route_to: s.route_to,
        signer_chain: s.signer_chain.into(),
    };
    Some((message, transit))
}
