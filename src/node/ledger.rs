//! The ledger: the one place where a message copy's fate changes.
//!
//! A node holds copies of messages in queues (a mailbox per unit of its agency, an outbox per
//! peer node). Every change of a copy's fate is a method here: taken (queued and persisted),
//! dispatched (in flight to a client or peer), delivered, acknowledged, forwarded, refused
//! downstream, returned, deferred, retried, dead-lettered, redriven, expired, purged; and a
//! refused submission is recorded here too. Each records exactly one [`Event`] and writes the
//! store's fate records (`Put`, `Done`, `Attempt`, `DeadLetter`, `Redrive`): the ledger owns the
//! node's [`Store`] and its queues, whose mutating methods are visible to it alone
//! ([`queue`]), so nothing else can change a fate. What the originator must hear about a change
//! (stage receipts, non-delivery reports, respond-by tracking) leaves as a [`Notice`] for the
//! receipts worker (`node::receipts`).
//!
//! What to do next (which copy to send, what an outcome means) is decided by the sans-I/O
//! [`crate::dispatch`]; where a message goes by [`crate::route`]. The ledger carries out those
//! decisions and decides nothing itself.
//!
//! A copy taken from a queue travels as an [`InFlight`]: it is settled through
//! [`Ledger::settle`], and if it is dropped unsettled (its connection went away, a task ended)
//! it goes back to the head of its lane, so no copy is ever lost in flight.

mod cold;
mod dead;
pub(crate) mod queue;
mod recovery;
mod take;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use tokio::sync::{Notify, mpsc};

use super::events::{Event, Events};
use crate::address::Mailbox;
use crate::dedup::Ids;
use crate::dispatch::{Action, Dispatcher, Next};
use crate::identity::AgencyId;
use crate::lanes::Entry;
use crate::message::{Message, Precedence, timestamp};
use crate::receipt;
use crate::refusal::Refusal;
use crate::route::Plan;
use crate::store::{Op, Store, StoreError};
use crate::wire::pb::{self, RefusalCode};
pub(crate) use queue::{Copy, DeadLetter, Queue, QueueId, Seq, Transit};

/// Mailboxes (agency inbox plus units) a node keeps; units are created on first use, so this
/// bounds what addressees and subscribers can make a node allocate.
pub const MAX_MAILBOXES: usize = 1024;

/// Notices waiting for the receipts worker. When it is this far behind (its store writes are
/// stuck), further notices are dropped, counted and logged: a receipt, a report or a deadline
/// is lost, never a message.
pub(crate) const NOTICE_BACKLOG: usize = 65_536;

/// What the originator of a message must hear about, or the node must track, after a change.
#[derive(Debug)]
pub(crate) enum Notice {
    /// A message was taken: durable, and queued for these mailboxes and onward agencies.
    Taken {
        message: Arc<Message>,
        local: Vec<Mailbox>,
        onward: Vec<AgencyId>,
        /// Whether a peer node handed it over (else one of this node's clients, or the node).
        from_peer: bool,
        /// When the sender was told it was accepted.
        received: SystemTime,
        /// When its write returned.
        durable_at: SystemTime,
    },
    /// A mailbox copy was delivered or acknowledged.
    Stage {
        message: Arc<Message>,
        stage: pb::ReceiptStage,
        mailbox: Mailbox,
        by: String,
        at: SystemTime,
    },
    /// A copy will not arrive.
    Undelivered {
        message: Arc<Message>,
        /// The addressee agencies the copy was for.
        addressees: String,
        reason: pb::NonDeliveryReason,
        detail: String,
    },
    /// A copy recovered at start still waits in a mailbox: its deadline is tracked again.
    Waiting { message: Arc<Message> },
}

/// What the ledger needs to know to take a message.
pub(crate) struct Taking<'a> {
    pub message: Arc<Message>,
    /// Hop records as received (this node's own is added here).
    pub hops: Vec<pb::HopRecord>,
    /// The signer's certificate chain, carried with every copy.
    pub signer_chain: Arc<[bytes::Bytes]>,
    pub plan: Plan,
    /// Who handed it over, for the event: a client, a peer node, or this node.
    pub from: &'a str,
    pub from_peer: bool,
    pub now: SystemTime,
}

