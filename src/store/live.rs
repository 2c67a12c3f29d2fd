//! The live copies recovery finds, kept compactly while the log is replayed and handed to the
//! node the same way: [`LiveCopies`].
//!
//! A restart with a million queued copies must not hold a million [`StoredMessage`]s (about
//! 140 bytes each with their queue names, and twice that in a map keyed by seq): the node puts
//! each one in its queue as it comes, and keeps about 3 bytes of it. So a copy is kept here in
//! 48 bytes ([`Kept`]), its queue an index into the names seen, in a vector sorted by seq: the
//! log gives most `Put`s in seq order, and each seq above every one before is appended. A copy
//! a `Done` finishes is marked gone, and the vector is swept once half of it is. Those that
//! come out of order (copies compaction moved forward, with their old seqs, whose first `Put`
//! was in a segment deleted since) wait in a map, at about twice the size, and are merged in at
//! the end. Attempts and dead-letter reasons, which few copies have, are the store's index's:
//! it hands them over when the replay is done ([`LiveCopies::finish`]).

use std::collections::{BTreeMap, HashMap};

use super::StoredMessage;
use super::index::SeqHash;
use super::record::PutBody;

/// A live copy, without its attempts and dead-letter reason.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Kept {
    seq: u64,
    expires_at_ms: u64,
    received_at_ms: u64,
    message_id: [u8; 16],
    /// Its queue's index in [`LiveCopies::queues`]; [`GONE`] once finished.
    queue: u32,
    precedence: u8,
}

/// [`Kept::queue`] of a finished copy, until the vector is swept.
const GONE: u32 = u32::MAX;

/// The live copies found at open, in seq order: waiting, or dead-lettered. Iterate it to take
/// them as [`StoredMessage`]s (see the module docs).
#[derive(Debug, Default)]
pub struct LiveCopies {
    /// Sorted by seq; some may be [`GONE`] while the log is replayed.
    copies: Vec<Kept>,
    /// How many of `copies` are gone.
    gone: usize,
    /// Copies whose seq came below one appended before, and not in `copies` (moved by
    /// compaction, their first `Put` gone). Never in `copies` as well.
    moved: BTreeMap<u64, Kept>,
    /// The highest seq appended to `copies` (a sweep may leave the last one lower).
    appended: Option<u64>,
    queues: Vec<String>,
    queue_ids: HashMap<String, u32>,
    /// Copies with failed attempts, and how many; the reasons of the dead-lettered copies
    /// (the index's, from [`LiveCopies::finish`] on).
    attempts: HashMap<u64, u32, SeqHash>,
    dead: HashMap<u64, String, SeqHash>,
}

/// Below this many copies the vector is not swept.
const SWEEP_AT_LEAST: usize = 4096;

impl LiveCopies {
    /// How many copies there are.
    pub fn len(&self) -> usize {
        self.copies.len() - self.gone + self.moved.len()
    }

    /// The highest seq of them.
    pub fn max_seq(&self) -> Option<u64> {
        let last = self.copies.iter().rev().find(|c| c.queue != GONE);
        let moved = self.moved.last_key_value().map(|(&seq, _)| seq);
        last.map(|c| c.seq).max(moved)
    }

    /// Records a `Put` frame (its attempts and dead state are the index's); a seq already
    /// live was moved, and the later frame wins.
    pub(super) fn put(&mut self, p: &PutBody) {
        let queue = match self.queue_ids.get(&p.queue) {
            Some(&id) => id,
            None => {
                let id = u32::try_from(self.queues.len()).expect("fewer queues than 2^32 - 1");
                self.queue_ids.insert(p.queue.clone(), id);
                self.queues.push(p.queue.clone());
                id
            }
        };
        let copy = Kept {
            seq: p.seq,
            expires_at_ms: p.expires_at_ms,
            received_at_ms: p.received_at_ms,
            message_id: p.message_id,
            queue,
            precedence: p.precedence,
        };
        // Above every seq appended: not in `moved` either (only seqs below one appended are).
        if self.appended.is_none_or(|a| p.seq > a) {
            self.appended = Some(p.seq);
            self.copies.push(copy);
            return;
        }
        match self.copies.binary_search_by_key(&p.seq, |c| c.seq) {
            Ok(i) => {
                if self.copies[i].queue == GONE {
                    self.gone -= 1;
                }
                self.copies[i] = copy;
            }
            Err(_) => {
                self.moved.insert(p.seq, copy);
            }
        }
    }

