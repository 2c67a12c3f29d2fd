//! Store tests on real files in temporary directories: the API here, crash recovery, reclaim
//! and injected I/O faults in the submodules. A "crash" is simulated by closing the store (every
//! acknowledged write is already on disk, and nothing is buffered in the process) and then
//! editing its files as a crash could have left them: a crash also leaves no summary of the
//! segment being written ([`forget_summary`]), which a close writes.

mod faults;
mod power;
mod reclaim;
mod recovery;

use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::*;

pub(super) fn put(queue: &str, id: u8, body: &[u8]) -> Op {
    Op::Put(PutRecord {
        queue: queue.to_owned(),
        message_id: [id; 16],
        precedence: id % 5,
        expires_at_ms: 2_000_000_000_000 + u64::from(id),
        received_at_ms: 1_000_000_000_000 + u64::from(id),
        bytes: Bytes::copy_from_slice(body),
    })
}

pub(super) fn open(dir: &Path) -> (Store, Vec<StoredMessage>) {
    collected(Store::open(dir, StoreOptions::default()).unwrap())
}

/// The store, and the copies it recovered, collected.
pub(super) fn collected((store, found): (Store, LiveCopies)) -> (Store, Vec<StoredMessage>) {
    (store, found.into_iter().collect())
}

/// A store with small segments, which compacts a sparse head at once (as soon as it is
/// sparse, not once it has been pinned for a while).
pub(super) fn open_small(dir: &Path) -> (Store, Vec<StoredMessage>) {
    let opts = StoreOptions {
        segment_bytes: 4096,
        compact_after_stall: std::time::Duration::ZERO,
        ..StoreOptions::default()
    };
    collected(Store::open(dir, opts).unwrap())
}

