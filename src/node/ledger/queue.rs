//! Where copies wait inside the node: a named queue of precedence lanes behind a lock, with a
//! wake-up for its consumers, and the queue's dead letters.
//!
//! Only the ledger changes a queue: every mutating method here is visible to `node::ledger`
//! alone, so a copy's fate cannot change anywhere else. Consumers (client deliveries, peer
//! links) read a queue's state and wait on [`Queue::notified`]; they take copies through the
//! ledger.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tokio::sync::{Notify, watch};

use crate::address::Mailbox;
use crate::identity::AgencyId;
use crate::lanes::{Depth, Entry, Lanes};
use crate::message::{Message, MessageId};
use crate::wire::pb;

/// Which queue: a mailbox of this node's agency, the outbox toward a peer node, or the orphans
/// (dead letters whose queue no longer exists).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum QueueId {
    Mailbox(Mailbox),
    Outbox(String),
    Orphans,
}

impl QueueId {
    /// The name the store keeps: `mailbox:<agency>[/<unit>]`, `outbox:<node>`, `orphans`.
    pub fn store_name(&self, agency: &AgencyId) -> String {
        match self {
            QueueId::Mailbox(m) => format!("mailbox:{}", m.address(agency.as_str())),
            QueueId::Outbox(node) => format!("outbox:{node}"),
            QueueId::Orphans => "orphans".into(),
        }
    }

    /// Reads a stored queue name; `None` for a mailbox of another agency or a malformed name.
    pub fn parse(name: &str, agency: &AgencyId) -> Option<QueueId> {
        if name == "orphans" {
            return Some(QueueId::Orphans);
        }
        if let Some(node) = name.strip_prefix("outbox:") {
            return Some(QueueId::Outbox(node.to_owned()));
        }
        let dest = name.strip_prefix("mailbox:")?;
        let (a, unit) = dest.split_once('/').unwrap_or((dest, ""));
        (a == agency.as_str())
            .then(|| Mailbox::from_wire(unit).ok().map(QueueId::Mailbox))
            .flatten()
    }
}

/// A copy's sequence number in the durable store, known once its `Put` is durable.
///
/// A time-sensitive copy is queued (and may be delivered or forwarded) while its `Put` is still
/// being written (cut-through, see the ledger); whatever records something about the copy (done,
/// attempt, dead letter) waits for the number, so no record about a copy ever precedes its `Put`.
#[derive(Debug, Clone)]
pub(crate) struct Seq(watch::Receiver<Option<u64>>);

impl Seq {
    /// The number of a copy already on disk.
    pub fn durable(seq: u64) -> Seq {
        Seq(watch::channel(Some(seq)).1)
    }

    /// A number still being written: send it through the sender once the `Put` is durable, or
    /// drop the sender if it never will be.
    pub fn pending() -> (watch::Sender<Option<u64>>, Seq) {
        let (tx, rx) = watch::channel(None);
        (tx, Seq(rx))
    }

    /// The number, if the copy is durable already.
    pub fn get(&self) -> Option<u64> {
        *self.0.borrow()
    }

    /// Waits until the copy is durable; `None` if it never will be (the write failed, or the
    /// message was a duplicate and this copy was never written).
    pub async fn wait(&self) -> Option<u64> {
        let mut rx = self.0.clone();
        rx.wait_for(Option::is_some).await.ok().and_then(|v| *v)
    }
}

/// What the nodes before this one added to a message, shared by the copies that carry it.
#[derive(Debug, Default)]
pub(crate) struct Transit {
    /// Hop records, oldest first (a mailbox copy's end with this node's own).
    pub hops: Vec<pb::HopRecord>,
    /// For an outbox copy: the agencies the peer is to deliver or relay it for.
    pub route_to: Vec<String>,
    /// The signer's certificate chain, leaf first (see `signers`).
    pub signer_chain: Arc<[bytes::Bytes]>,
}

/// One copy of a message waiting in a queue.
#[derive(Debug, Clone)]
pub(crate) struct Copy {
    /// The message, parsed once when the node took it (or recovered it).
    pub message: Arc<Message>,
    pub transit: Arc<Transit>,
    /// The copy's sequence number in the durable store.
    pub seq: Seq,
    /// When this node took the message.
    pub received_at: SystemTime,
    /// Failed delivery or forwarding attempts so far.
    pub attempts: u32,
}