/// A copy taken from its queue and not yet settled. Dropped unsettled, it goes back to the head
/// of its lane (see the module docs).
pub(crate) struct InFlight {
    entry: Option<Entry<Copy>>,
    queue: Arc<Queue>,
    ledger: Ledger,
}

impl InFlight {
    pub fn copy(&self) -> &Copy {
        // Present until the copy is settled or dropped, which consumes `self`.
        &self
            .entry
            .as_ref()
            .expect("an in-flight copy is present")
            .item
    }

    pub fn precedence(&self) -> Precedence {
        self.entry
            .as_ref()
            .expect("an in-flight copy is present")
            .precedence
    }

    /// This attempt's number: 1 for the first delivery.
    pub fn attempt(&self) -> u32 {
        self.copy().attempts + 1
    }

    fn take(mut self) -> (Entry<Copy>, Arc<Queue>) {
        let entry = self.entry.take().expect("an in-flight copy is present");
        (entry, self.queue.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(entry) = self.entry.take() {
            self.ledger
                .returned(&self.queue, entry, "its attempt was abandoned");
        }
    }
}

/// The node's ledger; clones share it.
#[derive(Clone)]
pub(crate) struct Ledger(Arc<Inner>);

struct Inner {
    node: String,
    agency: AgencyId,
    capacity: usize,
    store: Store,
    events: Events,
    /// Mailboxes of this node's agency. Created on first use, at most [`MAX_MAILBOXES`].
    mailboxes: Mutex<HashMap<Mailbox, Arc<Queue>>>,
    /// One outbox per peer node, by node name; fixed at start.
    outboxes: HashMap<String, Arc<Queue>>,
    /// Dead letters whose queue no longer exists.
    orphans: Arc<Queue>,
    notices: mpsc::Sender<Notice>,
    notices_dropped: AtomicU64,
    /// Store records being written in the background (see [`Ledger::flush`]).
    recording: AtomicUsize,
    /// Background records not yet sent to the store, and whether a task is sending them (see
    /// [`Ledger::record_later`]).
    later: Mutex<Later>,
    /// Woken when `recording` falls to zero.
    recorded: Notify,
    /// Set once the store has failed, with the reason given to every sender from then on.
    failed: OnceLock<String>,
    /// Woken when the store fails: the node then stops, so that a supervisor restarts it.
    fatal: Notify,
    /// Message ids taken and being taken, for duplicate detection (see [`crate::dedup`]).
    ids: Mutex<Ids>,
    /// Woken whenever a claim on an id is settled.
    ids_settled: Notify,
    /// The seqs below this were recovered from the store at start (see [`Ledger::recover`]).
    recovered_below: AtomicU64,
}

/// Store ops recorded in the background and not yet sent (see [`Ledger::record_later`]).
#[derive(Default)]
struct Later {
    units: Vec<Vec<Op>>,
    sending: bool,
}

impl Ledger {
    /// A ledger over `store` for node `node` of `agency`, with an outbox per peer. Returns the
    /// receiving end of its notices, for the receipts worker.
    pub fn new(
        node: &str,
        agency: &AgencyId,
        peers: impl Iterator<Item = String>,
        capacity: usize,
        dedup_ids: usize,
        store: Store,
        events: Events,
    ) -> (Ledger, mpsc::Receiver<Notice>) {
        let outboxes = peers
            .map(|p| {
                let q = Queue::new(QueueId::Outbox(p.clone()), agency, capacity);
                (p, q)
            })
            .collect();
        let (notices, rx) = mpsc::channel(NOTICE_BACKLOG);
        let inner = Inner {
            node: node.to_owned(),
            agency: agency.clone(),
            capacity,
            store,
            events,
            mailboxes: Mutex::default(),
            outboxes,
            orphans: Queue::new(QueueId::Orphans, agency, 1),
            notices,
            notices_dropped: AtomicU64::new(0),
            recording: AtomicUsize::new(0),
            later: Mutex::new(Later::default()),
            recorded: Notify::new(),
            failed: OnceLock::new(),
            fatal: Notify::new(),
            ids: Mutex::new(Ids::new(dedup_ids)),
            ids_settled: Notify::new(),
            recovered_below: AtomicU64::new(0),
        };
        (Ledger(Arc::new(inner)), rx)
    }

