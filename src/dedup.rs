//! Duplicate detection by message id and originator, for every precedence: which ids a node
//! has taken, from which originator, and which are being taken right now.
//!
//! Sans-I/O. A message id names one message of one originator (an idempotency key, as in
//! NATS's `Nats-Msg-Id` or Kafka's idempotent producer). A node that sees an id again answers by
//! the originator that came with it:
//! - the same originator (a client resubmitting after a lost answer, even with a fresh
//!   timestamp; a peer resending after its link was replaced): a **duplicate**, answered
//!   `Accepted` and never queued twice; the first copy taken is the one delivered;
//! - another originator: a **conflict**, refused with `DUPLICATE_ID`;
//! - the same originator while the first copy is still being taken (concurrent resubmissions):
//!   the second waits for the first's outcome ([`Claim::InProgress`]).
//!
//! An id is remembered until its message expires (a resubmission after that is refused as
//! expired anyway) or until [`Ids`] holds `capacity` ids, when the id expiring soonest is
//! forgotten first. Beyond that window the store's record of the ids in each queue still stops a
//! second copy (see `Store::commit_each`), without telling a conflict from a duplicate.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::SystemTime;

use crate::message::{Message, MessageId};

/// What identifies a message's originator: the first 64 bits of the SHA-256 of its agency, node
/// and client names (two originators share one with probability 2^-64, and names are issued in
/// certificates, not chosen freely by whoever would want a collision).
pub(crate) type Fingerprint = u64;

/// The fingerprint of `m`'s originator.
pub(crate) fn fingerprint(m: &Message) -> Fingerprint {
    let o = &m.originator;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [
        o.agency.as_str(),
        &o.node,
        o.client.as_deref().unwrap_or(""),
    ] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part.as_bytes());
    }
    let digest = ctx.finish();
    u64::from_be_bytes(
        digest.as_ref()[..8]
            .try_into()
            .expect("SHA-256 is 32 bytes"),
    )
}

/// The answer to [`Ids::claim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// Never seen: the caller takes it and then calls [`Ids::settle`].
    New,
    /// Already taken from this originator: answer `Accepted`, queue nothing.
    Duplicate,
    /// Being taken from this originator by another caller: wait for its [`Ids::settle`], then
    /// claim again.
    InProgress,
    /// Seen from another originator: refuse with `DUPLICATE_ID`.
    Conflict,
}

/// A remembered id: 16 bytes (a node remembers hundreds of thousands).
#[derive(Debug)]
struct Slot {
    fingerprint: Fingerprint,
    /// When the message expires, in seconds since the Unix epoch, rounded up (until 2106).
    expires: u32,
    taken: bool,
}

/// The ids a node remembers, bounded (see the module docs).
#[derive(Debug)]
pub(crate) struct Ids {
    slots: HashMap<MessageId, Slot>,
    /// Every remembered id by its expiry, soonest first, and some no longer remembered (a
    /// refused claim leaves its entry, skipped when it comes up; rebuilt once they are as many
    /// as the ids).
    by_expiry: BinaryHeap<Reverse<(u32, MessageId)>>,
    capacity: usize,
}

/// Seconds since the Unix epoch, rounded up (0 before it; `u32::MAX` from 2106).
fn secs_up(t: SystemTime) -> u32 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| {
        let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
        u32::try_from(secs).unwrap_or(u32::MAX)
    })
}

impl Ids {
    /// Remembers at most `capacity` ids (at least one).
    pub fn new(capacity: usize) -> Ids {
        Ids {
            slots: HashMap::new(),
            by_expiry: BinaryHeap::new(),
            capacity: capacity.max(1),
        }
    }

