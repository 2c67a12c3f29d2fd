//! The node's durable store: every message copy a node holds, on disk before it is acknowledged.
//!
//! A segmented, append-only log of checksummed records (format in `record.rs`) written by
//! one dedicated thread that group-commits: it takes every request waiting, appends them with one
//! write, calls `fdatasync` once, and only then answers each caller. At open the log is replayed
//! to rebuild the indexes (live copies per segment, seen message ids) and to hand the node every
//! live copy; a torn tail left by a crash is cut off, never read as data. Finished copies' space
//! is reclaimed by deleting head segments, and by compaction, which moves the few live copies of
//! a sparse head forward, once nothing in it has been finished for a while (a head that drains
//! is left to drain), so one old message cannot pin the whole log.
//!
//! What it does not do: decide anything about messages. It has no clock for them (expiry,
//! retry limits and dead-letter decisions are the node's, recorded here as ops; its only timer
//! is how long a head has been pinned), does not order queues by precedence (it
//! stores the precedence; [`crate::lanes`] orders), and does not parse envelopes (bytes in,
//! bytes out).
//!
//! **Failure model.** Any I/O error in the writer (a failed write, fsync, file creation,
//! deletion, or read-back) is fatal: the store stops, the requests in that batch and every later
//! call get [`StoreError::Failed`] with the first cause, and nothing in that batch is reported
//! committed. A retried fsync can report success over data the kernel already dropped, so the
//! store never retries; restarting the node reopens the log and recovers what is on disk.
//!
//! **A full disk** is not a failure. Segments reserve their room whole when they are started
//! (`fallocate`), so a write never fails half-way for want of space. Copies are refused
//! [`StoreError::Full`] when the next segment does not fit, and what finishes or marks copies
//! keeps going: each segment keeps an eighth of itself for it, and beside the segments one
//! **spare segment** (the file `SPARE`, a segment's room reserved) is kept that only what frees
//! space may take, when no new segment fits: finishing copies, and compaction that empties the
//! head. Without it, a disk filled while every segment holds a copy nobody finishes (receipts
//! for a unit nobody reads) could never be freed, for compaction would have nowhere to move
//! them. Copies are accepted again once there is room for a spare and a segment.

mod crc;
pub(crate) mod disk;
mod error;
mod index;
mod live;
mod reclaim;
mod record;
mod recover;
mod segment;
mod summary;
#[cfg(test)]
mod tests;
mod writer;

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use disk::Disk;
pub use error::StoreError;
use index::Seen;
pub use live::LiveCopies;
pub use record::{MAX_MESSAGE_BYTES, MAX_QUEUE_BYTES, MAX_REASON_BYTES};
use writer::{CommitRequest, Request, Writer};

/// Requests that may wait for the writer thread. When it is full, [`Store::commit`] waits for a
/// slot (backpressure on whoever is accepting messages); nothing is dropped. 1024 requests is
/// several batches' worth, enough to keep the writer busy during an fsync.
pub const REQUEST_QUEUE: usize = 1024;

/// Tuning knobs. The defaults suit a node; tests use small segments.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// A segment file is closed and a new one started when a write would take it past this.
    /// Larger segments mean fewer files but coarser reclaim (a segment is deleted whole).
    pub segment_bytes: u64,
    /// A batch stops taking requests once it holds this many ops (a single larger request is
    /// still written whole). Bounds the latency one fsync adds to its first caller.
    pub max_batch_records: usize,
    /// Likewise in message bytes; also the compaction budget per write.
    pub max_batch_bytes: usize,
    /// Compact the head segment when less than this fraction of it, or of the whole log, is
    /// live. Lower means less copying and more disk held by finished copies.
    pub compact_below_live_ratio: f64,
    /// ... and when none of the head's copies has been finished for this long: the head is
    /// pinned, not draining. A queue drained in order finishes its oldest segment's copies one
    /// after another; moving the half still waiting forward would copy them for nothing (and
    /// a drain of a million copies moved a third of them). Not on a full disk, where the room
    /// comes first, nor when the whole log is less than half of `compact_below_live_ratio`
    /// live, which a slow reader of the head would otherwise let grow without bound. A store
    /// with nothing to write waits for its next write to compact.
    pub compact_after_stall: std::time::Duration,
    /// Told about every fdatasync'ed write (for the node's metrics); `None` by default.
    pub observer: Option<CommitObserver>,
}

