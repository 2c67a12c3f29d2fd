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
//! - **Hot and cold**: a lane keeps at most its *hot limit* of items whole (`T`); beyond it,
//!   analytical items are kept **cold** (`C`, a small stand-in: the node's is a copy's place in
//!   the store), always behind the lane's hot items, so that a deep backlog costs a few dozen
//!   bytes an item, not the item. When a lane's hot part falls below half its limit,
//!   [`Lanes::take_refill`] hands out its oldest cold items for the caller to bring back whole
//!   ([`Lanes::refilled`]), at the back of the hot part: the lane's order is kept. Only hot
//!   items are served; cold ones count towards the bounds, the depths and expiry. A cold item's
//!   times are kept in 4 bytes each ([`Cold`]): its expiry rounded up to the next tenth of a
//!   second, so it never expires early and at most 100 ms late. A lane keeps its cold items as
//!   their differences from the one before, about 3 bytes an item ([`Chunked`]).

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// A cold item: with `C` a `u64`, 16 bytes (an [`Entry`] of it takes 40), which its lane keeps
/// in about 3 ([`Chunked`]).
#[derive(Debug, Clone, Copy)]
struct Cold<C> {
    item: C,
    /// Tenths of a second from the lanes' cold epoch to the expiry, rounded up (see
    /// [`Lanes::cold_epoch`]); `u32::MAX` (never) for 13.6 years or more.
    expires: u32,
    /// Whole seconds since the Unix epoch to the item's arrival (for the depths; until 2106).
    arrived: u32,
}

const TICK: Duration = Duration::from_millis(100);
/// How far after the cold epoch an item that "never" expires is taken to (a thousand years).
const NEVER: Duration = Duration::from_secs(1000 * 365 * 86_400);

/// What a cold item stands for: a number (the node's is a copy's seq in the store).
pub trait ColdItem: Copy {
    fn to_bits(self) -> u64;
    fn from_bits(bits: u64) -> Self;
}

impl ColdItem for u64 {
    fn to_bits(self) -> u64 {
        self
    }
    fn from_bits(bits: u64) -> u64 {
        bits
    }
}

impl ColdItem for u32 {
    fn to_bits(self) -> u64 {
        u64::from(self)
    }
    fn from_bits(bits: u64) -> u32 {
        bits as u32
    }
}

/// Lanes that keep nothing cold.
impl ColdItem for () {
    fn to_bits(self) -> u64 {
        0
    }
    fn from_bits(_: u64) {}
}

/// An item a [`Chunked`] deque keeps as its difference from the item before it.
trait Delta: Copy {
    /// Appends `self`, as it differs from `prev`.
    fn put(self, prev: Self, out: &mut Vec<u8>);
    /// The item after `prev`, read from `bytes` at `at` (moved past it).
    fn get(prev: Self, bytes: &[u8], at: &mut usize) -> Self;
    /// What a chunk keeps the least of, so that only the chunks holding an item due are looked
    /// through ([`Chunked::drain_due`]): a cold item's expiry.
    fn key(self) -> u32;
}

