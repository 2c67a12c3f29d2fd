//! Injected I/O faults: a failed write or fdatasync is fatal, reported to every caller in the
//! batch and after it, and nothing in the failed batch is ever reported committed.

use std::sync::atomic::{AtomicBool, Ordering};

use super::*;

fn open_faulty(dir: &Path) -> (Store, fault::Faults) {
    let faults = fault::Faults::default();
    let (store, _) = Store::open_with(dir, StoreOptions::default(), faults.clone()).unwrap();
    (store, faults)
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
async fn fault_is_fatal(pick: fn(&fault::Flags) -> &AtomicBool, expected: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (store, faults) = open_faulty(dir.path());
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
    let (store, recovered) = open(dir.path());
    assert_eq!(recovered[0].seq, kept[0]);
    assert_eq!(recovered[0].bytes, Bytes::from_static(b"before"));
    assert!(
        recovered
            .iter()
            .all(|m| m.bytes != Bytes::from_static(b"later"))
    );
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
    let dir = tempfile::tempdir().unwrap();
    let (store, faults) = open_faulty(dir.path());
    let kept = store.commit(vec![put("q", 1, b"before")]).await.unwrap();
    set(&faults.flags.short_write, true);
    let lost = vec![put("q", 2, &[2; 4000]), put("q", 3, &[3; 4000])];
    assert!(store.commit(lost).await.unwrap_err().is_fatal());
    assert!(store.close().await.unwrap_err().is_fatal());
    let (store, recovered) = open(dir.path());
    assert_eq!(seqs(&recovered), kept);
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_caller_sharing_the_failed_fsync_is_told() {
    let dir = tempfile::tempdir().unwrap();
    let (store, faults) = open_faulty(dir.path());
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
