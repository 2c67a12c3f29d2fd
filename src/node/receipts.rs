//! Receipts and respond-by: the node's side of telling an originator how far its message got.
//!
//! One task per node, the receipts worker, reads the ledger's [`Notice`]s (a message taken, a
//! copy delivered or acknowledged, a copy that will not arrive, a recovered copy still waiting)
//! and turns them into receipts: small SYSTEM messages from this node to the originator
//! client's receipts unit (`receipt::receipts_mailbox`), routed like any message, so they are
//! durable and travel back through relays. It also keeps the respond-by deadlines of action
//! copies held for this agency, and once a second sends an overdue notice (to the originator)
//! with a reminder (to `node.escalation_unit`) for each that passed without a business response.
//!
//! It works in batches: the receipts of every notice waiting are signed with one batch signature
//! and taken together, with one store write. Which messages get receipts, and
//! how urgent those are, is decided in the sans-I/O `receipt`; deadlines are kept by the sans-I/O
//! `respond`.
//!
//! Respond-by deadlines survive restarts: every change is journaled (`deadlines`), and at start
//! the journal is replayed, so a copy acknowledged but not yet answered still gets its overdue
//! notice. The action copies still waiting in the mailboxes are tracked again too (tracking a
//! tracked deadline changes nothing).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use prost::Message as _;
use tokio::sync::mpsc;

use super::ledger::Notice;
use super::state::Node;
use crate::address::Mailbox;
use crate::draft::Draft;
use crate::identity::AgencyId;
use crate::message::{Message, MessageId, Originator, Precedence, Status, rfc3339, timestamp};
use crate::receipt::{self, precedence_for};
use crate::refusal::Refusal;
use crate::respond::{Answer, Deadlines};

use super::deadlines::{Awaited, Journal};
use crate::wire::pb;

/// The most respond-by deadlines a node tracks at once; beyond it, a message gets no overdue
/// notice (logged), its receipts are unaffected.
pub const MAX_DEADLINES: usize = 100_000;

/// Receipts live as long as their message, but at least this long, so that `enlace status` can
/// still read them a while after a short-lived alert expired.
const RECEIPT_MIN_LIFETIME: Duration = Duration::from_secs(3600);

/// How long a non-delivery report lives.
const REPORT_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// Notices handled in one batch (one signature, one round of store writes).
const BATCH: usize = 256;

/// A SYSTEM message this node is about to send.
struct Outgoing {
    envelope: pb::Envelope,
    /// What it is, for the log if it cannot be queued.
    what: &'static str,
}

struct Worker {
    node: Arc<Node>,
    /// This node, as the originator of its SYSTEM messages.
    me: Originator,
    deadlines: Deadlines<Awaited>,
    journal: Journal,
}

/// Runs the receipts worker until the ledger is gone.
pub(super) async fn run(
    node: Arc<Node>,
    mut notices: mpsc::Receiver<Notice>,
    (journal, deadlines): (Journal, Deadlines<Awaited>),
) {
    let me = Originator {
        agency: node.config.agency.clone(),
        node: node.config.name.clone(),
        client: None,
    };
    let mut w = Worker {
        node,
        me,
        deadlines,
        journal,
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let out = tokio::select! {
            n = notices.recv() => {
                let Some(n) = n else { return };
                let mut out = w.handle(n);
                for _ in 1..BATCH {
                    match notices.try_recv() {
                        Ok(n) => out.extend(w.handle(n)),
                        Err(_) => break,
                    }
                }
                out
            }
            _ = tick.tick() => w.overdue(SystemTime::now()),
        };
        w.send(out).await;
        w.journal.flush(&w.deadlines);
    }
}

impl Worker {
    /// The receipts a notice calls for (and the deadlines it starts or settles).
    fn handle(&mut self, n: Notice) -> Vec<Outgoing> {
        match n {
            Notice::Taken {
                message,
                local,
                onward,
                from_peer,
                received,
                durable_at,
            } => self.taken(&message, &local, &onward, from_peer, received, durable_at),
            Notice::Stage {
                message,
                stage,
                mailbox,
                by,
                at,
            } => {
                let agency = self.node.config.agency.as_str();
                let r = stage_receipt(message.id, stage, agency, &mailbox, by, at);
                self.receipt(&message, r).into_iter().collect()
            }
            Notice::Undelivered {
                message,
                addressees,
                reason,
                detail,
            } => self.non_delivery(&message, addressees, reason, detail),
            Notice::Waiting { message } => {
                self.await_response(&message);
                Vec::new()
            }
        }
    }

