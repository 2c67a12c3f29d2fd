//! Precedence lanes: a bounded priority queue with strict precedence, a minimum share for lower
//! lanes, and expiry.
//!
//! Sans-I/O: time is a parameter. Each node queue where a message can wait (a local mailbox, a
//! peer outbox) is a [`Lanes`]. Policy:
//! - **Strict precedence**: the most urgent non-empty lane is served first.
//! - **Minimum share**: after [`SHARE_EVERY`] consecutive items taken from a lane while a less
//!   urgent lane was waiting, one item is taken from the most urgent of the waiting lower lanes.
//!   Lower lanes therefore get at least 1 in `SHARE_EVERY + 1` of the service under a flood.
//! - **Bounds**: analytical traffic (ROUTINE, BULK) and time-sensitive traffic (FLASH, IMMEDIATE,
//!   PRIORITY) are each bounded by the capacity, counted separately, so a queue full of bulk still
//!   accepts a FLASH alert. A push over the bound is refused ([`Full`]); nothing is dropped.
//! - **Expiry**: expired items are never returned by [`Lanes::pop`]; they are handed back to the
//!   caller so that it can tell the originator.
//! - **Retry with backoff**: an item whose delivery failed can be parked until a due time
//!   ([`Lanes::retry_at`]); when due it returns to the head of its lane. The dispatcher
//!   ([`crate::dispatch`]) decides the delay, and when to give up (a dead letter).

use std::collections::VecDeque;
use std::time::SystemTime;

use crate::message::Precedence;

/// See the module docs.
pub const SHARE_EVERY: u32 = 16;

/// Which lanes a consumer may take from: all, or only one class of traffic (when its window for
/// the other class is full).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Any lane, most urgent first, with the minimum share for lower lanes.
    Any,
    /// FLASH, IMMEDIATE and PRIORITY only.
    TimeSensitive,
    /// ROUTINE and BULK only.
    Analytical,
}

impl Class {
    /// The lanes this class may take from (index 0 is FLASH).
    fn lanes(self) -> std::ops::Range<usize> {
        match self {
            Class::Any => 0..5,
            Class::TimeSensitive => 0..3,
            Class::Analytical => 3..5,
        }
    }
}

#[cfg(test)]
/// The queue is at capacity for this class of traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// A queued item with its precedence and expiry.
#[derive(Debug, Clone)]
pub struct Entry<T> {
    pub precedence: Precedence,
    pub expires_at: SystemTime,
    pub item: T,
}

/// What [`Lanes::pop`] found.
#[derive(Debug)]
pub struct Popped<T> {
    pub next: Option<Entry<T>>,
    pub expired: Vec<Entry<T>>,
    /// When nothing is ready: the earliest time a parked item becomes due.
    pub wake_at: Option<SystemTime>,
}

/// What waits in one lane, for monitoring (see [`Lanes::depths`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Depth {
    pub precedence: Precedence,
    /// Items waiting, parked ones included.
    pub count: usize,
    /// The oldest arrival among them; `None` when the lane is empty.
    pub oldest: Option<SystemTime>,
}

/// A bounded, precedence-ordered queue. Index 0 is FLASH.
#[derive(Debug)]
pub struct Lanes<T> {
    lanes: [VecDeque<Entry<T>>; 5],
    /// Items parked until a due time. A plain list: retries are the exception, and a linear scan
    /// of a few entries is cheaper than keeping a heap ordered.
    parked: Vec<(SystemTime, Entry<T>)>,
    capacity: usize,
    streak: u32,
}

fn index(p: Precedence) -> usize {
    match p {
        Precedence::Flash => 0,
        Precedence::Immediate => 1,
        Precedence::Priority => 2,
        Precedence::Routine => 3,
        Precedence::Bulk => 4,
    }
}

impl<T> Lanes<T> {
    pub fn new(capacity: usize) -> Lanes<T> {
        Lanes {
            lanes: Default::default(),
            parked: Vec::new(),
            capacity,
            streak: 0,
        }
    }

    #[cfg(test)]
    /// Items waiting in all lanes.
    pub fn len(&self) -> usize {
        self.lanes.iter().map(VecDeque::len).sum::<usize>() + self.parked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lanes.iter().all(VecDeque::is_empty) && self.parked.is_empty()
    }

