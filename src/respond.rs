//! Respond-by deadlines: which action copies still owe the originator a business response, and
//! which are overdue.
//!
//! Sans-I/O: [`Deadlines`] is a plain map driven with the current time as a parameter. The node
//! that serves an addressee tracks the copies it persisted for that addressee and feeds in the
//! business responses its clients send; it does the sending (an overdue notice to the originator,
//! a reminder to the escalation unit). A deadline fires once; a NEED_MORE_TIME response moves it
//! (and re-arms it, if it had fired); any other outcome ends the tracking. The node keeps them
//! across restarts in a journal of these changes (`node::deadlines`), replayed with the same
//! calls and [`Deadlines::fired`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;

use crate::identity::AgencyId;
use crate::latest::Latest;
use crate::message::MessageId;

/// The agencies each message of this node's clients was addressed to: a business response to
/// one of them is admitted only from a client of one of those agencies. Bounded: beyond
/// `capacity` messages the oldest is forgotten, and a response to a message no longer
/// remembered (or sent before a restart) is admitted unchecked; its signature still names the
/// client that gave it.
///
/// A client's messages mostly go to the same agencies: each list is shared with the messages
/// that have the same among the latest few, so a remembered message costs a few dozen bytes.
#[derive(Debug)]
pub(crate) struct Responders {
    capacity: usize,
    order: VecDeque<MessageId>,
    by_id: HashMap<MessageId, Arc<[AgencyId]>>,
    /// The latest distinct lists, to share.
    lists: Latest<[AgencyId]>,
}

impl Responders {
    pub fn new(capacity: usize) -> Responders {
        Responders {
            capacity: capacity.max(1),
            order: VecDeque::new(),
            by_id: HashMap::new(),
            lists: Latest::default(),
        }
    }

    /// Remembers that message `id` was addressed to `agencies`.
    pub fn remember(&mut self, id: MessageId, agencies: Vec<AgencyId>) {
        let list = self.lists.share(agencies, |l, a| l == a.as_slice());
        if let Some(known) = self.by_id.get_mut(&id) {
            *known = list;
            return;
        }
        // Room first, so that the order never holds more than `capacity` (a deque grows by
        // doubling: one more would double it).
        if self.order.len() == self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.by_id.remove(&old);
        }
        self.by_id.insert(id, list);
        self.order.push_back(id);
    }

    /// Whether a client of `agency` may respond to message `id`: `None` when the message is not
    /// (or no longer) remembered.
    pub fn may_respond(&self, id: &MessageId, agency: &AgencyId) -> Option<bool> {
        self.by_id.get(id).map(|to| to.contains(agency))
    }
}

/// What an addressee's business response does to its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The business is done (action taken, hit confirmed or denied, rejected): stop tracking.
    Final,
    /// Need more time until this instant: the deadline moves there.
    MoreTime(SystemTime),
}

/// A deadline that has passed without a business response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overdue<T> {
    pub id: MessageId,
    pub deadline: SystemTime,
    pub info: T,
}

#[derive(Debug)]
struct Pending<T> {
    deadline: SystemTime,
    /// After this the message itself has expired and nobody is owed anything.
    expires_at: SystemTime,
    fired: bool,
    info: T,
}

/// Pending respond-by deadlines, by message id, bounded.
#[derive(Debug)]
pub struct Deadlines<T> {
    pending: HashMap<MessageId, Pending<T>>,
    capacity: usize,
}

impl<T: Clone> Deadlines<T> {
    /// At most `capacity` messages are tracked; [`Deadlines::track`] refuses more (the caller
    /// logs it: such a message gets no overdue notice, its receipts are unaffected).
    pub fn new(capacity: usize) -> Deadlines<T> {
        Deadlines {
            pending: HashMap::new(),
            capacity,
        }
    }

    /// Starts tracking `id`. Tracking an id already tracked changes nothing (a redelivered or
    /// recovered copy does not reset the deadline). Returns false when full.
    pub fn track(
        &mut self,
        id: MessageId,
        deadline: SystemTime,
        expires_at: SystemTime,
        info: T,
    ) -> bool {
        if self.pending.contains_key(&id) {
            return true;
        }
        if self.pending.len() >= self.capacity {
            return false;
        }
        self.pending.insert(
            id,
            Pending {
                deadline,
                expires_at,
                fired: false,
                info,
            },
        );
        true
    }

    /// Whether `id` is tracked.
    pub fn contains(&self, id: &MessageId) -> bool {
        self.pending.contains_key(id)
    }

    /// Marks `id`'s deadline as fired (a journal replayed at start: it does not fire again).
    pub fn fired(&mut self, id: &MessageId) {
        if let Some(p) = self.pending.get_mut(id) {
            p.fired = true;
        }
    }

    /// Every tracked deadline: id, deadline, expiry, whether it fired, and its info.
    pub fn entries(&self) -> impl Iterator<Item = (MessageId, SystemTime, SystemTime, bool, &T)> {
        self.pending
            .iter()
            .map(|(id, p)| (*id, p.deadline, p.expires_at, p.fired, &p.info))
    }