    /// After a message was taken: ACCEPTED for each addressee when this is the originator's node
    /// (at `received`, the time the sender is told), PERSISTED for each local mailbox copy (at
    /// `durable_at`, when its write returned; a time-sensitive copy is delivered while its write
    /// is in flight, so its DELIVERED may be earlier), respond-by tracking for action copies, and
    /// a business response from one of this node's clients settling the deadline of the message
    /// it answers.
    fn taken(
        &mut self,
        m: &Message,
        local: &[Mailbox],
        onward: &[AgencyId],
        from_peer: bool,
        received: SystemTime,
        durable_at: SystemTime,
    ) -> Vec<Outgoing> {
        if !from_peer && let Some(answer) = receipt::business_response(m) {
            self.answered(&answer);
        }
        if !local.is_empty() {
            self.await_response(m);
        }
        if !receipt::wants_receipts(m) {
            return Vec::new();
        }
        let me = self.node.config.name.clone();
        let own = &self.node.config.agency;
        let mut out = Vec::new();
        if !from_peer {
            let agencies = std::iter::repeat_n(own, local.len().min(1)).chain(onward);
            for agency in agencies {
                let stage = pb::ReceiptStage::Accepted;
                let r = stage_receipt(
                    m.id,
                    stage,
                    agency.as_str(),
                    &Mailbox::Inbox,
                    me.clone(),
                    received,
                );
                out.extend(self.receipt(m, r));
            }
        }
        for mailbox in local {
            let stage = pb::ReceiptStage::Persisted;
            let r = stage_receipt(m.id, stage, own.as_str(), mailbox, me.clone(), durable_at);
            out.extend(self.receipt(m, r));
        }
        out
    }

    /// Receipt `r` about `original` (which [`receipt::wants_receipts`]) to its originator.
    fn receipt(&self, original: &Message, r: pb::Receipt) -> Option<Outgoing> {
        let to = receipt::receipts_address(&original.originator)?;
        let lifetime = lifetime(Some(original.expires_at), SystemTime::now());
        let precedence = precedence_for(original.precedence);
        Some(self.system(&r, &[to], precedence, lifetime, original.id, "receipt"))
    }

    /// A `NonDelivery` report about `m` to its originator's agency inbox and client's receipts
    /// unit (one message).
    fn non_delivery(
        &self,
        m: &Message,
        addressees: String,
        reason: pb::NonDeliveryReason,
        detail: String,
    ) -> Vec<Outgoing> {
        let report = pb::NonDelivery {
            message_id: m.id.to_bytes(),
            addressee_agency: addressees,
            reason: reason as i32,
            detail,
            node: self.node.config.name.clone(),
            at: Some(timestamp(SystemTime::now())),
        };
        let mut to = vec![m.originator.agency.to_string()];
        to.extend(receipt::receipts_address(&m.originator));
        let what = "non-delivery report";
        vec![self.system(
            &report,
            &to,
            Precedence::Priority,
            REPORT_LIFETIME,
            m.id,
            what,
        )]
    }

    /// Tracks the respond-by deadline of a message held here for this node's agency, if it is
    /// an action copy with a deadline.
    fn await_response(&mut self, m: &Message) {
        if !receipt::wants_response(m) {
            return;
        }
        let directory = &self.node.config.directory;
        let own = &self.node.config.agency;
        let action_for_us = m
            .addressees
            .iter()
            .any(|a| a.action && directory.resolve(&a.agency).as_ref() == Some(own));
        let Some(deadline) = m.respond_by else {
            return;
        };
        if !action_for_us {
            return;
        }
        let awaited = Awaited {
            originator: m.originator.clone(),
            precedence: m.precedence,
            expires_at: m.expires_at,
        };
        if self.deadlines.contains(&m.id) {
            return;
        }
        if self
            .deadlines
            .track(m.id, deadline, m.expires_at, awaited.clone())
        {
            self.journal.track(m.id, deadline, &awaited);
        } else {
            let id = m.id;
            tracing::warn!(%id, max = MAX_DEADLINES, "too many respond-by deadlines; this one is not tracked");
        }
    }

    /// A business response from one of this node's clients.
    fn answered(&mut self, r: &pb::BusinessResponse) {
        let Some(id) = MessageId::from_slice(&r.message_id) else {
            return;
        };
        let need_until = r.need_until.as_ref().and_then(crate::message::system_time);
        let answer = match (r.outcome(), need_until) {
            (pb::BusinessOutcome::NeedMoreTime, Some(until)) => Answer::MoreTime(until),
            // More time without saying until when leaves the deadline as it is.
            (pb::BusinessOutcome::NeedMoreTime, None) => return,
            _ => Answer::Final,
        };
        if self.deadlines.answer(id, answer) {
            self.journal.answer(id, answer);
            tracing::debug!(%id, ?answer, "business response settles a respond-by deadline");
        }
    }

