//! Rebuilding the node's queues from its store at start.
//!
//! Every live copy the store hands back goes to the queue it was in: waiting copies to their
//! lanes (expiry and precedence as stored), dead letters to the dead letters. A copy whose queue
//! no longer exists (a peer removed from the config) is dead-lettered with that reason, so an
//! operator sees it rather than the node silently dropping it.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;

use super::queue::{Item, Queue};
use super::{Node, entry};
use crate::message::{MessageId, Precedence};
use crate::store::{Op, StoredMessage};
use crate::wire::pb;

fn time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

impl Node {
    /// Puts recovered copies back in their queues.
    pub(super) fn recover(self: &Arc<Self>, recovered: Vec<StoredMessage>) {
        let (mut waiting, mut dead, mut orphaned, mut unreadable) = (0, 0, 0, 0);
        for m in recovered {
            let decoded = pb::SignedEnvelope::decode(m.bytes.clone()).ok();
            let precedence = pb::Precedence::try_from(i32::from(m.precedence))
                .ok()
                .and_then(Precedence::from_pb);
            let (Some(signed), Some(precedence)) = (decoded, precedence) else {
                // Written by this node, so this is damage the checksum did not catch.
                tracing::error!(seq = m.seq, queue = %m.queue, "stored copy does not decode; discarded");
                self.record_later(vec![Op::Done(m.seq)]);
                unreadable += 1;
                continue;
            };
            // Only a mailbox copy owes its originator anything from this node.
            let env = m
                .queue
                .starts_with("mailbox:")
                .then(|| pb::Envelope::decode(signed.envelope.clone()).ok())
                .flatten();
            let item = Item {
                seq: super::queue::Seq::durable(m.seq),
                id: MessageId::from_slice(&m.message_id).expect("16-byte array"),
                signed: Arc::new(signed),
                received_at: time(m.received_at_ms),
                attempts: m.attempts,
                stage_receipts: env.as_ref().is_some_and(crate::receipt::wants_receipts),
            };
            let e = entry(item, precedence, time(m.expires_at_ms));
            match (self.queue_named(&m.queue), m.dead) {
                (Some(q), None) => {
                    // An action copy still waiting here owes its originator an answer.
                    if let Some(env) = &env {
                        self.await_response(e.item.id, env);
                    }
                    q.push_checked(e);
                    waiting += 1;
                }
                (Some(q), Some(reason)) => {
                    q.dead_letter(e, reason, SystemTime::now());
                    dead += 1;
                }
                (None, _) => {
                    let q = self.orphans();
                    let reason = format!("queue {} no longer exists in the configuration", m.queue);
                    self.record_later(vec![Op::DeadLetter(m.seq, reason.clone())]);
                    q.dead_letter(e, reason, SystemTime::now());
                    orphaned += 1;
                }
            }
        }
        tracing::info!(
            node = %self.config.name,
            waiting, dead, orphaned, unreadable,
            "recovered queues from the store"
        );
    }

    /// The queue a stored copy belongs to, by name.
    fn queue_named(&self, name: &str) -> Option<Arc<Queue>> {
        if let Some(peer) = name.strip_prefix("outbox:") {
            return self.outboxes.get(peer).cloned();
        }
        let dest = name.strip_prefix("mailbox:")?;
        let (agency, unit) = dest.split_once('/').unwrap_or((dest, ""));
        (agency == self.config.agency.as_str())
            .then(|| self.mailbox(unit))
            .flatten()
    }
}