    /// Records a `Done`: `seq` is no longer live (if it was: its `Put` may have been in a
    /// segment deleted since).
    pub(super) fn done(&mut self, seq: u64) {
        if self.moved.remove(&seq).is_some() {
            return;
        }
        if let Ok(i) = self.copies.binary_search_by_key(&seq, |c| c.seq)
            && self.copies[i].queue != GONE
        {
            self.copies[i].queue = GONE;
            self.gone += 1;
            if self.gone > self.copies.len() / 2 && self.copies.len() >= SWEEP_AT_LEAST {
                self.copies.retain(|c| c.queue != GONE);
                self.gone = 0;
            }
        }
    }

    /// Done with replay: the copies' attempts and dead-letter reasons, from the index.
    pub(super) fn finish(
        &mut self,
        attempts: HashMap<u64, u32, SeqHash>,
        dead: HashMap<u64, String, SeqHash>,
    ) {
        self.settle();
        (self.attempts, self.dead) = (attempts, dead);
    }

    /// One vector, sorted by seq, nothing gone.
    fn settle(&mut self) {
        if self.gone > 0 {
            self.copies.retain(|c| c.queue != GONE);
            self.gone = 0;
        }
        if !self.moved.is_empty() {
            self.copies
                .extend(std::mem::take(&mut self.moved).into_values());
            self.copies.sort_unstable_by_key(|c| c.seq);
        }
        self.copies.shrink_to_fit();
    }
}

impl IntoIterator for LiveCopies {
    type Item = StoredMessage;
    type IntoIter = IntoIter;

    fn into_iter(mut self) -> IntoIter {
        self.settle();
        IntoIter {
            copies: std::mem::take(&mut self.copies).into_iter(),
            rest: self,
        }
    }
}

/// The copies of a [`LiveCopies`], each made a [`StoredMessage`] as it is taken.
#[derive(Debug)]
pub struct IntoIter {
    copies: std::vec::IntoIter<Kept>,
    rest: LiveCopies,
}

impl Iterator for IntoIter {
    type Item = StoredMessage;

