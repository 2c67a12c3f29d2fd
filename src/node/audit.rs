//! The node's delivery log (see [`crate::audit`] for its files and records): one writer thread
//! that turns events into records, appends them, keeps the Merkle tree's frontier, syncs, signs
//! nothing itself (the node's checkpoint task does, `witness`), and prunes behind checkpoints.
//!
//! **Its own group commit.** Records are appended in batches as events come and made durable
//! with `fdatasync` at most `delivery_log.sync_interval_ms` after they were written, and always
//! before a checkpoint covers them. The store's commits do not wait for the log, nor the log's
//! for the store: the acknowledgment path pays for an event's hand-over to this thread only
//! (a bounded channel; when the writer falls `CHANNEL` records behind, the node waits for it
//! rather than lose a record). After a power cut the log may lack the last records written
//! since its last sync, never one a checkpoint covers.
//!
//! **Below the node's work.** The writer thread runs at a lower priority than the bulk
//! runtime's threads (see `bulk`), which run below the node's own: on a busy machine the log is
//! written in the gaps that accepting, forwarding and delivering leave, not ahead of them. What
//! it has not written yet is counted ([`Log::pending`], the `enlace_log_pending_records` gauge,
//! and `enlace bench`'s `log_pending`), so a writer that cannot keep up is seen; past `CHANNEL`
//! records the node waits for it, as before.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use tokio::sync::{Notify, broadcast, oneshot};

use super::events::{About, Event};
use super::files;
use crate::audit::{
    self, BASE, Base, CHECKPOINTS, CheckpointEntry, KEYS, KeyEntry, Record, WITNESSED, Witnessed,
    hex, leaf, records_file, unhex32,
};
use crate::config::DeliveryLog;
use crate::merkle::{self, Frontier, Hash};
use crate::note::Checkpoint;

/// Records the writer may fall behind before the node waits for it.
const CHANNEL: usize = 65_536;
/// The writer thread's niceness above the node's: below the bulk runtime's (5).
const NICENESS: i32 = 10;
/// `witnessed.jsonl` is rewritten at most this often.
const WITNESS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// How long the writer sleeps when it finds nothing to write.
const POLL: std::time::Duration = std::time::Duration::from_millis(2);
/// Records written at once at most.
const BATCH: usize = 4096;
/// Lines offered to `enlace log tail` followers; a slow follower misses some and is told.
const FOLLOWERS: usize = 8192;

enum Cmd {
    /// Boxed, as the larger commands are: the channel holds [`CHANNEL`] commands' room from the
    /// start, which 100 bytes a command made 6.5 MB.
    Write(Box<Append>),
    Head(oneshot::Sender<io::Result<Frontier>>),
    Checkpoint(Box<(CheckpointEntry, Frontier, oneshot::Sender<io::Result<()>>)>),
    Cosigned(Box<(CheckpointEntry, oneshot::Sender<io::Result<()>>)>),
    Key(Box<KeyEntry>),
    Witnessed(Box<Witnessed>),
    ProofInputs(u64, u64, oneshot::Sender<ProofInputs>),
    Prune(SystemTime, oneshot::Sender<io::Result<Option<String>>>),
    Flush(oneshot::Sender<()>),
    Stop(std::sync::mpsc::Sender<()>),
}

/// An event to append, and when it happened.
struct Append {
    at: SystemTime,
    event: Event,
    about: Option<About>,
}

/// What a consistency proof from `old` to `new` needs, as far as the writer holds it: the tree
/// at `old`, and the leaves `old..new`.
type ProofInputs = (Option<Frontier>, Option<Vec<Hash>>);

/// Leaf hashes the writer keeps for proofs, at most (8 MiB: about 40 s of a node admitting
/// 6,000 records a second); a peer further behind (one offline for longer, whose last
/// cosigned size holds them back) gets its proof from the files.
const RECENT_LEAVES: usize = 1 << 18;

/// The node's delivery log: a handle on its writer thread.
pub(crate) struct Log {
    tx: SyncSender<Cmd>,
    dir: PathBuf,
    origin: String,
    lines: broadcast::Sender<Arc<str>>,
    /// Woken when `checkpoint_records` records were written since the last checkpoint.
    pub due: Arc<Notify>,
    /// The size of the last checkpoint, and the peers' latest cosigned sizes.
    pub state: Mutex<Signed>,
    /// The last checkpoint of each peer this node cosigned.
    pub witnessed: Mutex<BTreeMap<String, Checkpoint>>,
    /// Held while a peer's checkpoint is judged, so two are never judged at once.
    pub witnessing: tokio::sync::Mutex<()>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Events handed to the writer, and events it has written (its own count).
    handed: std::sync::atomic::AtomicU64,
    written: Arc<std::sync::atomic::AtomicU64>,
}

