//! Crash recovery: torn tails are cut and never read as data; damage anywhere else refuses to
//! open.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use super::*;

/// Bytes of the `Commit` frame that ends every write.
const COMMIT_FRAME: u64 = 13;

fn newest(dir: &Path) -> PathBuf {
    segment_files(dir).pop().unwrap()
}

fn len(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len()
}

/// Two acknowledged writes, then the store is closed; returns their seqs and the length of the
/// newest segment after the first write.
async fn two_writes(dir: &Path) -> (u64, u64, u64) {
    let (store, _) = open(dir);
    let a = store.commit(vec![put("q", 1, b"first")]).await.unwrap()[0];
    let after_a = len(&newest(dir));
    let b = store.commit(vec![put("q", 2, &[7; 300])]).await.unwrap()[0];
    store.close().await.unwrap();
    forget_summary(&newest(dir));
    (a, b, after_a)
}

/// Reopens, checks that exactly `expected` survived, and that the store appends after the cut.
async fn reopen_expect(dir: &Path, expected: &[u64]) {
    let (store, recovered) = open(dir);
    assert_eq!(seqs(&recovered), expected);
    let c = store
        .commit(vec![put("q", 3, b"after the cut")])
        .await
        .unwrap()[0];
    store.close().await.unwrap();
    let (store, recovered) = open(dir);
    let mut all = expected.to_vec();
    all.push(c);
    assert_eq!(seqs(&recovered), all);
    assert_eq!(
        bytes_of(&store, &recovered).await.last().unwrap(),
        &Bytes::from_static(b"after the cut")
    );
    store.close().await.unwrap();
}

#[tokio::test]
async fn garbage_after_the_last_write_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, _) = two_writes(dir.path()).await;
    let seg = newest(dir.path());
    let good = len(&seg);
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&[0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9])
        .unwrap();
    drop(f);
    let (store, recovered) = open(dir.path());
    assert_eq!(seqs(&recovered), vec![a, b]);
    assert_eq!(
        len(&seg),
        good,
        "the file is cut back to its last complete write"
    );
    store.close().await.unwrap();
    reopen_expect(dir.path(), &[a, b]).await;
}

#[tokio::test]
async fn a_write_truncated_mid_record_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _, after_a) = two_writes(dir.path()).await;
    let seg = newest(dir.path());
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(after_a + 100).unwrap(); // Inside the second write's Put frame.
    drop(f);
    reopen_expect(dir.path(), &[a]).await;
    assert!(len(&seg) >= after_a);
}

#[tokio::test]
async fn a_flipped_byte_in_the_last_record_is_a_checksum_mismatch_and_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _, _) = two_writes(dir.path()).await;
    let seg = newest(dir.path());
    let mut data = fs::read(&seg).unwrap();
    let at = data.len() - COMMIT_FRAME as usize - 5; // In the message bytes of the last Put.
    data[at] ^= 0x01;
    fs::write(&seg, &data).unwrap();
    reopen_expect(dir.path(), &[a]).await;
}

#[tokio::test]
async fn a_write_without_its_commit_record_is_dropped_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    let first = store.commit(vec![put("q", 1, b"a")]).await.unwrap();
    let fanout = vec![put("o1", 2, b"b"), put("o2", 2, b"b"), put("o3", 2, b"b")];
    store.commit(fanout).await.unwrap();
    store.close().await.unwrap();
    let seg = newest(dir.path());
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(len(&seg) - COMMIT_FRAME).unwrap(); // All three Puts intact, no Commit.
    drop(f);
    // Never a partial fan-out: the three copies were one write.
    reopen_expect(dir.path(), &first).await;
}

#[tokio::test]
async fn a_newest_segment_whose_first_write_never_landed_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, _) = two_writes(dir.path()).await;
    let next = segment::path(dir.path(), 2);
    fs::write(&next, [0u8; 64]).unwrap();
    let (store, recovered) = open(dir.path());
    assert_eq!(seqs(&recovered), vec![a, b]);
    assert!(!next.exists());
    store.close().await.unwrap();
    fs::write(&next, [1u8; 7]).unwrap();
    reopen_expect(dir.path(), &[a, b]).await;
    assert!(!next.exists());
}

#[tokio::test]
async fn damage_in_a_sealed_segment_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open_small(dir.path());
    for i in 0..10 {
        store.commit(vec![put("q", i, &[i; 1000])]).await.unwrap();
    }
    store.close().await.unwrap();
    let files = segment_files(dir.path());
    assert!(files.len() >= 3, "{files:?}");
    // A sealed segment without a summary is read whole and checked (one with a summary is not
    // read at open: see the next test).
    forget_summary(&files[0]);
    let mut data = fs::read(&files[0]).unwrap();
    data[100] ^= 0x40;
    fs::write(&files[0], &data).unwrap();
    let err = Store::open(dir.path(), StoreOptions::default()).unwrap_err();
    match &err {
        StoreError::Corrupt { path, offset, .. } => {
            assert_eq!(path, &files[0]);
            assert!(*offset <= 100, "names the frame that fails: {offset}");
        }
        other => panic!("expected Corrupt, got {other}"),
    }
    assert!(
        err.to_string().contains("seg-00000000000000000001.log"),
        "{err}"
    );
    // Nothing was cut or deleted: an operator can still look at every file.
    assert_eq!(segment_files(dir.path()), files);
    assert_eq!(fs::read(&files[0]).unwrap(), data);
}

