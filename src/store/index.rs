//! The store's in-memory indexes, rebuilt from the log at open: where each live copy is, what
//! each segment still holds, and which message ids have been seen.
//!
//! Pure: no I/O and no clock. The writer thread owns the [`Index`]; the [`Seen`] set is shared
//! with [`super::Store::contains_message`] behind a lock. Message bytes are not held here (they
//! stay on disk and are read back for compaction and redrive).

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use super::{Op, StoreError};

/// Where a record's frame is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Location {
    pub segment: u64,
    pub offset: u64,
    pub len: u32,
}

/// A live copy: waiting in its queue, or parked as a dead letter (its reason is kept apart,
/// see [`Index::dead_reason`]: dead letters are few, and every live copy has an entry).
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub loc: Location,
    pub attempts: u32,
}

/// A dedup key: queue name (interned) and message id.
pub(super) type Key = (Arc<str>, [u8; 16]);

/// A `Put` frame in a segment file: its copy's seq and its dedup key.
#[derive(Debug, Clone)]
pub(super) struct PutFrame {
    pub seq: u64,
    pub key: Key,
}

/// What one segment file still holds.
#[derive(Debug, Default)]
pub(super) struct SegmentInfo {
    /// File length (committed frames only).
    pub bytes: u64,
    /// Live copies whose current `Put` frame is in this segment.
    pub live: usize,
    /// Sum of those frames' lengths.
    pub live_bytes: u64,
    /// Every `Put` frame in this file, live or not, in file order: its live copies are those
    /// whose entry points here, and every key is forgotten at deletion. (One flat list rather
    /// than a set of live seqs: a few dozen bytes less for every queued copy.)
    pub puts: Vec<PutFrame>,
    /// How many of `puts`, from the start, are known not to be live here any more (finished,
    /// or moved by compaction): where the search for the next copies to move starts.
    moved_past: Cell<usize>,
}

impl SegmentInfo {
    /// The seqs of the live copies whose current frame is in segment `id` (this one), in file
    /// order.
    pub(super) fn live_seqs<'a>(
        &'a self,
        id: u64,
        index: &'a Index,
    ) -> impl Iterator<Item = u64> + 'a {
        let here = move |seq: u64| index.get(seq).is_some_and(|e| e.loc.segment == id);
        // Frames before the first live one are skipped for good: a copy that left a segment
        // never comes back to it.
        let start = self.moved_past.get();
        let skip = self.puts[start..]
            .iter()
            .take_while(|f| !here(f.seq))
            .count();
        self.moved_past.set(start + skip);
        self.puts[start + skip..]
            .iter()
            .map(|f| f.seq)
            .filter(move |&seq| here(seq))
    }
}

/// Hashes the store's own seqs, which no client chooses, with one multiplication and a
/// rotation (as `rustc-hash` does) instead of SipHash, whose defence against chosen keys they
/// do not need: recovery inserts every live copy of a backlog at each start. Every bit of the
/// result depends on the seq's low bits, so a dense run of live seqs is spread over the table
/// (keeping the seq's own low bits would put it in one run of full buckets, which a lookup
/// that misses, such as a `Done` whose `Put` was in a deleted segment, must probe across).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct SeqHash;

impl BuildHasher for SeqHash {
    type Hasher = SeqHasher;

    fn build_hasher(&self) -> SeqHasher {
        SeqHasher(0)
    }
}

#[derive(Debug)]
pub(super) struct SeqHasher(u64);

