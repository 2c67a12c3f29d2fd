//! Receipts and respond-by: the node's side of telling an originator how far its message got.
//!
//! Every receipt a node sends comes from one of the lifecycle transitions in `node::lifecycle`
//! or `node::deliver`, through a method here: [`Node::after_take`] (ACCEPTED at the originator's
//! node, PERSISTED at the node that serves the addressee, and a business response stopping or
//! moving a deadline), [`Node::delivered`], [`Node::acknowledged`], and [`Node::overdue`] (the
//! sweeper's respond-by check). Receipts, non-delivery reports and overdue notices are small
//! SYSTEM messages signed by this node, sent with [`Node::send_system`] and routed like any
//! message (so they travel back through relays), to the originator client's receipts unit
//! (`receipt::receipts_unit`). Which messages get receipts, and how urgent those are, is decided
//! in the sans-I/O `receipt`; deadlines are kept by the sans-I/O `respond`.
//!
//! Respond-by deadlines are kept in memory. At start, the node tracks again the action copies
//! still waiting in its mailboxes (`node::recovery`); a copy that was acknowledged but not yet
//! answered before a restart is forgotten, and gets no overdue notice.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::Node;
use super::events::Event;
use super::queue::Item;
use crate::message::{Draft, MessageId, Precedence, system_time, timestamp};
use crate::receipt::{self, precedence_for};
use crate::respond::Answer;
use crate::route::Plan;
use crate::validate::{Admitted, seal};
use crate::wire::pb;

/// The most respond-by deadlines a node tracks at once; beyond it, a message gets no overdue
/// notice (logged), its receipts are unaffected.
pub const MAX_DEADLINES: usize = 100_000;

/// Receipts live as long as their message, but at least this long, so that `enlace status` can
/// still read them a while after a short-lived alert expired.
const RECEIPT_MIN_LIFETIME: Duration = Duration::from_secs(3600);

/// What the node needs to send an overdue notice and a reminder about one message.
#[derive(Debug, Clone)]
pub(super) struct Awaited {
    originator: pb::Originator,
    precedence: Precedence,
    expires_at: SystemTime,
}

impl Node {
    /// Sends a SYSTEM message from this node with `payload` to `to` (`agency` or
    /// `agency/unit`), in reply to `about`. Taking it may wait for storage; the caller does not.
    /// A message that cannot be queued is recorded as refused (`what` says what it was).
    pub(super) fn send_system<P: prost::Message + prost::Name>(
        self: &Arc<Self>,
        payload: &P,
        to: &[String],
        precedence: Precedence,
        lifetime: Duration,
        about: MessageId,
        what: &'static str,
    ) {
        let now = SystemTime::now();
        let draft = to
            .iter()
            .fold(Draft::new(payload), |d, a| d.to(a))
            .precedence(precedence)
            .status(pb::Status::System)
            .kind(pb::MessageKind::Response)
            .in_reply_to(about)
            .expires_in(lifetime);
        let me = pb::Originator {
            agency: self.config.agency.to_string(),
            node: self.config.name.clone(),
            client: String::new(),
        };
        let signed = seal(&draft.finish(me, now), &self.signer);
        let ctx = crate::validate::NodeContext {
            agency: &self.config.agency,
            node: &self.config.name,
            max_hops: self.config.limits.max_hops,
            verified: &self.verified,
        };
        let admitted = match crate::validate::admit(signed, &self.me, &ctx, now) {
            Ok(a) => a,
            Err((r, _)) => {
                tracing::error!(reason = %r.reason, what, "own system message is invalid");
                return;
            }
        };
        let id = admitted.id;
        let node = self.clone();
        tokio::spawn(async move {
            let from = format!("{}/node/{}", node.config.agency, node.config.name);
            if let Err((r, _)) = node.take(admitted, false, from.clone(), now).await {
                node.events.record(Event::Refused {
                    id: Some(id),
                    from,
                    code: r.code,
                    reason: format!("{what} not queued: {}", r.reason),
                });
            }
        });
    }