/// Segment files in `dir`, oldest first.
pub(super) fn segment_files(dir: &Path) -> Vec<PathBuf> {
    segment::list(&disk::Std, dir)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

/// Summary files in `dir`, oldest first.
pub(super) fn summary_files(dir: &Path) -> Vec<PathBuf> {
    let ids = summary::list(&disk::Std, dir).unwrap();
    ids.into_iter().map(|id| summary::path(dir, id)).collect()
}

/// Removes the summary of the segment at `seg` (as a crash while it was written leaves it, or a
/// segment sealed before summaries existed).
pub(super) fn forget_summary(seg: &Path) {
    std::fs::remove_file(seg.with_extension("sum")).unwrap();
}

pub(super) fn seqs(messages: &[StoredMessage]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

/// The message bytes of recovered copies, read back from the store.
pub(super) async fn bytes_of(store: &Store, found: &[StoredMessage]) -> Vec<Bytes> {
    let read = store.read(seqs(found)).await.unwrap();
    read.into_iter().map(|r| r.unwrap().bytes).collect()
}

#[tokio::test]
async fn round_trip_through_close_and_open() {
    let dir = tempfile::tempdir().unwrap();
    let (store, recovered) = open(dir.path());
    assert!(recovered.is_empty());
    let fanout = vec![
        put("outbox:pgr-1", 1, b"alert"),
        put("outbox:dea-1", 1, b"alert"),
        put("mailbox:pgr", 1, b"alert"),
    ];
    let s = store.commit(fanout).await.unwrap();
    assert_eq!(s, vec![1, 2, 3], "one batch, consecutive seqs in op order");
    let s2 = store
        .commit(vec![put("mailbox:pgr", 2, &[9; 5000])])
        .await
        .unwrap();
    store.commit(vec![Op::Attempt(1, 2)]).await.unwrap();
    store.close().await.unwrap();

    let (store, recovered) = open(dir.path());
    assert_eq!(seqs(&recovered), vec![1, 2, 3, s2[0]]);
    let first = &recovered[0];
    assert_eq!(first.queue, "outbox:pgr-1");
    assert_eq!(first.message_id, [1; 16]);
    assert_eq!(first.precedence, 1);
    assert_eq!(first.expires_at_ms, 2_000_000_000_001);
    assert_eq!(first.received_at_ms, 1_000_000_000_001);
    assert_eq!(first.attempts, 2);
    assert_eq!(first.dead, None);
    let bytes = bytes_of(&store, &recovered).await;
    assert_eq!(bytes[0], Bytes::from_static(b"alert"));
    assert_eq!(bytes[3].len(), 5000);
    // Only live copies read back, and each says why not.
    let read = store.read(vec![1, 999]).await.unwrap();
    let alert = read[0].as_ref().unwrap();
    assert_eq!(&alert.bytes[..], b"alert");
    assert_eq!(alert.received_at_ms, 1_000_000_000_001);
    assert_eq!(
        alert.attempts, 2,
        "the copy's attempts now, not its frame's"
    );
    assert!(read[1].as_ref().unwrap_err().contains("no live record 999"));
    let more = store
        .commit(vec![put("mailbox:pgr", 3, b"x")])
        .await
        .unwrap();
    assert!(more[0] > s2[0], "seqs go on after a reopen");
    store.close().await.unwrap();
}

#[tokio::test]
async fn finished_copies_are_not_recovered_and_seqs_never_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    let s = store
        .commit(vec![put("q", 1, b"a"), put("q", 2, b"b")])
        .await
        .unwrap();
    store
        .commit(vec![Op::Done(s[0]), Op::Done(s[1])])
        .await
        .unwrap();
    assert_eq!(store.stats().live_records, 0);
    store.close().await.unwrap();
    let (store, recovered) = open(dir.path());
    assert!(recovered.is_empty());
    let again = store.commit(vec![put("q", 3, b"c")]).await.unwrap();
    assert_eq!(again, vec![3]);
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_refused_request_writes_nothing_and_the_store_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    let s = store.commit(vec![put("q", 1, b"a")]).await.unwrap()[0];
    let err = store
        .commit(vec![Op::Done(s), Op::Done(999)])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotLive(999)), "{err}");
    assert!(!err.is_fatal());
    let err = store
        .commit(vec![Op::Done(s), Op::Done(s)])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotLive(x) if x == s));
    let err = store.commit(vec![Op::Redrive(s)]).await.unwrap_err();
    assert!(matches!(err, StoreError::NotDead(x) if x == s));
    let err = store.commit(vec![put("", 1, b"a")]).await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)));
    let long = "q".repeat(MAX_QUEUE_BYTES + 1);
    assert!(matches!(
        store.commit(vec![put(&long, 1, b"a")]).await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(store.commit(vec![]).await.unwrap(), Vec::<u64>::new());
    // The first Done of the refused requests was not applied.
    assert_eq!(store.stats().live_records, 1);
    store.commit(vec![Op::Done(s)]).await.unwrap();
    store.close().await.unwrap();
}

#[tokio::test]
async fn dead_letter_and_redrive_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    let s = store
        .commit(vec![put("mailbox:pgr", 7, b"envelope")])
        .await
        .unwrap()[0];
    store.commit(vec![Op::Attempt(s, 10)]).await.unwrap();
    let reason = "é".repeat(MAX_REASON_BYTES); // 2 bytes each: cut at a character boundary.
    store.commit(vec![Op::DeadLetter(s, reason)]).await.unwrap();
    assert_eq!(store.stats().dead_records, 1);
    store.close().await.unwrap();

    let (store, recovered) = open(dir.path());
    assert_eq!(recovered.len(), 1);
    let dead = recovered[0].dead.as_deref().unwrap();
    assert_eq!(dead.len(), MAX_REASON_BYTES);
    assert_eq!(recovered[0].attempts, 10);
    assert_eq!(store.stats().dead_records, 1);
    let fresh = store.commit(vec![Op::Redrive(s)]).await.unwrap()[0];
    assert!(fresh > s);
    assert!(matches!(
        store.commit(vec![Op::Redrive(s)]).await,
        Err(StoreError::NotLive(_))
    ));
    store.close().await.unwrap();

    let (store, recovered) = open(dir.path());
    assert_eq!(recovered.len(), 1);
    let m = &recovered[0];
    assert_eq!((m.seq, m.attempts, m.dead.as_deref()), (fresh, 0, None));
    assert_eq!((m.queue.as_str(), m.message_id), ("mailbox:pgr", [7; 16]));
    assert_eq!(
        bytes_of(&store, &recovered).await[0],
        Bytes::from_static(b"envelope")
    );
    assert_eq!(
        m.received_at_ms, 1_000_000_000_007,
        "redrive keeps the times"
    );
    assert_eq!(store.stats().dead_records, 0);
    store.close().await.unwrap();
}

#[tokio::test]
async fn contains_message_and_commit_if_new() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    assert!(!store.contains_message("mailbox:pgr", &[1; 16]));
    let s = store
        .commit(vec![put("mailbox:pgr", 1, b"a")])
        .await
        .unwrap()[0];
    assert!(store.contains_message("mailbox:pgr", &[1; 16]));
    assert!(
        !store.contains_message("mailbox:dea", &[1; 16]),
        "dedup is per queue"
    );
    let dup = store
        .commit_if_new(vec![put("mailbox:pgr", 1, b"a")])
        .await
        .unwrap_err();
    assert!(matches!(&dup, StoreError::Duplicate { queue, .. } if queue == "mailbox:pgr"));
    let twice = vec![put("mailbox:dea", 2, b"a"), put("mailbox:dea", 2, b"a")];
    assert!(matches!(
        store.commit_if_new(twice).await,
        Err(StoreError::Duplicate { .. })
    ));
    assert!(
        !store.contains_message("mailbox:dea", &[2; 16]),
        "a refused request wrote nothing"
    );
    // A finished copy is still seen while its record is on disk, and after a reopen.
    store.commit(vec![Op::Done(s)]).await.unwrap();
    assert!(store.contains_message("mailbox:pgr", &[1; 16]));
    store.close().await.unwrap();
    let (store, _) = open(dir.path());
    assert!(store.contains_message("mailbox:pgr", &[1; 16]));
    store.close().await.unwrap();
}

