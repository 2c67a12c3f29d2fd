//! A waiting place for messages inside the node: precedence lanes behind a lock, with a wake-up.
//!
//! Thin async glue around [`crate::lanes::Lanes`]: consumers (client delivery loops, peer links)
//! wait in [`Queue::pop`]; producers push and wake one consumer. Expired items met on the way are
//! recorded as events and dropped.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::Notify;

use super::events::{Event, Events};
use crate::lanes::{Entry, Lanes};
use crate::message::{MessageId, Precedence};
use crate::wire::pb;

/// One copy of a message waiting in a queue.
#[derive(Debug, Clone)]
pub struct Item {
    pub id: MessageId,
    pub signed: Arc<pb::SignedEnvelope>,
    /// When this node accepted the message.
    pub received_at: SystemTime,
    /// Delivery or forwarding attempts so far.
    pub attempts: u32,
}

/// A named, bounded, precedence-ordered queue.
pub struct Queue {
    name: String,
    lanes: Mutex<Lanes<Item>>,
    notify: Notify,
    events: Events,
}

impl Queue {
    pub fn new(name: String, capacity: usize, events: Events) -> Arc<Queue> {
        Arc::new(Queue {
            name,
            lanes: Mutex::new(Lanes::new(capacity)),
            notify: Notify::new(),
            events,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
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
        self.notify.notify_one();
    }

    /// Puts back an item whose delivery failed, at the head of its lane.
    pub fn requeue(&self, mut entry: Entry<Item>) {
        entry.item.attempts += 1;
        self.lanes().requeue(entry);
        self.notify.notify_one();
    }

    /// Waits for the next item to serve.
    ///
    /// # Cancel safety
    /// Cancel safe: an item is only removed when this returns it.
    pub async fn pop(&self) -> Entry<Item> {
        loop {
            let notified = self.notify.notified();
            let popped = self.lanes().pop(SystemTime::now());
            self.record_expired(popped.expired);
            if let Some(e) = popped.next {
                // Other items may remain: pass the wake-up on to another consumer.
                if !self.is_empty() {
                    self.notify.notify_one();
                }
                return e;
            }
            notified.await;
        }
    }

    /// Removes expired items wherever they wait.
    pub fn sweep(&self, now: SystemTime) {
        let expired = self.lanes().drain_expired(now);
        self.record_expired(expired);
    }

    fn record_expired(&self, expired: Vec<Entry<Item>>) {
        for e in expired {
            self.events.record(Event::Expired {
                id: e.item.id,
                queue: self.name.clone(),
            });
        }
    }
}