/// What the log has signed and had cosigned.
#[derive(Debug, Default, Clone)]
pub(crate) struct Signed {
    pub last: Option<Checkpoint>,
    pub cosigned: BTreeMap<String, u64>,
}

impl Log {
    /// Opens (or creates) the log in `dir` for node `node` of `agency`, and starts its writer.
    pub fn open(
        dir: &Path,
        node: &str,
        agency: &str,
        settings: DeliveryLog,
    ) -> io::Result<Arc<Log>> {
        fs::create_dir_all(dir)?;
        let origin = format!("enlace/{agency}/{node}");
        let (tx, rx) = sync_channel(CHANNEL);
        let (lines, _) = broadcast::channel(FOLLOWERS);
        let due = Arc::new(Notify::new());
        let (writer, signed, witnessed) =
            Writer::open(dir, node, agency, settings, due.clone(), lines.clone())?;
        let written = writer.written.clone();
        let thread = std::thread::Builder::new()
            .name(format!("log-{node}"))
            .spawn(move || {
                super::bulk::lower_priority(NICENESS);
                writer.run(rx)
            })?;
        Ok(Arc::new(Log {
            tx,
            dir: dir.to_owned(),
            origin,
            lines,
            due,
            state: Mutex::new(signed),
            witnessed: Mutex::new(witnessed),
            witnessing: tokio::sync::Mutex::new(()),
            thread: Mutex::new(Some(thread)),
            handed: Default::default(),
            written,
        }))
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The origin line of this log's checkpoints.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Hands an event to the writer (waits if it is `CHANNEL` records behind; never drops one).
    pub fn write(&self, event: Event, about: Option<About>) {
        self.handed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _ = self.tx.send(Cmd::Write(Box::new(Append {
            at: SystemTime::now(),
            event,
            about,
        })));
    }

    /// Events handed to the writer that it has not written yet (its lag; written means in
    /// the file, not necessarily synced).
    pub fn pending(&self) -> u64 {
        use std::sync::atomic::Ordering::Relaxed;
        // Read apart, the two may be off by the events racing this read: never below zero.
        let written = self.written.load(Relaxed);
        self.handed.load(Relaxed).saturating_sub(written)
    }

    /// Lines as they are written, for followers.
    pub fn follow(&self) -> broadcast::Receiver<Arc<str>> {
        self.lines.subscribe()
    }

    async fn ask<T>(&self, cmd: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        let sender = self.tx.clone();
        let c = cmd(tx);
        // The channel may be full: wait off the runtime's threads.
        tokio::task::spawn_blocking(move || sender.send(c).is_ok())
            .await
            .ok()
            .filter(|sent| *sent)?;
        rx.await.ok()
    }

    /// The tree as written so far, every record of it on disk.
    pub async fn head(&self) -> io::Result<Frontier> {
        self.ask(Cmd::Head).await.unwrap_or_else(|| Err(stopped()))
    }

    /// Appends a signed checkpoint (`frontier` is the tree it signs).
    pub async fn checkpoint(&self, entry: CheckpointEntry, frontier: Frontier) -> io::Result<()> {
        self.ask(|tx| Cmd::Checkpoint(Box::new((entry, frontier, tx))))
            .await
            .unwrap_or_else(|| Err(stopped()))
    }

    /// Appends a witness's cosignature.
    pub async fn cosigned(&self, entry: CheckpointEntry) -> io::Result<()> {
        self.ask(|tx| Cmd::Cosigned(Box::new((entry, tx))))
            .await
            .unwrap_or_else(|| Err(stopped()))
    }

    /// Adds a key to `keys.jsonl`, unless it is there.
    pub fn key(&self, entry: KeyEntry) {
        let _ = self.tx.send(Cmd::Key(Box::new(entry)));
    }

    /// Records the latest checkpoint of a peer's that this node cosigned. The file keeps the
    /// latest of each peer only, and is rewritten at most once a second (`WITNESS_EVERY`) and
    /// when the log closes: a peer sending checkpoints as fast as it can costs one small write
    /// a second, and after a crash the node compares with a checkpoint at most that old.
    pub fn witnessed(&self, entry: Witnessed) {
        let _ = self.tx.send(Cmd::Witnessed(Box::new(entry)));
    }

    /// Prunes what is past retention at `now`; says what it removed.
    pub async fn prune(&self, now: SystemTime) -> io::Result<Option<String>> {
        self.ask(|tx| Cmd::Prune(now, tx))
            .await
            .unwrap_or_else(|| Err(stopped()))
    }

    /// Waits until everything handed over so far is written (not necessarily synced).
    pub async fn flush(&self) {
        let _ = self.ask(Cmd::Flush).await;
    }

    /// The consistency proof from this log's tree of `old` records to its tree of `new`
    /// (`old` a size it signed, `new` at most what is written).
    pub async fn proof(self: &Arc<Self>, old: u64, new: u64) -> Result<Vec<Hash>, String> {
        let (known, leaves) = self
            .ask(|tx| Cmd::ProofInputs(old, new, tx))
            .await
            .unwrap_or((None, None));
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || proof(&dir, old, new, known, leaves))
            .await
            .map_err(|e| e.to_string())?
    }

