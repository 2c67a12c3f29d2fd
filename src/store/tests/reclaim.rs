//! Reclaim: segment rollover, deletion of finished head segments (strictly in order), and
//! compaction of a head that one old message would otherwise pin, including the crash window
//! between copying a record forward and deleting its old segment.

use std::collections::BTreeMap;
use std::fs;

use super::*;

/// `n` separate writes of one 1000-byte Put each; about three fit in a 4 KiB segment.
async fn fillers(store: &Store, n: u8) -> Vec<u64> {
    let mut out = Vec::new();
    for i in 0..n {
        out.extend(
            store
                .commit(vec![put("f", 100 + i, &[i; 1000])])
                .await
                .unwrap(),
        );
    }
    out
}

fn done_all(seqs: &[u64]) -> Vec<Op> {
    seqs.iter().map(|&s| Op::Done(s)).collect()
}

#[tokio::test]
async fn segments_roll_over_and_finished_heads_are_deleted_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open_small(dir.path());
    let s = fillers(&store, 12).await;
    let files = segment_files(dir.path());
    assert!(files.len() >= 4, "{files:?}");
    assert!(files.iter().all(|f| fs::metadata(f).unwrap().len() <= 4096));

    // Finishing every copy in the second segment does not delete it while the first remains:
    // deletion goes strictly from the head.
    let in_second: Vec<u64> = s[3..6].to_vec();
    store.commit(done_all(&in_second)).await.unwrap();
    assert!(
        files[1].exists(),
        "a segment is never deleted before an older one"
    );
    store.commit(done_all(&s[..3])).await.unwrap();
    assert!(!files[0].exists() && !files[1].exists());
    // A deleted segment's ids are forgotten at once, read back from its summary; without one
    // (lost to a crash, or removed on a full disk), from the segment itself.
    assert!(!store.contains_message("f", &[100; 16]) && !store.contains_message("f", &[105; 16]));
    assert!(store.contains_message("f", &[106; 16]));
    fs::remove_file(files[2].with_extension("sum")).unwrap();
    store.commit(done_all(&s[6..9])).await.unwrap();
    assert!(!files[2].exists());
    assert!(!store.contains_message("f", &[106; 16]) && !store.contains_message("f", &[108; 16]));
    assert!(store.contains_message("f", &[109; 16]));
    let stats = store.stats();
    assert_eq!(stats.segments_deleted, 3);
    let files = segment_files(dir.path());
    assert_eq!(stats.segments, files.len());
    let on_disk: u64 = files.iter().map(|f| fs::metadata(f).unwrap().len()).sum();
    assert_eq!(stats.bytes_on_disk, on_disk);
    assert_eq!(stats.compacted_records, 0);
    store.close().await.unwrap();

    let (store, recovered) = open_small(dir.path());
    assert_eq!(seqs(&recovered), s[9..].to_vec());
    assert!(
        !store.contains_message("f", &[100; 16]),
        "reclaimed records are forgotten"
    );
    assert!(
        store.contains_message("f", &[109; 16]),
        "records still on disk are not"
    );
    store.commit(done_all(&s[9..])).await.unwrap();
    assert_eq!(
        segment_files(dir.path()).len(),
        1,
        "only the newest segment stays"
    );
    assert!(!store.contains_message("f", &[109; 16]));
    store.close().await.unwrap();
    // Every Put is gone from disk, but seqs still never repeat.
    let (store, recovered) = open_small(dir.path());
    assert!(recovered.is_empty());
    let next = store.commit(vec![put("f", 1, b"x")]).await.unwrap()[0];
    assert!(next > *s.last().unwrap(), "{next}");
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_record_larger_than_a_segment_gets_one_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open_small(dir.path());
    let a = store.commit(vec![put("q", 1, &[1; 10_000])]).await.unwrap()[0];
    let b = store.commit(vec![put("q", 2, b"small")]).await.unwrap()[0];
    assert_eq!(segment_files(dir.path()).len(), 2);
    store.close().await.unwrap();
    let (store, recovered) = open_small(dir.path());
    assert_eq!(seqs(&recovered), vec![a, b]);
    assert_eq!(bytes_of(&store, &recovered).await[0].len(), 10_000);
    store.close().await.unwrap();
}

