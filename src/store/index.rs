//! The store's in-memory indexes, rebuilt from the log at open: where each live copy is, what
//! each segment still holds, and which message ids have been seen.
//!
//! Pure: no I/O and no clock. The writer thread owns the [`Index`]; the [`Seen`] set is shared
//! with [`super::Store::contains_message`] behind a lock. Message bytes are not held here (they
//! stay on disk and are read back for compaction and redrive).
//!
//! **A few dozen bytes a copy.** A backlog of millions of copies must fit in a node's memory
//! budget, so nothing here is kept per copy in a hash table in the common case. A copy first
//! written to a segment, with a seq above every earlier one (seqs are handed out in order, and
//! written in that order), is a 12-byte [`Slot`] in its segment's list, which is therefore
//! sorted: it is found by the segment whose first slot is at or below its seq, then by a binary
//! search. The others are **strays**, with a full entry in a hash table: copies moved forward
//! by compaction (same seq, a later segment), and at open those whose first frame was in a
//! segment deleted since. Attempts and dead-letter reasons, which few copies have, are kept in
//! tables of their own. A deleted segment's dedup fingerprints are read back from its summary
//! (see `Writer::fingerprints`), not kept here.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};

use super::{Op, StoreError};

/// Where a record's frame is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Location {
    pub segment: u64,
    pub offset: u64,
    pub len: u32,
}

/// A live copy: waiting in its queue, or parked as a dead letter (its reason is kept apart,
/// see [`Index::dead_reason`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Entry {
    pub loc: Location,
    pub attempts: u32,
}

/// A `Put` frame's dedup key (queue and message id), as a keyed 64-bit hash: see [`Seen`].
pub(super) type Fingerprint = u64;

/// A copy first written to its segment (see the module docs), in 12 bytes: its seq, as an
/// offset from the segment's first slot's ([`SegmentInfo::first`]), and where its frame is in
/// the segment. `len` is 0 once the copy is no longer live here (finished, or moved).
#[derive(Debug, Clone, Copy)]
struct Slot {
    seq: u32,
    offset: u32,
    len: u32,
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
    /// Copies finished (`Done`) while their frame was here: whether a head segment drains or
    /// is pinned (moves by compaction are not counted).
    pub finished: u64,
    /// Copies first written here, seqs ascending.
    slots: Vec<Slot>,
    /// The seq of the first of them: the others' are counted from it.
    first: u64,
    /// The seqs of the strays whose frames are here, in file order (live here while their
    /// entry in [`Index::strays`] points here).
    strays: Vec<u64>,
    /// How many of `slots`, then of `strays`, from the start, are known not to be live here any
    /// more: where the search for the next copies to move starts (a copy that left a segment
    /// never comes back to it).
    slots_past: Cell<usize>,
    strays_past: Cell<usize>,
}

impl SegmentInfo {
    /// The seqs of the live copies whose current frame is in segment `id` (this one): its
    /// slots', then its strays'.
    pub(super) fn live_seqs<'a>(
        &'a self,
        id: u64,
        index: &'a Index,
    ) -> impl Iterator<Item = u64> + 'a {
        let here = move |seq: &u64| index.strays.get(seq).is_some_and(|l| l.segment == id);
        let slots = skip_gone(&self.slots_past, &self.slots, |s| s.len == 0);
        let strays = skip_gone(&self.strays_past, &self.strays, |s| !here(s));
        let slots = self.slots[slots..].iter().filter(|s| s.len != 0);
        let first = self.first;
        let slots = slots.map(move |s| first + u64::from(s.seq));
        slots.chain(self.strays[strays..].iter().copied().filter(here))
    }
}

/// Moves the cursor `past` over the items from it on that have left the segment (`gone`: a
/// copy never comes back to a segment it left), and returns where it stops.
fn skip_gone<T>(past: &Cell<usize>, items: &[T], gone: impl Fn(&T) -> bool) -> usize {
    let start = past.get();
    let end = start + items[start..].iter().take_while(|x| gone(x)).count();
    past.set(end);
    end
}