    pub fn events(&self) -> &Events {
        &self.0.events
    }

    /// The mailbox of `m`, created on first use; `None` when creating it would exceed
    /// [`MAX_MAILBOXES`].
    pub fn mailbox(&self, m: &Mailbox) -> Option<Arc<Queue>> {
        let mut all = self.0.mailboxes.lock().expect("mailbox map lock poisoned");
        if let Some(q) = all.get(m) {
            return Some(q.clone());
        }
        if all.len() >= MAX_MAILBOXES {
            return None;
        }
        let id = QueueId::Mailbox(m.clone());
        let q = Queue::new(id, &self.0.agency, self.0.capacity);
        all.insert(m.clone(), q.clone());
        Some(q)
    }

    /// The mailboxes of `wanted`, for a message of precedence `p`: existing ones must have room
    /// for it, and missing ones are created only if all of them fit in [`MAX_MAILBOXES`], so a
    /// refused message creates none.
    ///
    /// # Errors
    /// `QUEUE_FULL` naming the full mailbox, or `UNKNOWN_RECIPIENT` when the table is full.
    pub(crate) fn mailboxes_for(
        &self,
        wanted: &[Mailbox],
        p: Precedence,
    ) -> Result<Vec<Arc<Queue>>, Refusal> {
        let mut all = self.0.mailboxes.lock().expect("mailbox map lock poisoned");
        let missing = wanted.iter().filter(|m| !all.contains_key(m)).count();
        if all.len() + missing > MAX_MAILBOXES {
            return Err(Refusal::new(
                RefusalCode::UnknownRecipient,
                format!(
                    "this node keeps at most {MAX_MAILBOXES} unit mailboxes and has no room \
                     for {missing} more"
                ),
            ));
        }
        if let Some(full) = wanted
            .iter()
            .filter_map(|m| all.get(m))
            .find(|q| !q.has_room(p))
        {
            return Err(Refusal::new(
                RefusalCode::QueueFull,
                format!("{} is full; retry later", full.name()),
            ));
        }
        Ok(wanted
            .iter()
            .map(|m| {
                all.entry(m.clone())
                    .or_insert_with(|| {
                        Queue::new(QueueId::Mailbox(m.clone()), &self.0.agency, self.0.capacity)
                    })
                    .clone()
            })
            .collect())
    }

    /// Drops the mailboxes nobody uses: empty, without dead letters, and held by nothing but
    /// the table (no reader, no copy in flight, no message being taken). The next message or
    /// reader creates them again.
    fn drop_unused_mailboxes(&self) {
        let mut all = self.0.mailboxes.lock().expect("mailbox map lock poisoned");
        // With the table locked, nobody can take another reference to a mailbox.
        all.retain(|_, q| Arc::strong_count(q) > 1 || !q.is_empty() || q.has_dead_letters());
    }

    /// The outbox toward peer node `peer`.
    pub fn outbox(&self, peer: &str) -> Option<Arc<Queue>> {
        self.0.outboxes.get(peer).cloned()
    }

    /// Every queue: mailboxes, outboxes, orphans.
    pub fn queues(&self) -> Vec<Arc<Queue>> {
        let mut all: Vec<_> = self
            .0
            .mailboxes
            .lock()
            .expect("mailbox map lock poisoned")
            .values()
            .cloned()
            .collect();
        all.extend(self.0.outboxes.values().cloned());
        all.push(self.0.orphans.clone());
        all
    }