/// Appends `next - prev` (wrapping), zigzag-encoded as a LEB128 varint: 1 byte for a
/// difference within ±63.
fn put_diff(prev: u64, next: u64, out: &mut Vec<u8>) {
    let d = next.wrapping_sub(prev) as i64;
    let mut z = ((d << 1) ^ (d >> 63)) as u64;
    while z >= 0x80 {
        out.push(z as u8 | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// The value after `prev` that [`put_diff`] wrote at `at` (moved past it).
fn get_diff(prev: u64, bytes: &[u8], at: &mut usize) -> u64 {
    let (mut z, mut shift) = (0u64, 0);
    loop {
        let b = bytes[*at];
        *at += 1;
        z |= u64::from(b & 0x7F) << shift;
        if b < 0x80 {
            break;
        }
        shift += 7;
    }
    let d = ((z >> 1) as i64) ^ -((z & 1) as i64);
    prev.wrapping_add(d as u64)
}

impl Delta for u64 {
    fn put(self, prev: u64, out: &mut Vec<u8>) {
        put_diff(prev, self, out);
    }
    fn get(prev: u64, bytes: &[u8], at: &mut usize) -> u64 {
        get_diff(prev, bytes, at)
    }
    fn key(self) -> u32 {
        u32::try_from(self).unwrap_or(u32::MAX)
    }
}

impl<C: ColdItem> Delta for Cold<C> {
    fn put(self, prev: Cold<C>, out: &mut Vec<u8>) {
        put_diff(prev.item.to_bits(), self.item.to_bits(), out);
        put_diff(prev.expires.into(), self.expires.into(), out);
        put_diff(prev.arrived.into(), self.arrived.into(), out);
    }
    fn get(prev: Cold<C>, bytes: &[u8], at: &mut usize) -> Cold<C> {
        Cold {
            item: C::from_bits(get_diff(prev.item.to_bits(), bytes, at)),
            expires: get_diff(prev.expires.into(), bytes, at) as u32,
            arrived: get_diff(prev.arrived.into(), bytes, at) as u32,
        }
    }
    fn key(self) -> u32 {
        self.expires
    }
}

/// A deque kept in chunks of up to [`CHUNK`] items, each item after a chunk's first as its
/// difference from the one before ([`Delta`]). A lane's cold items come in the order they were
/// stored, with seqs, expiries and arrivals close to their neighbours', so an item of 16 bytes
/// takes about 3 (a million-copy backlog: 3 MB instead of 16). It grows a chunk at a time.
#[derive(Debug)]
struct Chunked<T> {
    chunks: VecDeque<Chunk<T>>,
    len: usize,
}

#[derive(Debug)]
struct Chunk<T> {
    /// The first item not taken yet.
    front: T,
    /// The last item pushed: the next is kept as its difference from it.
    last: T,
    /// The items after the first ever pushed, encoded; those after `front` start at `at`.
    bytes: Vec<u8>,
    at: usize,
    /// Items here, `front` included.
    len: usize,
    /// Items ever pushed here (at most [`CHUNK`]).
    pushed: usize,
    /// The least [`Delta::key`] of the items pushed here (of those left, it may be less).
    least: u32,
}

const CHUNK: usize = 4096;

impl<T> Default for Chunked<T> {
    fn default() -> Chunked<T> {
        Chunked {
            chunks: VecDeque::new(),
            len: 0,
        }
    }
}

impl<T: Delta> Chunked<T> {
    fn push_back(&mut self, item: T) {
        match self.chunks.back_mut() {
            Some(c) if c.pushed < CHUNK => {
                c.push(item);
                if c.pushed == CHUNK {
                    c.bytes.shrink_to_fit();
                }
            }
            _ => self.chunks.push_back(Chunk::new(item)),
        }
        self.len += 1;
    }

    /// Removes and returns the items whose key is `due`, oldest first, the others kept in
    /// order. Only the chunks whose least key is due are looked through and written again:
    /// one short-lived item among a million long-lived ones costs its chunk, not the deque.
    fn drain_due(&mut self, due: impl Fn(u32) -> bool) -> Vec<T> {
        let mut gone = Vec::new();
        for c in self.chunks.iter_mut().filter(|c| due(c.least)) {
            let mut kept: Option<Chunk<T>> = None;
            for item in c.items() {
                match (due(item.key()), &mut kept) {
                    (true, _) => gone.push(item),
                    (false, Some(k)) => k.push(item),
                    (false, None) => kept = Some(Chunk::new(item)),
                }
            }
            // The chunk was full or never will be (only the last one is pushed to): as kept.
            if let Some(k) = &mut kept {
                k.pushed = k.pushed.max(c.pushed);
                k.bytes.shrink_to_fit();
            }
            *c = kept.unwrap_or_else(|| Chunk::emptied(c));
        }
        self.chunks.retain(|c| c.len > 0);
        self.len -= gone.len();
        gone
    }

    /// The least key of the items (or of items gone since: never more than the least).
    fn least(&self) -> Option<u32> {
        self.chunks.iter().map(|c| c.least).min()
    }

    fn pop_front(&mut self) -> Option<T> {
        let first = self.chunks.front_mut()?;
        let item = first.front;
        first.len -= 1;
        match first.len {
            0 => drop(self.chunks.pop_front()),
            _ => first.front = T::get(item, &first.bytes, &mut first.at),
        }
        self.len -= 1;
        Some(item)
    }

    fn front(&self) -> Option<&T> {
        self.chunks.front().map(|c| &c.front)
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[cfg(test)]
    fn iter(&self) -> impl Iterator<Item = T> + '_ {
        self.chunks.iter().flat_map(Chunk::items)
    }
}

impl<T: Delta> Chunk<T> {
    fn new(item: T) -> Chunk<T> {
        Chunk {
            front: item,
            last: item,
            bytes: Vec::new(),
            at: 0,
            len: 1,
            pushed: 1,
            least: item.key(),
        }
    }

    /// A chunk with nothing left of `c` (removed by the caller).
    fn emptied(c: &Chunk<T>) -> Chunk<T> {
        Chunk {
            len: 0,
            ..Chunk::new(c.front)
        }
    }

    fn push(&mut self, item: T) {
        item.put(self.last, &mut self.bytes);
        (self.last, self.len, self.pushed) = (item, self.len + 1, self.pushed + 1);
        self.least = self.least.min(item.key());
    }

    fn items(&self) -> impl Iterator<Item = T> + '_ {
        let (mut prev, mut at) = (self.front, self.at);
        (0..self.len).map(move |i| {
            if i > 0 {
                prev = T::get(prev, &self.bytes, &mut at);
            }
            prev
        })
    }
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
pub struct Lanes<T, C = ()> {
    lanes: [VecDeque<Entry<T>>; 5],
    /// Each lane's cold items, oldest first, all behind the lane's hot ones.
    cold: [Chunked<Cold<C>>; 5],
    /// What cold items' expiries are counted from: the arrival of the first item ever kept
    /// cold here (an expiry before it counts as it: such an item is expired already).
    cold_epoch: Option<SystemTime>,
    /// Each lane's cold items handed out by [`Lanes::take_refill`] and not yet back.
    refilling: [usize; 5],
    /// A bound on each lane's earliest cold expiry (none earlier), so that the sweep looks
    /// through a deep cold lane only when something in it may have expired.
    cold_expiry: [Option<SystemTime>; 5],
    /// Hot items a lane keeps before analytical ones go cold.
    hot_limit: usize,
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

/// At least this many items are brought back by a refill (see [`Lanes::take_refill`]).
const MIN_HOT_LIMIT: usize = 2;

impl<T, C: ColdItem> Lanes<T, C> {
    /// Lanes that keep every item hot.
    pub fn new(capacity: usize) -> Lanes<T, C> {
        Lanes {
            lanes: Default::default(),
            cold: Default::default(),
            cold_epoch: None,
            refilling: [0; 5],
            cold_expiry: [None; 5],
            hot_limit: usize::MAX,
            parked: Vec::new(),
            capacity,
            streak: 0,
        }
    }

    /// Lanes that keep at most `limit` items of an analytical lane hot (see the module docs).
    pub fn with_hot_limit(mut self, limit: usize) -> Lanes<T, C> {
        self.hot_limit = limit.max(MIN_HOT_LIMIT);
        self
    }

    /// Whether a new item of precedence `p` must be kept cold ([`Lanes::push_cold`]): an
    /// analytical item, when its lane holds its hot limit, or has cold items (or items being
    /// brought back) that it must stay behind. Time-sensitive items are always kept hot.
    pub fn spills(&self, p: Precedence) -> bool {
        let i = index(p);
        !p.is_time_sensitive()
            && (self.lanes[i].len() >= self.hot_limit
                || !self.cold[i].is_empty()
                || self.refilling[i] > 0)
    }

    /// Appends a cold item that arrived at `arrived` to its lane, whatever the bound (as
    /// [`Lanes::push_checked`]).
    pub fn push_cold(&mut self, entry: Entry<C>, arrived: SystemTime) {
        let i = index(entry.precedence);
        let epoch = *self.cold_epoch.get_or_insert(arrived);
        let since = entry.expires_at.duration_since(epoch).unwrap_or_default();
        let ticks = since.as_nanos().div_ceil(TICK.as_nanos());
        let cold = Cold {
            item: entry.item,
            expires: u32::try_from(ticks).unwrap_or(u32::MAX),
            arrived: arrived
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX)),
        };
        let expires_at = self.expiry(&cold);
        let bound = &mut self.cold_expiry[i];
        *bound = Some(bound.map_or(expires_at, |t| t.min(expires_at)));
        self.cold[i].push_back(cold);
    }

    /// A cold item's expiry, as kept: at most 100 ms after the item's own (or the cold epoch,
    /// if that is later), and never for one 13.6 years or more after the epoch.
    fn expiry(&self, cold: &Cold<C>) -> SystemTime {
        self.expiry_at(cold.expires)
    }

    /// The expiry kept as `ticks` (see [`Cold::expires`]).
    fn expiry_at(&self, ticks: u32) -> SystemTime {
        let epoch = self.cold_epoch.unwrap_or(UNIX_EPOCH);
        match ticks {
            u32::MAX => epoch + NEVER,
            ticks => epoch + TICK * ticks,
        }
    }

    /// A cold item handed back out, with its lane's precedence and its expiry as kept.
    fn entry(&self, i: usize, cold: Cold<C>) -> Entry<C> {
        Entry {
            precedence: Precedence::ALL[i],
            expires_at: self.expiry(&cold),
            item: cold.item,
        }
    }

    /// The cold items to bring back now: from each lane whose hot part has fallen below half its
    /// hot limit and that is not being refilled already, its oldest cold items, up to the limit.
    /// They still count as the lane's until [`Lanes::refilled`] brings them back.
    pub fn take_refill(&mut self) -> Vec<Entry<C>> {
        let mut out = Vec::new();
        for i in 0..5 {
            let hot = self.lanes[i].len();
            if self.refilling[i] > 0 || self.cold[i].is_empty() || hot >= self.hot_limit / 2 {
                continue;
            }
            let n = (self.hot_limit - hot).min(self.cold[i].len());
            let taken: Vec<_> = (0..n).filter_map(|_| self.cold[i].pop_front()).collect();
            out.extend(taken.into_iter().map(|c| self.entry(i, c)));
            self.refilling[i] = n;
        }
        out
    }

    /// Brings back a refill: `taken` names the precedence of each cold item
    /// [`Lanes::take_refill`] handed out, and `items` those that came back whole, in the order
    /// they were handed out. Items that could not be brought back are missing from `items` and
    /// no longer counted.
    pub fn refilled(&mut self, taken: impl IntoIterator<Item = Precedence>, items: Vec<Entry<T>>) {
        for p in taken {
            let i = index(p);
            self.refilling[i] = self.refilling[i].saturating_sub(1);
        }
        for item in items {
            self.lanes[index(item.precedence)].push_back(item);
        }
    }

    /// Removes and returns every expired cold item. A lane is looked through only when its
    /// earliest cold expiry has come, and then only its chunks holding an expired item (see
    /// [`Chunked::drain_due`]): a deep backlog of long-lived items costs the sweep nothing, and
    /// a sender of short-lived ones among them, each sweep a chunk.
    pub fn drain_expired_cold(&mut self, now: SystemTime) -> Vec<Entry<C>> {
        let mut out = Vec::new();
        for i in 0..5 {
            if self.cold_expiry[i].is_none_or(|t| t > now) {
                continue;
            }
            let mut lane = std::mem::take(&mut self.cold[i]);
            let gone = lane.drain_due(|ticks| self.expiry_at(ticks) <= now);
            self.cold_expiry[i] = lane.least().map(|ticks| self.expiry_at(ticks));
            self.cold[i] = lane;
            out.extend(gone.into_iter().map(|c| self.entry(i, c)));
        }
        out
    }

    #[cfg(test)]
    /// Items waiting in all lanes.
    pub fn len(&self) -> usize {
        self.lanes.iter().map(VecDeque::len).sum::<usize>()
            + self.parked.len()
            + self.cold.iter().map(Chunked::len).sum::<usize>()
            + self.refilling.iter().sum::<usize>()
    }

    #[cfg(test)]
    /// Items held whole in the lanes (parked ones aside).
    pub fn hot_len(&self) -> usize {
        self.lanes.iter().map(VecDeque::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.lanes.iter().all(VecDeque::is_empty)
            && self.parked.is_empty()
            && self.cold.iter().all(Chunked::is_empty)
            && self.refilling.iter().all(|n| *n == 0)
    }

    fn class_len(&self, p: Precedence) -> usize {
        let range = if p.is_time_sensitive() { 0..3 } else { 3..5 };
        let parked = self
            .parked
            .iter()
            .filter(|(_, e)| e.precedence.is_time_sensitive() == p.is_time_sensitive())
            .count();
        let cold: usize = range
            .clone()
            .map(|i| self.cold[i].len() + self.refilling[i])
            .sum();
        self.lanes[range].iter().map(VecDeque::len).sum::<usize>() + parked + cold
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
    /// Cold items count too, the oldest cold one standing for the lane's oldest when no hot item
    /// waits (those being brought back are counted, not dated).
    pub fn depths(&self, arrived: impl Fn(&T) -> SystemTime) -> [Depth; 5] {
        let mut out = Precedence::ALL.map(|precedence| Depth {
            precedence,
            count: 0,
            oldest: None,
        });
        for d in &mut out {
            let i = index(d.precedence);
            let lane = &self.lanes[i];
            d.count = lane.len() + self.cold[i].len() + self.refilling[i];
            d.oldest = lane.front().map(|e| arrived(&e.item)).or_else(|| {
                let c = self.cold[i].front()?;
                Some(UNIX_EPOCH + Duration::from_secs(c.arrived.into()))
            });
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

    fn take<C: ColdItem>(q: &mut Lanes<u32, C>) -> Option<u32> {
        q.pop(t(1)).next.map(|e| e.item)
    }

    #[test]
    fn strict_precedence() {
        let mut q = Lanes::<_>::new(10);
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
        let mut q = Lanes::<_>::new(1000);
        for i in 0..100 {
            q.push(e(Precedence::Flash, i)).unwrap();
        }
        q.push(e(Precedence::Bulk, 999)).unwrap();
        let pos = std::iter::from_fn(|| take(&mut q)).position(|i| i == 999);
        assert_eq!(pos, Some(SHARE_EVERY as usize));
    }

    #[test]
    fn a_consumer_takes_only_what_it_accepts_and_leaves_the_rest_in_order() {
        let mut q = Lanes::<_>::new(10);
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
        let mut q = Lanes::<_>::new(2);
        q.push(e(Precedence::Bulk, 1)).unwrap();
        q.push(e(Precedence::Routine, 2)).unwrap();
        assert_eq!(q.push(e(Precedence::Bulk, 3)), Err(Full));
        q.push(e(Precedence::Flash, 4)).unwrap();
        assert_eq!(q.len(), 3);
    }

    #[test]
    fn expired_items_are_returned_not_served() {
        let mut q = Lanes::<_>::new(10);
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
        let mut q = Lanes::<_>::new(10);
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
    fn a_deep_lane_keeps_its_order_through_cold_and_back() {
        // Items are numbers; a cold item is its number too, and "bringing it back" is the
        // identity: what matters is where each goes and when.
        let mut q: Lanes<u32, u32> = Lanes::new(100).with_hot_limit(4);
        let push = |q: &mut Lanes<u32, u32>, p, item| {
            if q.spills(p) {
                q.push_cold(e(p, item), t(u64::from(item)));
            } else {
                q.push_checked(e(p, item));
            }
        };
        for item in 1..=10 {
            push(&mut q, Precedence::Routine, item);
        }
        push(&mut q, Precedence::Flash, 100);
        assert!(
            !q.spills(Precedence::Flash),
            "time-sensitive items are always hot"
        );
        assert_eq!(q.len(), 11);
        let d = q.depths(|i| t(u64::from(*i)));
        assert_eq!(d[3].count, 10, "cold items count in the depth");
        assert!(q.take_refill().is_empty(), "the hot part is full");
        assert_eq!(take(&mut q), Some(100));
        assert_eq!(take(&mut q), Some(1));
        assert_eq!(take(&mut q), Some(2));
        assert!(q.take_refill().is_empty(), "half the hot limit is left");
        assert_eq!(take(&mut q), Some(3));
        // One hot item left: the oldest cold ones come back, up to the limit.
        let back = q.take_refill();
        assert_eq!(back.iter().map(|c| c.item).collect::<Vec<_>>(), [5, 6, 7]);
        assert!(q.take_refill().is_empty(), "one refill of a lane at a time");
        // While they are on their way, new items stay behind them, and nothing is lost count of.
        push(&mut q, Precedence::Routine, 11);
        assert_eq!(q.len(), 8);
        assert_eq!(take(&mut q), Some(4));
        // Item 6 could not be brought back (purged by the caller): it is simply gone.
        let whole = back.into_iter().filter(|c| c.item != 6).collect();
        q.refilled([Precedence::Routine; 3], whole);
        assert_eq!(q.len(), 6);
        let mut rest = Vec::new();
        while let Some(item) = take(&mut q) {
            rest.push(item);
            let back = q.take_refill();
            let taken: Vec<_> = back.iter().map(|c| c.precedence).collect();
            q.refilled(taken, back);
        }
        assert_eq!(rest, [5, 7, 8, 9, 10, 11]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_chunked_deque_keeps_its_order_across_chunks() {
        let mut d = Chunked::default();
        for i in 0..2 * CHUNK as u64 + 10 {
            d.push_back(i);
        }
        assert_eq!((d.len(), d.chunks.len()), (2 * CHUNK + 10, 3));
        for i in 0..CHUNK as u64 + 5 {
            assert_eq!(d.pop_front(), Some(i));
        }
        assert_eq!(d.chunks.len(), 2, "an emptied chunk goes");
        assert_eq!(d.front(), Some(&(CHUNK as u64 + 5)));
        assert!(d.iter().eq(CHUNK as u64 + 5..2 * CHUNK as u64 + 10));
        d.push_back(7);
        assert_eq!(d.len(), CHUNK + 6);
        let all: Vec<_> = d.iter().collect();
        assert_eq!(
            (all.len(), all[0], all.last()),
            (CHUNK + 6, CHUNK as u64 + 5, Some(&7))
        );
        let mut d = Chunked::default();
        d.push_back(1u64);
        assert_eq!(
            (d.pop_front(), d.pop_front(), d.is_empty()),
            (Some(1), None, true)
        );
    }

    #[test]
    fn a_chunked_deque_keeps_any_values_and_small_differences_in_a_byte_or_two() {
        // Differences of every size and sign, the extremes included.
        let values = [
            0,
            1,
            0,
            u64::MAX,
            5,
            u64::MAX / 2,
            1 << 63,
            63,
            64,
            0,
            1 << 20,
            7,
        ];
        let mut d = Chunked::default();
        values.iter().for_each(|&v| d.push_back(v));
        assert!(d.iter().eq(values));
        assert!(values.iter().all(|&v| d.pop_front() == Some(v)));
        // Cold items as a lane keeps them: seqs a few apart, expiries and arrivals close.
        let mut d = Chunked::default();
        let item = |i: u64| Cold {
            item: 1_000_000 + 3 * i,
            expires: 36_000 + (i / 10) as u32,
            arrived: 1_800_000_000 + (i / 10_000) as u32,
        };
        (0..CHUNK as u64).for_each(|i| d.push_back(item(i)));
        let chunk = &d.chunks[0];
        assert_eq!(chunk.bytes.len(), 3 * (CHUNK - 1), "three bytes an item");
        assert!(
            d.iter()
                .map(|c| (c.item, c.expires, c.arrived))
                .eq((0..CHUNK as u64)
                    .map(item)
                    .map(|c| (c.item, c.expires, c.arrived)))
        );
    }

    /// One short-lived item among many long-lived ones (a sender of them, say, into a deep
    /// backlog): draining it rewrites its chunk only, and the rest stay as they were, in order.
    #[test]
    fn draining_due_items_rewrites_only_the_chunks_holding_them() {
        let mut d = Chunked::default();
        // Keys (the values themselves, as `u64` items) of long-lived items, and a due one.
        let long = |i: u64| 1_000_000 + i;
        for i in 0..5 * CHUNK as u64 {
            d.push_back(long(i));
        }
        d.push_back(7);
        for i in 5 * CHUNK as u64..6 * CHUNK as u64 {
            d.push_back(long(i));
        }
        let before: Vec<*const u8> = d.chunks.iter().map(|c| c.bytes.as_ptr()).collect();
        let gone = d.drain_due(|key| key < 1_000);
        assert_eq!(gone, vec![7]);
        assert_eq!(d.len(), 6 * CHUNK);
        assert!(d.iter().eq((0..6 * CHUNK as u64).map(long)));
        let after: Vec<*const u8> = d.chunks.iter().map(|c| c.bytes.as_ptr()).collect();
        let rewritten = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        assert_eq!((before.len(), rewritten), (after.len(), 1));
        assert_eq!(d.least(), Some(long(0) as u32));
        // Nothing due: nothing looked through.
        assert!(d.drain_due(|key| key < 1_000).is_empty());
        // All due: all gone, in order, and no chunk left.
        let all = d.drain_due(|_| true);
        assert!(all.into_iter().eq((0..6 * CHUNK as u64).map(long)));
        assert_eq!((d.len(), d.chunks.len(), d.least()), (0, 0, None));
        // A rewritten last chunk still takes pushes, kept after the rest.
        d.push_back(1);
        d.push_back(long(0));
        d.push_back(2);
        assert_eq!(d.drain_due(|key| key < 1_000), vec![1, 2]);
        d.push_back(long(1));
        assert!(d.iter().eq([long(0), long(1)]));
        assert_eq!(d.chunks.len(), 1);
    }

    #[test]
    fn a_chunked_deque_behaves_as_a_deque_under_any_mix_of_pushes_and_pops() {
        let mut d = Chunked::default();
        let mut model = VecDeque::new();
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for step in 0..200_000 {
            let r = next();
            // Values close together mostly (as seqs are), far apart sometimes.
            let v = match r % 7 {
                0 => next(),
                _ => model.back().copied().unwrap_or(0u64).wrapping_add(r % 5),
            };
            match (r >> 8) % 5 {
                0..=2 => {
                    d.push_back(v);
                    model.push_back(v);
                }
                _ => assert_eq!(d.pop_front(), model.pop_front()),
            }
            assert_eq!((d.len(), d.front()), (model.len(), model.front()));
            if step % 20_000 == 0 {
                assert!(d.iter().eq(model.iter().copied()));
            }
        }
        assert!(d.iter().eq(model.iter().copied()));
    }

    #[test]
    fn cold_items_count_towards_the_bound_and_expire() {
        let mut q: Lanes<u32, u32> = Lanes::new(3).with_hot_limit(2);
        q.push_checked(e(Precedence::Bulk, 1));
        q.push_cold(e(Precedence::Bulk, 2), t(1));
        q.push_cold(
            Entry {
                precedence: Precedence::Bulk,
                expires_at: t(5),
                item: 3,
            },
            t(1),
        );
        assert!(!q.has_room(Precedence::Routine));
        assert!(q.has_room(Precedence::Flash));
        let gone = q.drain_expired_cold(t(6));
        assert_eq!(gone.iter().map(|c| c.item).collect::<Vec<_>>(), [3]);
        assert!(q.has_room(Precedence::Routine));
        assert!(
            q.drain_expired(t(6)).is_empty(),
            "hot items are drained on their own"
        );
        // What is left expires later; an item that expires sooner, pushed after, still goes.
        assert!(q.drain_expired_cold(t(7)).is_empty());
        q.push_cold(
            Entry {
                precedence: Precedence::Bulk,
                expires_at: t(8),
                item: 4,
            },
            t(7),
        );
        let gone = q.drain_expired_cold(t(9));
        assert_eq!(gone.iter().map(|c| c.item).collect::<Vec<_>>(), [4]);
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn a_cold_item_expires_within_a_tenth_of_a_second_after_its_expiry_never_before() {
        let mut q: Lanes<u32, u32> = Lanes::new(10).with_hot_limit(2);
        let ms = |n: u64| t(0) + Duration::from_millis(n);
        for (item, expiry) in [(1, 5_030), (2, 5_100), (3, 900)] {
            let entry = Entry {
                precedence: Precedence::Routine,
                expires_at: ms(expiry),
                item,
            };
            // The first arrival is what expiries are counted from: item 3's is before it.
            q.push_cold(entry, ms(1_000 + 7 * u64::from(item - 1)));
        }
        let items =
            |v: Vec<Entry<u32>>| v.iter().map(|c| (c.item, c.expires_at)).collect::<Vec<_>>();
        assert_eq!(items(q.drain_expired_cold(ms(1_000))), [(3, ms(1_000))]);
        assert!(q.drain_expired_cold(ms(5_099)).is_empty(), "never early");
        assert_eq!(
            items(q.drain_expired_cold(ms(5_100))),
            [(1, ms(5_100)), (2, ms(5_100))]
        );
        // Arrivals are kept to the second, for the depths.
        q.push_cold(e(Precedence::Bulk, 4), ms(7_900));
        assert_eq!(q.depths(|i| t(u64::from(*i)))[4].oldest, Some(t(7)));
        assert_eq!(q.take_refill().len(), 1);
    }

    #[test]
    fn requeue_goes_to_the_head() {
        let mut q = Lanes::<_>::new(10);
        q.push(e(Precedence::Routine, 1)).unwrap();
        let first = q.pop(t(1)).next.unwrap();
        q.push(e(Precedence::Routine, 2)).unwrap();
        q.requeue(first);
        assert_eq!(take(&mut q), Some(1));
    }

    #[test]
    fn time_sensitive_only_leaves_analytical_items() {
        let mut q = Lanes::<_>::new(10);
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
        let mut q = Lanes::<_>::new(10);
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
        let mut q = Lanes::<_>::new(10);
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
