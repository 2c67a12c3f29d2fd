//! The writer thread: group commit and segment rollover (reclaim and compaction are in
//! [`super::reclaim`]).
//!
//! One std thread (not the tokio blocking pool: it lives as long as the store and blocks in
//! fdatasync) owns the log. Each round it takes the waiting requests (up to
//! [`StoreOptions::max_batch_records`] ops or [`StoreOptions::max_batch_bytes`]), validates and
//! applies each request whole or not at all, adds a bounded slice of compaction work, appends
//! everything with **one** write ending in a `Commit` record, calls `fdatasync` **once**, and only
//! then answers every caller in the round. A lone caller still gets its own fsync.
//!
//! Time-sensitive copies go first: each round the writer moves every waiting request into two
//! local queues, and a round takes all urgent requests (those putting a FLASH, IMMEDIATE or
//! PRIORITY copy) before any other, and then at most [`URGENT_ROUND_BYTES`] of other work, so an
//! alert waits for at most the fsync in progress and one short one of its own, never for a
//! backlog of analytical commits.
//!
//! It does not retry: the first I/O error is recorded in [`Shared::failed`], every request in the
//! round and after it is answered [`StoreError::Failed`], and the thread exits.

use std::any::Any;
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::disk::{self, Append, Disk, ReadAt};
use super::index::{Fingerprint, Location};
use super::record::{self, PutBody, Record};
use super::recover::State;
use super::{Op, Shared, StoreError, StoreOptions, StoreStats, segment, summary};

/// A request from a [`super::Store`] handle.
pub(super) enum Request {
    /// One or more commits, each answered on its own (one channel message for a batch of
    /// submissions: see [`super::Store::commit_each`]).
    Commit(Vec<CommitRequest>),
    /// Reads live copies back, answered at once (between rounds).
    Read(
        Vec<u64>,
        oneshot::Sender<Vec<Result<super::ReadCopy, String>>>,
    ),
    Close(oneshot::Sender<Result<(), StoreError>>),
}

pub(super) struct CommitRequest {
    pub ops: Vec<Op>,
    /// Refuse the whole request if any `Put` was already seen (a unique [`super::Store::commit_each`]).
    pub unique: bool,
    /// Message bytes, for batch sizing.
    pub bytes: usize,
    pub reply: oneshot::Sender<Result<Vec<u64>, StoreError>>,
}

type Reply = oneshot::Sender<Result<Vec<u64>, StoreError>>;

/// In a round with urgent requests, at most this many bytes of other requests join them.
pub(super) const URGENT_ROUND_BYTES: usize = 64 * 1024;

/// Takes the next round's requests: every urgent one, then others while the round holds fewer
/// than `max_records` ops and `max_bytes` bytes, or, with urgent ones in it, fewer than
/// [`URGENT_ROUND_BYTES`] bytes beyond theirs. `size` gives a request's ops and bytes.
fn take_batch<T>(
    urgent: &mut VecDeque<T>,
    waiting: &mut VecDeque<T>,
    (max_records, max_bytes): (usize, usize),
    size: impl Fn(&T) -> (usize, usize),
) -> Vec<T> {
    let mut batch: Vec<T> = urgent.drain(..).collect();
    let (mut ops, mut bytes) = batch
        .iter()
        .map(&size)
        .fold((0, 0), |(o, b), (ro, rb)| (o + ro, b + rb));
    let byte_limit = if batch.is_empty() {
        max_bytes
    } else {
        bytes + URGENT_ROUND_BYTES.min(max_bytes)
    };
    while ops < max_records
        && bytes < byte_limit
        && let Some(r) = waiting.pop_front()
    {
        let (o, b) = size(&r);
        ops += o;
        bytes += b;
        batch.push(r);
    }
    batch
}

impl CommitRequest {
    /// Whether the request adds copies (a `Put` or a redrive), rather than only finishing or
    /// marking them.
    fn adds_copies(&self) -> bool {
        self.ops
            .iter()
            .any(|op| matches!(op, Op::Put(_) | Op::Redrive(_)))
    }

    /// Whether the request finishes a copy (a `Done`).
    fn finishes(&self) -> bool {
        self.ops.iter().any(|op| matches!(op, Op::Done(_)))
    }

    /// Whether the request puts a time-sensitive copy (precedence FLASH, IMMEDIATE, PRIORITY).
    fn urgent(&self) -> bool {
        self.ops
            .iter()
            .any(|op| matches!(op, Op::Put(p) if (1..=3).contains(&p.precedence)))
    }
}