/// What the writer thread tells an observer after each fdatasync'ed write: how many commit
/// requests shared it (0 for a compaction-only write) and how long the `fdatasync` took. It
/// runs on the writer thread, between the fsync and the answers: it must be cheap (a few
/// atomic updates) and must not block.
#[derive(Clone)]
pub struct CommitObserver(pub Arc<dyn Fn(usize, std::time::Duration) + Send + Sync>);

impl std::fmt::Debug for CommitObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CommitObserver")
    }
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            segment_bytes: 64 * 1024 * 1024,
            max_batch_records: 4096,
            max_batch_bytes: 4 * 1024 * 1024,
            compact_below_live_ratio: 0.5,
            compact_after_stall: std::time::Duration::from_secs(1),
            observer: None,
        }
    }
}

/// A message copy to add to a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutRecord {
    /// Queue name, e.g. `mailbox:pgr` or `outbox:pgr-1`; 1 to [`MAX_QUEUE_BYTES`] bytes.
    pub queue: String,
    pub message_id: [u8; 16],
    pub precedence: u8,
    pub expires_at_ms: u64,
    pub received_at_ms: u64,
    /// The signed envelope as received; at most [`MAX_MESSAGE_BYTES`].
    pub bytes: Bytes,
}

/// A live copy found at open: waiting, or dead-lettered when `dead` is set. Its message bytes
/// stay on disk: [`Store::read`] brings them back when they are wanted, so that opening a store
/// holding millions of copies costs their index, not their bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub seq: u64,
    pub queue: String,
    pub message_id: [u8; 16],
    pub precedence: u8,
    pub expires_at_ms: u64,
    pub received_at_ms: u64,
    pub attempts: u32,
    /// The dead-letter reason, for a parked copy.
    pub dead: Option<String>,
}

/// A live copy read back by [`Store::read`]: its message bytes, when the node took it, and its
/// failed attempts so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadCopy {
    pub bytes: Bytes,
    pub received_at_ms: u64,
    pub attempts: u32,
}

/// One change to the store. The ops of one [`Store::commit`] are applied in order, all or none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Adds a copy; the store assigns its seq.
    Put(PutRecord),
    /// The copy is finished (acknowledged, forwarded, expired or discarded).
    Done(u64),
    /// Sets the copy's delivery-attempt count, so redelivery counting survives a restart.
    Attempt(u64, u32),
    /// Parks the copy as a dead letter with a reason (cut to [`MAX_REASON_BYTES`]); it stays
    /// live until redriven or finished.
    DeadLetter(u64, String),
    /// Puts a dead-lettered copy back in its queue as a fresh copy (new seq, no attempts, same
    /// bytes and times) and finishes the dead one, in the same write.
    Redrive(u64),
}

/// Counters for monitoring; a snapshot taken after the writer's last write.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreStats {
    pub segments: usize,
    pub bytes_on_disk: u64,
    /// Live copies, dead-lettered ones included.
    pub live_records: usize,
    pub dead_records: usize,
    /// Commit requests written since open.
    pub commits: u64,
    pub fsyncs: u64,
    /// Records written for callers since open (compaction copies not included).
    pub records_written: u64,
    /// Live copies moved forward by compaction since open.
    pub compacted_records: u64,
    /// Segment files deleted since open.
    pub segments_deleted: u64,
    /// Times the spare segment was taken since open: the disk was full, and only what frees
    /// space could be written (see the module docs).
    pub spare_taken: u64,
}

impl StoreStats {
    #[cfg(test)]
    /// Records per fsync: above 1 when batching or group commit shares fsyncs.
    pub fn records_per_fsync(&self) -> f64 {
        self.records_written as f64 / self.fsyncs.max(1) as f64
    }

    #[cfg(test)]
    /// Commit requests per fsync: above 1 when concurrent callers share fsyncs.
    pub fn commits_per_fsync(&self) -> f64 {
        self.commits as f64 / self.fsyncs.max(1) as f64
    }
}