    fn class_len(&self, p: Precedence) -> usize {
        let range = if p.is_time_sensitive() { 0..3 } else { 3..5 };
        let parked = self
            .parked
            .iter()
            .filter(|(_, e)| e.precedence.is_time_sensitive() == p.is_time_sensitive())
            .count();
        self.lanes[range].iter().map(VecDeque::len).sum::<usize>() + parked
    }

    /// Whether an item of this precedence would be accepted now.
    pub fn has_room(&self, p: Precedence) -> bool {
        self.class_len(p) < self.capacity
    }

    #[cfg(test)]
    /// Appends an item to its lane.
    ///
    /// # Errors
    /// [`Full`] when the item's traffic class is at capacity; nothing is queued.
    pub fn push(&mut self, entry: Entry<T>) -> Result<(), Full> {
        if !self.has_room(entry.precedence) {
            return Err(Full);
        }
        self.lanes[index(entry.precedence)].push_back(entry);
        Ok(())
    }

    /// Appends an item whatever the bound: for an item whose room was checked with
    /// [`Lanes::has_room`] just before, when concurrent producers may have taken it meanwhile.
    pub fn push_checked(&mut self, entry: Entry<T>) {
        self.lanes[index(entry.precedence)].push_back(entry);
    }

    /// Puts an item back at the head of its lane (a failed delivery), ignoring the bound: the item
    /// was already counted when it was accepted.
    pub fn requeue(&mut self, entry: Entry<T>) {
        self.lanes[index(entry.precedence)].push_front(entry);
    }

    /// Parks an item until `due`; it then returns to the head of its lane.
    pub fn retry_at(&mut self, entry: Entry<T>, due: SystemTime) {
        self.parked.push((due, entry));
    }

    #[cfg(test)]
    /// Takes the next item to serve at `now`, and every expired item met on the way.
    pub fn pop(&mut self, now: SystemTime) -> Popped<T> {
        self.pop_class(now, Class::Any)
    }

    /// Like [`Lanes::pop`], but takes only from the lanes of `class` (for a consumer whose window
    /// for the other class is full). The minimum share for lower lanes applies among the lanes
    /// that may be taken.
    #[cfg(test)]
    pub fn pop_class(&mut self, now: SystemTime, class: Class) -> Popped<T> {
        self.pop_where(now, class, |_| true)
    }

    /// Like [`Lanes::pop_class`], for a consumer that may have only the items `accept` takes:
    /// the first such item of each lane counts as its head; the others stay where they are, in
    /// order, for other consumers.
    pub fn pop_where(
        &mut self,
        now: SystemTime,
        class: Class,
        accept: impl Fn(&T) -> bool,
    ) -> Popped<T> {
        let mut expired = Vec::new();
        let mut i = 0;
        while i < self.parked.len() {
            if self.parked[i].1.expires_at <= now {
                expired.push(self.parked.swap_remove(i).1);
            } else if self.parked[i].0 <= now {
                let (_, e) = self.parked.swap_remove(i);
                self.lanes[index(e.precedence)].push_front(e);
            } else {
                i += 1;
            }
        }
        for lane in &mut self.lanes {
            while lane.front().is_some_and(|e| e.expires_at <= now) {
                expired.extend(lane.pop_front());
            }
        }
        let range = class.lanes();
        // A lane's head, for this consumer: its first item `accept` takes.
        let head = |i: usize| {
            self.lanes[i]
                .iter()
                .position(|e| accept(&e.item))
                .map(|j| (i, j))
        };
        let Some(top) = range.clone().find_map(head) else {
            let wake_at = self.parked.iter().map(|(due, _)| *due).min();
            return Popped {
                next: None,
                expired,
                wake_at,
            };
        };
        let lower = (top.0 + 1..range.end).find_map(head);
        let (pick, at) = match lower {
            Some(low) if self.streak >= SHARE_EVERY => {
                self.streak = 0;
                low
            }
            Some(_) => {
                self.streak += 1;
                top
            }
            None => {
                self.streak = 0;
                top
            }
        };
        Popped {
            next: self.lanes[pick].remove(at),
            expired,
            wake_at: None,
        }
    }