/// The description of a fatal I/O failure.
pub(super) type Fatal = String;

pub(super) fn fatal(op: &str, path: &Path, e: impl std::fmt::Display) -> Fatal {
    format!("{op} {}: {e}", path.display())
}

/// The segment being appended to.
pub(super) struct Active {
    pub(super) id: u64,
    file: Box<dyn Append>,
    len: u64,
    /// Bytes reserved on disk for the segment (at least [`StoreOptions::segment_bytes`]).
    room: u64,
    /// Its summary so far (durable records only), finished when it is sealed.
    summary: summary::Spilled,
}

pub(super) struct Writer {
    pub(super) dir: PathBuf,
    pub(super) opts: StoreOptions,
    pub(super) state: State,
    pub(super) shared: Arc<Shared>,
    pub(super) disk: Arc<dyn Disk>,
    /// Created at the first write after open: a segment is only ever appended to by the run
    /// that created it, so nothing is written after a recovered tail.
    pub(super) active: Option<Active>,
    /// Read handles for redrive and compaction, by segment id.
    pub(super) readers: HashMap<u64, Box<dyn ReadAt>>,
    buf: Vec<u8>,
    /// Requests taken from the channel and not yet written: urgent ones, then the others.
    urgent: VecDeque<CommitRequest>,
    waiting: VecDeque<CommitRequest>,
    pub(super) stats: StoreStats,
    /// The last round found the disk full (logged once, until space returns).
    full: bool,
    /// The spare segment, with a segment's room reserved: what frees space (finishing copies,
    /// compaction that empties the head) takes it when the disk has no room for a new segment,
    /// and copies are accepted only while it is there (see [`Writer::take_spare`]).
    spare: Option<Box<dyn Append>>,
    /// The head segment, how many of its copies were finished, and since when that count has
    /// not changed (see [`StoreOptions::compact_after_stall`]).
    head_watch: Option<(u64, u64, Instant)>,
    /// The head, when [`Writer::watch_head`] last found it pinned: the only segment compaction
    /// may take from.
    pub(super) pinned: Option<u64>,
    /// Held for the writer's life: the directory's exclusive lock.
    _lock: Box<dyn Any + Send>,
}

impl Writer {
    pub(super) fn new(
        dir: &Path,
        opts: StoreOptions,
        state: State,
        shared: Arc<Shared>,
        disk: Arc<dyn Disk>,
        lock: Box<dyn Any + Send>,
    ) -> Writer {
        let w = Writer {
            dir: dir.to_owned(),
            opts,
            state,
            shared,
            disk,
            active: None,
            readers: HashMap::new(),
            buf: Vec::new(),
            urgent: VecDeque::new(),
            waiting: VecDeque::new(),
            stats: StoreStats::default(),
            full: false,
            spare: None,
            head_watch: None,
            pinned: None,
            _lock: lock,
        };
        w.publish_stats(); // Before the thread starts, so `stats` is right from `open` on.
        w
    }