    /// True when nothing waits in any queue, receipts units aside: receipts wait there, durable,
    /// until their originator reads them, which shutting down cannot hurry.
    pub fn drained(&self) -> bool {
        let mailboxes_empty = self
            .0
            .mailboxes
            .lock()
            .expect("mailbox map lock poisoned")
            .iter()
            .all(|(m, q)| receipt::is_receipts_mailbox(m) || q.is_empty());
        mailboxes_empty && self.0.outboxes.values().all(|q| q.is_empty())
    }

    /// The store's counters (for the metrics).
    pub fn store_stats(&self) -> crate::store::StoreStats {
        self.0.store.stats()
    }

    /// Why the node takes no new messages because its store failed, if it did.
    pub fn failure(&self) -> Option<&str> {
        self.0.failed.get().map(String::as_str)
    }

    /// Completes when the store has failed (the node then stops).
    pub async fn fatal(&self) {
        if self.failure().is_some() {
            return;
        }
        self.0.fatal.notified().await;
    }

    /// Waits until the store records written in the background (acknowledgements, attempts,
    /// dead letters) are on disk or have failed.
    pub async fn flush(&self) {
        loop {
            let recorded = self.0.recorded.notified();
            if self.0.recording.load(Ordering::Acquire) == 0 {
                return;
            }
            recorded.await;
        }
    }

    /// Closes the store once nothing more will be written.
    pub async fn close(&self) -> Result<(), StoreError> {
        self.0.store.clone().close().await
    }

    /// **Dispatched**: takes the next copy to send from `queue`, as `dispatcher` decides given
    /// its windows. Copies found expired on the way are expired.
    pub fn next(
        &self,
        queue: &Arc<Queue>,
        dispatcher: &mut Dispatcher,
        now: SystemTime,
        accept: impl Fn(&Copy) -> bool,
    ) -> Next<InFlight> {
        let mut expired = Vec::new();
        // Cold copies are brought back as the consumer takes, before the lane runs dry.
        let (next, cold) = queue.with_lanes(|lanes| {
            let next = dispatcher.next(lanes, now, &mut expired, accept);
            (next, lanes.take_refill())
        });
        if !cold.is_empty() {
            self.refill(queue, cold);
        }
        if !expired.is_empty() {
            self.expire(queue, expired);
        }
        match next {
            Next::Send(entry, ticket) => {
                self.0.events.record_about(
                    &entry.item.message,
                    Event::Dispatched {
                        id: entry.item.id(),
                        queue: queue.name().to_owned(),
                        attempt: entry.item.attempts + 1,
                    },
                );
                let copy = InFlight {
                    entry: Some(entry),
                    queue: queue.clone(),
                    ledger: self.clone(),
                };
                Next::Send(copy, ticket)
            }
            Next::Wait { wake_at } => Next::Wait { wake_at },
            Next::Full => Next::Full,
        }
    }

    /// **Delivered**: a mailbox copy was written to the client `to`. On the first attempt, a
    /// DELIVERED receipt is owed (a copy put back because its client went away is delivered
    /// with attempt 1 again, so the receipt may come twice).
    pub fn delivered(&self, copy: &InFlight, to: &str) {
        let at = SystemTime::now();
        let attempt = copy.attempt();
        self.0.events.record_about(
            &copy.copy().message,
            Event::Delivered {
                id: copy.copy().id(),
                to: to.to_owned(),
                attempt,
            },
        );
        if let Some(m) = self.0.events.metrics() {
            m.delivered(&copy.copy().message, copy.copy().received_at, at);
        }
        if attempt == 1 {
            self.stage(
                &copy.queue,
                copy.copy(),
                pb::ReceiptStage::Delivered,
                self.0.node.clone(),
                at,
            );
        }
    }

