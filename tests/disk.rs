//! A full disk, for real: a node whose data directory is a small tmpfs fills it. Every sender,
//! FLASH included, is refused `STORE_FULL` at once (no time-out, no internal path in the
//! reason); the node keeps running and delivering what it holds; acknowledged copies free their
//! segments, and the node accepts again by itself.
//!
//! Mounting a tmpfs needs root. Without it the test says so and passes as skipped, except where
//! it is promised to run (`CI=true`, or `ENLACE_DISK_REQUIRED=1`): there it fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use common::{TestNet, certs, within};
use enlace::network::LocalNetwork;
use enlace::{Draft, MessageId, Precedence, SubmitError, pb};

/// A tmpfs mounted for the test's life.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` on `path` (created), or says why it cannot.
    fn mount(path: &Path, bytes: u64) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        match out.status.success() {
            true => Ok(Tmpfs(path.to_owned())),
            false => Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
        }
    }

    /// As [`Tmpfs::mount`]; `None` (the test skipped) where it cannot, unless it must.
    fn mount_or_skip(test: &str, path: &Path, bytes: u64) -> Option<Tmpfs> {
        let required = |var: &str, yes: &str| std::env::var(var).is_ok_and(|v| v == yes);
        match Tmpfs::mount(path, bytes) {
            Ok(t) => Some(t),
            Err(reason) if required("CI", "true") || required("ENLACE_DISK_REQUIRED", "1") => {
                panic!(
                    "{test}: a tmpfs is required here (CI=true or ENLACE_DISK_REQUIRED=1): {reason}"
                )
            }
            Err(reason) => {
                eprintln!("{test}: skipped: cannot mount a tmpfs (root needed): {reason}");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn record(i: usize) -> pb::LiaisonMessage {
    pb::LiaisonMessage {
        body: Some(enlace::payloads::text(
            "es-MX",
            &format!("{i} {}", "x".repeat(20_000)),
        )),
        ..Default::default()
    }
}

fn refused_full(answer: Result<enlace::Accepted, SubmitError>) -> String {
    match answer {
        Err(SubmitError::Refused { code, reason, .. }) => {
            assert_eq!(code, pb::RefusalCode::StoreFull, "{reason}");
            assert!(!reason.contains('/'), "names no path: {reason}");
            reason
        }
        other => panic!("expected STORE_FULL, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_every_sender_at_once_keeps_delivering_and_recovers_by_itself() {
    common::init_logging();
    let dir = tempfile::tempdir().unwrap();
    let mut net = LocalNetwork::mesh_with_limits(dir.path(), &certs(), &["dea"], &[]).unwrap();
    // Small segments, so that acknowledged copies free whole files soon.
    let store = "\n[store]\nsegment_bytes = 1048576\n".to_owned();
    net.extra.insert("dea-1".into(), store);
    let data = dir.path().join("data").join("dea-1");
    let Some(_tmpfs) = Tmpfs::mount_or_skip("disk full", &data, 12 << 20) else {
        return;
    };
    let net = TestNet::start(dir, net).await;
    let analyst = net.client("dea", "analyst").await;

    // Fill it: ROUTINE records of 20 KB for a unit nobody reads yet.
    let mut accepted = Vec::new();
    let reason = loop {
        let draft = Draft::new(&record(accepted.len())).to("dea");
        match analyst.send(draft).await.unwrap().await {
            Ok(a) => accepted.push(a.id),
            Err(e) => break refused_full(Err(e)),
        }
        assert!(accepted.len() < 1000, "12 MiB never filled");
    };
    assert!(reason.contains("disk is full"), "{reason}");
    assert!(accepted.len() > 100, "{} accepted", accepted.len());

    // A FLASH alert is refused as well, at once: never a time-out. (Cut through while its
    // write was tried, it may still reach its addressees: see below.)
    let started = Instant::now();
    let flash_id = MessageId::new_v7(SystemTime::now());
    let flash = Draft::new(&record(0))
        .id(flash_id)
        .to("dea")
        .precedence(Precedence::Flash);
    refused_full(analyst.send(flash).await.unwrap().await);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    // The node keeps delivering what it holds; acknowledged, it frees space.
    let desk = net.subscriber("dea", "duty-desk").await;
    let mut inbox = desk.inbox().unwrap();
    let mut delivered = Vec::new();
    while !accepted.iter().all(|id| delivered.contains(id)) {
        let d = within("delivery from a full node", inbox.next())
            .await
            .unwrap();
        delivered.push(d.id());
        d.ack().await.unwrap();
    }
    // Everything accepted, once; besides it, at most the refused FLASH alert, which went out
    // while its write was tried (its sender, told STORE_FULL, may send it again: the
    // recipient's client drops the second copy by its id).
    let mut flash_copies = delivered.iter().filter(|id| **id == flash_id).count();
    delivered.retain(|id| *id != flash_id);
    delivered.sort();
    accepted.sort();
    assert!(
        delivered == accepted,
        "everything accepted is delivered, once"
    );

    // It accepts again by itself once the acknowledgements have freed segments: the sender
    // retries as a busy refusal says (after `retry_after`), no restart.
    let again = within("accepting again", async {
        loop {
            let draft = Draft::new(&record(0))
                .to("dea")
                .precedence(Precedence::Flash);
            match analyst.send(draft).await.unwrap().await {
                Ok(a) => return a,
                Err(SubmitError::Refused {
                    code: pb::RefusalCode::StoreFull,
                    retry_after,
                    ..
                }) => tokio::time::sleep(retry_after.unwrap_or(Duration::from_millis(100))).await,
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await;
    // (The refused FLASH alert, cut through, may come only now: it is acknowledged and
    // passed over.)
    let d = loop {
        let d = within("delivery after space returned", inbox.next())
            .await
            .unwrap();
        match d.id() == flash_id {
            true => {
                flash_copies += 1;
                d.ack().await.unwrap();
            }
            false => break d,
        }
    };
    assert!(
        flash_copies <= 1,
        "the refused alert came {flash_copies} times"
    );
    assert_eq!(d.id(), again.id);
    d.ack().await.unwrap();
    let TestNet { dir, nodes, .. } = net;
    for (_, node) in nodes {
        node.stop().await;
    }
    // The delivery log, which shared the full disk, still checks: a write the disk had room
    // for only part of was cut back, not followed by the whole of it again.
    let report = enlace::audit::verify::verify_dir(&data.join("log")).unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert!(report.records > 1000, "{} records", report.records);
    drop(dir);
}