    /// Stops the writer after it wrote and synced everything handed to it; what is handed
    /// over later is not written (the node has stopped).
    pub fn close(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        if self.tx.send(Cmd::Stop(tx)).is_ok() {
            let _ = rx.recv();
        }
        if let Some(t) = self.thread.lock().expect("log thread lock").take() {
            let _ = t.join();
        }
    }
}

fn stopped() -> io::Error {
    io::Error::other("the delivery log's writer has stopped")
}

/// The consistency proof from `old` to `new`, reading the leaves it needs from the files.
fn proof(
    dir: &Path,
    old: u64,
    new: u64,
    known: Option<Frontier>,
    after: Option<Vec<Hash>>,
) -> Result<Vec<Hash>, String> {
    let (base, _) = read_base(dir).map_err(|e| e.to_string())?;
    if old < base.size() {
        return Err(format!("records before {} were pruned", base.size()));
    }
    let old_frontier = match known {
        Some(f) => f,
        None => {
            let mut f = base.clone();
            for h in leaves(dir, base.size(), old).map_err(|e| e.to_string())? {
                f.push(h);
            }
            f
        }
    };
    let after = match after {
        Some(a) => a,
        None => leaves(dir, old, new).map_err(|e| e.to_string())?,
    };
    if after.len() as u64 != new - old {
        return Err(format!("the log holds fewer than {new} records"));
    }
    let ranges: Vec<(u64, u64)> = old_frontier.ranges().collect();
    let mut failed = false;
    let mut mth = |start: u64, len: u64| -> Hash {
        if start < old {
            match ranges.iter().position(|r| *r == (start, len)) {
                Some(i) => old_frontier.nodes()[i],
                None => {
                    failed = true;
                    [0; 32]
                }
            }
        } else {
            let s = (start - old) as usize;
            root_of(&after[s..s + len as usize])
        }
    };
    let p = merkle::consistency_proof(old, new, &mut mth).ok_or("no proof between these sizes")?;
    if failed {
        return Err("a proof asked for a subtree the old tree does not hold".into());
    }
    Ok(p)
}

fn root_of(leaves: &[Hash]) -> Hash {
    let mut f = Frontier::new();
    leaves.iter().for_each(|h| f.push(*h));
    f.root()
}