    /// Sends receipt `r` about `original` (which [`receipt::wants_receipts`]) to its originator.
    fn receipt(self: &Arc<Self>, original: &pb::Envelope, r: pb::Receipt) {
        let (Some(originator), Some(id)) =
            (&original.originator, MessageId::from_slice(&r.message_id))
        else {
            return;
        };
        let precedence = Precedence::from_pb(original.precedence()).unwrap_or(Precedence::Routine);
        self.send_system(
            &r,
            &[receipt::receipts_address(originator)],
            precedence_for(precedence),
            lifetime(
                original.expires_at.as_ref().and_then(system_time),
                SystemTime::now(),
            ),
            id,
            "receipt",
        );
    }

    /// After a message was taken (durable and queued): ACCEPTED for each addressee when this is
    /// the originator's node (at `received`, the time the sender is told), PERSISTED for each
    /// local mailbox copy (at `durable_at`, when its write returned; a time-sensitive copy is
    /// delivered while its write is in flight, so its DELIVERED may be earlier), respond-by
    /// tracking for action copies, and a business response from one of this node's clients
    /// settling the deadline of the message it answers.
    pub(super) fn after_take(
        self: &Arc<Self>,
        admitted: &Admitted,
        plan: &Plan,
        from_peer: bool,
        received: SystemTime,
        durable_at: SystemTime,
    ) {
        let env = &admitted.envelope;
        if !from_peer && let Some(answer) = receipt::business_response(env) {
            self.answered(&answer);
        }
        if !receipt::wants_receipts(env) {
            return;
        }
        let me = &self.config.name;
        if !from_peer {
            let own = std::iter::repeat_n(&self.config.agency, plan.local_units.len().min(1));
            for agency in own.chain(plan.peers.iter().flat_map(|p| &p.agencies)) {
                let stage = pb::ReceiptStage::Accepted;
                self.receipt(
                    env,
                    stage_receipt(
                        admitted.id,
                        stage,
                        agency.as_str(),
                        "",
                        me.clone(),
                        received,
                    ),
                );
            }
        }
        let agency = self.config.agency.as_str();
        for unit in &plan.local_units {
            let stage = pb::ReceiptStage::Persisted;
            self.receipt(
                env,
                stage_receipt(admitted.id, stage, agency, unit, me.clone(), durable_at),
            );
        }
        if !plan.local_units.is_empty() {
            self.await_response(admitted.id, env);
        }
    }

    /// Tracks the respond-by deadline of a message held here for this node's agency, if it is
    /// an action copy with a deadline.
    pub(super) fn await_response(&self, id: MessageId, env: &pb::Envelope) {
        if !receipt::wants_response(env) {
            return;
        }
        let directory = &self.config.directory;
        let action_for_us = env.addressees.iter().any(|a| {
            a.copy_type() != pb::CopyType::Information
                && directory.resolve(&a.agency).as_ref() == Some(&self.config.agency)
        });
        let (Some(deadline), Some(expires_at), Some(originator)) = (
            env.respond_by.as_ref().and_then(system_time),
            env.expires_at.as_ref().and_then(system_time),
            env.originator.clone(),
        ) else {
            return;
        };
        if !action_for_us {
            return;
        }
        let awaited = Awaited {
            originator,
            precedence: Precedence::from_pb(env.precedence()).unwrap_or(Precedence::Routine),
            expires_at,
        };
        let mut d = self.deadlines.lock().expect("deadlines lock poisoned");
        if !d.track(id, deadline, expires_at, awaited) {
            tracing::warn!(%id, max = MAX_DEADLINES, "too many respond-by deadlines; this one is not tracked");
        }
    }

    /// A business response from one of this node's clients.
    fn answered(&self, r: &pb::BusinessResponse) {
        let Some(id) = MessageId::from_slice(&r.message_id) else {
            return;
        };
        let answer = match (r.outcome(), r.need_until.as_ref().and_then(system_time)) {
            (pb::BusinessOutcome::NeedMoreTime, Some(until)) => Answer::MoreTime(until),
            // More time without saying until when leaves the deadline as it is.
            (pb::BusinessOutcome::NeedMoreTime, None) => return,
            _ => Answer::Final,
        };
        let mut d = self.deadlines.lock().expect("deadlines lock poisoned");
        if d.answer(id, answer) {
            tracing::debug!(%id, ?answer, "business response settles a respond-by deadline");
        }
    }