#[tokio::test]
async fn a_sealed_segment_missing_its_header_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    two_writes(dir.path()).await;
    // A stray segment that sorts first and holds a valid write but no header.
    let mut data = Vec::new();
    record::Record::Done { seq: 1 }.encode(&mut data);
    record::Record::Commit { records: 1 }.encode(&mut data);
    fs::write(segment::path(dir.path(), 0), &data).unwrap();
    let err = Store::open(dir.path(), StoreOptions::default()).unwrap_err();
    assert!(
        matches!(err, StoreError::Corrupt { offset: 0, .. }),
        "{err}"
    );
}

/// Ten copies of 1,000 bytes on small segments (several sealed ones), one with a delivery
/// attempt, one finished; closed. Returns what a reopen recovers.
async fn sealed_segments(dir: &Path) -> Vec<StoredMessage> {
    let (store, _) = open_small(dir);
    let mut put_seqs = Vec::new();
    for i in 0..10 {
        put_seqs.push(store.commit(vec![put("q", i, &[i; 1000])]).await.unwrap()[0]);
    }
    store
        .commit(vec![Op::Attempt(put_seqs[1], 3)])
        .await
        .unwrap();
    store.commit(vec![Op::Done(put_seqs[8])]).await.unwrap();
    store.close().await.unwrap();
    let (store, recovered) = open_small(dir);
    store.close().await.unwrap();
    assert_eq!(recovered.len(), 9);
    recovered
}

#[tokio::test]
async fn a_clean_close_leaves_summaries_that_open_reads_instead_of_the_segments() {
    let dir = tempfile::tempdir().unwrap();
    let from_summaries = sealed_segments(dir.path()).await;
    let files = segment_files(dir.path());
    assert!(files.len() >= 3, "{files:?}");
    let summaries = summary_files(dir.path());
    let expected: Vec<_> = files.iter().map(|f| f.with_extension("sum")).collect();
    assert_eq!(
        summaries, expected,
        "every segment is sealed with a summary"
    );
    // Without them, every segment is scanned: the same copies, in the same state, and the
    // scan writes the same summaries again.
    let saved: Vec<_> = summaries.iter().map(|p| fs::read(p).unwrap()).collect();
    files.iter().for_each(|f| forget_summary(f));
    let (store, scanned) = open_small(dir.path());
    store.close().await.unwrap();
    assert_eq!(scanned, from_summaries);
    assert_eq!(
        summaries
            .iter()
            .map(|p| fs::read(p).unwrap())
            .collect::<Vec<_>>(),
        saved
    );
    assert_eq!(
        scanned.iter().find(|m| m.attempts == 3).map(|m| m.seq),
        Some(scanned[1].seq)
    );
    // A message damaged in a sealed segment: open, reading summaries, does not see it (so it
    // did not read the segment); reading that copy back does, and only that copy.
    let mut data = fs::read(&files[0]).unwrap();
    let at = data.len() - COMMIT_FRAME as usize - 5; // The segment's last message.
    data[at] ^= 0x01;
    fs::write(&files[0], &data).unwrap();
    let (store, recovered) = open_small(dir.path());
    assert_eq!(recovered, from_summaries);
    let read = store.read(seqs(&recovered)).await.unwrap();
    let damaged: Vec<_> = read.iter().filter(|r| r.is_err()).collect();
    assert_eq!(damaged.len(), 1, "{read:?}");
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_summary_that_does_not_stand_for_its_segment_is_ignored_and_written_again() {
    let dir = tempfile::tempdir().unwrap();
    let expected = sealed_segments(dir.path()).await;
    let summaries = summary_files(dir.path());
    let first = fs::read(&summaries[0]).unwrap();
    // Torn, and another segment's.
    let second = fs::read(&summaries[1]).unwrap();
    for bad in [&first[..first.len() - 1], &second[..]] {
        fs::write(&summaries[0], bad).unwrap();
        let (store, recovered) = open_small(dir.path());
        store.close().await.unwrap();
        assert_eq!(recovered, expected);
        assert_eq!(fs::read(&summaries[0]).unwrap(), first, "written again");
    }
}

#[tokio::test]
async fn summaries_go_with_their_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open_small(dir.path());
    let mut put_seqs = Vec::new();
    for i in 0..10 {
        put_seqs.push(store.commit(vec![put("q", i, &[i; 1000])]).await.unwrap()[0]);
    }
    for seq in put_seqs {
        store.commit(vec![Op::Done(seq)]).await.unwrap();
    }
    assert!(store.stats().segments_deleted >= 2, "{:?}", store.stats());
    store.close().await.unwrap();
    let files = segment_files(dir.path());
    let expected: Vec<_> = files.iter().map(|f| f.with_extension("sum")).collect();
    assert_eq!(summary_files(dir.path()), expected);
    // One left behind by a crash between the two removals goes at the next open.
    let orphan = summary::path(dir.path(), 1);
    assert!(!orphan.exists() && !orphan.with_extension("log").exists());
    fs::copy(&expected[0], &orphan).unwrap();
    let (store, recovered) = open_small(dir.path());
    store.close().await.unwrap();
    assert!(recovered.is_empty());
    assert!(!orphan.exists());
    assert_eq!(summary_files(dir.path()), expected);
}