/// Hashes the store's own seqs, which no client chooses, with one multiplication and a
/// rotation (as `rustc-hash` does) instead of SipHash, whose defence against chosen keys they
/// do not need: recovery inserts every live copy of a backlog at each start. Every bit of the
/// result depends on the seq's low bits, so a dense run of live seqs is spread over the table
/// (keeping the seq's own low bits would put it in one run of full buckets, which a lookup
/// that misses must probe across). Fingerprints, already keyed hashes, are hashed with it too.
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
    segments: BTreeMap<u64, SegmentInfo>,
    /// The segments that have slots, by their first slot's seq.
    homes: BTreeMap<u64, u64>,
    /// The highest seq given a slot: a `Put` above it gets one.
    last_slot: Option<u64>,
    /// Live copies that have no slot (see the module docs).
    strays: HashMap<u64, Location, SeqHash>,
    /// Live copies with failed attempts, and how many.
    attempts: HashMap<u64, u32, SeqHash>,
    /// The reasons of the dead-lettered copies.
    dead: HashMap<u64, String, SeqHash>,
    live: usize,
}

impl Index {
    pub(super) fn get(&self, seq: u64) -> Option<Entry> {
        let loc = self.locate(seq)?;
        let attempts = self.attempts.get(&seq).copied().unwrap_or(0);
        Some(Entry { loc, attempts })
    }

    fn is_live(&self, seq: u64) -> bool {
        self.locate(seq).is_some()
    }

    /// Where live copy `seq`'s current frame is.
    fn locate(&self, seq: u64) -> Option<Location> {
        if let Some(&loc) = self.strays.get(&seq) {
            return Some(loc);
        }
        let (segment, slot) = self.slot(seq)?;
        let s = self.segments[&segment].slots[slot];
        (s.len != 0).then_some(Location {
            segment,
            offset: u64::from(s.offset),
            len: s.len,
        })
    }

    /// The segment and position of `seq`'s slot, live or not.
    fn slot(&self, seq: u64) -> Option<(u64, usize)> {
        let (_, &segment) = self.homes.range(..=seq).next_back()?;
        let seg = self.segments.get(&segment)?;
        let key = u32::try_from(seq.checked_sub(seg.first)?).ok()?;
        let i = seg.slots.binary_search_by_key(&key, |s| s.seq).ok()?;
        Some((segment, i))
    }

    pub(super) fn live_count(&self) -> usize {
        self.live
    }

    pub(super) fn dead_count(&self) -> usize {
        self.dead.len()
    }