    /// Settles a copy after its attempt, as the dispatcher decided: **acknowledged** (by client
    /// `by`) or **forwarded** (to the peer), **returned**, **deferred**, **retried**,
    /// **dead-lettered**, or **refused downstream** (with a non-delivery report).
    pub fn settle(&self, copy: InFlight, action: Action, by: &str) {
        let (mut entry, queue) = copy.take();
        let id = entry.item.id();
        match action {
            Action::Finish => {
                let at = SystemTime::now();
                if let Some(m) = self.0.events.metrics() {
                    let forwarded = matches!(queue.id(), QueueId::Outbox(_));
                    m.finished(&entry.item.message, entry.item.received_at, forwarded, at);
                }
                match queue.id() {
                    QueueId::Outbox(peer) => self.0.events.record_about(
                        &entry.item.message,
                        Event::Forwarded {
                            id,
                            peer: peer.clone(),
                        },
                    ),
                    _ => {
                        self.0.events.record_about(
                            &entry.item.message,
                            Event::Acknowledged {
                                id,
                                by: by.to_owned(),
                            },
                        );
                        let stage = pb::ReceiptStage::Acknowledged;
                        self.stage(&queue, &entry.item, stage, by.to_owned(), at);
                    }
                }
                self.record_about(&entry.item, |seq| vec![Op::Done(seq)]);
            }
            Action::Return => self.returned(&queue, entry, by),
            Action::Defer(until) => {
                self.0.events.record_about(
                    &entry.item.message,
                    Event::Deferred {
                        id,
                        queue: queue.name().to_owned(),
                        until,
                    },
                );
                queue.retry_at(entry, until);
            }
            Action::Retry {
                at,
                attempts,
                reason,
            } => {
                self.0.events.record_about(
                    &entry.item.message,
                    Event::Retrying {
                        id,
                        queue: queue.name().to_owned(),
                        attempts,
                        at,
                        reason,
                    },
                );
                entry.item.attempts = attempts;
                self.record_about(&entry.item, move |seq| vec![Op::Attempt(seq, attempts)]);
                queue.retry_at(entry, at);
            }
            Action::DeadLetter { attempts, reason } => {
                self.0.events.record_about(
                    &entry.item.message,
                    Event::DeadLettered {
                        id,
                        queue: queue.name().to_owned(),
                        reason: reason.clone(),
                    },
                );
                entry.item.attempts = attempts;
                let why = reason.clone();
                self.record_about(&entry.item, move |seq| {
                    vec![Op::Attempt(seq, attempts), Op::DeadLetter(seq, why)]
                });
                queue.dead_letter(DeadLetter {
                    entry,
                    reason,
                    at: SystemTime::now(),
                });
            }
            Action::Undeliverable { why, code, reason } => {
                self.0.events.record_about(
                    &entry.item.message,
                    Event::ForwardRefused {
                        id,
                        peer: queue.destination().to_owned(),
                        code,
                        reason: reason.clone(),
                    },
                );
                self.record_about(&entry.item, |seq| vec![Op::Done(seq)]);
                self.undelivered(&queue, &entry.item, why, reason);
            }
        }
    }

    /// **Returned**: a copy goes back to the head of its lane, no attempt counted (its
    /// connection went away before an answer).
    fn returned(&self, queue: &Queue, entry: Entry<Copy>, why: &str) {
        self.0.events.record_about(
            &entry.item.message,
            Event::Returned {
                id: entry.item.id(),
                queue: queue.name().to_owned(),
                reason: why.to_owned(),
            },
        );
        queue.requeue(entry);
    }

    /// **Expired**: copies that expired while waiting are finished, and each originator told.
    ///
    /// A copy whose originator's retention period (`retain_until`) ended first is **purged**
    /// instead: the same, recorded as such.
    pub fn expire(&self, queue: &Queue, entries: Vec<Entry<Copy>>) {
        let now = SystemTime::now();
        for e in entries {
            let id = e.item.id();
            let queue_name = queue.name().to_owned();
            let detail = if e.item.message.retention_over(now) {
                self.0.events.record_about(
                    &e.item.message,
                    Event::Purged {
                        id: Some(id),
                        queue: queue_name,
                        reason: "its retention period (retain_until) ended".into(),
                    },
                );
                "purged before it could be delivered: its originator's retention period \
                 (retain_until) ended"
            } else {
                self.0.events.record_about(
                    &e.item.message,
                    Event::Expired {
                        id,
                        queue: queue_name,
                    },
                );
                "expired before it could be delivered"
            };
            self.record_about(&e.item, |seq| vec![Op::Done(seq)]);
            let why = pb::NonDeliveryReason::Expired;
            self.undelivered(queue, &e.item, why, detail.to_owned());
        }
    }