impl Copy {
    pub fn id(&self) -> MessageId {
        self.message.id
    }
}

/// A copy kept cold (see [`crate::lanes`]): its sequence number in the store, where everything
/// else about it is (a cold copy is always durable). The ledger brings it back whole, read from
/// the store and parsed, before it is served.
pub(crate) type ColdCopy = u64;

/// How many copies of an analytical lane a queue keeps whole; beyond them, copies wait cold. A
/// refill brings back up to this many at once, when fewer than half are left.
pub(crate) const HOT_COPIES: usize = 512;

/// A copy that failed too often, parked for an operator.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetter {
    pub entry: Entry<Copy>,
    pub reason: String,
    pub at: SystemTime,
}

/// A named, bounded, precedence-ordered queue.
pub(crate) struct Queue {
    id: QueueId,
    /// The name the store keeps (see [`QueueId::store_name`]).
    name: Arc<str>,
    lanes: Mutex<Lanes<Copy, ColdCopy>>,
    /// Dead letters, oldest first.
    dead: Mutex<VecDeque<DeadLetter>>,
    /// Wakes every waiting consumer on any change: consumers may wait for different classes of
    /// traffic, so waking just one could wake the wrong one. Consumers per queue are few.
    notify: Notify,
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue").field("name", &self.name).finish()
    }
}

impl Queue {
    pub(super) fn new(id: QueueId, agency: &AgencyId, capacity: usize) -> Arc<Queue> {
        Arc::new(Queue {
            name: id.store_name(agency).into(),
            id,
            lanes: Mutex::new(Lanes::new(capacity).with_hot_limit(HOT_COPIES)),
            dead: Mutex::default(),
            notify: Notify::new(),
        })
    }

    pub fn id(&self) -> &QueueId {
        &self.id
    }

    /// The queue's name, as the store and operators know it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The destination it serves: the peer node of an outbox, `agency[/unit]` of a mailbox.
    pub fn destination(&self) -> &str {
        match &self.id {
            QueueId::Mailbox(_) => self.name.strip_prefix("mailbox:").unwrap_or(&self.name),
            QueueId::Outbox(node) => node,
            QueueId::Orphans => "-",
        }
    }

    pub fn is_empty(&self) -> bool {
        self.lanes().is_empty()
    }

    /// A future that completes at the queue's next change. Create it before looking at the
    /// queue, so that a change in between is not missed.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }

    /// Whether it holds dead letters.
    pub fn has_dead_letters(&self) -> bool {
        !self.dead().is_empty()
    }

    /// What waits in each lane, most urgent first, with the oldest copy's arrival at this node
    /// (see [`Lanes::depths`]). Read-only: for the metrics endpoint.
    pub fn depths(&self) -> [Depth; 5] {
        self.lanes().depths(|c| c.received_at)
    }

    /// How many dead letters it holds.
    pub fn dead_letter_count(&self) -> usize {
        self.dead().len()
    }