    /// The sweeper's respond-by check: for each deadline that passed without a business
    /// response, an overdue notice to the originator and a reminder to this agency's escalation
    /// unit, as one message (a receipt of stage OVERDUE).
    pub(super) fn overdue(self: &Arc<Self>, now: SystemTime) {
        let due = self
            .deadlines
            .lock()
            .expect("deadlines lock poisoned")
            .due(now);
        for o in due {
            let a = &o.info;
            let deadline = crate::message::rfc3339(o.deadline);
            let r = pb::Receipt {
                message_id: o.id.to_bytes(),
                addressee_agency: self.config.agency.to_string(),
                stage: pb::ReceiptStage::Overdue as i32,
                by: self.config.name.clone(),
                at: Some(timestamp(now)),
                addressee_unit: self.config.escalation_unit.clone(),
                detail: format!("no business response by {deadline}"),
            };
            let escalation = match self.config.escalation_unit.as_str() {
                "" => self.config.agency.to_string(),
                unit => format!("{}/{unit}", self.config.agency),
            };
            let lifetime = lifetime(Some(a.expires_at), now);
            tracing::info!(id = %o.id, %deadline, %escalation, "respond-by deadline passed");
            self.send_system(
                &r,
                &[receipt::receipts_address(&a.originator), escalation],
                precedence_for(a.precedence),
                lifetime,
                o.id,
                "overdue notice",
            );
        }
    }

    /// A copy was written to a client of `unit`: the event, and on the first attempt a DELIVERED
    /// receipt (a copy put back because its client went away is delivered with attempt 1 again,
    /// so a receipt may come twice).
    pub(super) fn delivered(self: &Arc<Self>, item: &Item, to: &str, unit: &str, attempt: u32) {
        let at = SystemTime::now();
        self.events.record(Event::Delivered {
            id: item.id,
            to: to.to_owned(),
            attempt,
        });
        if attempt == 1 {
            let by = self.config.name.clone();
            self.receipt_about(item, pb::ReceiptStage::Delivered, unit, by, at);
        }
    }

    /// A client of `unit` acknowledged a copy: finished, and an ACKNOWLEDGED receipt naming it
    /// (timed before the event is recorded, so anything that follows the event is later).
    pub(super) fn acknowledged(self: &Arc<Self>, item: &Item, by: String, unit: &str) {
        let at = SystemTime::now();
        let event = Event::Acknowledged {
            id: item.id,
            by: by.clone(),
        };
        self.finished(item, event);
        self.receipt_about(item, pb::ReceiptStage::Acknowledged, unit, by, at);
    }

    fn receipt_about(
        self: &Arc<Self>,
        item: &Item,
        stage: pb::ReceiptStage,
        unit: &str,
        by: String,
        at: SystemTime,
    ) {
        if !item.stage_receipts {
            return;
        }
        let Ok(env) = <pb::Envelope as prost::Message>::decode(item.signed.envelope.clone()) else {
            return;
        };
        let agency = self.config.agency.as_str();
        self.receipt(&env, stage_receipt(item.id, stage, agency, unit, by, at));
    }
}

/// A receipt of `stage` for message `id` and one addressee (agency, unit), by `by` at `at`.
fn stage_receipt(
    id: MessageId,
    stage: pb::ReceiptStage,
    agency: &str,
    unit: &str,
    by: String,
    at: SystemTime,
) -> pb::Receipt {
    pb::Receipt {
        message_id: id.to_bytes(),
        addressee_agency: agency.to_owned(),
        stage: stage as i32,
        by,
        at: Some(timestamp(at)),
        addressee_unit: unit.to_owned(),
        detail: String::new(),
    }
}

/// How long a receipt about a message expiring at `expires_at` lives: as long as the message, at
/// least [`RECEIPT_MIN_LIFETIME`].
fn lifetime(expires_at: Option<SystemTime>, now: SystemTime) -> Duration {
    expires_at
        .and_then(|t| t.duration_since(now).ok())
        .unwrap_or_default()
        .max(RECEIPT_MIN_LIFETIME)
}