#[tokio::test]
async fn compaction_moves_an_old_live_copy_forward_keeping_its_seq_and_state() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open_small(dir.path());
    let old = store
        .commit(vec![put("outbox:x", 1, &[1; 1000])])
        .await
        .unwrap()[0];
    store.commit(vec![Op::Attempt(old, 5)]).await.unwrap();
    store
        .commit(vec![Op::DeadLetter(old, "peer gone".into())])
        .await
        .unwrap();
    let f = fillers(&store, 12).await;
    let head = segment_files(dir.path())[0].clone();
    // The first segment is now mostly finished: compacted in the same write as the Dones.
    store.commit(done_all(&f)).await.unwrap();
    assert!(!head.exists());
    let stats = store.stats();
    assert_eq!(stats.compacted_records, 1);
    assert_eq!(stats.live_records, 1);
    assert_eq!(
        stats.segments, 1,
        "nothing pins the finished segments any more"
    );
    assert!(store.contains_message("outbox:x", &[1; 16]));
    store.close().await.unwrap();

    let (store, recovered) = open_small(dir.path());
    assert_eq!(recovered.len(), 1);
    let m = &recovered[0];
    assert_eq!(
        (m.seq, m.attempts, m.dead.as_deref()),
        (old, 5, Some("peer gone"))
    );
    let bytes = bytes_of(&store, &recovered).await;
    assert_eq!((m.queue.as_str(), bytes[0].len()), ("outbox:x", 1000));
    // The moved copy is still the same handle for every op.
    let fresh = store.commit(vec![Op::Redrive(old)]).await.unwrap()[0];
    store.commit(vec![Op::Done(fresh)]).await.unwrap();
    assert_eq!(store.stats().live_records, 0);
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_head_that_drains_is_left_to_drain_and_a_pinned_one_is_compacted_after_the_stall() {
    let dir = tempfile::tempdir().unwrap();
    let stall = std::time::Duration::from_secs(2);
    let opts = StoreOptions {
        segment_bytes: 4096,
        compact_after_stall: stall,
        ..StoreOptions::default()
    };
    let (store, _) = Store::open(dir.path(), opts).unwrap();
    // Twenty small copies in the head segment, then segments of live fillers behind it.
    let mut head = Vec::new();
    for i in 0..20 {
        head.extend(store.commit(vec![put("h", i, &[i; 100])]).await.unwrap());
    }
    fillers(&store, 6).await;
    // The head is finished a copy at a time, as a reader drains a queue: it turns sparse, and
    // is never pinned.
    let mut last = std::time::Instant::now();
    for &seq in &head[..18] {
        store.commit(vec![Op::Done(seq)]).await.unwrap();
        last = std::time::Instant::now();
        assert_eq!(store.stats().compacted_records, 0, "a draining head stays");
    }
    // Then nothing more is finished there: once the stall has passed, the next write (any:
    // here small copies that stay, so that the log as a whole stays mostly live) moves its
    // last copies forward, and the head goes.
    let deadline = last + 10 * stall;
    for i in 0.. {
        if store.stats().compacted_records > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never compacted");
        let queue = format!("g{i}");
        store.commit(vec![put(&queue, 1, &[0; 10])]).await.unwrap();
    }
    assert!(last.elapsed() >= stall, "compacted before the stall");
    assert_eq!(store.stats().compacted_records, 2);
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_log_far_past_its_bound_is_compacted_even_while_its_head_drains() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        segment_bytes: 4096,
        compact_after_stall: std::time::Duration::from_secs(3600),
        ..StoreOptions::default()
    };
    let (store, _) = Store::open(dir.path(), opts).unwrap();
    let head = fillers(&store, 3).await;
    let rest = fillers(&store, 12).await;
    store.commit(vec![Op::Done(head[0])]).await.unwrap();
    // A fifth of the log live: the head goes although a copy of it was just finished.
    store.commit(done_all(&rest)).await.unwrap();
    store.commit(vec![put("g", 1, &[0; 10])]).await.unwrap();
    assert_eq!(store.stats().compacted_records, 2);
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_crash_between_copy_and_delete_recovers_each_copy_once_with_its_latest_state() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open_small(dir.path());
    // Alone in the first segment and fully live: only the whole log's ratio triggers compaction.
    let old = store
        .commit(vec![put("outbox:x", 1, &[1; 3000])])
        .await
        .unwrap()[0];
    let f = fillers(&store, 9).await;
    store.commit(vec![Op::Attempt(old, 4)]).await.unwrap();
    store
        .commit(vec![Op::DeadLetter(old, "parked".into())])
        .await
        .unwrap();
    let before: BTreeMap<PathBuf, Vec<u8>> = segment_files(dir.path())
        .into_iter()
        .map(|p| (p.clone(), fs::read(&p).unwrap()))
        .collect();
    store.commit(done_all(&f)).await.unwrap();
    assert_eq!(store.stats().compacted_records, 1);
    let after = segment_files(dir.path());
    store.close().await.unwrap();

    // The crash: the copy was fsynced, but no old segment was deleted yet.
    for (path, data) in &before {
        if !path.exists() {
            fs::write(path, data).unwrap();
        }
    }
    assert!(segment_files(dir.path()).len() > after.len());
    let (store, recovered) = open_small(dir.path());
    assert_eq!(
        seqs(&recovered),
        vec![old],
        "no duplicate, and no finished filler comes back"
    );
    let m = &recovered[0];
    assert_eq!((m.attempts, m.dead.as_deref()), (4, Some("parked")));
    assert_eq!(store.stats().live_records, 1);
    // The stale segments hold nothing live and go at once; a commit is a sync point with the writer.
    store.commit(vec![Op::Attempt(old, 6)]).await.unwrap();
    assert!(before.keys().all(|p| !p.exists() || after.contains(p)));
    assert!(store.contains_message("outbox:x", &[1; 16]));
    store.close().await.unwrap();
    let (store, recovered) = open_small(dir.path());
    assert_eq!(recovered[0].attempts, 6);
    store.close().await.unwrap();
}
