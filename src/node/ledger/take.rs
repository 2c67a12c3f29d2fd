//! The ledger's first transitions of a message: **taken** (persisted and queued, with
//! cut-through for time-sensitive copies), or **refused** before any copy exists.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use prost::Message as _;

use super::{Copy, Ledger, MAX_MAILBOXES, Notice, Seq, Taking, Transit};
use crate::lanes::Entry;
use crate::message::{MessageId, millis, timestamp};
use crate::node::events::Event;
use crate::refusal::Refusal;
use crate::store::{Op, PutRecord, StoreError};
use crate::wire::pb::{self, RefusalCode};

impl Ledger {
    /// **Taken**: the message is routed by `t.plan`, written to the store (one `Put` per
    /// destination queue, one group-committed write) and queued; the sender may then hear
    /// `Accepted`. A time-sensitive copy is queued *while* its write is in flight (cut-through),
    /// so its delivery or forwarding does not wait for the fsync; `Accepted` still does. A
    /// retransmission of a message already in the store is answered `Accepted` again without a
    /// second copy.
    ///
    /// # Errors
    /// A refusal for the sender: a full queue (`QUEUE_FULL`), no room for another mailbox, the
    /// store refusing the message or failing (then the node stops).
    pub async fn take(&self, t: Taking<'_>) -> Result<pb::Accepted, Refusal> {
        let Taking {
            message,
            hops,
            plan,
            from,
            from_peer,
            now,
        } = t;
        let id = message.id;
        let routed = plan.fan_out() as u32;
        let accepted = || pb::Accepted {
            message_id: id.to_bytes(),
            accepted_at: Some(timestamp(now)),
            routed,
        };
        let mut queues = Vec::with_capacity(plan.fan_out());
        for m in &plan.local {
            let q = self.mailbox(m).ok_or_else(|| {
                Refusal::new(
                    RefusalCode::UnknownRecipient,
                    format!("this node keeps at most {MAX_MAILBOXES} unit mailboxes"),
                )
            })?;
            queues.push(q);
        }
        for p in &plan.peers {
            let q = self.outbox(&p.node).ok_or_else(|| {
                Refusal::new(
                    RefusalCode::UnknownRecipient,
                    format!("no link to node {}", p.node),
                )
            })?;
            queues.push(q);
        }
        if let Some(full) = queues.iter().find(|q| !q.has_room(message.precedence)) {
            return Err(Refusal::new(
                RefusalCode::QueueFull,
                format!("{} is full; retry later", full.name()),
            ));
        }
        // Local copies carry this node's hop record; onward copies get it when forwarded, and
        // name the agencies the peer is to deliver or relay them for.
        let mut transits = Vec::with_capacity(queues.len());
        if !plan.local.is_empty() {
            let mut local = hops.clone();
            local.push(self.hop_record(now, None));
            let t = Arc::new(Transit {
                hops: local,
                route_to: Vec::new(),
            });
            transits.extend(std::iter::repeat_n(t, plan.local.len()));
        }
        for p in &plan.peers {
            transits.push(Arc::new(Transit {
                hops: hops.clone(),
                route_to: p.agencies.iter().map(|a| a.to_string()).collect(),
            }));
        }
        // On disk before the sender hears "accepted". Local copies share one encoding.
        let mut encoded: Vec<Bytes> = Vec::with_capacity(transits.len());
        for (i, t) in transits.iter().enumerate() {
            let bytes = match i {
                i if i > 0 && Arc::ptr_eq(t, &transits[i - 1]) => encoded[i - 1].clone(),
                _ => Bytes::from(
                    message
                        .signed(t.hops.clone(), t.route_to.clone())
                        .encode_to_vec(),
                ),
            };
            encoded.push(bytes);
        }
        let ops = queues
            .iter()
            .zip(&encoded)
            .map(|(q, bytes)| {
                Op::Put(PutRecord {
                    queue: q.name().to_owned(),
                    message_id: *id.as_bytes(),
                    precedence: message.precedence.to_pb() as u8,
                    expires_at_ms: millis(message.expires_at),
                    received_at_ms: millis(now),
                    bytes: bytes.clone(),
                })
            })
            .collect();
        let entry = |transit: &Arc<Transit>, seq| Entry {
            precedence: message.precedence,
            expires_at: message.expires_at,
            item: Copy {
                message: message.clone(),
                transit: transit.clone(),
                seq,
                received_at: now,
                attempts: 0,
            },
        };
        // Cut-through (see above). Room was checked; concurrent submissions can overshoot the
        // bound by at most their number, and an accepted copy is never dropped. Should the write
        // fail, or the message turn out to be a retransmission, the copy may still be delivered:
        // once more at worst, with the same id, which the recipient's client drops.
        let early: Vec<_> = if message.precedence.is_time_sensitive() {
            queues
                .iter()
                .zip(&transits)
                .map(|(q, t)| {
                    let (set, seq) = Seq::pending();
                    q.push_checked(entry(t, seq));
                    set
                })
                .collect()
        } else {
            Vec::new()
        };
        let seqs = match self.0.store.commit_if_new(ops).await {
            Ok(seqs) => seqs,
            // Already accepted (a retransmission after a lost answer): accepted again, once.
            Err(StoreError::Duplicate { .. }) => return Ok(accepted()),
            Err(e) if e.is_fatal() => return Err(self.storage_failed(&e)),
            // The store refused this message alone (e.g. over its size limit): nothing written.
            Err(e) => return Err(Refusal::invalid(e.to_string())),
        };
        let durable_at = SystemTime::now();
        if early.is_empty() {
            for ((q, t), seq) in queues.iter().zip(&transits).zip(seqs) {
                q.push_checked(entry(t, Seq::durable(seq)));
            }
        } else {
            for (set, seq) in early.into_iter().zip(seqs) {
                let _ = set.send(Some(seq));
            }
        }
        self.0.events.record(Event::Accepted {
            id,
            from: from.to_owned(),
            precedence: message.precedence,
            destinations: plan.fan_out(),
        });
        self.notify(Notice::Taken {
            onward: plan.peers.iter().flat_map(|p| p.agencies.clone()).collect(),
            local: plan.local,
            message,
            from_peer,
            received: now,
            durable_at,
        });
        Ok(accepted())
    }

    /// **Refused**: a submission (from `from`) that the node did not take, and why.
    pub fn refused(&self, id: Option<MessageId>, from: &str, refusal: &Refusal) {
        self.0.events.record(Event::Refused {
            id,
            from: from.to_owned(),
            code: refusal.code,
            reason: refusal.reason.clone(),
        });
    }
}