    /// The live copies' failed attempts and dead-letter reasons (a copy of each table, for
    /// the copies recovery hands the node).
    pub(super) fn marks(&self) -> (HashMap<u64, u32, SeqHash>, HashMap<u64, String, SeqHash>) {
        (self.attempts.clone(), self.dead.clone())
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

    /// Gives back what a segment's lists grew beyond their length: called once nothing more
    /// will be added to it (it was rolled past, or read at open).
    pub(super) fn seal(&mut self, id: u64) {
        if let Some(seg) = self.segments.get_mut(&id) {
            seg.slots.shrink_to_fit();
            seg.strays.shrink_to_fit();
        }
    }

    /// Records a `Put` frame at `loc`. A seq that is already live was moved (compaction keeps
    /// seqs), and the later frame wins: the copy takes the record's attempts and dead state.
    pub(super) fn put(&mut self, seq: u64, loc: Location, attempts: u32, dead: Option<String>) {
        match self.unlink_location(seq) {
            Some(old) => {
                // Compaction moves a copy out of the head into the active segment, never
                // within one segment, so a segment lists each of its live copies once.
                debug_assert_ne!(
                    old.segment, loc.segment,
                    "seq {seq} put twice in one segment"
                );
                self.forget(old);
            }
            None => self.live += 1,
        }
        match attempts {
            0 => self.attempts.remove(&seq),
            n => self.attempts.insert(seq, n),
        };
        match dead {
            Some(reason) => self.dead.insert(seq, reason),
            None => self.dead.remove(&seq),
        };
        let fresh = self.last_slot.is_none_or(|last| seq > last);
        let seg = self.segments.entry(loc.segment).or_default();
        seg.live += 1;
        seg.live_bytes += u64::from(loc.len);
        // A segment's slots span fewer seqs than it has frames, far below 2^32; anything that
        // does not fit is a stray.
        let first = match seg.slots.is_empty() {
            true => seq,
            false => seg.first,
        };
        let delta = seq.checked_sub(first).and_then(|d| u32::try_from(d).ok());
        match (u32::try_from(loc.offset), delta) {
            (Ok(offset), Some(delta)) if fresh && loc.len != 0 => {
                if seg.slots.is_empty() {
                    self.homes.insert(seq, loc.segment);
                    seg.first = seq;
                }
                seg.slots.push(Slot {
                    seq: delta,
                    offset,
                    len: loc.len,
                });
                self.last_slot = Some(seq);
            }
            _ => {
                seg.strays.push(seq);
                self.strays.insert(seq, loc);
            }
        }
    }

    /// Removes a live copy. Returns false when `seq` is not live (a `Done` whose `Put` was in a
    /// deleted segment, when replaying the log).
    pub(super) fn done(&mut self, seq: u64) -> bool {
        let Some(loc) = self.unlink_location(seq) else {
            return false;
        };
        self.forget(loc);
        if let Some(seg) = self.segments.get_mut(&loc.segment) {
            seg.finished += 1;
        }
        self.live -= 1;
        self.attempts.remove(&seq);
        self.dead.remove(&seq);
        true
    }

    /// Takes live copy `seq` out of where it is (its slot, or the strays); returns where that
    /// was.
    fn unlink_location(&mut self, seq: u64) -> Option<Location> {
        if let Some(loc) = self.strays.remove(&seq) {
            // A table that held many strays (a compacted backlog) gives its room back as they
            // go: tables do not shrink by themselves.
            if self.strays.capacity() > 4 * self.strays.len() + 1024 {
                self.strays.shrink_to_fit();
            }
            return Some(loc);
        }
        let (segment, i) = self.slot(seq)?;
        let slot = &mut self.segments.get_mut(&segment)?.slots[i];
        let len = std::mem::replace(&mut slot.len, 0);
        (len != 0).then_some(Location {
            segment,
            offset: u64::from(slot.offset),
            len,
        })
    }

    /// Takes a no-longer-current frame out of its segment's accounting.
    fn forget(&mut self, loc: Location) {
        if let Some(seg) = self.segments.get_mut(&loc.segment) {
            seg.live -= 1;
            seg.live_bytes -= u64::from(loc.len);
        }
    }

    pub(super) fn attempt(&mut self, seq: u64, attempts: u32) -> bool {
        if !self.is_live(seq) {
            return false;
        }
        match attempts {
            0 => self.attempts.remove(&seq),
            n => self.attempts.insert(seq, n),
        };
        true
    }

    pub(super) fn dead_letter(&mut self, seq: u64, reason: String) -> bool {
        if !self.is_live(seq) {
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

    /// Forgets a deleted segment (the fingerprints of its `Put` frames are read back from disk:
    /// see `Writer::fingerprints`).
    pub(super) fn remove_segment(&mut self, id: u64) {
        if let Some(seg) = self.segments.remove(&id)
            && !seg.slots.is_empty()
        {
            self.homes.remove(&seg.first);
        }
    }
    /// The head segment, if its live copies should be moved forward so it can be deleted: it is
    /// not `active`, it holds live copies, and either it or the whole log is less than `ratio`
    /// live (by bytes). The second test keeps one mostly-live head from pinning a long tail of
    /// finished segments; together they bound the disk held to about `1 / ratio` times the live
    /// bytes (plus a segment), at the cost of copying live bytes about once per such cycle.
    /// With it, whether the whole log is less than half of `ratio` live: then the head is
    /// moved even while it drains, or a slow reader of it would let the log grow without bound
    /// (see `StoreOptions::compact_after_stall`).
    pub(super) fn compaction_source(&self, active: Option<u64>, ratio: f64) -> Option<(u64, bool)> {
        let (&id, head) = self.segments.first_key_value()?;
        if Some(id) == active || head.live == 0 {
            return None;
        }
        let below = |live: u64, total: u64, ratio: f64| (live as f64) < ratio * (total as f64);
        let (live, total) =
            (self.segments.values()).fold((0, 0), |(l, t), s| (l + s.live_bytes, t + s.bytes));
        let far = below(live, total, ratio / 2.0);
        (far || below(head.live_bytes, head.bytes, ratio) || below(live, total, ratio))
            .then_some((id, far))
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
            if !self.is_live(seq) || finished.contains(&seq) {
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

/// The key [`Seen`]'s fingerprints are made with (a copy, for use without its lock).
#[derive(Debug, Clone, Default)]
pub(super) struct Fingerprinter(RandomState);

impl Fingerprinter {
    /// The fingerprint of a dedup key.
    pub(super) fn fingerprint(&self, queue: &str, id: &[u8; 16]) -> Fingerprint {
        self.0.hash_one((queue, id))
    }
}

/// The dedup keys (queue and message id) of the `Put` frames on disk, counted once per frame.
/// A key stays "seen" while any `Put` frame for it exists in a segment file, live or finished;
/// see [`super::Store::contains_message`] for what that window means.
///
/// A key is kept as a 64-bit fingerprint, SipHash under a key drawn at random for each open
/// (the set is rebuilt at every open), rather than the 30 bytes or more of the key itself. Two
/// keys share a fingerprint by chance only, and nobody can choose a message id to make it
/// happen without the hash's key: with `n` frames on disk, a new message is taken for one
/// already seen with probability about `n / 2^64` (a million frames: 5 in 10^14).
///
/// The fingerprints are kept sorted, in buckets by their top bits ([`Sorted`]): about 9 bytes a
/// frame, where a hash set of them took 9 to 18 (by how full its table was) and a second table
/// counted the fingerprints of copies moved by compaction.
#[derive(Debug, Default)]
pub(super) struct Seen {
    hasher: Fingerprinter,
    /// One entry per frame: a fingerprint with several frames (a copy moved by compaction,
    /// until its older frame's segment is deleted) is there as many times.
    frames: Sorted,
}

impl Seen {
    /// The fingerprint of a dedup key.
    pub(super) fn fingerprint(&self, queue: &str, id: &[u8; 16]) -> Fingerprint {
        self.hasher.fingerprint(queue, id)
    }

    pub(super) fn hasher(&self) -> Fingerprinter {
        self.hasher.clone()
    }

    /// Counts one more frame for a fingerprint.
    pub(super) fn add(&mut self, fp: Fingerprint) {
        self.frames.insert(fp);
    }

    /// As [`Seen::fingerprint`] then [`Seen::add`].
    pub(super) fn insert(&mut self, queue: &str, id: &[u8; 16]) -> Fingerprint {
        let fp = self.fingerprint(queue, id);
        self.add(fp);
        fp
    }

    /// Counts one frame less for a fingerprint.
    pub(super) fn remove(&mut self, fp: Fingerprint) {
        self.frames.remove(fp);
    }

    pub(super) fn contains(&self, queue: &str, id: &[u8; 16]) -> bool {
        self.frames.contains(self.fingerprint(queue, id))
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.frames.len == 0
    }
}

/// A multiset of 64-bit values spread evenly (keyed hashes), kept sorted in `2^bits` buckets
/// by their top `bits` bits: a lookup is a binary search in one bucket of about a hundred, an
/// insert or a removal moves half a bucket. Buckets grow by an eighth, so that slack stays
/// small, and double in number (each split in two, in order) when they average [`SPLIT_AT`].
#[derive(Debug)]
struct Sorted {
    bits: u32,
    buckets: Vec<Vec<u64>>,
    len: usize,
}

/// The average bucket size at which buckets double in number.
const SPLIT_AT: usize = 128;
/// Buckets to start with: `2^MIN_BITS` (6 KiB of empty ones).
const MIN_BITS: u32 = 8;

impl Default for Sorted {
    fn default() -> Sorted {
        Sorted {
            bits: MIN_BITS,
            buckets: (0..1 << MIN_BITS).map(|_| Vec::new()).collect(),
            len: 0,
        }
    }
}

impl Sorted {
    fn bucket(&self, v: u64) -> usize {
        (v >> (64 - self.bits)) as usize
    }

    fn insert(&mut self, v: u64) {
        let i = self.bucket(v);
        let b = &mut self.buckets[i];
        if b.len() == b.capacity() {
            b.reserve_exact((b.len() / 8).max(4));
        }
        b.insert(b.partition_point(|&x| x < v), v);
        self.len += 1;
        if self.len > SPLIT_AT << self.bits && self.bits < 32 {
            self.split();
        }
    }

    /// Removes one occurrence of `v`, if any.
    fn remove(&mut self, v: u64) {
        let i = self.bucket(v);
        let b = &mut self.buckets[i];
        if let Ok(at) = b.binary_search(&v) {
            b.remove(at);
            self.len -= 1;
            if b.capacity() > b.len() + b.len() / 4 + 8 {
                b.shrink_to(b.len() + b.len() / 8);
            }
        }
    }

    fn contains(&self, v: u64) -> bool {
        self.buckets[self.bucket(v)].binary_search(&v).is_ok()
    }

    /// Doubles the buckets: each splits where its values' next bit turns to 1.
    fn split(&mut self) {
        let shift = 63 - self.bits;
        let old = std::mem::take(&mut self.buckets);
        self.buckets = Vec::with_capacity(old.len() * 2);
        for mut low in old {
            let high = low.split_off(low.partition_point(|&x| (x >> shift) & 1 == 0));
            low.shrink_to_fit();
            self.buckets.push(low);
            self.buckets.push(high);
        }
        self.bits += 1;
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

    #[test]
    fn a_moved_copy_is_counted_once_in_its_new_segment() {
        let mut ix = Index::default();
        ix.add_bytes(1, 1000);
        ix.put(7, loc(1, 100), 0, None);
        ix.put(7, loc(2, 100), 3, Some("r".into()));
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
            ix.put(seq, loc(1, 10), 0, None);
        }
        ix.done(1);
        ix.put(3, loc(2, 10), 0, None); // Moved forward by compaction.
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
        ix.put(5, loc(1, 10), 0, Some("dead".into()));
        assert_eq!(live(&ix), vec![4, 5]);
        assert_eq!(ix.dead_reason(5).map(String::as_str), Some("dead"));
        ix.done(4);
        ix.done(5);
        assert_eq!(live(&ix), Vec::<u64>::new());
        assert_eq!((ix.dead_count(), ix.dead_reason(5)), (0, None));
        assert_eq!(ix.deletable_head(Some(2)), Some(1));
        ix.remove_segment(1);
        assert_eq!(ix.segments().len(), 1);
    }

    #[test]
    fn only_an_empty_head_other_than_the_newest_is_deletable() {
        let mut ix = Index::default();
        ix.put(1, loc(1, 10), 0, None);
        ix.put(2, loc(2, 10), 0, None);
        assert_eq!(ix.deletable_head(Some(2)), None);
        ix.done(2);
        assert_eq!(
            ix.deletable_head(Some(2)),
            None,
            "segment 2 is empty but not the head"
        );
        ix.done(1);
        assert_eq!(ix.deletable_head(Some(2)), Some(1));
        ix.remove_segment(1);
        assert_eq!(ix.deletable_head(Some(2)), None, "the newest segment stays");
    }

    #[test]
    fn compaction_picks_a_sparse_head_or_a_sparse_log() {
        let mut ix = Index::default();
        ix.add_bytes(1, 1000);
        ix.put(1, loc(1, 600), 0, None);
        ix.add_bytes(2, 1000);
        ix.put(2, loc(2, 1000), 0, None);
        ix.add_bytes(3, 1000);
        assert_eq!(
            ix.compaction_source(Some(3), 0.5).map(|(id, _)| id),
            None,
            "60% live, log 53% live"
        );
        ix.done(2);
        assert_eq!(
            ix.compaction_source(Some(3), 0.5).map(|(id, _)| id),
            Some(1),
            "log is 20% live"
        );
        assert_eq!(
            ix.compaction_source(Some(1), 0.5).map(|(id, _)| id),
            None,
            "never the active segment"
        );
        ix.done(1);
        assert_eq!(
            ix.compaction_source(Some(3), 0.5).map(|(id, _)| id),
            None,
            "nothing live to move"
        );
    }

    #[test]
    fn validation_is_sequential_within_a_request() {
        let mut ix = Index::default();
        ix.put(1, loc(1, 10), 0, None);
        ix.put(2, loc(1, 10), 0, Some("x".into()));
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
    fn seen_counts_frames_by_fingerprint() {
        let mut s = Seen::default();
        let a = s.insert("mailbox:pgr", &[1; 16]);
        assert_eq!(a, s.fingerprint("mailbox:pgr", &[1; 16]));
        assert_ne!(
            a,
            s.fingerprint("mailbox:sat", &[1; 16]),
            "the queue is in the key"
        );
        assert_ne!(a, s.fingerprint("mailbox:pgr", &[2; 16]));
        // Three frames of one key (a copy moved twice): seen until the last is removed.
        s.add(a);
        s.add(a);
        for _ in 0..2 {
            s.remove(a);
            assert!(s.contains("mailbox:pgr", &[1; 16]));
        }
        s.remove(a);
        assert!(!s.contains("mailbox:pgr", &[1; 16]));
        assert!(s.is_empty());
        // Each open draws its own hash key.
        assert_ne!(a, Seen::default().fingerprint("mailbox:pgr", &[1; 16]));
    }

    #[test]
    fn sorted_fingerprints_count_like_a_multiset_through_splits_in_about_nine_bytes_each() {
        let mut sorted = Sorted::default();
        let mut model: BTreeMap<u64, u32> = BTreeMap::new();
        // Spread values, as keyed hashes are, with repeats; then half of them removed.
        let value = |i: u64| SeqHash.hash_one(i % 150_000);
        for i in 0..200_000 {
            sorted.insert(value(i));
            *model.entry(value(i)).or_default() += 1;
        }
        assert!(sorted.bits > MIN_BITS + 2, "the buckets split");
        let total: usize = model.values().map(|&n| n as usize).sum();
        assert_eq!(sorted.len, total);
        let held: usize = sorted.buckets.iter().map(Vec::capacity).sum();
        assert!(held * 8 < total * 9, "{held} slots for {total} values");
        for i in (0..200_000).step_by(2) {
            sorted.remove(value(i));
            let n = model.get_mut(&value(i)).unwrap();
            *n -= 1;
        }
        sorted.remove(1); // Not there: nothing changes.
        for (&v, &n) in &model {
            assert_eq!(sorted.contains(v), n > 0);
            let b = &sorted.buckets[sorted.bucket(v)];
            assert_eq!(b.iter().filter(|&&x| x == v).count(), n as usize);
        }
        assert!(sorted.buckets.iter().all(|b| b.is_sorted()));
        assert_eq!(
            sorted.len,
            model.values().map(|&n| n as usize).sum::<usize>()
        );
    }

    fn at(segment: u64, offset: u64) -> Location {
        Location {
            segment,
            offset,
            len: 10,
        }
    }

    #[test]
    fn copies_are_found_by_their_slots_across_segments() {
        let mut ix = Index::default();
        // Seqs with gaps (other queues' copies finished and gone), over three segments.
        let seqs: Vec<u64> = (0..300).map(|i| 1000 + 3 * i).collect();
        for (i, &seq) in seqs.iter().enumerate() {
            let segment = 1 + i as u64 / 100;
            ix.put(seq, at(segment, 64 * i as u64), 0, None);
        }
        assert!(ix.strays.is_empty(), "every copy has a slot");
        for (i, &seq) in seqs.iter().enumerate() {
            let e = ix.get(seq).unwrap();
            assert_eq!(e.loc, at(1 + i as u64 / 100, 64 * i as u64), "seq {seq}");
            assert!(ix.get(seq + 1).is_none(), "no copy {}", seq + 1);
        }
        assert!(ix.get(999).is_none() && ix.get(seqs[299] + 3).is_none());
        // The first segment's copies finish and it goes: its seqs are found nowhere.
        for &seq in &seqs[..100] {
            assert!(ix.done(seq));
        }
        ix.remove_segment(1);
        assert!(ix.get(seqs[0]).is_none() && ix.get(seqs[99]).is_none());
        assert_eq!(ix.get(seqs[100]).unwrap().loc.segment, 2);
        assert_eq!(ix.live_count(), 200);
    }

    #[test]
    fn a_copy_that_cannot_have_a_slot_is_a_stray() {
        let mut ix = Index::default();
        ix.put(50, at(3, 0), 0, None);
        // At open, a copy moved forward from a segment deleted since comes after higher seqs.
        ix.put(7, at(3, 100), 2, None);
        // A frame past 4 GiB into its file (a segment grown by one huge write).
        ix.put(60, at(3, 1 << 33), 0, None);
        // A seq 2^32 or more past the segment's first slot's.
        ix.put(50 + (1 << 32), at(3, 200), 0, None);
        assert_eq!(ix.get(50 + (1 << 32)).unwrap().loc, at(3, 200));
        assert!(ix.done(50 + (1 << 32)));
        assert_eq!(ix.strays.len(), 2);
        assert_eq!(
            ix.get(7).unwrap(),
            Entry {
                loc: at(3, 100),
                attempts: 2
            }
        );
        assert_eq!(ix.get(60).unwrap().loc, at(3, 1 << 33));
        assert_eq!(
            ix.segments()[&3].live_seqs(3, &ix).collect::<Vec<_>>(),
            vec![50, 7, 60]
        );
        // A slot's copy moved by compaction becomes a stray of the later segment.
        ix.put(50, at(4, 0), 0, None);
        assert_eq!(ix.get(50).unwrap().loc, at(4, 0));
        assert_eq!(
            ix.segments()[&3].live_seqs(3, &ix).collect::<Vec<_>>(),
            vec![7, 60]
        );
        assert_eq!(
            ix.segments()[&4].live_seqs(4, &ix).collect::<Vec<_>>(),
            vec![50]
        );
        assert!(ix.done(7) && ix.done(60) && ix.done(50));
        assert!(ix.strays.is_empty() && ix.attempts.is_empty());
        assert_eq!(ix.live_count(), 0);
        assert_eq!(ix.segments()[&3].live_seqs(3, &ix).count(), 0);
    }
}