    /// What waits in each lane, most urgent first: how many items (parked ones included) and
    /// the oldest arrival, as `arrived` reads it from an item. Read-only, and cheap enough to
    /// call under the queue's lock at every scrape: it looks at each lane's head and at the
    /// parked items only. A lane is in arrival order but for items put back at its head (older
    /// still) and items a consumer took from further back, so its head is its oldest item, or
    /// within the few a consumer skipped of it.
    pub fn depths(&self, arrived: impl Fn(&T) -> SystemTime) -> [Depth; 5] {
        let mut out = Precedence::ALL.map(|precedence| Depth {
            precedence,
            count: 0,
            oldest: None,
        });
        for d in &mut out {
            let lane = &self.lanes[index(d.precedence)];
            d.count = lane.len();
            d.oldest = lane.front().map(|e| arrived(&e.item));
        }
        for (_, e) in &self.parked {
            let d = &mut out[index(e.precedence)];
            d.count += 1;
            let t = arrived(&e.item);
            d.oldest = Some(d.oldest.map_or(t, |o| o.min(t)));
        }
        out
    }

    /// Removes and returns every expired item, wherever it waits.
    pub fn drain_expired(&mut self, now: SystemTime) -> Vec<Entry<T>> {
        let (parked, gone): (Vec<_>, Vec<_>) =
            self.parked.drain(..).partition(|(_, e)| e.expires_at > now);
        self.parked = parked;
        let mut out: Vec<Entry<T>> = gone.into_iter().map(|(_, e)| e).collect();
        for lane in &mut self.lanes {
            let (keep, gone): (VecDeque<_>, VecDeque<_>) =
                lane.drain(..).partition(|e| e.expires_at > now);
            *lane = keep;
            out.extend(gone);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn t(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    fn e(p: Precedence, item: u32) -> Entry<u32> {
        Entry {
            precedence: p,
            expires_at: t(100),
            item,
        }
    }

    fn take(q: &mut Lanes<u32>) -> Option<u32> {
        q.pop(t(1)).next.map(|e| e.item)
    }

    #[test]
    fn strict_precedence() {
        let mut q = Lanes::new(10);
        q.push(e(Precedence::Bulk, 1)).unwrap();
        q.push(e(Precedence::Routine, 2)).unwrap();
        q.push(e(Precedence::Flash, 3)).unwrap();
        q.push(e(Precedence::Priority, 4)).unwrap();
        q.push(e(Precedence::Flash, 5)).unwrap();
        let order: Vec<u32> = std::iter::from_fn(|| take(&mut q)).collect();
        assert_eq!(order, vec![3, 5, 4, 2, 1]);
    }

    #[test]
    fn lower_lanes_get_a_minimum_share() {
        let mut q = Lanes::new(1000);
        for i in 0..100 {
            q.push(e(Precedence::Flash, i)).unwrap();
        }
        q.push(e(Precedence::Bulk, 999)).unwrap();
        let pos = std::iter::from_fn(|| take(&mut q)).position(|i| i == 999);
        assert_eq!(pos, Some(SHARE_EVERY as usize));
    }

    #[test]
    fn a_consumer_takes_only_what_it_accepts_and_leaves_the_rest_in_order() {
        let mut q = Lanes::new(10);
        for (p, i) in [
            (Precedence::Flash, 1),
            (Precedence::Flash, 2),
            (Precedence::Routine, 3),
            (Precedence::Routine, 4),
        ] {
            q.push(e(p, i)).unwrap();
        }
        let even = |i: &u32| i.is_multiple_of(2);
        let mut taken = Vec::new();
        while let Some(x) = q.pop_where(t(1), Class::Any, even).next {
            taken.push(x.item);
        }
        assert_eq!(taken, [2, 4], "what it may have, most urgent first");
        // Nothing it may have is left: it waits; the rest is there, in order, for others.
        assert!(q.pop_where(t(1), Class::Any, even).next.is_none());
        assert_eq!(take(&mut q), Some(1));
        assert_eq!(take(&mut q), Some(3));
    }

    #[test]
    fn full_analytical_queue_still_takes_flash() {
        let mut q = Lanes::new(2);
        q.push(e(Precedence::Bulk, 1)).unwrap();
        q.push(e(Precedence::Routine, 2)).unwrap();
        assert_eq!(q.push(e(Precedence::Bulk, 3)), Err(Full));
        q.push(e(Precedence::Flash, 4)).unwrap();
        assert_eq!(q.len(), 3);
    }

    #[test]
    fn expired_items_are_returned_not_served() {
        let mut q = Lanes::new(10);
        q.push(Entry {
            precedence: Precedence::Flash,
            expires_at: t(5),
            item: 1,
        })
        .unwrap();
        q.push(e(Precedence::Bulk, 2)).unwrap();
        let p = q.pop(t(6));
        assert_eq!(p.next.map(|e| e.item), Some(2));
        assert_eq!(p.expired.len(), 1);
        q.push(Entry {
            precedence: Precedence::Bulk,
            expires_at: t(5),
            item: 3,
        })
        .unwrap();
        q.push(e(Precedence::Bulk, 4)).unwrap();
        assert_eq!(q.drain_expired(t(6)).len(), 1);
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn depths_count_each_lane_with_its_oldest_arrival() {
        let mut q = Lanes::new(10);
        assert!(
            q.depths(|i| t(u64::from(*i)))
                .iter()
                .all(|d| d.count == 0 && d.oldest.is_none())
        );
        for item in [5, 7, 9] {
            q.push(e(Precedence::Routine, item)).unwrap();
        }
        q.push(e(Precedence::Flash, 3)).unwrap();
        q.retry_at(e(Precedence::Routine, 2), t(100));
        let d = q.depths(|i| t(u64::from(*i)));
        assert_eq!(d.map(|d| d.precedence), Precedence::ALL);
        assert_eq!(d.map(|d| d.count), [1, 0, 0, 4, 0]);
        assert_eq!(d[0].oldest, Some(t(3)));
        assert_eq!(d[3].oldest, Some(t(2)), "parked items count too");
        assert_eq!(d[1].oldest, None);
    }

    #[test]
    fn requeue_goes_to_the_head() {
        let mut q = Lanes::new(10);
        q.push(e(Precedence::Routine, 1)).unwrap();
        let first = q.pop(t(1)).next.unwrap();
        q.push(e(Precedence::Routine, 2)).unwrap();
        q.requeue(first);
        assert_eq!(take(&mut q), Some(1));
    }

    #[test]
    fn time_sensitive_only_leaves_analytical_items() {
        let mut q = Lanes::new(10);
        q.push(e(Precedence::Bulk, 1)).unwrap();
        assert!(q.pop_class(t(1), Class::TimeSensitive).next.is_none());
        q.push(e(Precedence::Priority, 2)).unwrap();
        assert!(
            q.pop_class(t(1), Class::Analytical)
                .next
                .is_some_and(|e| e.item == 1)
        );
        assert_eq!(
            q.pop_class(t(1), Class::TimeSensitive).next.map(|e| e.item),
            Some(2)
        );
    }

    #[test]
    fn parked_items_return_to_the_head_when_due() {
        let mut q = Lanes::new(10);
        q.push(e(Precedence::Routine, 1)).unwrap();
        q.retry_at(e(Precedence::Routine, 2), t(10));
        assert_eq!(q.len(), 2);
        assert_eq!(take(&mut q), Some(1));
        let p = q.pop(t(5));
        assert!(p.next.is_none());
        assert_eq!(p.wake_at, Some(t(10)));
        q.push(e(Precedence::Routine, 3)).unwrap();
        assert_eq!(q.pop(t(10)).next.map(|e| e.item), Some(2));
        assert_eq!(q.pop(t(10)).next.map(|e| e.item), Some(3));
    }

    #[test]
    fn parked_items_expire_too() {
        let mut q = Lanes::new(10);
        q.retry_at(
            Entry {
                precedence: Precedence::Bulk,
                expires_at: t(5),
                item: 1,
            },
            t(10),
        );
        let p = q.pop(t(6));
        assert_eq!(p.expired.len(), 1);
        assert!(q.is_empty());
    }
}