    fn next(&mut self) -> Option<StoredMessage> {
        let c = self.copies.next()?;
        Some(StoredMessage {
            seq: c.seq,
            queue: self.rest.queues[c.queue as usize].clone(),
            message_id: c.message_id,
            precedence: c.precedence,
            expires_at_ms: c.expires_at_ms,
            received_at_ms: c.received_at_ms,
            attempts: self.rest.attempts.get(&c.seq).copied().unwrap_or(0),
            dead: self.rest.dead.remove(&c.seq),
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.copies.size_hint()
    }
}

impl ExactSizeIterator for IntoIter {}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(seq: u64, queue: &str) -> PutBody {
        PutBody {
            seq,
            queue: queue.to_owned(),
            message_id: [seq as u8; 16],
            precedence: 5,
            expires_at_ms: seq * 10,
            received_at_ms: seq * 100,
            attempts: 0,
            dead: None,
            bytes: bytes::Bytes::new(),
        }
    }

    #[test]
    fn a_copy_is_forty_eight_bytes() {
        assert_eq!(std::mem::size_of::<Kept>(), 48);
    }

    /// Against a `BTreeMap` of `StoredMessage`s (what recovery kept before), through puts in
    /// and out of seq order, moves and finishes, with sweeps; attempts and dead letters, the
    /// index's, are handed over at the end and go to their copies.
    #[test]
    fn it_keeps_what_a_map_by_seq_keeps() {
        let mut live = LiveCopies::default();
        let mut model: BTreeMap<u64, StoredMessage> = BTreeMap::new();
        let mut rng = 0x1234_5678_u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let (mut seq, mut late) = (0, Vec::new());
        for step in 0..60_000u64 {
            // A live seq at random (the first at or after a random one).
            let r = next() % (seq + 1);
            let picked = model.range(r..).chain(&model).next().map(|(&s, _)| s);
            match next() % 10 {
                // A copy first written now; now and then a seq is left for later.
                0..=2 => {
                    seq += 1;
                    if next() % 4 == 0 {
                        late.push(seq);
                        seq += 1;
                    }
                    let queue = ["mailbox:a", "outbox:b", "mailbox:c"][step as usize % 3];
                    let mut p = put(seq, queue);
                    p.attempts = (next() % 4 == 0) as u32;
                    model.insert(seq, stored(&p));
                    live.put(&p);
                }
                // A copy whose first `Put` was in a deleted segment: its seq comes below seqs
                // already seen, the first time.
                3 if !late.is_empty() => {
                    let i = (next() % late.len() as u64) as usize;
                    let p = put(late.swap_remove(i), "mailbox:late");
                    model.insert(p.seq, stored(&p));
                    live.put(&p);
                }
                4..=6 if let Some(s) = picked => {
                    model.remove(&s);
                    live.done(s);
                }
                // A move: the copy written again with its seq (and its current state).
                7 if let Some(s) = picked => {
                    let m = model[&s].clone();
                    let p = PutBody {
                        attempts: m.attempts,
                        dead: m.dead.clone(),
                        ..put(s, &m.queue)
                    };
                    live.put(&p);
                }
                8 if let Some(s) = picked => {
                    model.get_mut(&s).unwrap().attempts = (next() % 5) as u32 + 1;
                }
                9 if let Some(s) = picked => {
                    model.get_mut(&s).unwrap().dead = Some(format!("reason {step}"));
                }
                _ => {}
            }
            // An unknown seq changes nothing.
            live.done(seq + 1);
            assert_eq!(live.len(), model.len(), "step {step}");
        }
        assert_eq!(live.max_seq(), model.keys().next_back().copied());
        let marked = model
            .values()
            .filter(|m| m.attempts > 0)
            .map(|m| (m.seq, m.attempts));
        let dead = model
            .values()
            .filter_map(|m| Some((m.seq, m.dead.clone()?)));
        live.finish(marked.collect(), dead.collect());
        let got: Vec<StoredMessage> = live.into_iter().collect();
        let want: Vec<StoredMessage> = model.into_values().collect();
        assert_eq!(got, want);
    }

    fn stored(p: &PutBody) -> StoredMessage {
        StoredMessage {
            seq: p.seq,
            queue: p.queue.clone(),
            message_id: p.message_id,
            precedence: p.precedence,
            expires_at_ms: p.expires_at_ms,
            received_at_ms: p.received_at_ms,
            attempts: p.attempts,
            dead: p.dead.clone(),
        }
    }

    /// A copy moved while many older ones stayed, then moved again after a sweep left the
    /// last appended seq below it: one copy, finished by one `Done`.
    #[test]
    fn a_copy_moved_twice_across_a_sweep_is_one_copy() {
        let mut live = LiveCopies::default();
        for seq in 1..=2048 {
            live.put(&put(seq, "q"));
        }
        live.put(&put(10_000, "q"));
        live.put(&put(3000, "q")); // Its first `Put` was in a deleted segment.
        for seq in 10_001..=12_048 {
            live.put(&put(seq, "q"));
        }
        for seq in 10_000..=12_048 {
            live.done(seq);
        }
        live.put(&put(3000, "q")); // Moved again.
        assert_eq!(live.len(), 2049);
        live.done(3000);
        assert_eq!(live.len(), 2048);
        let seqs: Vec<u64> = live.into_iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (1..=2048).collect::<Vec<_>>());
    }

    #[test]
    fn moved_copies_are_merged_in_seq_order() {
        let mut live = LiveCopies::default();
        for seq in [5, 6, 7] {
            live.put(&put(seq, "q"));
        }
        // Compaction moved 2 and 3 (from a segment the replay already passed, or whose `Put`s
        // were in a deleted one) and 6.
        for seq in [2, 3, 6] {
            live.put(&put(seq, "q"));
        }
        live.done(3);
        assert_eq!(live.len(), 4);
        let seqs: Vec<u64> = live.into_iter().map(|m| m.seq).collect();
        assert_eq!(seqs, vec![2, 5, 6, 7]);
    }
}