    /// How many deadlines are tracked.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// A business response to `id` arrived. Returns false if `id` was not tracked.
    pub fn answer(&mut self, id: MessageId, answer: Answer) -> bool {
        match answer {
            Answer::Final => self.pending.remove(&id).is_some(),
            Answer::MoreTime(until) => match self.pending.get_mut(&id) {
                Some(p) => {
                    p.deadline = until;
                    p.fired = false;
                    true
                }
                None => false,
            },
        }
    }

    /// The deadlines that passed by `now` and have not fired yet; each fires once. Messages that
    /// have expired are forgotten.
    pub fn due(&mut self, now: SystemTime) -> Vec<Overdue<T>> {
        self.pending.retain(|_, p| p.expires_at > now);
        self.pending
            .iter_mut()
            .filter(|(_, p)| !p.fired && p.deadline <= now)
            .map(|(id, p)| {
                p.fired = true;
                Overdue {
                    id: *id,
                    deadline: p.deadline,
                    info: p.info.clone(),
                }
            })
            .collect()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn t(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s)
    }

    fn id(n: u64) -> MessageId {
        MessageId::derived(b"test", &n.to_be_bytes())
    }

    #[test]
    fn overdue_fires_once() {
        let mut d = Deadlines::new(10);
        assert!(d.track(id(1), t(60), t(3600), "afi"));
        assert!(d.due(t(59)).is_empty());
        let due = d.due(t(60));
        assert_eq!(due.len(), 1);
        assert_eq!(
            (due[0].id, due[0].deadline, due[0].info),
            (id(1), t(60), "afi")
        );
        assert!(d.due(t(61)).is_empty());
        assert!(d.due(t(600)).is_empty());
    }

    #[test]
    fn a_final_response_cancels() {
        let mut d = Deadlines::new(10);
        d.track(id(1), t(60), t(3600), ());
        assert!(d.answer(id(1), Answer::Final));
        assert!(d.due(t(61)).is_empty());
        assert!(d.is_empty());
        assert!(!d.answer(id(1), Answer::Final));
    }

    #[test]
    fn need_more_time_moves_the_deadline_and_rearms_it() {
        let mut d = Deadlines::new(10);
        d.track(id(1), t(60), t(3600), ());
        assert!(d.answer(id(1), Answer::MoreTime(t(120))));
        assert!(d.due(t(61)).is_empty());
        assert_eq!(d.due(t(120)).len(), 1);
        // Already overdue, then more time asked: it fires again at the new deadline.
        assert!(d.answer(id(1), Answer::MoreTime(t(300))));
        assert!(d.due(t(299)).is_empty());
        assert_eq!(d.due(t(300))[0].deadline, t(300));
    }

    #[test]
    fn tracking_is_idempotent_bounded_and_ends_with_expiry() {
        let mut d = Deadlines::new(2);
        assert!(d.track(id(1), t(60), t(100), ()));
        assert!(d.track(id(1), t(999), t(100), ()));
        assert!(d.track(id(2), t(60), t(100), ()));
        assert!(!d.track(id(3), t(60), t(100), ()));
        assert_eq!(d.due(t(60)).len(), 2);
        assert!(d.due(t(100)).is_empty());
        assert!(d.is_empty());
    }

    #[test]
    fn only_addressed_agencies_may_respond_to_what_is_remembered() {
        let a = |s: &str| AgencyId::new(s).unwrap();
        let mut r = Responders::new(2);
        let t = SystemTime::UNIX_EPOCH;
        let (x, y, z) = (
            MessageId::new_v7(t),
            MessageId::new_v7(t),
            MessageId::new_v7(t),
        );
        r.remember(x, vec![a("afi"), a("pgr")]);
        assert_eq!(r.may_respond(&x, &a("afi")), Some(true));
        assert_eq!(r.may_respond(&x, &a("cenapi")), Some(false));
        assert_eq!(r.may_respond(&y, &a("afi")), None);
        // Bounded: the oldest goes first.
        r.remember(y, vec![a("afi")]);
        r.remember(z, vec![a("afi")]);
        assert!(Arc::ptr_eq(&r.by_id[&y], &r.by_id[&z]), "one list for both");
        assert_eq!(r.may_respond(&x, &a("cenapi")), None);
        assert_eq!(r.may_respond(&z, &a("cenapi")), Some(false));
        // Remembered again: its list changes, nothing is forgotten.
        r.remember(z, vec![a("cenapi")]);
        assert_eq!(r.may_respond(&z, &a("cenapi")), Some(true));
        assert_eq!(r.may_respond(&y, &a("afi")), Some(true));
        // The order never holds more than the bound (one more would double its deque).
        let mut r = Responders::new(1 << 10);
        for _ in 0..3 << 10 {
            r.remember(MessageId::new_v7(t), vec![a("afi")]);
        }
        assert_eq!((r.order.len(), r.by_id.len()), (1 << 10, 1 << 10));
        assert!(r.order.capacity() < 2 << 10, "{}", r.order.capacity());
    }
}