/// State the handles share with the writer thread.
#[derive(Debug)]
struct Shared {
    /// The first fatal error; once set, never cleared.
    failed: OnceLock<Arc<String>>,
    seen: Mutex<Seen>,
    stats: Mutex<StoreStats>,
}

impl Shared {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        // Only the store's own short critical sections hold this lock; a panic in one is a bug.
        self.seen.lock().expect("store seen-set lock poisoned")
    }
}

/// Dropped when the writer thread ends, even by a panic (a bug): then the store is marked
/// failed, so callers get [`StoreError::Failed`] rather than [`StoreError::Closed`]. Dropping
/// `_exit` afterwards tells [`Store::close`] the directory is released.
struct ExitGuard {
    shared: Arc<Shared>,
    _exit: watch::Sender<()>,
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let cause = Arc::new("the store writer thread panicked".to_owned());
            let _ = self.shared.failed.set(cause);
        }
    }
}

/// A handle on an open store; clones share it. See the module docs.
#[derive(Debug, Clone)]
pub struct Store {
    tx: mpsc::Sender<Request>,
    shared: Arc<Shared>,
    /// Closed (never sent on) when the writer thread has released the directory.
    exited: watch::Receiver<()>,
}

impl Store {
    /// Opens (creating if needed) the store in `dir`, replays the log, and starts the writer
    /// thread. Returns the live copies, dead-lettered ones included, in seq order.
    ///
    /// Blocking: it reads the whole log. Call it before serving, or from `spawn_blocking`.
    /// A torn tail in the newest segment is cut (and logged with `tracing::warn!`).
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] for damage anywhere but the newest segment's tail;
    /// [`StoreError::Locked`] when the directory is in use; [`StoreError::Io`];
    /// [`StoreError::Invalid`] for unusable options.
    pub fn open(dir: &Path, opts: StoreOptions) -> Result<(Store, LiveCopies), StoreError> {
        Store::open_with(dir, opts, Arc::new(disk::Std))
    }

    /// As [`Store::open`], on a simulated disk (see `disk::sim`).
    #[cfg(test)]
    pub(crate) fn open_simulated(
        dir: &Path,
        opts: StoreOptions,
        disk: disk::sim::SimDisk,
    ) -> Result<(Store, LiveCopies), StoreError> {
        Store::open_with(dir, opts, Arc::new(disk))
    }

    fn open_with(
        dir: &Path,
        opts: StoreOptions,
        disk: Arc<dyn Disk>,
    ) -> Result<(Store, LiveCopies), StoreError> {
        if opts.segment_bytes < 4096
            || opts.max_batch_records == 0
            || opts.max_batch_bytes == 0
            || !(0.0..1.0).contains(&opts.compact_below_live_ratio)
        {
            return Err(StoreError::Invalid(format!(
                "store options out of range: {opts:?}"
            )));
        }
        disk.create_dir_all(dir).map_err(|source| StoreError::Io {
            op: "create",
            path: dir.to_owned(),
            source,
        })?;
        let lock = segment::lock(&*disk, dir)?;
        let rec = recover::recover(&*disk, dir)?;
        let shared = Arc::new(Shared {
            failed: OnceLock::new(),
            seen: Mutex::new(rec.seen),
            stats: Mutex::default(),
        });
        let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
        let (exit, exited) = watch::channel(());
        let writer = Writer::new(dir, opts, rec.state, shared.clone(), disk, lock);
        let on_exit = ExitGuard {
            shared: shared.clone(),
            _exit: exit,
        };
        std::thread::Builder::new()
            .name("enlace-store".into())
            .spawn(move || {
                writer.run(rx);
                drop(on_exit);
            })
            .map_err(|source| StoreError::Io {
                op: "spawn writer for",
                path: dir.to_owned(),
                source,
            })?;
        let store = Store { tx, shared, exited };
        Ok((store, rec.messages))
    }

    /// Applies `ops` durably: when this returns `Ok`, every op is on disk (fdatasync) and will be
    /// recovered after a crash. Returns the seqs assigned to each [`Op::Put`] and
    /// [`Op::Redrive`], in op order. Concurrent callers share fsyncs (group commit).
    ///
    /// # Errors
    /// [`StoreError::NotLive`], [`StoreError::NotDead`], [`StoreError::Invalid`]: nothing of
    /// this request was written, and the store goes on. [`StoreError::Failed`] (fatal) and
    /// [`StoreError::Closed`]: nothing was committed, and nothing more will be.
    ///
    /// # Cancel safety
    /// Not cancel safe: dropping the future after the request reached the writer does not stop
    /// the write, and its seqs are then lost to the caller.
    pub async fn commit(&self, ops: Vec<Op>) -> Result<Vec<u64>, StoreError> {
        self.submit(ops, false).await
    }

    /// Like [`Store::commit`], but first checks every `Put`'s queue and message id against the
    /// seen set (see [`Store::contains_message`]) and against puts not yet durable, in the writer,
    /// so two concurrent receipts of one message cannot both be stored. A duplicate answer waits
    /// until the original is durable, so it can be acknowledged to the sender.
    ///
    /// # Errors
    /// As [`Store::commit`], and [`StoreError::Duplicate`] (nothing written) when any `Put` was
    /// already seen.
    #[cfg(test)]
    pub async fn commit_if_new(&self, ops: Vec<Op>) -> Result<Vec<u64>, StoreError> {
        self.submit(ops, true).await
    }

    /// Several independent commits in one request: each unit of ops is validated, checked (with
    /// `unique`: every `Put`'s queue and message id against the seen set, see
    /// [`Store::contains_message`], and against puts not yet durable, so two concurrent
    /// receipts of one message cannot both be stored; a duplicate is answered
    /// [`StoreError::Duplicate`], once the original is durable) and answered on its own, as if submitted alone
    /// and concurrently, so one refused unit does not refuse the others; they usually share one
    /// write and one fsync. Answers are in unit order.
    ///
    /// # Cancel safety
    /// As [`Store::commit`].
    pub async fn commit_each(
        &self,
        units: Vec<Vec<Op>>,
        unique: bool,
    ) -> Vec<Result<Vec<u64>, StoreError>> {
        if let Some(cause) = self.shared.failed.get() {
            return units
                .iter()
                .map(|_| Err(StoreError::Failed(cause.clone())))
                .collect();
        }
        let mut answers: Vec<Option<Result<Vec<u64>, StoreError>>> = Vec::new();
        let mut requests = Vec::new();
        let mut waiting = Vec::new();
        for mut ops in units {
            answers.push(None);
            match check_ops(&mut ops) {
                Err(e) => *answers.last_mut().expect("pushed") = Some(Err(e)),
                Ok(_) if ops.is_empty() => {
                    *answers.last_mut().expect("pushed") = Some(Ok(Vec::new()))
                }
                Ok(bytes) => {
                    let (reply, answer) = oneshot::channel();
                    requests.push(CommitRequest {
                        ops,
                        unique,
                        bytes,
                        reply,
                    });
                    waiting.push((answers.len() - 1, answer));
                }
            }
        }
        if !requests.is_empty() {
            let sent = self.tx.send(Request::Commit(requests)).await.is_ok();
            for (i, answer) in waiting {
                answers[i] = Some(match (sent, answer.await) {
                    (true, Ok(result)) => result,
                    _ => Err(self.stopped().await),
                });
            }
        }
        answers.into_iter().map(|a| a.expect("answered")).collect()
    }

    async fn submit(&self, ops: Vec<Op>, unique: bool) -> Result<Vec<u64>, StoreError> {
        let mut answers = self.commit_each(vec![ops], unique).await;
        answers.pop().expect("one answer per unit")
    }

    /// Reads live copies back from disk, in the order of `seqs`: for each, its bytes and
    /// metadata ([`ReadCopy`]), or why they cannot be had (not a live copy, or a frame that no longer reads
    /// back as its `Put`: damage the node should purge, not a reason to stop the store).
    /// The writer answers a read between two writes, without waiting for the next fsync.
    ///
    /// # Errors
    /// [`StoreError::Failed`] and [`StoreError::Closed`]: the store serves nothing more.
    pub async fn read(&self, seqs: Vec<u64>) -> Result<Vec<Result<ReadCopy, String>>, StoreError> {
        if let Some(cause) = self.shared.failed.get() {
            return Err(StoreError::Failed(cause.clone()));
        }
        let (reply, answer) = oneshot::channel();
        if self.tx.send(Request::Read(seqs, reply)).await.is_err() {
            return Err(self.stopped().await);
        }
        match answer.await {
            Ok(found) => Ok(found),
            Err(_) => Err(self.stopped().await),
        }
    }

    /// Why the writer is gone: waits for its thread to end (so a panic is already recorded),
    /// then [`StoreError::Failed`] if it failed, else [`StoreError::Closed`].
    async fn stopped(&self) -> StoreError {
        let mut exited = self.exited.clone();
        while exited.changed().await.is_ok() {}
        match self.shared.failed.get() {
            Some(cause) => StoreError::Failed(cause.clone()),
            None => StoreError::Closed,
        }
    }

    /// Whether a `Put` of this message id into this queue is on disk, durably: true for every
    /// live copy (waiting or dead-lettered) and for finished copies whose `Put` record has not
    /// been reclaimed yet. That window is measured in log, not time: it always covers the newest
    /// segment (up to [`StoreOptions::segment_bytes`] of recent traffic) and lasts until the
    /// record's segment is deleted or compacted away; it survives restarts unchanged. A node
    /// wanting a time-based window keeps one above this. Puts still being written are not
    /// counted; a unique [`Store::commit_each`] counts them.
    pub fn contains_message(&self, queue: &str, message_id: &[u8; 16]) -> bool {
        self.shared.seen().contains(queue, message_id)
    }

    /// The counters as of the writer's last write (for the node's metrics).
    pub fn stats(&self) -> StoreStats {
        // As for `seen`: only the writer's short critical sections hold this lock.
        self.shared
            .stats
            .lock()
            .expect("store stats lock poisoned")
            .clone()
    }

    /// Stops the writer after the requests already queued, and returns once the directory is
    /// released (it can be opened again). Other clones get [`StoreError::Closed`] afterwards.
    /// Closing a closed store is `Ok`.
    ///
    /// # Errors
    /// [`StoreError::Failed`] when the store had failed.
    pub async fn close(self) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        if self.tx.send(Request::Close(reply)).await.is_ok()
            && let Ok(result) = answer.await
        {
            // The writer answers after releasing the directory, but its thread may still be
            // ending; wait for that too.
            let _ = self.stopped().await;
            return result;
        }
        match self.stopped().await {
            StoreError::Closed => Ok(()),
            failed => Err(failed),
        }
    }
}