    #[cfg(test)]
    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Claims `id` for a message with `fingerprint` expiring at `expires_at` (see [`Claim`]).
    pub fn claim(
        &mut self,
        id: MessageId,
        fingerprint: Fingerprint,
        expires_at: SystemTime,
        now: SystemTime,
    ) -> Claim {
        self.expire(now);
        if let Some(slot) = self.slots.get(&id) {
            return match (slot.fingerprint == fingerprint, slot.taken) {
                (false, _) => Claim::Conflict,
                (true, true) => Claim::Duplicate,
                (true, false) => Claim::InProgress,
            };
        }
        self.insert(id, fingerprint, expires_at, false);
        Claim::New
    }

    /// Ends a [`Claim::New`]: `taken` remembers the id; otherwise (the message was refused) it is
    /// forgotten, so a resubmission is taken afresh.
    pub fn settle(&mut self, id: MessageId, taken: bool) {
        match self.slots.get_mut(&id) {
            Some(slot) if taken => slot.taken = true,
            Some(_) => {
                self.slots.remove(&id);
                // Its entry in `by_expiry` stays until it comes up, or until the rebuild.
                if self.by_expiry.len() > 2 * self.slots.len() + 1024 {
                    let live = self.slots.iter().map(|(id, s)| Reverse((s.expires, *id)));
                    self.by_expiry = live.collect();
                }
            }
            None => {}
        }
    }

    /// Remembers a message already taken (recovered from the store at start).
    pub fn remember(&mut self, id: MessageId, fingerprint: Fingerprint, expires_at: SystemTime) {
        if !self.slots.contains_key(&id) {
            self.insert(id, fingerprint, expires_at, true);
        }
    }

