//! A waiting place for messages inside the node: precedence lanes behind a lock, with a wake-up.
//!
//! Thin async glue around [`crate::lanes::Lanes`]: consumers (client delivery loops, peer links)
//! wait in [`Queue::pop`]; producers push and wake one consumer. Expired items met on the way are
//! handed back to the caller, which reports them (see `lifecycle`). Each queue also keeps its
//! dead letters for an operator to inspect and redrive.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::{Notify, watch};

use crate::lanes::{Entry, Lanes};
use crate::message::{MessageId, Precedence};
use crate::wire::pb;

/// A copy's sequence number in the durable store, known once its `Put` is durable.
///
/// A time-sensitive copy is queued (and may be delivered or forwarded) while its `Put` is still
/// being written (see `lifecycle`); whatever records something about the copy (done, attempt,
/// dead letter) waits for the number, so no record about a copy ever precedes its `Put`.
#[derive(Debug, Clone)]
pub struct Seq(watch::Receiver<Option<u64>>);

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

/// One copy of a message waiting in a queue.
#[derive(Debug, Clone)]
pub struct Item {
    /// The copy's sequence number in the durable store.
    pub seq: Seq,
    pub id: MessageId,
    pub signed: Arc<pb::SignedEnvelope>,
    /// When this node accepted the message.
    pub received_at: SystemTime,
    /// Delivery or forwarding attempts so far.
    pub attempts: u32,
    /// Whether this node owes the originator stage receipts (delivered, acknowledged) for this
    /// copy: a mailbox copy of a message that asked for them ([`crate::receipt::wants_receipts`]).
    /// Decided once when the copy is queued, so delivering a copy never decodes its envelope.
    pub stage_receipts: bool,
}

/// A copy that failed too often, parked for an operator.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub entry: Entry<Item>,
    pub reason: String,
    pub at: SystemTime,
}

/// A named, bounded, precedence-ordered queue.
pub struct Queue {
    name: String,
    /// What the queue delivers to: an agency (mailbox) or a peer node (outbox).
    destination: String,
    lanes: Mutex<Lanes<Item>>,
    /// Dead letters, oldest first.
    dead: Mutex<std::collections::VecDeque<DeadLetter>>,
    /// Wakes every waiting consumer on any change: consumers may wait for different classes of
    /// traffic, so waking just one could wake the wrong one. Consumers per queue are few.
    notify: Notify,
}

impl Queue {
    pub fn new(name: String, destination: String, capacity: usize) -> Arc<Queue> {
        Arc::new(Queue {
            name,
            destination,
            lanes: Mutex::new(Lanes::new(capacity)),
            dead: Mutex::default(),
            notify: Notify::new(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn destination(&self) -> &str {
        &self.destination
    }

    fn lanes(&self) -> std::sync::MutexGuard<'_, Lanes<Item>> {
        // A panic while holding this lock is a bug; propagating it is the honest outcome.
        self.lanes.lock().expect("queue lock poisoned")
    }

    pub fn has_room(&self, p: Precedence) -> bool {
        self.lanes().has_room(p)
    }

    pub fn is_empty(&self) -> bool {
        self.lanes().is_empty()
    }

    /// Adds an item whose room was checked with [`Queue::has_room`]; see
    /// [`Lanes::push_checked`].
    pub fn push_checked(&self, entry: Entry<Item>) {
        self.lanes().push_checked(entry);
        self.notify.notify_waiters();
    }

    /// Puts back an item that was not attempted (e.g. the link went down before sending it),
    /// at the head of its lane, without counting an attempt.
    pub fn requeue(&self, entry: Entry<Item>) {
        self.lanes().requeue(entry);
        self.notify.notify_waiters();
    }

    /// Parks an item until `due` (redelivery backoff).
    pub fn retry_at(&self, entry: Entry<Item>, due: SystemTime) {
        self.lanes().retry_at(entry, due);
        // A consumer waiting with no deadline must learn about the new due time.
        self.notify.notify_waiters();
    }

    /// Moves an item to the dead letters. They are bounded only by what the store holds (a dead
    /// letter stays on disk until an operator redrives it).
    pub fn dead_letter(&self, entry: Entry<Item>, reason: String, at: SystemTime) {
        self.dead
            .lock()
            .expect("dead letter lock poisoned")
            .push_back(DeadLetter { entry, reason, at });
    }

    /// The dead letters, oldest first.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.dead
            .lock()
            .expect("dead letter lock poisoned")
            .iter()
            .cloned()
            .collect()
    }

    /// Removes and returns the dead letters matching `pred` (to redrive them).
    pub fn take_dead(&self, pred: impl Fn(&DeadLetter) -> bool) -> Vec<DeadLetter> {
        let mut dead = self.dead.lock().expect("dead letter lock poisoned");
        let (taken, keep): (Vec<_>, Vec<_>) = dead.drain(..).partition(|d| pred(d));
        dead.extend(keep);
        taken
    }

    /// Waits for the next item to serve. Expired items met on the way are handed to
    /// `on_expired`.
    ///
    /// # Cancel safety
    /// Cancel safe: an item is only removed when this returns it (or hands it to `on_expired`).
    pub async fn pop(&self, on_expired: impl Fn(Vec<Entry<Item>>)) -> Entry<Item> {
        self.pop_class(false, on_expired).await
    }

    /// Like [`Queue::pop`]; with `time_sensitive_only`, waits for a FLASH, IMMEDIATE or PRIORITY
    /// item only.
    pub async fn pop_class(
        &self,
        time_sensitive_only: bool,
        on_expired: impl Fn(Vec<Entry<Item>>),
    ) -> Entry<Item> {
        loop {
            let notified = self.notify.notified();
            let popped = self
                .lanes()
                .pop_class(SystemTime::now(), time_sensitive_only);
            if !popped.expired.is_empty() {
                on_expired(popped.expired);
            }
            if let Some(e) = popped.next {
                return e;
            }
            match popped.wake_at {
                Some(at) => {
                    let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
                    let _ = tokio::time::timeout(wait, notified).await;
                }
                None => notified.await,
            }
        }
    }

    /// Removes expired items wherever they wait.
    pub fn sweep(&self, now: SystemTime) -> Vec<Entry<Item>> {
        self.lanes().drain_expired(now)
    }
}

#[cfg(test)]
mod seq_tests {
    use super::Seq;

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
}