/// Checks what can be checked without the writer, cuts over-long reasons, and returns the
/// message bytes in `ops` (for batch sizing).
fn check_ops(ops: &mut [Op]) -> Result<usize, StoreError> {
    let mut bytes = 0;
    for op in ops {
        match op {
            Op::Put(p) => {
                if p.queue.is_empty() || p.queue.len() > MAX_QUEUE_BYTES {
                    return Err(StoreError::Invalid(format!(
                        "queue name must be 1 to {MAX_QUEUE_BYTES} bytes, got {}",
                        p.queue.len()
                    )));
                }
                if p.bytes.len() > MAX_MESSAGE_BYTES {
                    return Err(StoreError::Invalid(format!(
                        "message of {} bytes is over {MAX_MESSAGE_BYTES}",
                        p.bytes.len()
                    )));
                }
                bytes += p.bytes.len();
            }
            Op::DeadLetter(_, reason) if reason.len() > MAX_REASON_BYTES => {
                let cut = (0..=MAX_REASON_BYTES)
                    .rev()
                    .find(|&i| reason.is_char_boundary(i))
                    .unwrap_or(0);
                reason.truncate(cut);
            }
            Op::Done(_) | Op::Attempt(..) | Op::DeadLetter(..) | Op::Redrive(_) => {}
        }
        bytes += 32;
    }
    Ok(bytes)
}