    /// **Purged**: dead letters past their originator's retention period (`retain_until`) are
    /// erased too; an operator could otherwise redrive what must no longer exist.
    fn purge_dead(&self, queue: &Queue, now: SystemTime) {
        for d in queue.take_dead(|d| d.entry.item.message.retention_over(now)) {
            self.0.events.record_about(
                &d.entry.item.message,
                Event::Purged {
                    id: Some(d.entry.item.id()),
                    queue: queue.name().to_owned(),
                    reason: "a dead letter past its retention period (retain_until)".into(),
                },
            );
            self.record_about(&d.entry.item, |seq| vec![Op::Done(seq)]);
        }
    }

    /// Expires every copy past its expiry, wherever it waits (the sweeper's round).
    pub fn sweep(&self, now: SystemTime) {
        self.0.ids.lock().expect("ids lock poisoned").expire(now);
        self.drop_unused_mailboxes();
        for q in self.queues() {
            let expired = q.drain_expired(now);
            if !expired.is_empty() {
                self.expire(&q, expired);
            }
            let expired = q.drain_expired_cold(now);
            if !expired.is_empty() {
                self.expire_cold(&q, expired);
            }
            if q.has_dead_letters() {
                self.purge_dead(&q, now);
            }
        }
    }

    /// This node's hop record: when it received a message, and when it forwarded it on.
    pub fn hop_record(
        &self,
        received_at: SystemTime,
        forwarded_at: Option<SystemTime>,
    ) -> pb::HopRecord {
        pb::HopRecord {
            node: self.0.node.clone(),
            agency: self.0.agency.to_string(),
            received_at: Some(timestamp(received_at)),
            forwarded_at: forwarded_at.map(timestamp),
        }
    }

    /// The sender's refusal for a store that did not take its request: `STORE_FAILED` when
    /// the store failed ([`Ledger::storage_failed`]), `STORE_FULL` when the disk is full,
    /// `INVALID` for a request the store refused alone. Reasons name no file: the log does.
    fn store_refusal(&self, e: &StoreError) -> Refusal {
        match e {
            e if e.is_fatal() => self.storage_failed(e),
            // Said once by the store; each refusal is logged within its sender's refusal rate.
            StoreError::Full => Refusal::new(
                RefusalCode::StoreFull,
                format!(
                    "node {}'s disk is full: nothing of this message was kept; the node \
                         goes on delivering what it holds and accepts again once space \
                         returns: retry later or by another route",
                    self.0.node
                ),
            ),
            e => Refusal::invalid(e.to_string()),
        }
    }

    /// The store failed: it is fatal (see [`crate::store`]). The node refuses everything from
    /// now on with `STORE_FAILED`, and stops so that a supervisor restarts it (the cause, with
    /// the file, is in the node's log, not in the refusal).
    fn storage_failed(&self, e: &StoreError) -> Refusal {
        let reason = format!(
            "node {}'s store failed (an I/O error on its disk): it accepts nothing until it is \
             restarted, and what it accepted before is safe; retry later or by another route",
            self.0.node
        );
        if self.0.failed.set(reason.clone()).is_ok() {
            tracing::error!(node = %self.0.node, error = %e, "STORAGE FAILED: refusing everything and stopping; restart the node once the disk is checked");
            self.0.fatal.notify_one();
        }
        Refusal::new(RefusalCode::StoreFailed, reason)
    }

