//! The node's lifecycle transitions: taking responsibility for a message, finishing a copy
//! (acknowledged, forwarded), retrying, dead-lettering, expiring, and reporting non-delivery.
//!
//! Every transition of a message copy goes through a method here, which records the event
//! ([`Events::record`]) and keeps the queues consistent. Decisions (routing, retry policy) come
//! from the sans-I/O core.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::events::Event;
use super::queue::{Item, Queue, Seq};
use super::{Node, entry};
use crate::identity::AgencyId;
use crate::lanes::{AfterFailure, Entry};
use crate::message::{MessageId, Precedence, timestamp};
use crate::route;
use crate::store::{Op, PutRecord, StoreError};
use crate::validate::{Admitted, Refusal};
use crate::wire::pb::{self, RefusalCode};

/// A refusal, with the message id when known.
pub(super) type Refused = (Refusal, Option<MessageId>);

/// Milliseconds since the Unix epoch, as the store keeps times.
pub(super) fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// How long a non-delivery report lives.
const REPORT_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

impl Node {
    /// Takes responsibility for an admitted message: routes it, checks room in every destination
    /// queue, and queues one copy per destination. Returns the acceptance for the sender.
    pub(super) async fn take(
        self: &Arc<Self>,
        admitted: Admitted,
        from_peer: bool,
        from: String,
        now: SystemTime,
    ) -> Result<pb::Accepted, Refused> {
        let id = admitted.id;
        let plan = self.plan(&admitted, from_peer).map_err(|r| (r, Some(id)))?;
        let mailboxes = plan
            .local_units
            .iter()
            .map(|u| self.mailbox(u))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                let r = Refusal::new(
                    RefusalCode::UnknownRecipient,
                    format!(
                        "this node keeps at most {} unit mailboxes",
                        super::MAX_MAILBOXES
                    ),
                );
                (r, Some(id))
            })?;
        let outboxes: Vec<_> = plan
            .peers
            .iter()
            .map(|p| self.outboxes[&p.node].clone())
            .collect();
        if let Some(full) = mailboxes
            .iter()
            .chain(&outboxes)
            .find(|q| !q.has_room(admitted.precedence))
        {
            return Err((
                Refusal::new(
                    RefusalCode::QueueFull,
                    format!("{} is full; retry later", full.name()),
                ),
                Some(id),
            ));
        }
        // Local copies carry this node's hop record; onward copies get it when forwarded, and
        // name the agencies the peer is to deliver or relay them for.
        let local = Arc::new({
            let mut s = admitted.signed.clone();
            s.route_to.clear();
            s.hops.push(self.hop_record(now, None));
            s
        });
        let onward: Vec<Arc<pb::SignedEnvelope>> = plan
            .peers
            .iter()
            .map(|p| {
                let mut s = admitted.signed.clone();
                s.route_to = p.agencies.iter().map(|a| a.to_string()).collect();
                Arc::new(s)
            })
            .collect();
        // On disk before the sender hears "accepted". Local copies share one encoding, and a kind
        // with no copies is not encoded at all.
        let encode = |signed: &pb::SignedEnvelope, n: usize| match n {
            0 => Bytes::new(),
            _ => Bytes::from(prost::Message::encode_to_vec(signed)),
        };
        let local_bytes = encode(&local, mailboxes.len());
        let onward_bytes: Vec<Bytes> = onward.iter().map(|s| encode(s, 1)).collect();
        let copies: Vec<(&Arc<Queue>, &Arc<pb::SignedEnvelope>, &Bytes)> = mailboxes
            .iter()
            .map(|q| (q, &local, &local_bytes))
            .chain(
                outboxes
                    .iter()
                    .zip(&onward)
                    .zip(&onward_bytes)
                    .map(|((q, s), b)| (q, s, b)),
            )
            .collect();
        let ops = copies
            .iter()
            .map(|(q, _, bytes)| {
                Op::Put(PutRecord {
                    queue: q.name().to_owned(),
                    message_id: *id.as_bytes(),
                    precedence: admitted.precedence.to_pb() as u8,
                    expires_at_ms: millis(admitted.expires_at),
                    received_at_ms: millis(now),
                    bytes: Bytes::clone(bytes),
                })
            })
            .collect();
        // Stage receipts come from the node that delivers: for local copies only.
        let wants_receipts = crate::receipt::wants_receipts(&admitted.envelope);
        let item = |signed: &Arc<pb::SignedEnvelope>, seq| Item {
            seq,
            id,
            signed: signed.clone(),
            received_at: now,
            attempts: 0,
            stage_receipts: wants_receipts && Arc::ptr_eq(signed, &local),
        };
        let queue_copy = |q: &Arc<Queue>, item| {
            // Room was checked above; concurrent submissions can overshoot the bound by at most
            // their number, and an accepted copy is never dropped.
            q.push_checked(entry(item, admitted.precedence, admitted.expires_at));
        };
        // Cut-through: a time-sensitive copy is queued while its write is in flight, so its
        // delivery or forwarding does not wait for the fsync. The sender still hears "accepted"
        // only once every copy is durable, and records about a copy wait for its write
        // (`Seq`). Should the write fail, or the message turn out to be a retransmission, the
        // copy may still be delivered: once more at worst, with the same id, which the
        // recipient's client drops.
        let early: Vec<_> = if admitted.precedence.is_time_sensitive() {
            copies
                .iter()
                .map(|(q, signed, _)| {
                    let (set, seq) = Seq::pending();
                    queue_copy(q, item(signed, seq));
                    set
                })
                .collect()
        } else {
            Vec::new()
        };
        let seqs = match self.store.commit_if_new(ops).await {
            Ok(seqs) => seqs,
            // Already accepted (a retransmission after a lost answer): accepted again, once.
            Err(StoreError::Duplicate { .. }) => {
                return Ok(pb::Accepted {
                    message_id: id.to_bytes(),
                    accepted_at: Some(timestamp(now)),
                    routed: plan.fan_out() as u32,
                });
            }
            Err(e) if e.is_fatal() => return Err((self.storage_failed(&e), Some(id))),
            // The store refused this message alone (e.g. over its size limit): nothing written.
            Err(e) => return Err((Refusal::new(RefusalCode::Invalid, e.to_string()), Some(id))),
        };
        let durable_at = SystemTime::now();
        if early.is_empty() {
            for ((q, signed, _), seq) in copies.into_iter().zip(seqs) {
                queue_copy(q, item(signed, Seq::durable(seq)));
            }
        } else {
            for (set, seq) in early.into_iter().zip(seqs) {
                let _ = set.send(Some(seq));
            }
        }
        self.events.record(Event::Accepted {
            id,
            from,
            precedence: admitted.precedence,
            destinations: plan.fan_out(),
        });
        self.after_take(&admitted, &plan, from_peer, now, durable_at);
        Ok(pb::Accepted {
            message_id: id.to_bytes(),
            accepted_at: Some(timestamp(now)),
            routed: plan.fan_out() as u32,
        })
    }

    /// Routes an admitted message with this node's directory and routing table.
    fn plan(&self, admitted: &Admitted, from_peer: bool) -> Result<route::Plan, Refusal> {
        let config = &self.config;
        let router = route::Router {
            agency: &config.agency,
            node: &config.name,
            directory: &config.directory,
            next_hop: |a: &AgencyId| {
                config.next_hop(a).map(|p| route::NextHop {
                    node: p.node.as_str(),
                    relay: p.agency != *a,
                })
            },
        };
        let hops: Vec<String> = admitted
            .signed
            .hops
            .iter()
            .map(|h| h.node.clone())
            .collect();
        let arrival = route::Arrival {
            from_peer: from_peer.then_some(admitted.signed.route_to.as_slice()),
            hops: &hops,
            max_relays: admitted.envelope.handling.as_ref().and_then(|h| h.max_hops),
        };
        router.plan(&admitted.addressees, arrival)
    }

    /// This node's hop record: when it received a message, and when it forwarded it on.
    pub(super) fn hop_record(
        &self,
        received_at: SystemTime,
        forwarded_at: Option<SystemTime>,
    ) -> pb::HopRecord {
        pb::HopRecord {
            node: self.config.name.clone(),
            agency: self.config.agency.to_string(),
            received_at: Some(timestamp(received_at)),
            forwarded_at: forwarded_at.map(timestamp),
        }
    }

    /// The store failed: it is fatal (see [`crate::store`]). The node refuses everything from
    /// now on with this reason, and stops so that a supervisor restarts it.
    pub(super) fn storage_failed(&self, e: &StoreError) -> Refusal {
        let reason = format!(
            "node {} cannot store messages ({e}); try later or another route",
            self.config.name
        );
        if self.storage_failed.set(reason.clone()).is_ok() {
            tracing::error!(node = %self.config.name, error = %e, "storage failed: refusing everything and stopping");
            self.fatal.notify_one();
        }
        Refusal::new(RefusalCode::ShuttingDown, reason)
    }

    /// Records store ops whose durability the caller need not wait for (a lost `Done` only means
    /// a redelivery that the client drops; a lost attempt count only a later dead letter).
    pub(super) fn record_later(self: &Arc<Self>, ops: Vec<Op>) {
        let node = self.clone();
        tokio::spawn(async move {
            if let Err(e) = node.store.commit(ops).await {
                if e.is_fatal() {
                    node.storage_failed(&e);
                } else {
                    tracing::warn!(error = %e, "store op not applied");
                }
            }
        });
    }

    /// As [`Node::record_later`], for ops about one copy: once the copy's `Put` is durable (at
    /// once for almost every copy). A copy that was never written needs no record.
    pub(super) fn record_about(
        self: &Arc<Self>,
        item: &Item,
        ops: impl FnOnce(u64) -> Vec<Op> + Send + 'static,
    ) {
        match item.seq.get() {
            Some(seq) => self.record_later(ops(seq)),
            None => {
                let (node, seq) = (self.clone(), item.seq.clone());
                tokio::spawn(async move {
                    if let Some(seq) = seq.wait().await {
                        node.record_later(ops(seq));
                    }
                });
            }
        }
    }

    /// A copy is finished: acknowledged by a client, or accepted by the peer it was forwarded to.
    pub(super) fn finished(self: &Arc<Self>, item: &Item, event: Event) {
        self.events.record(event);
        self.record_about(item, |seq| vec![Op::Done(seq)]);
    }

    /// A delivery or forward of `entry` failed for a reason that is the message's business (no
    /// acknowledgement): retry with backoff, or dead-letter it.
    pub(super) fn failed(self: &Arc<Self>, queue: &Queue, mut entry: Entry<Item>, reason: String) {
        entry.item.attempts += 1;
        match self.retry.after_failure(entry.item.attempts) {
            AfterFailure::Retry(delay) => {
                tracing::debug!(id = %entry.item.id, queue = queue.name(), %reason, ?delay, "will retry");
                let attempts = entry.item.attempts;
                self.record_about(&entry.item, move |seq| vec![Op::Attempt(seq, attempts)]);
                queue.retry_at(entry, SystemTime::now() + delay);
            }
            AfterFailure::DeadLetter => {
                let reason = format!("{} attempts failed; last: {reason}", entry.item.attempts);
                self.events.record(Event::DeadLettered {
                    id: entry.item.id,
                    queue: queue.name().to_owned(),
                    reason: reason.clone(),
                });
                let (attempts, why) = (entry.item.attempts, reason.clone());
                self.record_about(&entry.item, move |seq| {
                    vec![Op::Attempt(seq, attempts), Op::DeadLetter(seq, why)]
                });
                queue.dead_letter(entry, reason, SystemTime::now());
            }
        }
    }

    /// Copies that expired while waiting: record them and tell each originator.
    pub(super) fn expired(self: &Arc<Self>, queue: &Queue, entries: Vec<Entry<Item>>) {
        for e in entries {
            self.events.record(Event::Expired {
                id: e.item.id,
                queue: queue.name().to_owned(),
            });
            self.record_about(&e.item, |seq| vec![Op::Done(seq)]);
            self.report_non_delivery(
                &e.item,
                queue,
                pb::NonDeliveryReason::Expired,
                "expired before it could be delivered".into(),
            );
        }
    }

    /// A peer refused a forwarded copy for good.
    pub(super) fn forward_refused(
        self: &Arc<Self>,
        queue: &Queue,
        item: &Item,
        code: RefusalCode,
        reason: String,
    ) {
        self.finished(
            item,
            Event::ForwardRefused {
                id: item.id,
                peer: queue.destination().to_owned(),
                code,
                reason: reason.clone(),
            },
        );
        let why = match code {
            RefusalCode::Expired => pb::NonDeliveryReason::Expired,
            RefusalCode::UnknownRecipient => pb::NonDeliveryReason::UnknownRecipient,
            RefusalCode::Invalid | RefusalCode::Malformed | RefusalCode::TooLarge => {
                pb::NonDeliveryReason::Invalid
            }
            _ => pb::NonDeliveryReason::Refused,
        };
        self.report_non_delivery(item, queue, why, reason);
    }

    /// Sends a `NonDelivery` report about `item` to its originator's agency inbox and, when a
    /// client sent it, to that client's receipts unit (one message). Reports about system
    /// messages (receipts, reports) are never sent: such a failure is only logged.
    fn report_non_delivery(
        self: &Arc<Self>,
        item: &Item,
        queue: &Queue,
        reason: pb::NonDeliveryReason,
        detail: String,
    ) {
        let Ok(env) = <pb::Envelope as prost::Message>::decode(item.signed.envelope.clone()) else {
            return;
        };
        if env.status() == pb::Status::System {
            return;
        }
        let Some(originator) = env.originator else {
            return;
        };
        // The addressee agencies the copy was for (an outbox copy names them), not the peer.
        let addressees = match item.signed.route_to.join(",") {
            to if to.is_empty() => queue.destination().to_owned(),
            to => to,
        };
        let report = pb::NonDelivery {
            message_id: item.id.to_bytes(),
            addressee_agency: addressees,
            reason: reason as i32,
            detail,
            node: self.config.name.clone(),
            at: Some(timestamp(SystemTime::now())),
        };
        let mut to = vec![originator.agency.clone()];
        if !originator.client.is_empty() {
            to.push(crate::receipt::receipts_address(&originator));
        }
        self.send_system(
            &report,
            &to,
            Precedence::Priority,
            REPORT_LIFETIME,
            item.id,
            "non-delivery report",
        );
    }
}