    /// For each deadline that passed without a business response, an overdue notice to the
    /// originator and a reminder to this agency's escalation unit, as one message (a receipt of
    /// stage OVERDUE).
    fn overdue(&mut self, now: SystemTime) -> Vec<Outgoing> {
        let config = &self.node.config;
        let mut out = Vec::new();
        for o in self.deadlines.due(now) {
            self.journal.fired(o.id);
            let a = &o.info;
            let deadline = rfc3339(o.deadline);
            let r = pb::Receipt {
                message_id: o.id.to_bytes(),
                addressee_agency: config.agency.to_string(),
                stage: pb::ReceiptStage::Overdue as i32,
                by: config.name.clone(),
                at: Some(timestamp(now)),
                addressee_unit: config.escalation_unit.clone(),
                detail: format!("no business response by {deadline}"),
            };
            let escalation = match config.escalation_unit.as_str() {
                "" => config.agency.to_string(),
                unit => format!("{}/{unit}", config.agency),
            };
            let Some(originator) = receipt::receipts_address(&a.originator) else {
                continue;
            };
            tracing::info!(id = %o.id, %deadline, %escalation, "respond-by deadline passed");
            let lifetime = lifetime(Some(a.expires_at), now);
            let precedence = precedence_for(a.precedence);
            let to = [originator, escalation];
            out.push(self.system(&r, &to, precedence, lifetime, o.id, "overdue notice"));
        }
        out
    }

    /// A SYSTEM message from this node with `payload` to `to` (`agency` or `agency/unit`), in
    /// reply to `about`.
    fn system<P: prost::Message + prost::Name>(
        &self,
        payload: &P,
        to: &[String],
        precedence: Precedence,
        lifetime: Duration,
        about: MessageId,
        what: &'static str,
    ) -> Outgoing {
        let draft = to
            .iter()
            .fold(Draft::new(payload), |d, a| d.to(a))
            .precedence(precedence)
            .status(Status::System)
            .kind(pb::MessageKind::Response)
            .in_reply_to(about)
            .expires_in(lifetime);
        Outgoing {
            envelope: draft.finish(&self.me, SystemTime::now()),
            what,
        }
    }

    /// Signs `out` with one batch signature and takes every message with one store write. A
    /// message that cannot be queued is recorded as refused.
    async fn send(&self, out: Vec<Outgoing>) {
        if out.is_empty() {
            return;
        }
        let bytes: Vec<Bytes> = out
            .iter()
            .map(|o| Bytes::from(o.envelope.encode_to_vec()))
            .collect();
        let refs: Vec<&[u8]> = bytes.iter().map(|b| b.as_ref()).collect();
        // The key and chain in force (they change when the node's certificate rotates).
        let own = self.node.own();
        let signatures = own.signer.sign_batch(&refs);
        let mut messages = Vec::with_capacity(out.len());
        let mut what = Vec::with_capacity(out.len());
        for ((o, bytes), signature) in out.into_iter().zip(bytes).zip(signatures) {
            match Message::parse(bytes, Some(signature)) {
                Ok(m) => {
                    messages.push(Arc::new(m));
                    what.push(o.what);
                }
                Err((r, _)) => {
                    tracing::error!(reason = %r.reason, what = o.what, "own system message is invalid");
                }
            }
        }
        let from = self.node.own_name();
        let ids: Vec<MessageId> = messages.iter().map(|m| m.id).collect();
        let now = SystemTime::now();
        let answers = self.node.take_own(messages, &own.chain, &from, now).await;
        for ((answer, id), what) in answers.into_iter().zip(ids).zip(what) {
            if let Err(r) = answer {
                let reason = format!("{what} not queued: {}", r.reason);
                let refusal = Refusal::new(r.code, reason);
                self.node.ledger.refused(Some(id), &from, &refusal);
            }
        }
    }
}

/// A receipt of `stage` for message `id` and one addressee (agency, mailbox), by `by` at `at`.
fn stage_receipt(
    id: MessageId,
    stage: pb::ReceiptStage,
    agency: &str,
    mailbox: &Mailbox,
    by: String,
    at: SystemTime,
) -> pb::Receipt {
    pb::Receipt {
        message_id: id.to_bytes(),
        addressee_agency: agency.to_owned(),
        stage: stage as i32,
        by,
        at: Some(timestamp(at)),
        addressee_unit: mailbox.wire_name().to_owned(),
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