    /// Serves requests until closed, failed, or every handle is dropped.
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut close = None;
        // Segments left deletable by the last run (e.g. a compacted head a crash left behind),
        // then the spare (on a disk found full, the first copy to accept makes it).
        let mut outcome = self.reclaim().and_then(|()| self.keep_spare().map(drop));
        match &outcome {
            Err(cause) => drop(self.fail(cause.clone())),
            Ok(()) => self.publish_stats(),
        }
        while outcome.is_ok() {
            // Requests sent before `close` are still served.
            if close.is_some() && self.urgent.is_empty() && self.waiting.is_empty() {
                break;
            }
            let Some(batch) = self.next_batch(&mut rx, &mut close) else {
                break;
            };
            outcome = self.round(batch);
        }
        rx.close();
        let failed = self.shared.failed.get().cloned();
        let closed = || {
            failed
                .clone()
                .map_or(Ok(()), |c| Err(StoreError::Failed(c)))
        };
        let mut closers = Vec::from_iter(close);
        let left = std::mem::take(&mut self.urgent)
            .into_iter()
            .chain(std::mem::take(&mut self.waiting));
        for c in left {
            let _ = c.reply.send(closed().and(Err(StoreError::Closed)));
        }
        // Until `None`: a sender that took its permit before the close still sends, and its
        // request must be answered too (`try_recv` would stop at an empty channel, and leave
        // that caller waiting for good).
        while let Some(req) = rx.blocking_recv() {
            match req {
                Request::Commit(cs) => {
                    for c in cs {
                        let _ = c.reply.send(closed().and(Err(StoreError::Closed)));
                    }
                }
                Request::Read(_, reply) => drop(reply),
                Request::Close(reply) => closers.push(reply),
            }
        }
        if failed.is_none() {
            // Not after a failure: what the failed round wrote may not be on disk.
            let active = self.active.take();
            self.seal(active);
        }
        drop(self); // Closes the files and releases the lock before `close` returns.
        for reply in closers {
            let _ = reply.send(closed());
        }
    }

    /// Waits for work, moves every request waiting in the channel to the local queues, then
    /// takes a batch: urgent requests first, then others within the batch limits (tighter when
    /// urgent ones are in the batch). Returns `None` when every handle is gone and nothing is
    /// left. With compaction pending it does not wait: an empty batch is a compaction-only round.
    fn next_batch(
        &mut self,
        rx: &mut mpsc::Receiver<Request>,
        close: &mut Option<oneshot::Sender<Result<(), StoreError>>>,
    ) -> Option<Vec<CommitRequest>> {
        self.watch_head();
        if close.is_none()
            && self.urgent.is_empty()
            && self.waiting.is_empty()
            // With the disk full, compaction waits for the next request.
            && (self.full || self.compaction_source().is_none())
        {
            match rx.blocking_recv() {
                Some(req) => self.sort(req, close),
                None => return None,
            }
        }
        while close.is_none() {
            match rx.try_recv() {
                Ok(req) => self.sort(req, close),
                Err(_) => break,
            }
        }
        // Decided once for the round: the room it needs counts what compaction adds.
        self.watch_head();
        let limits = (self.opts.max_batch_records, self.opts.max_batch_bytes);
        Some(take_batch(
            &mut self.urgent,
            &mut self.waiting,
            limits,
            |c| (c.ops.len(), c.bytes),
        ))
    }

    fn sort(&mut self, req: Request, close: &mut Option<oneshot::Sender<Result<(), StoreError>>>) {
        match req {
            Request::Close(reply) => *close = Some(reply),
            // A read changes nothing, so it need not wait for the round: the index is as of
            // the last one, and every copy it names as live is on disk.
            Request::Read(seqs, reply) => {
                let found = seqs
                    .into_iter()
                    .map(|seq| {
                        let p = self.read_put(seq)?;
                        Ok(super::ReadCopy {
                            bytes: p.bytes,
                            received_at_ms: p.received_at_ms,
                            attempts: p.attempts,
                        })
                    })
                    .collect();
                let _ = reply.send(found);
            }
            Request::Commit(cs) => {
                for c in cs {
                    match c.urgent() {
                        true => self.urgent.push_back(c),
                        false => self.waiting.push_back(c),
                    }
                }
            }
        }
    }

    /// One write and one fsync for a batch; answers every request in it.
    fn round(&mut self, batch: Vec<CommitRequest>) -> Result<(), Fatal> {
        let batch = match self.make_room(batch) {
            Ok(room) => room,
            Err(cause) => {
                self.fail(cause.clone());
                return Err(cause);
            }
        };
        let mut answers: Vec<(Reply, Result<Vec<u64>, StoreError>)> = Vec::new();
        let mut records = Vec::new();
        // Keys of this batch's puts, not yet in the seen set (it is updated after the fsync).
        let mut in_flight = HashSet::new();
        let mut batch = batch.into_iter();
        let mut result = Ok(());
        for req in batch.by_ref() {
            match self.prepare(req.ops, req.unique, &mut records, &mut in_flight) {
                Ok(outcome) => answers.push((req.reply, outcome)),
                Err(cause) => {
                    answers.push((req.reply, Ok(Vec::new())));
                    result = Err(cause);
                    break;
                }
            }
        }
        let committed = answers.iter().filter(|(_, o)| o.is_ok()).count() as u64;
        let written = records.len() as u64;
        let result = result
            .and_then(|()| self.room_to_compact(&records))
            .and_then(|compact| match compact {
                true => self.compact_into(&mut records),
                false => Ok(()),
            })
            .and_then(|()| self.write(records));
        let synced = match result {
            Ok(synced) => synced,
            Err(cause) => {
                let cause = self.fail(cause);
                let replies = answers.into_iter().map(|(r, _)| r);
                for reply in replies.chain(batch.map(|req| req.reply)) {
                    let _ = reply.send(Err(StoreError::Failed(cause.clone())));
                }
                return Err(cause.to_string());
            }
        };
        if let (Some(took), Some(observer)) = (synced, &self.opts.observer) {
            (observer.0)(committed as usize, took);
        }
        self.stats.commits += committed;
        self.stats.records_written += written;
        // Reclaim before answering, so a caller sees the effects of its commit (files deleted,
        // stats) when it returns. Its writes are durable even if reclaim fails: they are
        // answered `Ok`, and the failure stops the store from the next request on.
        let reclaimed = self.reclaim();
        if let Err(cause) = &reclaimed {
            self.fail(cause.clone());
        }
        self.publish_stats();
        for (reply, outcome) in answers {
            // A caller that stopped waiting is no reason to stop the others.
            let _ = reply.send(outcome);
        }
        reclaimed
    }

    /// Records the first fatal error and returns it (an earlier one wins).
    fn fail(&self, cause: Fatal) -> Arc<String> {
        tracing::error!(%cause, "store: I/O failed; the store accepts nothing more");
        self.shared.failed.get_or_init(|| Arc::new(cause)).clone()
    }

    /// Validates one request and turns it into records, applying it to the index (all or none).
    /// The outer error is fatal (a redrive read failed); the inner one is the caller's.
    fn prepare(
        &mut self,
        ops: Vec<Op>,
        unique: bool,
        records: &mut Vec<Record>,
        in_flight: &mut HashSet<(String, [u8; 16])>,
    ) -> Result<Result<Vec<u64>, StoreError>, Fatal> {
        if let Err(e) = self.state.index.validate(&ops) {
            return Ok(Err(e));
        }
        let puts = ops.iter().filter_map(|op| match op {
            Op::Put(p) => Some((p.queue.as_str(), p.message_id)),
            _ => None,
        });
        if unique && let Some((queue, id)) = self.first_seen(puts.clone(), in_flight) {
            let (queue, message_id) = (queue.to_owned(), id);
            return Ok(Err(StoreError::Duplicate { queue, message_id }));
        }
        in_flight.extend(puts.map(|(q, id)| (q.to_owned(), id)));
        let mut seqs = Vec::new();
        for op in ops {
            match op {
                Op::Put(p) => {
                    let seq = self.take_seq();
                    seqs.push(seq);
                    records.push(Record::Put(PutBody {
                        seq,
                        queue: p.queue,
                        message_id: p.message_id,
                        precedence: p.precedence,
                        expires_at_ms: p.expires_at_ms,
                        received_at_ms: p.received_at_ms,
                        attempts: 0,
                        dead: None,
                        bytes: p.bytes,
                    }));
                }
                Op::Done(seq) => {
                    self.state.index.done(seq);
                    records.push(Record::Done { seq });
                }
                Op::Attempt(seq, attempts) => {
                    self.state.index.attempt(seq, attempts);
                    records.push(Record::Attempt { seq, attempts });
                }
                Op::DeadLetter(seq, reason) => {
                    self.state.index.dead_letter(seq, reason.clone());
                    records.push(Record::DeadLetter { seq, reason });
                }
                Op::Redrive(old) => {
                    let body = self.read_put(old)?;
                    self.state.index.done(old);
                    let seq = self.take_seq();
                    seqs.push(seq);
                    let fresh = PutBody {
                        seq,
                        attempts: 0,
                        dead: None,
                        ..body
                    };
                    records.push(Record::Put(fresh));
                    records.push(Record::Done { seq: old });
                }
            }
        }
        Ok(Ok(seqs))
    }

    /// The first of `puts` already seen on disk, in flight in this batch, or earlier in `puts`.
    fn first_seen<'a>(
        &self,
        puts: impl Iterator<Item = (&'a str, [u8; 16])>,
        in_flight: &HashSet<(String, [u8; 16])>,
    ) -> Option<(&'a str, [u8; 16])> {
        let seen = self.shared.seen();
        let mut mine = HashSet::new();
        puts.into_iter().find(|&(q, id)| {
            seen.contains(q, &id)
                || in_flight.contains(&(q.to_owned(), id))
                || !mine.insert((q, id))
        })
    }

    /// Notes whether the head segment is pinned: none of its copies finished for
    /// [`StoreOptions::compact_after_stall`] (at once, on a full disk).
    fn watch_head(&mut self) {
        let now = Instant::now();
        let head = (self.state.index.segments().first_key_value()).map(|(&id, s)| (id, s.finished));
        if head != self.head_watch.map(|(id, finished, _)| (id, finished)) {
            self.head_watch = head.map(|(id, finished)| (id, finished, now));
        }
        // On a full disk the room matters more than the copying: no waiting.
        let stall = match self.full {
            true => Duration::ZERO,
            false => self.opts.compact_after_stall,
        };
        self.pinned = (self.head_watch)
            .filter(|&(.., since)| now.duration_since(since) >= stall)
            .map(|(id, ..)| id);
    }

    fn take_seq(&mut self) -> u64 {
        let seq = self.state.next_seq;
        self.state.next_seq += 1;
        seq
    }

    /// Appends `records` and a `Commit` with one write to the active segment (which
    /// [`Writer::make_room`] made room in; a fresh one gets its header first), then fdatasyncs
    /// and publishes the new seen keys. Returns how long the fdatasync took (`None` when there
    /// was nothing to write).
    fn write(&mut self, records: Vec<Record>) -> Result<Option<Duration>, Fatal> {
        if records.is_empty() {
            return Ok(None);
        }
        self.buf.clear();
        let mut count = records.len();
        let next_seq = self.state.next_seq;
        let Some(active) = self.active.as_mut() else {
            return Err("store writer has no active segment".into());
        };
        // `make_room`'s bound holds (a round that outgrew it would write past the space
        // reserved, where a full disk could fail it).
        debug_assert!({
            let size: usize = records.iter().map(Record::frame_len).sum();
            active.len + (size + record::HEADER_LEN + record::commit_len()) as u64 <= active.room
        });
        let header = (active.len == 0).then_some(Record::Header {
            segment: active.id,
            next_seq,
        });
        if let Some(h) = &header {
            h.encode(&mut self.buf);
            count += 1;
        }
        let header_len = self.buf.len() as u32;
        let mut placed = Vec::new();
        // Where each record's frame is, for the segment's summary.
        let mut frames = Vec::with_capacity(records.len());
        for rec in &records {
            let offset = active.len + self.buf.len() as u64;
            rec.encode(&mut self.buf);
            let len = (active.len + self.buf.len() as u64 - offset) as u32; // One frame.
            frames.push((offset, len));
            if let Record::Put(p) = rec {
                let segment = active.id;
                placed.push((
                    p,
                    Location {
                        segment,
                        offset,
                        len,
                    },
                ));
            }
        }
        // The index takes the new locations now; the seen set only once they are durable.
        let fingerprints: Vec<Fingerprint> = {
            let seen = self.shared.seen();
            let index = &mut self.state.index;
            let put = |(p, loc): (&PutBody, Location)| {
                let fp = seen.fingerprint(&p.queue, &p.message_id);
                index.put(p.seq, loc, p.attempts, p.dead.clone());
                fp
            };
            placed.into_iter().map(put).collect()
        };
        // One frame per record, and frames are bounded, so the count fits.
        Record::Commit {
            records: count as u32,
        }
        .encode(&mut self.buf);
        let path = segment::path(&self.dir, active.id);
        active
            .file
            .write_all(&self.buf)
            .map_err(|e| fatal("write", &path, e))?;
        let started = Instant::now();
        active
            .file
            .sync_data()
            .map_err(|e| fatal("fdatasync", &path, e))?;
        let took = started.elapsed();
        if let Some(h) = &header {
            active.summary.add(0, header_len, h);
        }
        for ((offset, len), rec) in frames.into_iter().zip(&records) {
            active.summary.add(offset, len, rec);
        }
        // No summaries on a full disk (see `seal`): one given up holds nothing either.
        match self.full {
            true => active.summary.give_up(),
            false => active.summary.spill(&*self.disk, &self.dir),
        }
        active.len += self.buf.len() as u64;
        self.state.index.add_bytes(active.id, self.buf.len() as u64);
        self.stats.fsyncs += 1;
        let mut seen = self.shared.seen();
        for &fp in &fingerprints {
            seen.add(fp);
        }
        Ok(Some(took))
    }

    /// Makes sure the round's records will fit in the active segment, before anything of the
    /// round is applied: rolls to a new segment when they might not. When the disk has no room
    /// for one, the requests that add copies are answered [`StoreError::Full`] here, and those
    /// that only finish or mark copies go on if the active segment still has room for them.
    /// Returns the requests to write.
    fn make_room(&mut self, batch: Vec<CommitRequest>) -> Result<Vec<CommitRequest>, Fatal> {
        let (freeing, adding): (Vec<_>, Vec<_>) = batch.into_iter().partition(|r| !r.adds_copies());
        // No segment fits (found just now).
        let mut no_room = false;
        if !adding.is_empty() {
            // What adds copies leaves the spare, and the reserve, for what finishes them.
            let need = self.bound(&freeing) + self.bound(&adding) + self.reserve();
            let spare = self.keep_spare()?;
            if spare && (self.fits(need) || self.roll(need)?) {
                if std::mem::take(&mut self.full) {
                    tracing::info!(dir = %self.dir.display(), "store: disk space is back; accepting again");
                }
                return Ok(freeing.into_iter().chain(adding).collect());
            }
            self.disk_full();
            // (A roll of more than a segment failing says nothing of one segment.)
            no_room = !spare || need <= self.opts.segment_bytes;
            for r in adding {
                let _ = r.reply.send(Err(StoreError::Full));
            }
        }
        // What only finishes or marks copies may take the reserve; what finishes copies, the
        // spare (they free room). No second roll: one of a segment failed just now.
        let need = self.bound(&freeing);
        if freeing.is_empty() || self.fits(need) || (!no_room && self.roll(need)?) {
            return Ok(freeing);
        }
        self.disk_full();
        if freeing.iter().any(CommitRequest::finishes) && self.take_spare(need)? {
            return Ok(freeing);
        }
        Ok(self.room_or_refuse(freeing))
    }

    /// The requests, if they fit in the active segment; else none, each answered
    /// [`StoreError::Full`].
    fn room_or_refuse(&self, batch: Vec<CommitRequest>) -> Vec<CommitRequest> {
        if batch.is_empty() || self.fits(self.bound(&batch)) {
            return batch;
        }
        for r in batch {
            let _ = r.reply.send(Err(StoreError::Full));
        }
        Vec::new()
    }

    /// Whether compaction may add its copies to this round's `records`: there is a source, and
    /// room for both in the active segment or in a new one (all of the round is prepared by
    /// now, and fits where it is, so only compaction waits when the disk is full).
    ///
    /// On a full disk, compaction that empties the source may take the reserve: it frees a
    /// whole segment for the few live copies it moves (copies nobody finishes, such as receipts
    /// for a unit nobody reads, would otherwise pin the oldest segments for good).
    fn room_to_compact(&mut self, records: &[Record]) -> Result<bool, Fatal> {
        let (compaction, whole) = self.compaction_bound();
        if compaction == 0 {
            return Ok(false);
        }
        let size: usize = records.iter().map(Record::frame_len).sum();
        let need = (size + record::HEADER_LEN + record::commit_len()) as u64 + compaction;
        if self.fits(need + self.reserve()) || self.roll(need + self.reserve())? {
            return Ok(true);
        }
        self.disk_full();
        if whole && self.fits(need) {
            return Ok(true);
        }
        // All that is left of the source fits in the spare past its reserve, a commit (and a
        // header) for each slice of it: compaction takes it, and empties the source there.
        let rest = self.compaction_source_bound();
        let slices = rest.div_ceil(self.opts.max_batch_bytes as u64);
        let framing = slices * (record::HEADER_LEN + record::commit_len()) as u64;
        let all = rest.saturating_sub(compaction) + need + framing;
        Ok(all <= self.opts.segment_bytes - self.reserve() && self.take_spare(need)?)
    }

    /// Notes that the disk is full (logged once, until space returns); compaction then waits
    /// for the next request rather than retrying at once.
    fn disk_full(&mut self) {
        if !std::mem::replace(&mut self.full, true) {
            tracing::warn!(
                dir = %self.dir.display(),
                "store: the disk is full; new copies are refused until space returns"
            );
            // The segments' summaries give their room back: compaction may need it for the
            // segment it moves the oldest segments' pinned copies into (see `seal`).
            for &id in self.state.index.segments().keys() {
                let _ = self.disk.remove(&summary::path(&self.dir, id));
            }
            if let Some(a) = &mut self.active {
                a.summary.give_up();
            }
        }
    }

    /// Room each segment keeps for records that only finish or mark copies: requests that add
    /// copies (and compaction) never take it, so that on a full disk the copies of the oldest
    /// segment can still all be finished, and the segment deleted. An eighth of a segment:
    /// a `Done` (17 bytes) is under a tenth of the smallest `Put` a node writes.
    fn reserve(&self) -> u64 {
        self.opts.segment_bytes / 8
    }

    /// Whether the active segment has `need` bytes of room left.
    fn fits(&self, need: u64) -> bool {
        self.active.as_ref().is_some_and(|a| a.len + need <= a.room)
    }

    /// At most how many bytes the requests' records take, with a segment header and a commit.
    fn bound(&self, batch: &[CommitRequest]) -> u64 {
        let op = |op: &Op| match op {
            Op::Put(p) => record::put_len(p.queue.len(), 0, p.bytes.len()),
            Op::Done(_) => record::done_len(),
            Op::Attempt(..) => record::attempt_len(),
            Op::DeadLetter(_, reason) => record::dead_letter_len(reason.len()),
            Op::Redrive(seq) => {
                let old = self.state.index.get(*seq).map_or(0, |e| e.loc.len as usize);
                old + record::done_len()
            }
        };
        let ops: usize = batch.iter().flat_map(|r| &r.ops).map(op).sum();
        (record::HEADER_LEN + ops + record::commit_len()) as u64
    }

    /// Creates the next segment, with room reserved for at least `need` bytes (a whole segment,
    /// normally), and makes its directory entry durable. `Ok(false)` when the disk has no room
    /// for it: then nothing changed.
    fn roll(&mut self, need: u64) -> Result<bool, Fatal> {
        let room = need.max(self.opts.segment_bytes);
        // A segment nothing was written to yet (its round had nothing to write) takes more
        // room instead: a sealed segment always has its header.
        if let Some(a) = self.active.as_mut().filter(|a| a.len == 0) {
            let path = segment::path(&self.dir, a.id);
            return match a.file.allocate(room) {
                Ok(()) => {
                    a.room = a.room.max(room);
                    Ok(true)
                }
                Err(e) if disk::is_full(&e) => Ok(false),
                Err(e) => Err(fatal("reserve space for", &path, e)),
            };
        }
        let id = self.state.next_segment;
        let Some(file) = self.reserved_file(&segment::path(&self.dir, id), room)? else {
            return Ok(false);
        };
        self.state.next_segment += 1;
        self.install(id, file, room)?;
        Ok(true)
    }

    /// Creates file `path` (new) with `room` bytes reserved for it; `None` when the disk has
    /// no room for them, and then the file is removed again (empty and never synced into the
    /// directory: recovery would drop it anyway).
    fn reserved_file(&self, path: &Path, room: u64) -> Result<Option<Box<dyn Append>>, Fatal> {
        let mut file = match self.disk.create(path) {
            Ok(file) => file,
            Err(e) if disk::is_full(&e) => return Ok(None),
            Err(e) => return Err(fatal("create", path, e)),
        };
        match file.allocate(room) {
            Ok(()) => Ok(Some(file)),
            Err(e) if disk::is_full(&e) => {
                drop(file);
                self.disk
                    .remove(path)
                    .map_err(|e| fatal("remove", path, e))?;
                Ok(None)
            }
            Err(e) => Err(fatal("reserve space for", path, e)),
        }
    }

    /// Makes segment `id`'s directory entry durable, and makes it the active segment, with
    /// `room` bytes reserved; the segment it replaces is sealed.
    fn install(&mut self, id: u64, file: Box<dyn Append>, room: u64) -> Result<(), Fatal> {
        let path = segment::path(&self.dir, id);
        self.disk
            .sync_dir(&self.dir)
            .map_err(|e| fatal("sync directory of", &path, e))?;
        self.state.newest = Some(id);
        self.state.index.add_segment(id);
        let sealed = self.active.replace(Active {
            id,
            file,
            len: 0,
            room,
            summary: summary::Spilled::new(id),
        });
        if let Some(a) = &sealed {
            self.state.index.seal(a.id);
        }
        self.seal(sealed);
        Ok(())
    }

    /// Makes sure the spare segment is there: a file with [`StoreOptions::segment_bytes`]
    /// reserved, for [`Writer::take_spare`]. `Ok(false)` when the disk has no room for it.
    fn keep_spare(&mut self) -> Result<bool, Fatal> {
        if self.spare.is_some() {
            return Ok(true);
        }
        let path = segment::spare_path(&self.dir);
        // One an earlier run left is made again (a power cut may have lost what it reserved).
        match self.disk.remove(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(fatal("remove", &path, e));
            }
            _ => {}
        }
        self.spare = self.reserved_file(&path, self.opts.segment_bytes)?;
        Ok(self.spare.is_some())
    }

    /// Rolls to the spare segment, renamed to the next segment with the room it reserved. Only
    /// what frees space takes it (requests that finish copies; compaction that can empty the
    /// head there), when the disk has no room for a new segment: without it, a disk filled while every segment
    /// holds a copy nobody finishes (receipts for a unit nobody reads), its active segment's
    /// reserve spent, could never be freed, for compaction would have nowhere to move those
    /// copies. `Ok(false)` when there is no spare, or `need` is more than it holds.
    fn take_spare(&mut self, need: u64) -> Result<bool, Fatal> {
        if need > self.opts.segment_bytes || self.spare.is_none() {
            return Ok(false);
        }
        // Never with an active segment nothing was written to (it has a segment's room, and
        // what takes the spare needs less): it would be left empty, and a sealed segment
        // always has its header.
        if self.active.as_ref().is_some_and(|a| a.len == 0) {
            return Ok(false);
        }
        let id = self.state.next_segment;
        let (spare, path) = (segment::spare_path(&self.dir), segment::path(&self.dir, id));
        match self.disk.rename(&spare, &path) {
            Ok(()) => self.state.next_segment += 1,
            // The directory itself had no room for the new name: nothing changed.
            Err(e) if disk::is_full(&e) => return Ok(false),
            // Removed by hand (its room went with it): made again when there is room.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.spare = None;
                tracing::warn!(
                    spare = %spare.display(),
                    "store: the spare segment is gone; it is made again when there is room"
                );
                return Ok(false);
            }
            Err(e) => return Err(fatal("rename the spare segment to", &path, e)),
        }
        let file = self.spare.take().expect("checked above");
        self.install(id, file, self.opts.segment_bytes)?;
        self.stats.spare_taken += 1;
        tracing::warn!(
            dir = %self.dir.display(),
            "store: the disk is full; the spare segment takes what frees space (copies are \
             refused until there is room for a new spare)"
        );
        Ok(true)
    }

    /// Writes the summary of a segment nothing will be appended to again (see `summary`): the
    /// one the writer rolled away from, or the active one at close. Every record in it is
    /// durable already (each round fdatasyncs before it returns). At a roll, this is part of
    /// the round that rolls: its callers wait for one more small write and fsync.
    ///
    /// Not while the disk is full, and a disk found full removes the summaries there are
    /// ([`Writer::disk_full`]): a summary is only a shortcut for the next open, and the room
    /// summaries take may be what the next segment needs, the one compaction moves the copies
    /// pinning the oldest segments into (without it the node cannot free its disk). The node
    /// test of a full disk (`tests/disk.rs`) failed one run in two before this.
    fn seal(&self, segment: Option<Active>) {
        match segment {
            Some(a) if a.len > 0 && !self.full => a.summary.finish(&*self.disk, &self.dir, a.len),
            // What it spilled (a summary given up on a full disk was removed then).
            Some(a) => {
                let _ = self.disk.remove(&summary::path(&self.dir, a.id));
            }
            None => {}
        }
    }

    fn publish_stats(&self) {
        let index = &self.state.index;
        let stats = StoreStats {
            segments: index.segments().len(),
            bytes_on_disk: index.segments().values().map(|s| s.bytes).sum(),
            live_records: index.live_count(),
            dead_records: index.dead_count(),
            ..self.stats.clone()
        };
        *self.shared.stats.lock().expect("store stats lock poisoned") = stats;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Requests as (name, ops, bytes).
    type R = (&'static str, usize, usize);

    fn take(urgent: &mut VecDeque<R>, waiting: &mut VecDeque<R>) -> Vec<&'static str> {
        take_batch(urgent, waiting, (8, 1 << 20), |r| (r.1, r.2))
            .into_iter()
            .map(|r| r.0)
            .collect()
    }

    #[test]
    fn urgent_requests_skip_the_backlog_and_keep_their_round_short() {
        let mut waiting: VecDeque<R> = (0..20).map(|_| ("bulk", 1, 30 * 1024)).collect();
        let mut urgent: VecDeque<R> = VecDeque::from([("flash", 1, 512), ("immediate", 1, 512)]);
        // Urgent ones first, then only URGENT_ROUND_BYTES (64 KiB) of the backlog: 3 records.
        assert_eq!(
            take(&mut urgent, &mut waiting),
            ["flash", "immediate", "bulk", "bulk", "bulk"]
        );
        // Without urgent requests, the usual limit (8 ops) applies.
        assert_eq!(take(&mut urgent, &mut waiting).len(), 8);
        // An urgent request that arrives behind the remaining backlog still goes first.
        urgent.push_back(("flash", 1, 512));
        assert_eq!(take(&mut urgent, &mut waiting)[0], "flash");
        assert!(take(&mut urgent, &mut waiting).len() <= 8);
    }

    #[test]
    fn a_round_always_takes_something_when_work_waits() {
        let mut waiting: VecDeque<R> = VecDeque::from([("huge", 1, 10 << 20)]);
        let mut urgent = VecDeque::new();
        assert_eq!(take(&mut urgent, &mut waiting), ["huge"]);
        assert!(take(&mut urgent, &mut waiting).is_empty());
    }
}
