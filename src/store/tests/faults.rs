//! Injected I/O faults, on a simulated disk: a failed write or fdatasync is fatal, reported to
//! every caller in the batch and after it, and nothing in the failed batch is ever reported
//! committed.

use std::sync::atomic::{AtomicBool, Ordering};

use super::*;
use crate::store::disk::sim::{Flags, SimDisk};

fn open_faulty() -> (Store, SimDisk) {
    let disk = SimDisk::default();
    (recovered(&disk).0, disk)
}

/// Opens the store on `disk` (as it is: no power cut), recovering what it holds.
fn recovered(disk: &SimDisk) -> (Store, Vec<StoredMessage>) {
    let dir = Path::new("/store");
    collected(Store::open_with(dir, StoreOptions::default(), Arc::new(disk.clone())).unwrap())
}

fn set(flag: &AtomicBool, on: bool) {
    flag.store(on, Ordering::SeqCst);
}

fn cause(e: &StoreError) -> Arc<String> {
    match e {
        StoreError::Failed(c) => c.clone(),
        other => panic!("expected Failed, got {other}"),
    }
}

/// Makes one kind of fault fatal and checks the store's answers before and after it.
async fn fault_is_fatal(pick: fn(&Flags) -> &AtomicBool, expected: &str) {
    let (store, faults) = open_faulty();
    let kept = store.commit(vec![put("q", 1, b"before")]).await.unwrap();
    let fsyncs = store.stats().fsyncs;

    set(pick(&faults.flags), true);
    let err = store.commit(vec![put("q", 2, b"lost")]).await.unwrap_err();
    assert!(err.is_fatal());
    let first = cause(&err);
    assert!(first.contains(expected), "{first}");
    assert!(
        first.contains("seg-00000000000000000001.log"),
        "names the file: {first}"
    );

    // The fault is gone, but the store stays failed, with the original cause.
    set(pick(&faults.flags), false);
    let later = store.commit(vec![put("q", 3, b"later")]).await.unwrap_err();
    assert!(Arc::ptr_eq(&cause(&later), &first));
    let done = store.commit(vec![Op::Done(kept[0])]).await.unwrap_err();
    assert!(Arc::ptr_eq(&cause(&done), &first));
    assert!(
        !store.contains_message("q", &[2; 16]),
        "the failed put was never published"
    );
    assert_eq!(store.stats().fsyncs, fsyncs);
    assert_eq!(store.stats().commits, 1);
    assert!(store.clone().close().await.unwrap_err().is_fatal());

    // A restart recovers what was acknowledged, and the store works again.
    let (store, recovered) = recovered(&faults);
    assert_eq!(recovered[0].seq, kept[0]);
    let bytes = bytes_of(&store, &recovered).await;
    assert_eq!(bytes[0], Bytes::from_static(b"before"));
    assert!(bytes.iter().all(|b| b != &Bytes::from_static(b"later")));
    store.commit(vec![put("q", 4, b"again")]).await.unwrap();
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_failed_fdatasync_is_fatal() {
    fault_is_fatal(|f| &f.fail_sync, "fdatasync").await;
}

#[tokio::test]
async fn a_failed_write_is_fatal() {
    fault_is_fatal(|f| &f.fail_write, "write failed").await;
}

#[tokio::test]
async fn a_short_write_is_fatal_and_its_half_record_is_cut_at_reopen() {
    fault_is_fatal(|f| &f.short_write, "short write").await;
    let (store, faults) = open_faulty();
    let kept = store.commit(vec![put("q", 1, b"before")]).await.unwrap();
    set(&faults.flags.short_write, true);
    let lost = vec![put("q", 2, &[2; 4000]), put("q", 3, &[3; 4000])];
    assert!(store.commit(lost).await.unwrap_err().is_fatal());
    assert!(store.close().await.unwrap_err().is_fatal());
    let (store, recovered) = recovered(&faults);
    assert_eq!(seqs(&recovered), kept);
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_caller_sharing_the_failed_fsync_is_told() {
    let (store, faults) = open_faulty();
    set(&faults.flags.fail_sync, true);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..32 {
        let store = store.clone();
        tasks.spawn(async move { store.commit(vec![put("q", i, b"x")]).await });
    }
    for result in tasks.join_all().await {
        assert!(result.unwrap_err().is_fatal());
    }
    assert_eq!(store.stats().commits, 0);
}

/// A store of 4 KiB segments on `disk`, at `/store`.
fn open_small_on(disk: &SimDisk) -> Result<(Store, LiveCopies), StoreError> {
    let opts = StoreOptions {
        segment_bytes: 4096,
        ..StoreOptions::default()
    };
    Store::open_with(Path::new("/store"), opts, Arc::new(disk.clone()))
}

/// Puts copies of 1,000 bytes until one is refused: their seqs, and the refusal.
async fn fill(store: &Store) -> (Vec<u64>, StoreError) {
    let mut kept = Vec::new();
    loop {
        let i = kept.len() as u8;
        match store.commit_if_new(vec![put("q", i, &[i; 1000])]).await {
            Ok(seqs) => kept.push(seqs[0]),
            Err(e) => return (kept, e),
        }
        assert!(kept.len() < 30, "the disk never filled");
    }
}

#[tokio::test]
async fn a_full_disk_refuses_new_copies_lets_finished_ones_free_space_and_recovers_by_itself() {
    let disk = SimDisk::default();
    let dir = Path::new("/store");
    let open = open_small_on;
    // Room for three segments and their summaries (a few hundred bytes each), and the spare.
    disk.set_space(Some(3 * (4096 + 512) + 4096));
    let (store, _) = open(&disk).unwrap();
    let (kept, full) = fill(&store).await;
    assert!(matches!(full, StoreError::Full), "{full}");
    assert!(!full.is_fatal());
    // The segments' summaries gave their room back (they are only a shortcut for an open).
    assert_eq!(summary::list(&disk, dir).unwrap(), Default::default());
    assert_eq!(full.to_string(), "no space left on the node's disk");
    assert!(
        kept.len() >= 8,
        "three segments hold at least 8 copies: {}",
        kept.len()
    );
    // Still full for a copy as large, urgent ones included, each answered at once.
    let flash = Op::Put(PutRecord {
        precedence: 1,
        ..match put("q", 200, &[200; 1000]) {
            Op::Put(p) => p,
            _ => unreachable!(),
        }
    });
    assert!(matches!(
        store.commit(vec![flash.clone()]).await,
        Err(StoreError::Full)
    ));
    // Finishing copies goes through, and frees whole segments.
    for &seq in &kept[..kept.len() - 1] {
        store.commit(vec![Op::Done(seq)]).await.unwrap();
    }
    assert!(store.stats().segments_deleted >= 1, "{:?}", store.stats());
    // Space is back: accepted again without a restart.
    let after = store.commit(vec![flash]).await.unwrap();
    store.close().await.unwrap();
    // Nothing answered was lost, and nothing finished came back.
    let crashed = disk.crash(|_| 0);
    let (store, recovered) = collected(open(&crashed).unwrap());
    assert_eq!(seqs(&recovered), vec![*kept.last().unwrap(), after[0]]);
    store.close().await.unwrap();
    // The open read the segments whole, and summarized them again.
    assert!(!summary::list(&crashed, dir).unwrap().is_empty());
}

/// The way out of a full disk whose every segment holds a copy nobody finishes (receipts for a
/// unit nobody reads), once the active segment's reserve is spent and another file has taken
/// the rest of the disk (in a node, its delivery log): compaction has nowhere to move those
/// copies but the spare segment. Before the spare, the node stayed full until restarted.
#[tokio::test]
async fn a_full_disk_whose_every_segment_is_pinned_gets_out_through_the_spare() {
    let disk = SimDisk::default();
    let dir = Path::new("/store");
    let open = open_small_on;
    disk.set_space(Some(4 * (4096 + 512) + 4096));
    let (store, _) = open(&disk).unwrap();
    let (_, full) = fill(&store).await;
    assert!(matches!(full, StoreError::Full), "{full}");
    // Another file takes whatever room the disk has left (in a node, its delivery log).
    disk.set_space(Some(disk.used()));
    // Every segment keeps one copy nobody finishes; the others are finished, one request
    // each (each answered: they take the active segment's reserve, or the spare).
    let mut segments_of = std::collections::BTreeMap::new();
    for (id, path) in segment::list(&disk, dir).unwrap() {
        segment::scan(&disk.read(&path).unwrap(), |s| {
            if let record::Record::Put(p) = s.record {
                segments_of.entry(id).or_insert_with(Vec::new).push(p.seq);
            }
        });
    }
    assert!(segments_of.len() >= 4, "{segments_of:?}");
    let pinned: Vec<u64> = segments_of.values().map(|seqs| seqs[0]).collect();
    let finishing: Vec<u64> = segments_of.values().flat_map(|s| s[1..].to_vec()).collect();
    for &seq in &finishing {
        store.commit(vec![Op::Done(seq)]).await.unwrap();
    }
    let live = store.stats().live_records;
    // Each refused copy drives a write, and compaction with it; the spare takes the pinned
    // copies, the segments they pinned are deleted, and copies are accepted again.
    let mut again = None;
    for i in 0..20u8 {
        match store.commit(vec![put("q", 100 + i, b"again")]).await {
            Ok(seqs) => {
                again = Some(seqs[0]);
                break;
            }
            Err(StoreError::Full) => {}
            Err(e) => panic!("{e}"),
        }
    }
    let stats = store.stats();
    // Compaction took it: the segments' pinned copies were moved, and the segments deleted.
    assert!(stats.spare_taken >= 1, "{stats:?}");
    assert!(stats.compacted_records >= 1, "{stats:?}");
    assert!(stats.segments_deleted >= 1, "{stats:?}");
    let again = again.unwrap_or_else(|| panic!("still full after 20 tries: {stats:?}"));
    assert_eq!(stats.live_records, live + 1, "{stats:?}");
    store.close().await.unwrap();
    // The pinned copies were moved, not lost, and survive a power cut.
    let crashed = disk.crash(|_| 0);
    let (store, recovered) = collected(open(&crashed).unwrap());
    let found = seqs(&recovered);
    for seq in pinned.iter().chain([&again]) {
        assert!(found.contains(seq), "{seq} in {found:?}");
    }
    for seq in &finishing {
        assert!(!found.contains(seq), "{seq} was finished");
    }
    assert_eq!(bytes_of(&store, &recovered).await.len(), recovered.len());
    store.close().await.unwrap();
}

/// On a full disk, requests that only mark copies (attempts, dead letters) may take the
/// active segment's reserve, but never the spare: they free nothing. One that finishes a copy
/// takes it.
#[tokio::test]
async fn on_a_full_disk_only_what_finishes_copies_takes_the_spare() {
    let disk = SimDisk::default();
    disk.set_space(Some(3 * (4096 + 512) + 4096));
    let (store, _) = open_small_on(&disk).unwrap();
    let (kept, full) = fill(&store).await;
    assert!(matches!(full, StoreError::Full), "{full}");
    disk.set_space(Some(disk.used()));
    // Attempts until the reserve is spent: then refused, the spare left alone.
    let mut attempts = 0;
    loop {
        match store.commit(vec![Op::Attempt(kept[0], attempts + 1)]).await {
            Ok(_) => attempts += 1,
            Err(StoreError::Full) => break,
            Err(e) => panic!("{e}"),
        }
        assert!(attempts < 1000, "the reserve never ran out");
    }
    assert!(attempts > 10, "{attempts}");
    let dead = store
        .commit(vec![Op::DeadLetter(kept[1], "why".into())])
        .await;
    assert!(matches!(dead, Err(StoreError::Full)), "{dead:?}");
    assert_eq!(store.stats().spare_taken, 0);
    // A copy finished takes it (and the dead letter then goes through with it).
    store.commit(vec![Op::Done(kept[2])]).await.unwrap();
    assert_eq!(store.stats().spare_taken, 1);
    store
        .commit(vec![Op::DeadLetter(kept[1], "why".into())])
        .await
        .unwrap();
    store.close().await.unwrap();
}

/// A spare removed by hand while the node runs is only missing: taking it finds it gone, and
/// the store goes on (refusing what does not fit) instead of failing.
#[tokio::test]
async fn a_spare_removed_by_hand_is_not_a_failure() {
    let disk = SimDisk::default();
    disk.set_space(Some(3 * (4096 + 512) + 4096));
    let (store, _) = open_small_on(&disk).unwrap();
    let (kept, _) = fill(&store).await;
    disk.remove(&segment::spare_path(Path::new("/store")))
        .unwrap();
    disk.set_space(Some(disk.used()));
    // Finishing copies makes the head sparse, and compaction, with no segment fitting, finds
    // the spare gone: nothing is moved, and nothing fails.
    for &seq in &kept[1..] {
        match store.commit(vec![Op::Done(seq)]).await {
            Ok(_) | Err(StoreError::Full) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(store.stats().spare_taken, 0);
    let put = store.commit(vec![put("q", 99, b"after")]).await;
    assert!(matches!(put, Ok(_) | Err(StoreError::Full)), "{put:?}");
    store.close().await.unwrap();
}