/// Each unit of a `commit_each` is checked and answered on its own: a duplicate or an invalid
/// unit refuses only itself, and the others are written.
#[tokio::test]
async fn commit_each_answers_each_unit_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    store.commit(vec![put("q", 1, b"before")]).await.unwrap();
    let units = vec![
        vec![put("q", 2, b"a")],
        vec![put("q", 1, b"again")],
        vec![put("", 3, b"no queue")],
        vec![put("q", 4, b"b"), put("r", 4, b"b")],
        vec![put("q", 2, b"twice in one request")],
        Vec::new(),
    ];
    let answers = store.commit_each(units, true).await;
    assert_eq!(answers.len(), 6);
    assert_eq!(answers[0].as_ref().unwrap().len(), 1);
    assert!(
        matches!(&answers[1], Err(StoreError::Duplicate { message_id, .. }) if *message_id == [1; 16])
    );
    assert!(matches!(&answers[2], Err(StoreError::Invalid(_))));
    assert_eq!(answers[3].as_ref().unwrap().len(), 2);
    assert!(matches!(&answers[4], Err(StoreError::Duplicate { .. })));
    assert!(answers[5].as_ref().unwrap().is_empty());
    assert_eq!(store.stats().live_records, 4);
    store.close().await.unwrap();
    let (store, recovered) = open(dir.path());
    let mut bodies: Vec<_> = recovered
        .iter()
        .map(|m| (m.queue.clone(), m.message_id))
        .collect();
    bodies.sort();
    let q = |q: &str, id: u8| (q.to_owned(), [id; 16]);
    assert_eq!(bodies, [q("q", 1), q("q", 2), q("q", 4), q("r", 4)]);
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_receipts_of_one_message_store_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let store = store.clone();
        tasks.spawn(async move { store.commit_if_new(vec![put("q", 5, b"same")]).await });
    }
    let results = tasks.join_all().await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Ok(_) | Err(StoreError::Duplicate { .. })))
    );
    assert_eq!(store.stats().live_records, 1);
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_committers_share_fsyncs_and_all_are_durable() {
    const TASKS: usize = 32;
    const EACH: usize = 500;
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let store = store.clone();
        tasks.spawn(async move {
            let mut mine = Vec::with_capacity(EACH);
            for i in 0..EACH {
                let body = format!("task {t} message {i}");
                let op = put(&format!("q{t}"), (i % 250) as u8, body.as_bytes());
                mine.push(store.commit(vec![op]).await.unwrap()[0]);
            }
            mine
        });
    }
    let mut all: Vec<u64> = tasks.join_all().await.into_iter().flatten().collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), TASKS * EACH, "every commit got its own seq");
    let stats = store.stats();
    assert_eq!(stats.commits, (TASKS * EACH) as u64);
    assert_eq!(stats.records_written, (TASKS * EACH) as u64);
    assert_eq!(stats.records_per_fsync(), stats.commits_per_fsync());
    assert!(
        stats.commits_per_fsync() > 1.0,
        "group commit shared no fsync: {stats:?}"
    );
    store.close().await.unwrap();

    let (store, recovered) = open(dir.path());
    assert_eq!(seqs(&recovered), all);
    let bytes = bytes_of(&store, &recovered).await;
    assert!(bytes.iter().all(|b| b.starts_with(b"task ")));
    store.close().await.unwrap();
}

#[tokio::test]
async fn one_directory_one_store_and_close_is_final() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    assert!(matches!(
        Store::open(dir.path(), StoreOptions::default()),
        Err(StoreError::Locked(_))
    ));
    let other = store.clone();
    store.close().await.unwrap();
    assert!(matches!(
        other.commit(vec![put("q", 1, b"a")]).await,
        Err(StoreError::Closed)
    ));
    other.close().await.unwrap();
    let (store, _) = open(dir.path());
    store.close().await.unwrap();
}

#[test]
fn options_out_of_range_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bad = StoreOptions {
        compact_below_live_ratio: 1.5,
        ..StoreOptions::default()
    };
    assert!(matches!(
        Store::open(dir.path(), bad),
        Err(StoreError::Invalid(_))
    ));
}