    /// The dead letters, oldest first.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.dead().iter().cloned().collect()
    }

    fn lanes(&self) -> MutexGuard<'_, Lanes<Copy, ColdCopy>> {
        // A panic while holding this lock is a bug; propagating it is the honest outcome.
        self.lanes.lock().expect("queue lock poisoned")
    }

    fn dead(&self) -> MutexGuard<'_, VecDeque<DeadLetter>> {
        self.dead.lock().expect("dead letter lock poisoned")
    }

    pub(super) fn has_room(&self, p: crate::message::Precedence) -> bool {
        self.lanes().has_room(p)
    }

    /// Runs `f` on the lanes, under the queue's lock.
    pub(super) fn with_lanes<R>(&self, f: impl FnOnce(&mut Lanes<Copy, ColdCopy>) -> R) -> R {
        f(&mut self.lanes())
    }

    /// Adds a copy whose room was checked with [`Queue::has_room`]; see
    /// [`Lanes::push_checked`]. A durable copy that its lane keeps cold is kept so: the message
    /// is dropped from memory, and read back from the store when its turn comes near.
    pub(super) fn push_checked(&self, entry: Entry<Copy>) {
        {
            let mut lanes = self.lanes();
            match entry.item.seq.get() {
                Some(seq) if lanes.spills(entry.precedence) => lanes.push_cold(
                    Entry {
                        precedence: entry.precedence,
                        expires_at: entry.expires_at,
                        item: seq,
                    },
                    entry.item.received_at,
                ),
                _ => lanes.push_checked(entry),
            }
        }
        self.notify.notify_waiters();
    }

    /// Adds a cold copy (recovered at start) that arrived at this node at `received_at`, behind
    /// the hot ones of its lane.
    pub(super) fn push_cold(&self, entry: Entry<ColdCopy>, received_at: SystemTime) {
        self.lanes().push_cold(entry, received_at);
        self.notify.notify_waiters();
    }

    /// Brings back copies a refill read (see [`Lanes::refilled`]).
    pub(super) fn refilled(
        &self,
        taken: impl IntoIterator<Item = crate::message::Precedence>,
        items: Vec<Entry<Copy>>,
    ) {
        self.lanes().refilled(taken, items);
        self.notify.notify_waiters();
    }

    /// Removes expired cold copies.
    pub(super) fn drain_expired_cold(&self, now: SystemTime) -> Vec<Entry<ColdCopy>> {
        self.lanes().drain_expired_cold(now)
    }

    /// Puts back a copy that was not attempted, at the head of its lane.
    pub(super) fn requeue(&self, entry: Entry<Copy>) {
        self.lanes().requeue(entry);
        self.notify.notify_waiters();
    }

    /// Parks a copy until `due`.
    pub(super) fn retry_at(&self, entry: Entry<Copy>, due: SystemTime) {
        self.lanes().retry_at(entry, due);
        // A consumer waiting with no deadline must learn about the new due time.
        self.notify.notify_waiters();
    }

    /// Moves a copy to the dead letters. They are bounded only by what the store holds (a dead
    /// letter stays on disk until an operator redrives it).
    pub(super) fn dead_letter(&self, letter: DeadLetter) {
        self.dead().push_back(letter);
    }

    /// Removes and returns the dead letters matching `pred`.
    pub(super) fn take_dead(&self, pred: impl Fn(&DeadLetter) -> bool) -> Vec<DeadLetter> {
        let mut dead = self.dead();
        let (taken, keep): (Vec<_>, Vec<_>) = dead.drain(..).partition(|d| pred(d));
        dead.extend(keep);
        taken
    }

    /// Removes expired copies wherever they wait.
    pub(super) fn drain_expired(&self, now: SystemTime) -> Vec<Entry<Copy>> {
        self.lanes().drain_expired(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pending_seq_resolves_once_written_or_never() {
        assert_eq!(Seq::durable(7).get(), Some(7));
        let (set, seq) = Seq::pending();
        assert_eq!(seq.get(), None);
        let waiter = tokio::spawn({
            let seq = seq.clone();
            async move { seq.wait().await }
        });
        set.send(Some(42)).unwrap();
        assert_eq!(waiter.await.unwrap(), Some(42));
        assert_eq!(seq.get(), Some(42));

        let (set, seq) = Seq::pending();
        drop(set); // The write failed, or the copy was a duplicate: never written.
        assert_eq!(seq.wait().await, None);
    }

    #[test]
    fn queue_ids_round_trip_through_their_stored_names() {
        let dea = AgencyId::new("dea").unwrap();
        for id in [
            QueueId::Mailbox(Mailbox::Inbox),
            QueueId::Mailbox(Mailbox::unit("analyst").unwrap()),
            QueueId::Outbox("pgr-1".into()),
            QueueId::Orphans,
        ] {
            assert_eq!(QueueId::parse(&id.store_name(&dea), &dea), Some(id));
        }
        assert_eq!(QueueId::parse("mailbox:pgr/desk", &dea), None);
        assert_eq!(QueueId::parse("mailbox:dea/Bad Unit", &dea), None);
        assert_eq!(QueueId::parse("elsewhere", &dea), None);
    }
}