impl Hasher for SeqHasher {
    fn finish(&self) -> u64 {
        self.0.wrapping_mul(0xF135_7AEA_2E62_A9C5).rotate_left(26)
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed with it; any other input still hashes consistently.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Live copies by seq, and segments by id (ids grow with time; the first is the head).
#[derive(Debug, Default)]
pub(super) struct Index {
    entries: HashMap<u64, Entry, SeqHash>,
    segments: BTreeMap<u64, SegmentInfo>,
    /// The reasons of the dead-lettered copies.
    dead: HashMap<u64, String, SeqHash>,
}

impl Index {
    pub(super) fn get(&self, seq: u64) -> Option<&Entry> {
        self.entries.get(&seq)
    }

    pub(super) fn live_count(&self) -> usize {
        self.entries.len()
    }

    /// Makes room for `more` live copies, if memory allows (it is only a head start).
    pub(super) fn reserve(&mut self, more: usize) {
        let _ = self.entries.try_reserve(more);
    }

    pub(super) fn dead_count(&self) -> usize {
        self.dead.len()
    }

    /// Why a live copy is a dead letter; `None` when it is not one.
    pub(super) fn dead_reason(&self, seq: u64) -> Option<&String> {
        self.dead.get(&seq)
    }

    pub(super) fn segments(&self) -> &BTreeMap<u64, SegmentInfo> {
        &self.segments
    }

    pub(super) fn add_segment(&mut self, id: u64) {
        self.segments.entry(id).or_default();
    }

    /// Counts `n` more committed bytes in a segment's file.
    pub(super) fn add_bytes(&mut self, segment: u64, n: u64) {
        self.segments.entry(segment).or_default().bytes += n;
    }

    /// Records a `Put` frame at `loc`. A seq that is already live was moved (compaction keeps
    /// seqs), and the later frame wins: the copy takes the record's attempts and dead state.
    pub(super) fn put(
        &mut self,
        seq: u64,
        loc: Location,
        attempts: u32,
        dead: Option<String>,
        key: Key,
    ) {
        let entry = Entry { loc, attempts };
        // One lookup for the common case, a fresh seq; a moved one forgets its old frame.
        if let Some(old) = self.entries.insert(seq, entry) {
            // Compaction moves a copy out of the head into the active segment, never within
            // one segment, so a segment lists each of its live copies once (`live_seqs`).
            debug_assert_ne!(
                old.loc.segment, loc.segment,
                "seq {seq} put twice in one segment"
            );
            self.forget(&old);
        }
        match dead {
            Some(reason) => self.dead.insert(seq, reason),
            None => self.dead.remove(&seq),
        };
        let seg = self.segments.entry(loc.segment).or_default();
        seg.live += 1;
        seg.live_bytes += u64::from(loc.len);
        seg.puts.push(PutFrame { seq, key });
    }

    /// Removes a live copy. Returns false when `seq` is not live (a `Done` whose `Put` was in a
    /// deleted segment, when replaying the log).
    pub(super) fn done(&mut self, seq: u64) -> bool {
        self.unlink(seq).is_some()
    }

    fn unlink(&mut self, seq: u64) -> Option<Entry> {
        let e = self.entries.remove(&seq)?;
        self.forget(&e);
        self.dead.remove(&seq);
        Some(e)
    }

    /// Takes a no-longer-current entry out of its segment's accounting.
    fn forget(&mut self, e: &Entry) {
        if let Some(seg) = self.segments.get_mut(&e.loc.segment) {
            seg.live -= 1;
            seg.live_bytes -= u64::from(e.loc.len);
        }
    }

    pub(super) fn attempt(&mut self, seq: u64, attempts: u32) -> bool {
        self.entries
            .get_mut(&seq)
            .map(|e| e.attempts = attempts)
            .is_some()
    }

    pub(super) fn dead_letter(&mut self, seq: u64, reason: String) -> bool {
        if !self.entries.contains_key(&seq) {
            return false;
        }
        self.dead.insert(seq, reason);
        true
    }

    /// The head segment, if it can be deleted: it holds no live copy and is not `keep` (the
    /// newest segment, which the writer appends to or whose header carries the next seq).
    /// Deleting strictly from the head keeps every `Done` whose `Put` still exists on disk.
    pub(super) fn deletable_head(&self, keep: Option<u64>) -> Option<u64> {
        let (&id, seg) = self.segments.first_key_value()?;
        (Some(id) != keep && seg.live == 0).then_some(id)
    }

    /// Forgets a deleted segment; returns the dedup keys of the `Put` frames it held.
    pub(super) fn remove_segment(&mut self, id: u64) -> Vec<Key> {
        self.segments
            .remove(&id)
            .map(|s| s.puts.into_iter().map(|f| f.key).collect())
            .unwrap_or_default()
    }

    /// The head segment, if its live copies should be moved forward so it can be deleted: it is
    /// not `active`, it holds live copies, and either it or the whole log is less than `ratio`
    /// live (by bytes). The second test keeps one mostly-live head from pinning a long tail of
    /// finished segments; together they bound the disk held to about `1 / ratio` times the live
    /// bytes (plus a segment), at the cost of copying live bytes about once per such cycle.
    pub(super) fn compaction_source(&self, active: Option<u64>, ratio: f64) -> Option<u64> {
        let (&id, head) = self.segments.first_key_value()?;
        if Some(id) == active || head.live == 0 {
            return None;
        }
        let below = |live: u64, total: u64| (live as f64) < ratio * (total as f64);
        let (live, total) =
            (self.segments.values()).fold((0, 0), |(l, t), s| (l + s.live_bytes, t + s.bytes));
        (below(head.live_bytes, head.bytes) || below(live, total)).then_some(id)
    }

    /// Checks that a request's ops can all be applied, in order, to the current state, so that a
    /// request is applied whole or not at all.
    ///
    /// # Errors
    /// [`StoreError::NotLive`] for an op on a seq that is not live (or finished earlier in the
    /// same request); [`StoreError::NotDead`] for a redrive of a copy that is not dead-lettered.
    pub(super) fn validate(&self, ops: &[Op]) -> Result<(), StoreError> {
        let mut finished = HashSet::new();
        let mut dead_now = HashSet::new();
        for op in ops {
            let (seq, needs_dead) = match op {
                Op::Put(_) => continue,
                Op::Done(s) | Op::Attempt(s, _) => (*s, false),
                Op::DeadLetter(s, _) => (*s, false),
                Op::Redrive(s) => (*s, true),
            };
            if !self.entries.contains_key(&seq) || finished.contains(&seq) {
                return Err(StoreError::NotLive(seq));
            }
            if needs_dead && !self.dead.contains_key(&seq) && !dead_now.contains(&seq) {
                return Err(StoreError::NotDead(seq));
            }
            match op {
                Op::Done(_) | Op::Redrive(_) => {
                    finished.insert(seq);
                }
                Op::DeadLetter(..) => {
                    dead_now.insert(seq);
                }
                Op::Put(_) | Op::Attempt(..) => {}
            }
        }
        Ok(())
    }
}

/// Message ids by queue, counted once per `Put` frame on disk. A key stays "seen" while any
/// `Put` frame for it exists in a segment file, live or finished; see
/// [`super::Store::contains_message`] for what that window means.
#[derive(Debug, Default)]
pub(super) struct Seen {
    by_queue: HashMap<Arc<str>, Ids>,
}

/// One queue's ids, and its shared name (the map's key, kept here too so that a key is made
/// with one lookup).
#[derive(Debug)]
struct Ids {
    name: Arc<str>,
    ids: HashMap<[u8; 16], u32>,
}

impl Seen {
    /// The shared name for `queue`, so keys in segment lists do not each own a copy.
    pub(super) fn key(&self, queue: &str, id: [u8; 16]) -> Key {
        let name = self
            .by_queue
            .get_key_value(queue)
            .map_or_else(|| Arc::from(queue), |(k, _)| k.clone());
        (name, id)
    }

    pub(super) fn add(&mut self, key: &Key) {
        match self.by_queue.get_mut(&*key.0) {
            Some(q) => *q.ids.entry(key.1).or_default() += 1,
            None => self.first(key.0.clone(), key.1),
        }
    }

    /// As [`Seen::key`] then [`Seen::add`], with one lookup of the queue (recovery adds every
    /// `Put` on disk).
    pub(super) fn insert(&mut self, queue: &str, id: [u8; 16]) -> Key {
        if let Some(q) = self.by_queue.get_mut(queue) {
            *q.ids.entry(id).or_default() += 1;
            return (q.name.clone(), id);
        }
        let name: Arc<str> = Arc::from(queue);
        self.first(name.clone(), id);
        (name, id)
    }

    /// Adds the first id of a queue.
    fn first(&mut self, name: Arc<str>, id: [u8; 16]) {
        let ids = HashMap::from([(id, 1)]);
        self.by_queue.insert(name.clone(), Ids { name, ids });
    }

    pub(super) fn remove(&mut self, key: &Key) {
        let Some(q) = self.by_queue.get_mut(&*key.0) else {
            return;
        };
        if let Some(n) = q.ids.get_mut(&key.1) {
            *n -= 1;
            if *n == 0 {
                q.ids.remove(&key.1);
            }
        }
        if q.ids.is_empty() {
            self.by_queue.remove(&*key.0);
        }
    }

    pub(super) fn contains(&self, queue: &str, id: &[u8; 16]) -> bool {
        self.by_queue
            .get(queue)
            .is_some_and(|q| q.ids.contains_key(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_hashes_spread_consecutive_seqs_over_buckets_and_tags() {
        let h = |n: u64| SeqHash.hash_one(n);
        let seqs = 1_000_000..1_004_096u64;
        // hashbrown takes the bucket from the low bits and a tag from the top seven.
        let buckets: HashSet<u64> = seqs.clone().map(|n| h(n) & 0xFFF).collect();
        let tags: HashSet<u64> = seqs.map(|n| h(n) >> 57).collect();
        assert!(buckets.len() > 2_000, "{} of 4096 buckets", buckets.len());
        assert_eq!(tags.len(), 128);
    }

    fn loc(segment: u64, len: u32) -> Location {
        Location {
            segment,
            offset: 0,
            len,
        }
    }

    fn key(q: &str, b: u8) -> Key {
        (Arc::from(q), [b; 16])
    }

    #[test]
    fn a_moved_copy_is_counted_once_in_its_new_segment() {
        let mut ix = Index::default();
        ix.add_bytes(1, 1000);
        ix.put(7, loc(1, 100), 0, None, key("q", 1));
        ix.put(7, loc(2, 100), 3, Some("r".into()), key("q", 1));
        assert_eq!(ix.live_count(), 1);
        assert_eq!(ix.dead_count(), 1);
        assert_eq!(ix.segments()[&1].live_bytes, 0);
        assert_eq!(ix.segments()[&2].live_bytes, 100);
        assert_eq!(ix.get(7).unwrap().attempts, 3);
        assert!(ix.done(7));
        assert!(!ix.done(7));
        assert_eq!(ix.dead_count(), 0);
    }

    #[test]
    fn a_segments_live_copies_are_its_frames_whose_entries_still_point_there() {
        let mut ix = Index::default();
        for seq in 1..=4 {
            ix.put(seq, loc(1, 10), 0, None, key("q", seq as u8));
        }
        ix.done(1);
        ix.put(3, loc(2, 10), 0, None, key("q", 3)); // Moved forward by compaction.
        let live = |ix: &Index| ix.segments()[&1].live_seqs(1, ix).collect::<Vec<_>>();
        assert_eq!(live(&ix), vec![2, 4]);
        assert_eq!(ix.segments()[&1].live, 2);
        assert_eq!(
            ix.segments()[&2].live_seqs(2, &ix).collect::<Vec<_>>(),
            vec![3]
        );
        ix.done(2);
        assert_eq!(live(&ix), vec![4]);
        // Frames added after the search moved past the finished ones are still found.
        ix.put(5, loc(1, 10), 0, Some("dead".into()), key("q", 5));
        assert_eq!(live(&ix), vec![4, 5]);
        assert_eq!(ix.dead_reason(5).map(String::as_str), Some("dead"));
        ix.done(4);
        ix.done(5);
        assert_eq!(live(&ix), Vec::<u64>::new());
        assert_eq!((ix.dead_count(), ix.dead_reason(5)), (0, None));
        assert_eq!(ix.deletable_head(Some(2)), Some(1));
        assert_eq!(
            ix.remove_segment(1).len(),
            5,
            "the key of every Put frame, live or not"
        );
    }

    #[test]
    fn only_an_empty_head_other_than_the_newest_is_deletable() {
        let mut ix = Index::default();
        ix.put(1, loc(1, 10), 0, None, key("q", 1));
        ix.put(2, loc(2, 10), 0, None, key("q", 2));
        assert_eq!(ix.deletable_head(Some(2)), None);
        ix.done(2);
        assert_eq!(
            ix.deletable_head(Some(2)),
            None,
            "segment 2 is empty but not the head"
        );
        ix.done(1);
        assert_eq!(ix.deletable_head(Some(2)), Some(1));
        assert_eq!(ix.remove_segment(1), vec![key("q", 1)]);
        assert_eq!(ix.deletable_head(Some(2)), None, "the newest segment stays");
    }

    #[test]
    fn compaction_picks_a_sparse_head_or_a_sparse_log() {
        let mut ix = Index::default();
        ix.add_bytes(1, 1000);
        ix.put(1, loc(1, 600), 0, None, key("q", 1));
        ix.add_bytes(2, 1000);
        ix.put(2, loc(2, 1000), 0, None, key("q", 2));
        ix.add_bytes(3, 1000);
        assert_eq!(
            ix.compaction_source(Some(3), 0.5),
            None,
            "60% live, log 53% live"
        );
        ix.done(2);
        assert_eq!(
            ix.compaction_source(Some(3), 0.5),
            Some(1),
            "log is 20% live"
        );
        assert_eq!(
            ix.compaction_source(Some(1), 0.5),
            None,
            "never the active segment"
        );
        ix.done(1);
        assert_eq!(
            ix.compaction_source(Some(3), 0.5),
            None,
            "nothing live to move"
        );
    }

    #[test]
    fn validation_is_sequential_within_a_request() {
        let mut ix = Index::default();
        ix.put(1, loc(1, 10), 0, None, key("q", 1));
        ix.put(2, loc(1, 10), 0, Some("x".into()), key("q", 2));
        assert!(ix.validate(&[Op::Attempt(1, 2), Op::Done(1)]).is_ok());
        assert!(matches!(
            ix.validate(&[Op::Done(1), Op::Done(1)]),
            Err(StoreError::NotLive(1))
        ));
        assert!(matches!(
            ix.validate(&[Op::Done(9)]),
            Err(StoreError::NotLive(9))
        ));
        assert!(matches!(
            ix.validate(&[Op::Redrive(1)]),
            Err(StoreError::NotDead(1))
        ));
        assert!(
            ix.validate(&[Op::DeadLetter(1, "r".into()), Op::Redrive(1)])
                .is_ok()
        );
        assert!(ix.validate(&[Op::Redrive(2)]).is_ok());
        assert!(matches!(
            ix.validate(&[Op::Redrive(2), Op::Attempt(2, 1)]),
            Err(StoreError::NotLive(2))
        ));
    }

    #[test]
    fn seen_counts_frames_and_shares_queue_names() {
        let mut s = Seen::default();
        let k = s.key("mailbox:pgr", [1; 16]);
        s.add(&k);
        let k2 = s.key("mailbox:pgr", [1; 16]);
        assert!(Arc::ptr_eq(&k.0, &k2.0));
        s.add(&k2);
        s.remove(&k);
        assert!(s.contains("mailbox:pgr", &[1; 16]));
        s.remove(&k2);
        assert!(!s.contains("mailbox:pgr", &[1; 16]));
        assert!(s.by_queue.is_empty());

        // `insert` is `key` then `add`: the same shared name, the same counts.
        let k3 = s.insert("mailbox:pgr", [2; 16]);
        let k4 = s.insert("mailbox:pgr", [2; 16]);
        assert!(Arc::ptr_eq(&k3.0, &k4.0));
        assert!(Arc::ptr_eq(&k3.0, &s.key("mailbox:pgr", [3; 16]).0));
        s.remove(&k3);
        assert!(s.contains("mailbox:pgr", &[2; 16]));
        s.remove(&k4);
        assert!(s.by_queue.is_empty());
    }
}