/// The leaf hashes of records `from..to`, read from the files.
fn leaves(dir: &Path, from: u64, to: u64) -> io::Result<Vec<Hash>> {
    let mut out = Vec::new();
    if from >= to {
        return Ok(out);
    }
    let files = audit::files::record_files(dir)?;
    for (i, (start, path)) in files.iter().enumerate() {
        // A file whose successor starts at or before `from` holds none of them.
        if files.get(i + 1).is_some_and(|(next, _)| *next <= from) {
            continue;
        }
        let start = *start;
        let data = match fs::read(path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for (seq, line) in (start..).zip(data.split_inclusive(|b| *b == b'\n')) {
            if seq >= to {
                return Ok(out);
            }
            if !line.ends_with(b"\n") {
                break;
            }
            if seq >= from {
                out.push(leaf(&line[..line.len() - 1]));
            }
        }
    }
    Ok(out)
}

/// The frontier and last leaf where the kept records start (`base.json`), or the empty tree.
fn read_base(dir: &Path) -> io::Result<(Frontier, Option<Hash>)> {
    match audit::files::base(dir)? {
        None => Ok((Frontier::new(), None)),
        Some(Ok(b)) => {
            let nodes: Option<Vec<Hash>> = b.frontier.iter().map(|h| unhex32(h)).collect();
            match (
                nodes.and_then(|n| Frontier::from_parts(b.size, n)),
                unhex32(&b.prev),
            ) {
                (Some(f), Some(p)) => Ok((f, Some(p))),
                _ => Err(io::Error::other("base.json is malformed")),
            }
        }
        Some(Err(e)) => Err(io::Error::other(format!("base.json: {e}"))),
    }
}

/// One records file.
struct Segment {
    start: u64,
    /// The tree before its first record, and that record's predecessor's leaf; `None` for a
    /// file behind the checkpoint the log was opened from (see `prune`).
    tree: Option<(Frontier, Option<Hash>)>,
    /// When its last record was written.
    last: Option<SystemTime>,
}

/// What reading the records files at start gives.
struct Replayed {
    frontier: Frontier,
    prev: Option<Hash>,
    /// The leaves hashed, the latest `RECENT_LEAVES` of them, from `recent_start`.
    recent: std::collections::VecDeque<Hash>,
    recent_start: u64,
    segments: Vec<Segment>,
}

/// Reads the records `files` after `base` (the tree before the first of them, and the leaf
/// before it) to rebuild the tree. With `resume` (a checkpoint's tree, past `base`), the records
/// it covers are taken as it says: the files wholly behind it are not read but for their last
/// record, and only the records after it are hashed; `None` then when the files do not hold
/// every record it covers, or a file behind it ends torn (read them all instead). A records
/// file cut short by a crash is cut back to its last whole record.
fn replay(
    node: &str,
    files: &[(u64, PathBuf)],
    base: (Frontier, Option<Hash>),
    resume: Option<&Frontier>,
) -> io::Result<Option<Replayed>> {
    let (mut frontier, mut prev) = base;
    let mut recent = std::collections::VecDeque::new();
    let mut recent_start = frontier.size();
    let mut segments = Vec::new();
    // The size the checkpoint's tree stands for, until the records reach it.
    let mut skip_to = resume.map(Frontier::size);
    let mut expected = frontier.size();
    // One buffer for every file: fresh pages for each would cost as much as the hashing.
    let mut data = Vec::new();
    for (i, (start, path)) in files.iter().enumerate() {
        let start = *start;
        if start != expected {
            tracing::error!(
                node, file = %path.display(),
                "delivery log: records file out of sequence (expected record {expected}); \
                 `enlace log verify` will name it"
            );
        }
        let next = files.get(i + 1).map(|(n, _)| *n);
        if let Some(to) = skip_to
            && next.is_some_and(|n| n <= to)
        {
            // Wholly behind the checkpoint: its last record's time decides when it is pruned,
            // and that record's leaf is the next one's `prev`.
            let Some((last_leaf, last)) = last_record(path)? else {
                return Ok(None);
            };
            prev = Some(last_leaf);
            segments.push(Segment {
                start,
                tree: None,
                last,
            });
            expected = next.unwrap_or(start);
            continue;
        }
        if let (Some(to), Some(r)) = (skip_to, resume)
            && to == start
        {
            frontier = r.clone();
            recent_start = to;
            skip_to = None;
        }
        let mut seg = Segment {
            start,
            tree: skip_to.is_none().then(|| (frontier.clone(), prev)),
            last: None,
        };
        data.clear();
        File::open(path)?.read_to_end(&mut data)?;
        let mut good = 0;
        let mut last = None;
        let mut seq = start;
        for line in data.split_inclusive(|b| *b == b'\n') {
            if !line.ends_with(b"\n") {
                break;
            }
            let body = &line[..line.len() - 1];
            good += line.len();
            last = Some(body);
            seq += 1;
            match (skip_to, resume) {
                (Some(to), Some(r)) if seq <= to => {
                    if seq == to {
                        // The checkpoint's last record: the tree from here on is its tree.
                        prev = Some(leaf(body));
                        frontier = r.clone();
                        recent_start = to;
                        skip_to = None;
                    }
                    continue;
                }
                _ => {}
            }
            let h = leaf(body);
            frontier.push(h);
            prev = Some(h);
            if recent.len() >= RECENT_LEAVES {
                recent.pop_front();
                recent_start += 1;
            }
            recent.push_back(h);
        }
        if skip_to.is_some() {
            // The file that should hold the checkpoint's last record does not.
            return Ok(None);
        }
        // Only the file's last record is read: its time decides when the file is pruned.
        seg.last = last.and_then(record_time);
        if good < data.len() {
            // A write cut short by a crash: never covered by a checkpoint (those are signed
            // over synced records only), so it is cut off.
            tracing::warn!(node, file = %path.display(), bytes = data.len() - good,
                "delivery log: cutting a torn last record");
            OpenOptions::new()
                .write(true)
                .open(path)?
                .set_len(good as u64)?;
        }
        segments.push(seg);
        expected = seq;
    }
    if skip_to.is_some() {
        return Ok(None);
    }
    Ok(Some(Replayed {
        frontier,
        prev,
        recent,
        recent_start,
        segments,
    }))
}

/// When a record was written, from its line.
fn record_time(line: &[u8]) -> Option<SystemTime> {
    serde_json::from_slice::<Record>(line)
        .ok()
        .and_then(|r| audit::parse_time(&r.time))
}

/// A records file's last record: its leaf hash and time. `None` when the file does not end
/// with a whole record. Reads the file's end only, unless its last record is longer.
fn last_record(path: &Path) -> io::Result<Option<(Hash, Option<SystemTime>)>> {
    use std::io::{Seek, SeekFrom};
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut tail = 64 * 1024;
    loop {
        let from = len.saturating_sub(tail);
        file.seek(SeekFrom::Start(from))?;
        let mut data = Vec::new();
        file.read_to_end(&mut data)?;
        let Some(body) = data.strip_suffix(b"\n") else {
            return Ok(None);
        };
        match body.iter().rposition(|b| *b == b'\n') {
            Some(i) => return Ok(Some((leaf(&body[i + 1..]), record_time(&body[i + 1..])))),
            None if from == 0 => return Ok(Some((leaf(body), record_time(body)))),
            None => tail *= 4,
        }
    }
}

struct Writer {
    dir: PathBuf,
    node: String,
    /// This node's identity, `<agency>/node/<name>`.
    me: String,
    settings: DeliveryLog,
    file: File,
    file_bytes: u64,
    segments: Vec<Segment>,
    frontier: Frontier,
    prev: Option<Hash>,
    frontiers: BTreeMap<u64, Frontier>,
    /// The latest leaves (from `recent_start`), for proofs; trimmed to what the peers still
    /// need (their last cosigned sizes) and to `RECENT_LEAVES`.
    recent: std::collections::VecDeque<Hash>,
    recent_start: u64,
    cosigned: BTreeMap<String, u64>,
    /// The latest checkpoint text of each peer this node cosigned, and whether (and when)
    /// `witnessed.jsonl` was last written.
    witnessed: BTreeMap<String, String>,
    witnessed_dirty: bool,
    witnessed_at: Instant,
    keys: HashSet<String>,
    last_checkpoint: u64,
    /// Whether the checkpoint task was woken for records since `last_checkpoint`.
    woken: bool,
    unsynced: bool,
    last_sync: Instant,
    due: Arc<Notify>,
    lines: broadcast::Sender<Arc<str>>,
    buf: Vec<u8>,
    /// Events written (to the file), for [`Log::pending`].
    written: Arc<std::sync::atomic::AtomicU64>,
}

impl Writer {
    fn open(
        dir: &Path,
        node: &str,
        agency: &str,
        settings: DeliveryLog,
        due: Arc<Notify>,
        lines: broadcast::Sender<Arc<str>>,
    ) -> io::Result<(Writer, Signed, BTreeMap<String, Checkpoint>)> {
        // The checkpoints signed so far, and who cosigned what.
        let mut signed = Signed::default();
        let mut frontiers = BTreeMap::new();
        let mut roots = BTreeMap::new();
        for e in audit::files::checkpoints(dir)?.into_iter().flatten() {
            match e {
                CheckpointEntry::Checkpoint { note, frontier: f } => {
                    let Ok(n) = crate::note::Note::parse(&note) else {
                        continue;
                    };
                    let Ok(cp) = Checkpoint::parse(&n.text) else {
                        continue;
                    };
                    let nodes: Option<Vec<Hash>> = f.iter().map(|h| unhex32(h)).collect();
                    if let Some(fr) = nodes.and_then(|n| Frontier::from_parts(cp.size, n)) {
                        frontiers.insert(cp.size, fr);
                        roots.insert(cp.size, cp.root);
                    }
                    signed.last = Some(cp);
                }
                CheckpointEntry::Cosignature { size, witness, .. } => {
                    let s = signed.cosigned.entry(witness).or_default();
                    *s = (*s).max(size);
                }
            }
        }
        // The records: from a checkpoint's tree when it is whole (its root the one its note
        // states), hashing only the records after it; else, or when the files do not reach
        // it, every record. The checkpoint is the latest at or below the smallest size a peer
        // last cosigned (the latest of all when none has), so the leaves the peers' next
        // consistency proofs need are all hashed here, as before a restart.
        let base = read_base(dir)?;
        let files = audit::files::record_files(dir)?;
        let needed = signed.cosigned.values().copied().min().unwrap_or(u64::MAX);
        let resume = frontiers
            .range(..=needed)
            .next_back()
            .map(|(_, f)| f)
            .filter(|f| roots.get(&f.size()) == Some(&f.root()) && f.size() > base.0.size());
        let replayed = match resume.map(|r| replay(node, &files, base.clone(), Some(r))) {
            Some(Ok(Some(r))) => r,
            Some(Err(e)) => return Err(e),
            _ => replay(node, &files, base, None)?.expect("a replay from the base ends"),
        };
        let Replayed {
            frontier,
            prev,
            recent,
            recent_start,
            mut segments,
        } = replayed;
        if let Some(last) = &signed.last
            && last.size > frontier.size()
        {
            tracing::error!(
                node,
                "delivery log: the last checkpoint covers {} records but only {} are here: \
                 records are missing; `enlace log verify` will name them",
                last.size,
                frontier.size()
            );
        }
        let mut witnessed = BTreeMap::new();
        let mut witnessed_text = BTreeMap::new();
        for w in json_lines::<Witnessed>(&dir.join(WITNESSED))? {
            if let Ok(cp) = Checkpoint::parse(&w.checkpoint) {
                witnessed.insert(w.peer.clone(), cp);
                witnessed_text.insert(w.peer, w.checkpoint);
            }
        }
        let keys = json_lines::<KeyEntry>(&dir.join(KEYS))?
            .into_iter()
            .map(|k| k.key)
            .collect();
        // Always start a new file: earlier files stay as they were.
        let start = frontier.size();
        let path = dir.join(records_file(start));
        let existing = segments.last().is_some_and(|s| s.start == start);
        if !existing {
            segments.push(Segment {
                start,
                tree: Some((frontier.clone(), prev)),
                last: None,
            });
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let file_bytes = file.metadata()?.len();
        File::open(dir)?.sync_all()?;
        let last_checkpoint = signed.last.as_ref().map_or(0, |c| c.size);
        let mut writer = Writer {
            dir: dir.to_owned(),
            node: node.to_owned(),
            me: format!("{agency}/node/{node}"),
            settings,
            file,
            file_bytes,
            segments,
            frontier,
            prev,
            frontiers,
            recent,
            recent_start,
            cosigned: signed.cosigned.clone(),
            witnessed: witnessed_text,
            witnessed_dirty: false,
            witnessed_at: Instant::now(),
            keys,
            last_checkpoint,
            woken: false,
            unsynced: false,
            last_sync: Instant::now(),
            due,
            lines,
            buf: Vec::with_capacity(1 << 20),
            written: Default::default(),
        };
        writer.trim_recent();
        Ok((writer, signed, witnessed))
    }

    fn run(mut self, rx: Receiver<Cmd>) {
        loop {
            // Polled, not woken per record: a sender never pays for waking this thread.
            let first = match rx.try_recv() {
                Ok(c) => Some(c),
                Err(TryRecvError::Empty) => {
                    std::thread::sleep(POLL);
                    match rx.try_recv() {
                        Ok(c) => Some(c),
                        Err(TryRecvError::Empty) => None,
                        Err(TryRecvError::Disconnected) => break,
                    }
                }
                Err(TryRecvError::Disconnected) => break,
            };
            let mut replies = Vec::new();
            let mut stop = None;
            let mut writes = 0;
            if let Some(c) = first {
                let mut next = Some(c);
                let mut n = 0;
                while let Some(c) = next.take() {
                    if let Cmd::Stop(tx) = c {
                        stop = Some(tx);
                        break;
                    }
                    writes += u64::from(matches!(c, Cmd::Write(_)));
                    self.handle(c, &mut replies);
                    n += 1;
                    if n < BATCH {
                        next = rx.try_recv().ok();
                    }
                }
            }
            let result = self.write_out();
            self.written
                .fetch_add(writes, std::sync::atomic::Ordering::Relaxed);
            if let Err(e) = &result {
                tracing::error!(node = %self.node, error = %e, "delivery log: write failed");
            }
            if self.witnessed_dirty && self.witnessed_at.elapsed() >= WITNESS_EVERY {
                self.write_witnessed();
            }
            for r in replies {
                r(&mut self);
            }
            if let Some(tx) = stop {
                if self.witnessed_dirty {
                    self.write_witnessed();
                }
                if let Err(e) = self.sync() {
                    tracing::error!(node = %self.node, error = %e, "delivery log: final sync failed");
                }
                let _ = tx.send(());
                return;
            }
        }
        if let Err(e) = self.write_out().and_then(|()| self.sync()) {
            tracing::error!(node = %self.node, error = %e, "delivery log: final sync failed");
        }
    }

    /// Handles one command; answers that need the batch written first go to `replies`.
    #[allow(clippy::type_complexity)]
    fn handle(&mut self, c: Cmd, replies: &mut Vec<Box<dyn FnOnce(&mut Writer) + Send>>) {
        match c {
            Cmd::Write(w) => self.append(w.at, &w.event, w.about.as_ref()),
            Cmd::Head(tx) => replies.push(Box::new(move |w: &mut Writer| {
                let _ = tx.send(w.sync().map(|()| w.frontier.clone()));
            })),
            Cmd::Checkpoint(cmd) => {
                let (entry, frontier, tx) = *cmd;
                replies.push(Box::new(move |w: &mut Writer| {
                    let size = frontier.size();
                    let r = w.append_json(CHECKPOINTS, &entry);
                    if r.is_ok() {
                        w.frontiers.insert(size, frontier);
                        w.last_checkpoint = size;
                        w.woken = false;
                        w.wake_when_due();
                        // Proofs start from recent checkpoints; older ones are recomputed.
                        while w.frontiers.len() > 4096 {
                            w.frontiers.pop_first();
                        }
                    }
                    let _ = tx.send(r);
                }))
            }
            Cmd::Cosigned(cmd) => {
                let (entry, tx) = *cmd;
                let r = self.append_json(CHECKPOINTS, &entry);
                if let CheckpointEntry::Cosignature { size, witness, .. } = &entry {
                    self.cosigned.insert(witness.clone(), *size);
                    self.trim_recent();
                }
                let _ = tx.send(r);
            }
            Cmd::Witnessed(entry) => {
                let entry = *entry;
                self.witnessed.insert(entry.peer, entry.checkpoint);
                self.witnessed_dirty = true;
            }
            Cmd::Key(entry) => {
                if !self.keys.contains(&entry.key) {
                    match self.append_json(KEYS, &entry) {
                        Ok(()) => {
                            self.keys.insert(entry.key);
                        }
                        Err(e) => tracing::error!(node = %self.node, error = %e,
                            "delivery log: could not record a key"),
                    }
                }
            }
            Cmd::ProofInputs(old, new, tx) => replies.push(Box::new(move |w: &mut Writer| {
                let leaves = (old >= w.recent_start && new <= w.frontier.size()).then(|| {
                    let from = (old - w.recent_start) as usize;
                    let to = (new - w.recent_start) as usize;
                    w.recent.range(from..to).copied().collect()
                });
                let _ = tx.send((w.frontiers.get(&old).cloned(), leaves));
            })),
            Cmd::Prune(now, tx) => replies.push(Box::new(move |w: &mut Writer| {
                let _ = tx.send(w.prune(now));
            })),
            Cmd::Flush(tx) => replies.push(Box::new(move |w: &mut Writer| {
                let _ = w.sync();
                let _ = tx.send(());
            })),
            Cmd::Stop(_) => unreachable!("handled by the loop"),
        }
    }

    /// Forgets the leaves no peer's next proof starts before.
    fn trim_recent(&mut self) {
        let keep_from = self
            .cosigned
            .values()
            .copied()
            .min()
            .unwrap_or(self.last_checkpoint)
            .max(self.frontier.size().saturating_sub(RECENT_LEAVES as u64));
        while self.recent_start < keep_from && self.recent.pop_front().is_some() {
            self.recent_start += 1;
        }
    }

    /// Seals the record of an event (its position and its predecessor's hash) into the batch.
    fn append(&mut self, at: SystemTime, event: &Event, about: Option<&About>) {
        let place = super::events::Place {
            node: &self.node,
            me: &self.me,
            seq: self.frontier.size(),
            prev: self.prev.as_ref(),
        };
        // Written straight into the batch: the line's bytes are hashed where they lie.
        let start = self.buf.len();
        super::events::write_record(&mut self.buf, &place, at, event, about);
        let line = &self.buf[start..];
        let h = leaf(line);
        self.frontier.push(h);
        self.prev = Some(h);
        // Room made before the push: the deque never outgrows its bound's capacity.
        if self.recent.len() >= RECENT_LEAVES {
            self.recent.pop_front();
            self.recent_start += 1;
        }
        self.recent.push_back(h);
        if self.lines.receiver_count() > 0 {
            let text = std::str::from_utf8(line).expect("JSON is UTF-8");
            let _ = self.lines.send(Arc::from(text));
        }
        self.buf.push(b'\n');
        if let Some(s) = self.segments.last_mut() {
            s.last = Some(at);
        }
        self.wake_when_due();
    }

    /// Wakes the checkpoint task once `checkpoint_records` records were written since the last
    /// checkpoint (once: not again until the next checkpoint is written).
    fn wake_when_due(&mut self) {
        if !self.woken
            && self.frontier.size() - self.last_checkpoint >= self.settings.checkpoint_records
        {
            self.woken = true;
            self.due.notify_one();
        }
    }

    /// Writes the batch; syncs when the last sync is `sync_interval` old; starts a new file
    /// past `segment_bytes`.
    fn write_out(&mut self) -> io::Result<()> {
        self.write_out_buf()?;
        if self.unsynced && self.last_sync.elapsed() >= self.settings.sync_interval {
            self.sync()?;
        }
        if self.file_bytes >= self.settings.segment_bytes {
            self.sync()?;
            let start = self.frontier.size();
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(records_file(start)))?;
            File::open(&self.dir)?.sync_all()?;
            self.file_bytes = 0;
            self.segments.push(Segment {
                start,
                tree: Some((self.frontier.clone(), self.prev)),
                last: None,
            });
        }
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.write_out_buf()?;
        if self.unsynced {
            self.file.sync_data()?;
            self.unsynced = false;
        }
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Appends the buffered records, whole or not at all (a full disk may have room for part
    /// of them: see [`files::append_whole`]); what failed stays buffered for the next attempt.
    fn write_out_buf(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            files::append_whole(&mut self.file, self.file_bytes, &self.buf)?;
            self.file_bytes += self.buf.len() as u64;
            self.buf.clear();
            self.unsynced = true;
        }
        Ok(())
    }

    /// Rewrites `witnessed.jsonl` with the latest checkpoint of each peer (atomically: a new
    /// file, synced, renamed over the old one).
    fn write_witnessed(&mut self) {
        let write = || -> io::Result<()> {
            let mut text = Vec::new();
            for (peer, checkpoint) in &self.witnessed {
                let w = Witnessed {
                    peer: peer.clone(),
                    checkpoint: checkpoint.clone(),
                };
                serde_json::to_writer(&mut text, &w).map_err(io::Error::other)?;
                text.push(b'\n');
            }
            super::files::replace(&self.dir.join(WITNESSED), &text, super::files::SHARED)
        };
        if let Err(e) = write() {
            tracing::error!(node = %self.node, error = %e, "delivery log: witnessed checkpoints not written");
        }
        self.witnessed_dirty = false;
        self.witnessed_at = Instant::now();
    }

    /// Appends one JSON line to a side file and syncs it.
    fn append_json<T: serde::Serialize>(&mut self, file: &str, value: &T) -> io::Result<()> {
        let path = self.dir.join(file);
        let new = !path.exists();
        let mut f = OpenOptions::new().create(true).append(true).open(&path)?;
        let mut line = serde_json::to_vec(value).map_err(io::Error::other)?;
        line.push(b'\n');
        files::append_whole_at_end(&mut f, &line)?;
        f.sync_data()?;
        if new {
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Removes the oldest records files whose records are all older than the retention period
    /// at `now` and all under a checkpoint; writes `base.json` first, then a `pruned` record.
    /// The file kept first must be one whose starting tree this node hashed (not one behind
    /// the checkpoint it was opened from): until the records pass such a file, nothing is
    /// pruned, never a tree taken from files the node has not checked against its checkpoint.
    fn prune(&mut self, now: SystemTime) -> io::Result<Option<String>> {
        let cutoff = now
            .checked_sub(self.settings.retention)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        // The current file is never pruned; a file goes only if the next one starts at or
        // before the last checkpoint.
        let mut n = 0;
        while n + 1 < self.segments.len() {
            let (s, next) = (&self.segments[n], &self.segments[n + 1]);
            let old = s.last.is_none_or(|t| t < cutoff);
            if !old || next.start > self.last_checkpoint {
                break;
            }
            n += 1;
        }
        if n == 0 {
            return Ok(None);
        }
        let keep = &self.segments[n];
        let (first, upto) = (self.segments[0].start, keep.start);
        let Some((frontier, prev)) = keep.tree.clone() else {
            return Ok(None);
        };
        if frontier.size() != keep.start {
            // A file named for another record than the one it starts with: a damaged log.
            tracing::error!(node = %self.node, file = keep.start, records = frontier.size(),
                "delivery log: not pruning: a records file's name is not where its records \
                 start; `enlace log verify` will name it");
            return Ok(None);
        }
        let base = Base {
            size: keep.start,
            frontier: frontier.nodes().iter().map(|h| hex(h)).collect(),
            prev: prev.map(|p| hex(&p)).unwrap_or_default(),
        };
        let text = serde_json::to_vec(&base).map_err(io::Error::other)?;
        super::files::replace(&self.dir.join(BASE), &text, super::files::SHARED)?;
        for s in self.segments.drain(..n) {
            fs::remove_file(self.dir.join(records_file(s.start)))?;
        }
        File::open(&self.dir)?.sync_all()?;
        let detail = format!(
            "records {first}..{} ({n} files) older than {} days removed, behind the checkpoint \
             of size {}",
            upto - 1,
            self.settings.retention.as_secs() / 86_400,
            self.last_checkpoint
        );
        let at = SystemTime::now();
        let pruned = Event::LogPruned {
            detail: detail.clone(),
        };
        self.append(at, &pruned, None);
        self.write_out()?;
        Ok(Some(detail))
    }
}

fn json_lines<T: serde::de::DeserializeOwned>(path: &Path) -> io::Result<Vec<T>> {
    match fs::read_to_string(path) {
        Ok(t) => Ok(t
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_command_is_small_for_the_channel_holds_room_for_many() {
        // 65,536 slots from the start: 32 bytes each is 2 MiB (6.5 with the larger commands
        // inline).
        let size = std::mem::size_of::<super::Cmd>();
        assert!(size <= 32, "{size}");
    }
}