    /// Forgets the ids of messages expired at `now`.
    pub fn expire(&mut self, now: SystemTime) {
        // Rounded down, as expiries are up: an id is never forgotten before its message expires.
        let now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX));
        while let Some(&Reverse((at, id))) = self.by_expiry.peek()
            && at <= now
        {
            self.by_expiry.pop();
            if self.slots.get(&id).is_some_and(|s| s.expires == at) {
                self.slots.remove(&id);
            }
        }
    }

    fn insert(&mut self, id: MessageId, fingerprint: Fingerprint, at: SystemTime, taken: bool) {
        let expires = secs_up(at);
        if self.slots.len() >= self.capacity {
            self.forget_one();
        }
        self.slots.insert(
            id,
            Slot {
                fingerprint,
                expires,
                taken,
            },
        );
        self.by_expiry.push(Reverse((expires, id)));
    }

    /// Forgets the taken id expiring soonest; one being taken is never forgotten (there are at
    /// most as many as concurrent submissions: they are set aside and put back).
    fn forget_one(&mut self) {
        let mut aside = Vec::new();
        while let Some(Reverse((at, id))) = self.by_expiry.pop() {
            match self.slots.get(&id) {
                Some(s) if s.expires == at && s.taken => {
                    self.slots.remove(&id);
                    break;
                }
                Some(s) if s.expires == at => aside.push(Reverse((at, id))),
                // No longer remembered (or remembered again since, with an entry of its own).
                _ => {}
            }
        }
        self.by_expiry.extend(aside);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn id(n: u8) -> MessageId {
        MessageId::from_slice(&[n; 16]).unwrap()
    }

    #[test]
    fn the_same_originator_is_a_duplicate_another_a_conflict() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let later = now + Duration::from_secs(60);
        let mut ids = Ids::new(10);
        assert_eq!(ids.claim(id(1), 1, later, now), Claim::New);
        // A concurrent resubmission waits for the first.
        assert_eq!(ids.claim(id(1), 1, later, now), Claim::InProgress);
        assert_eq!(ids.claim(id(1), 2, later, now), Claim::Conflict);
        ids.settle(id(1), true);
        assert_eq!(ids.claim(id(1), 1, later, now), Claim::Duplicate);
        assert_eq!(ids.claim(id(1), 2, later, now), Claim::Conflict);
    }

    #[test]
    fn a_refused_claim_is_forgotten_and_an_expired_id_too() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let later = now + Duration::from_secs(60);
        let mut ids = Ids::new(10);
        assert_eq!(ids.claim(id(1), 1, later, now), Claim::New);
        ids.settle(id(1), false);
        assert_eq!(ids.claim(id(1), 1, later, now), Claim::New);
        ids.settle(id(1), true);
        assert_eq!(ids.len(), 1);
        ids.expire(later);
        assert_eq!(ids.len(), 0);
        assert_eq!(ids.claim(id(1), 2, later, later), Claim::New);
    }

    #[test]
    fn full_forgets_the_taken_id_expiring_soonest_never_one_being_taken() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let at = |s| now + Duration::from_secs(s);
        let mut ids = Ids::new(2);
        assert_eq!(ids.claim(id(1), 1, at(10), now), Claim::New);
        ids.remember(id(2), 2, at(20));
        // Full: id 1 expires soonest but is being taken, so id 2 goes.
        assert_eq!(ids.claim(id(3), 3, at(30), now), Claim::New);
        assert_eq!(ids.len(), 2);
        assert_eq!(ids.claim(id(2), 9, at(20), now), Claim::New);
        assert_eq!(ids.claim(id(1), 1, at(10), now), Claim::InProgress);
    }

    #[test]
    fn refused_claims_leave_entries_that_are_skipped_and_bounded() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let at = |ms| now + Duration::from_millis(ms);
        let mut ids = Ids::new(2);
        for n in 0..5_000u32 {
            let refused = MessageId::from_slice(&n.to_be_bytes().repeat(4)).unwrap();
            assert_eq!(ids.claim(refused, 1, at(60_000), now), Claim::New);
            ids.settle(refused, false);
        }
        assert_eq!(ids.len(), 0);
        assert!(ids.by_expiry.len() <= 1024 + 2, "{}", ids.by_expiry.len());
        // Refused, then taken: remembered once, until the second after its expiry (ids keep
        // whole seconds, rounded up: never forgotten early).
        assert_eq!(ids.claim(id(1), 1, at(10_500), now), Claim::New);
        ids.settle(id(1), false);
        assert_eq!(ids.claim(id(1), 1, at(10_500), now), Claim::New);
        ids.settle(id(1), true);
        ids.remember(id(2), 1, at(20_000));
        ids.expire(at(10_999));
        assert_eq!(ids.claim(id(1), 1, at(10_500), now), Claim::Duplicate);
        ids.expire(at(11_000));
        assert_eq!(ids.len(), 1);
        // Full: the entries left by refused claims are passed over, and the one taken id goes.
        assert_eq!(ids.claim(id(3), 3, at(30_000), now), Claim::New);
        assert_eq!(ids.claim(id(4), 4, at(40_000), now), Claim::New);
        assert_eq!(ids.len(), 2);
        assert_eq!(
            ids.claim(id(2), 9, at(20_000), now),
            Claim::New,
            "id 2 was forgotten"
        );
    }

    #[test]
    fn at_the_default_bound_the_table_never_doubles_past_two_to_the_nineteen_buckets() {
        // Churned at its bound (an id forgotten for each one remembered), a table clears its
        // tombstones in place while it is at most half full; past that it doubles. The
        // default is half of what 2^19 buckets hold, so its tables stay at that size (262,144
        // ids settled at 2^20 after about two million).
        let bound = crate::config::Limits::default().dedup_ids;
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let mut ids = Ids::new(bound);
        for n in 0..12 * bound as u32 {
            let id = MessageId::from_slice(&[n.to_le_bytes(), [7; 4], [8; 4], [9; 4]].concat());
            let at = now + Duration::from_secs(u64::from(n));
            ids.remember(id.unwrap(), 1, at);
            assert!(
                ids.slots.capacity() < 1 << 19,
                "{} at {n}",
                ids.slots.capacity()
            );
        }
        assert!(ids.by_expiry.capacity() <= 1 << 18);
    }
}