    /// Records store ops whose durability the caller need not wait for (a lost `Done` only means
    /// a redelivery that the client drops; a lost attempt count only a later dead letter).
    ///
    /// The ops wait in [`Later`] for the one task that sends them: everything that gathered
    /// while its last request was being written goes in its next, as one store request (each
    /// call's ops a unit of their own, so one refused unit costs no other), so acknowledgements
    /// cost one store request per round, not one each.
    fn record_later(&self, ops: Vec<Op>) {
        self.0.recording.fetch_add(1, Ordering::AcqRel);
        let start = {
            let mut later = self.0.later.lock().expect("later lock poisoned");
            later.units.push(ops);
            !std::mem::replace(&mut later.sending, true)
        };
        if !start {
            return;
        }
        let ledger = self.clone();
        tokio::spawn(async move {
            loop {
                let units = {
                    let mut later = ledger.0.later.lock().expect("later lock poisoned");
                    if later.units.is_empty() {
                        later.sending = false;
                        return;
                    }
                    std::mem::take(&mut later.units)
                };
                let written = ledger.0.store.commit_each(units, false).await;
                let mut failed = written.iter().filter_map(|r| r.as_ref().err());
                if let Some(e) = failed.next() {
                    match e.is_fatal() {
                        true => {
                            ledger.storage_failed(e);
                        }
                        // With the disk full, a copy finished here may come back after a
                        // restart (a duplicate the client drops); the node goes on.
                        false => {
                            let more = failed.count();
                            tracing::warn!(error = %e, more, "store ops not applied");
                        }
                    }
                }
                for _ in written {
                    ledger.recorded_one();
                }
            }
        });
    }

    fn recorded_one(&self) {
        if self.0.recording.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.recorded.notify_waiters();
        }
    }

    /// As [`Ledger::record_later`], for ops about one copy: once the copy's `Put` is durable (at
    /// once for almost every copy). A copy that was never written needs no record.
    fn record_about(&self, copy: &Copy, ops: impl FnOnce(u64) -> Vec<Op> + Send + 'static) {
        match copy.seq.get() {
            Some(seq) => self.record_later(ops(seq)),
            None => {
                let (ledger, seq) = (self.clone(), copy.seq.clone());
                self.0.recording.fetch_add(1, Ordering::AcqRel);
                tokio::spawn(async move {
                    if let Some(seq) = seq.wait().await {
                        ledger.record_later(ops(seq));
                    }
                    ledger.recorded_one();
                });
            }
        }
    }

    /// A stage receipt about a mailbox copy, when its originator asked for them.
    fn stage(
        &self,
        queue: &Queue,
        copy: &Copy,
        stage: pb::ReceiptStage,
        by: String,
        at: SystemTime,
    ) {
        let QueueId::Mailbox(mailbox) = queue.id() else {
            return;
        };
        if !receipt::wants_receipts(&copy.message) {
            return;
        }
        self.notify(Notice::Stage {
            message: copy.message.clone(),
            stage,
            mailbox: mailbox.clone(),
            by,
            at,
        });
    }

    /// A non-delivery report about `copy`, when its originator gets one.
    fn undelivered(
        &self,
        queue: &Queue,
        copy: &Copy,
        reason: pb::NonDeliveryReason,
        detail: String,
    ) {
        if !receipt::wants_non_delivery(&copy.message) {
            return;
        }
        // The addressee agencies the copy was for (an outbox copy names them), not the peer.
        let addressees = match copy.transit.route_to.join(",") {
            to if to.is_empty() => queue.destination().to_owned(),
            to => to,
        };
        self.notify(Notice::Undelivered {
            message: copy.message.clone(),
            addressees,
            reason,
            detail,
        });
    }

    fn notify(&self, n: Notice) {
        if self.0.notices.try_send(n).is_err() {
            let dropped = self.0.notices_dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(
                    node = %self.0.node, dropped,
                    "receipts worker is {NOTICE_BACKLOG} notices behind; receipts dropped"
                );
            }
        }
    }
}
