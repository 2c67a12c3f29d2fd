//! The ledger's first transitions of a message: **taken** (persisted and queued, with
//! cut-through for time-sensitive copies), or **refused** before any copy exists.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use prost::Message as _;

use super::{Copy, Ledger, Notice, Queue, Seq, Taking, Transit};
use crate::dedup::{self, Claim};
use crate::lanes::Entry;
use crate::message::{Message, MessageId, millis, timestamp};
use crate::node::events::Event;
use crate::refusal::Refusal;
use crate::route::Plan;
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
        let mut answers = self.take_all(vec![t], true).await;
        answers.pop().expect("one answer per message")
    }

    /// **Taken**, for several messages at once with one store request: as [`Ledger::take`] for
    /// each, with one answer per message, in order; each message is checked and written on its
    /// own (a duplicate or a refusal of one is not the others'), and they share one write and
    /// one fsync. With `unique` false the store does not check the messages' ids against those
    /// it has seen: for messages this node has just written itself (receipts and reports, under
    /// fresh ids).
    ///
    /// A batch never waits for another submission's claim on an id while holding claims of its
    /// own (two batches holding each other's ids would wait for ever): a message whose id is
    /// being taken elsewhere is set aside and taken on its own once the rest is answered.
    pub async fn take_all(
        &self,
        takings: Vec<Taking<'_>>,
        unique: bool,
    ) -> Vec<Result<pb::Accepted, Refusal>> {
        let alone = takings.len() == 1;
        let mut answers: Vec<Option<Result<pb::Accepted, Refusal>>> = Vec::new();
        let mut ready = Vec::new();
        let mut aside = Vec::new();
        for t in takings {
            let i = answers.len();
            answers.push(None);
            // Duplicates are caught before any copy is queued, whatever the precedence.
            let claim = match unique {
                true => match self.claim(&t.message, t.now, alone).await {
                    Ok(Claiming::New(claim)) => Some(claim),
                    Ok(Claiming::Duplicate) => {
                        answers[i] = Some(Ok(self.duplicate(&t)));
                        continue;
                    }
                    Ok(Claiming::Busy) => {
                        aside.push((i, t));
                        continue;
                    }
                    Err(r) => {
                        answers[i] = Some(Err(r));
                        continue;
                    }
                },
                false => None,
            };
            match self.destinations(&t.message, t.hops.clone(), &t.signer_chain, &t.plan, t.now) {
                // Cut-through queues a copy before the store's own duplicate check: an id the
                // store still holds for one of its queues (taken before a restart, or beyond
                // the remembered ids) is a duplicate.
                Ok(copies)
                    if unique
                        && t.message.precedence.is_time_sensitive()
                        && copies.iter().any(|c| {
                            self.0
                                .store
                                .contains_message(c.queue.name(), t.message.id.as_bytes())
                        }) =>
                {
                    if let Some(claim) = claim {
                        claim.taken();
                    }
                    answers[i] = Some(Ok(self.duplicate(&t)));
                }
                Ok(copies) => ready.push((i, t, copies, claim)),
                Err(r) => answers[i] = Some(Err(r)),
            }
        }
        // Cut-through (see above). Room was checked; concurrent submissions can overshoot the
        // bound by at most their number, and an accepted copy is never dropped. Should the write
        // fail, or the message turn out to be a retransmission, the copy may still be delivered:
        // once more at worst, with the same id, which the recipient's client drops.
        let early: Vec<Vec<_>> = ready
            .iter()
            .map(
                |(_, t, copies, _)| match t.message.precedence.is_time_sensitive() {
                    true => copies
                        .iter()
                        .map(|c| {
                            let (set, seq) = Seq::pending();
                            c.queue.push_checked(entry(t, &c.transit, seq));
                            set
                        })
                        .collect(),
                    false => Vec::new(),
                },
            )
            .collect();
        let units: Vec<Vec<Op>> = ready
            .iter()
            .map(|(_, t, copies, _)| {
                copies
                    .iter()
                    .map(|c| put(&t.message, &c.queue, &c.bytes, t.now))
                    .collect()
            })
            .collect();
        let written = self.0.store.commit_each(units, unique).await;
        let durable_at = SystemTime::now();
        for (((i, t, copies, claim), early), written) in ready.into_iter().zip(early).zip(written) {
            let seqs = match written {
                Ok(seqs) => seqs,
                // Already accepted (a retransmission after a lost answer): accepted again, once.
                Err(StoreError::Duplicate { .. }) => {
                    if let Some(claim) = claim {
                        claim.taken();
                    }
                    answers[i] = Some(Ok(self.duplicate(&t)));
                    continue;
                }
                // Failed, full, or this message alone refused (e.g. over its size limit):
                // nothing of it was written.
                Err(e) => {
                    answers[i] = Some(Err(self.store_refusal(&e)));
                    continue;
                }
            };
            if let Some(claim) = claim {
                claim.taken();
            }
            if early.is_empty() {
                for (c, seq) in copies.iter().zip(seqs) {
                    c.queue
                        .push_checked(entry(&t, &c.transit, Seq::durable(seq)));
                }
            } else {
                for (set, seq) in early.into_iter().zip(seqs) {
                    let _ = set.send(Some(seq));
                }
            }
            answers[i] = Some(Ok(accepted(&t)));
            self.0.events.record_about(
                &t.message,
                Event::Accepted {
                    id: t.message.id,
                    from: t.from.to_owned(),
                    precedence: t.message.precedence,
                    destinations: t.plan.fan_out(),
                },
            );
            self.notify(Notice::Taken {
                onward: t
                    .plan
                    .peers
                    .iter()
                    .flat_map(|p| p.agencies.clone())
                    .collect(),
                local: t.plan.local,
                message: t.message,
                from_peer: t.from_peer,
                received: t.now,
                durable_at,
            });
        }
        // Every claim of this batch is settled: each set-aside message may wait for its own.
        for (i, t) in aside {
            answers[i] = Some(Box::pin(self.take(t)).await);
        }
        answers.into_iter().map(|a| a.expect("answered")).collect()
    }

    /// The copies `plan` calls for: each destination queue (which must have room for the
    /// message's class), what travels with the copy, and the copy's encoding for the store.
    /// Local copies carry this node's hop record and share one encoding; onward copies get
    /// their hop record when forwarded, and name the agencies the peer is to deliver or relay
    /// them for.
    fn destinations(
        &self,
        message: &Message,
        hops: Vec<pb::HopRecord>,
        chain: &Arc<[Bytes]>,
        plan: &Plan,
        now: SystemTime,
    ) -> Result<Vec<Destination>, Refusal> {
        let mut out = Vec::with_capacity(plan.fan_out());
        let mut local: Option<(Arc<Transit>, Bytes)> = None;
        for queue in self.mailboxes_for(&plan.local, message.precedence)? {
            let (transit, bytes) = local
                .get_or_insert_with(|| {
                    let mut hops = hops.clone();
                    hops.push(self.hop_record(now, None));
                    transit(message, hops, Vec::new(), chain)
                })
                .clone();
            out.push(Destination {
                queue,
                transit,
                bytes,
            });
        }
        for p in &plan.peers {
            let queue = self.outbox(&p.node).ok_or_else(|| {
                Refusal::new(
                    RefusalCode::UnknownRecipient,
                    format!("no link to node {}", p.node),
                )
            })?;
            let route_to = p.agencies.iter().map(|a| a.to_string()).collect();
            let (transit, bytes) = transit(message, hops.clone(), route_to, chain);
            out.push(Destination {
                queue,
                transit,
                bytes,
            });
        }
        if let Some(full) = out.iter().find(|c| !c.queue.has_room(message.precedence)) {
            return Err(Refusal::new(
                RefusalCode::QueueFull,
                format!("{} is full; retry later", full.queue.name()),
            ));
        }
        Ok(out)
    }

    /// Claims `m`'s id for taking: [`Claiming::Duplicate`] when it is a duplicate of a message
    /// taken already (same id, same originator), a `DUPLICATE_ID` refusal when another
    /// originator used the id. While the same message is being taken by another submission, it
    /// waits for that one's outcome if `wait`, else answers [`Claiming::Busy`].
    async fn claim(&self, m: &Message, now: SystemTime, wait: bool) -> Result<Claiming, Refusal> {
        let fingerprint = dedup::fingerprint(m);
        loop {
            let settled = self.0.ids_settled.notified();
            tokio::pin!(settled);
            // Registered before the claim, so a settle in between is not missed.
            settled.as_mut().enable();
            let claim = self.0.ids.lock().expect("ids lock poisoned").claim(
                m.id,
                fingerprint,
                m.expires_at,
                now,
            );
            match claim {
                Claim::New => {
                    return Ok(Claiming::New(Claimed {
                        ledger: self.clone(),
                        id: m.id,
                        taken: false,
                    }));
                }
                Claim::Duplicate => return Ok(Claiming::Duplicate),
                Claim::Conflict => {
                    return Err(Refusal::new(
                        RefusalCode::DuplicateId,
                        format!(
                            "message id {} was already used by another originator; give each \
                             message a fresh id (a UUIDv7)",
                            m.id
                        ),
                    ));
                }
                Claim::InProgress if !wait => return Ok(Claiming::Busy),
                Claim::InProgress => settled.await,
            }
        }
    }

    /// **Duplicate**: the answer for a message taken before, recorded.
    fn duplicate(&self, t: &Taking<'_>) -> pb::Accepted {
        self.0.events.record_about(
            &t.message,
            Event::Duplicate {
                id: t.message.id,
                from: t.from.to_owned(),
            },
        );
        accepted(t)
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

/// What claiming an id gave (see [`Ledger::claim`]).
enum Claiming {
    New(Claimed),
    Duplicate,
    /// Being taken by another submission (only when not waiting).
    Busy,
}

/// A claim on a message id (see [`Ledger::claim`]), settled when dropped: remembered if the
/// message was taken, else forgotten, so that a resubmission is taken afresh. Dropped by a
/// cancelled submission too, so no id stays claimed.
struct Claimed {
    ledger: Ledger,
    id: MessageId,
    taken: bool,
}

impl Claimed {
    fn taken(mut self) {
        self.taken = true;
    }
}

impl Drop for Claimed {
    fn drop(&mut self) {
        let inner = &self.ledger.0;
        inner
            .ids
            .lock()
            .expect("ids lock poisoned")
            .settle(self.id, self.taken);
        inner.ids_settled.notify_waiters();
    }
}

/// One copy a message is taken as: its queue, its transit records, its stored form.
struct Destination {
    queue: Arc<Queue>,
    transit: Arc<Transit>,
    bytes: Bytes,
}

/// Transit records for a copy, and the copy's encoding as the store keeps it (the signed
/// envelope with those records).
fn transit(
    message: &Message,
    hops: Vec<pb::HopRecord>,
    route_to: Vec<String>,
    chain: &Arc<[Bytes]>,
) -> (Arc<Transit>, Bytes) {
    let signed = message.signed(hops.clone(), route_to.clone(), chain);
    let bytes = Bytes::from(signed.encode_to_vec());
    let transit = Transit {
        hops,
        route_to,
        signer_chain: chain.clone(),
    };
    (Arc::new(transit), bytes)
}

/// The answer a sender hears for a message taken (or taken before).
fn accepted(t: &Taking<'_>) -> pb::Accepted {
    pb::Accepted {
        message_id: t.message.id.to_bytes(),
        accepted_at: Some(timestamp(t.now)),
        routed: t.plan.fan_out() as u32,
    }
}

/// The store record of one copy.
fn put(message: &Message, queue: &Queue, bytes: &Bytes, now: SystemTime) -> Op {
    Op::Put(PutRecord {
        queue: queue.name().to_owned(),
        message_id: *message.id.as_bytes(),
        precedence: message.precedence.to_pb() as u8,
        expires_at_ms: millis(message.deadline()),
        received_at_ms: millis(now),
        bytes: bytes.clone(),
    })
}

/// A queued copy of the message `t` takes, with its transit records and store sequence.
fn entry(t: &Taking<'_>, transit: &Arc<Transit>, seq: Seq) -> Entry<Copy> {
    Entry {
        precedence: t.message.precedence,
        expires_at: t.message.deadline(),
        item: Copy {
            message: t.message.clone(),
            transit: transit.clone(),
            seq,
            received_at: t.now,
            attempts: 0,
        },
    }
}
