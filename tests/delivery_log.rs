//! The delivery log (issue #11): what nodes write about a message, the trace across nodes, the
//! operator-only interface, `verify` finding each kind of tampering where it is, witnesses
//! catching a node that rewrites its history, and pruning behind checkpoints. Real nodes, real
//! QUIC, real files.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::{SendAndWait, TestNet, wait_event, within};
use enlace::audit::verify::{Report, verify_dir};
use enlace::audit::{CheckpointEntry, Record};
use enlace::node::Event;
use enlace::pb::{self, RefusalCode};
use enlace::{Client, Draft, Mailbox, Precedence, SubmitError};

/// Checkpoints often, so tests need not wait.
const FAST: &str = "\n[delivery_log]\ncheckpoint_interval_ms = 200\n";

/// DEA's and PGR's nodes, linked, DEA's config extended with `dea` and PGR's checkpointing
/// often, all started.
async fn dea_pgr(dea: &str) -> TestNet {
    TestNet::federation(
        &["dea", "pgr"],
        &[("dea-1", "pgr-1")],
        &[("dea-1", dea.to_owned()), ("pgr-1", FAST.to_owned())],
        &[],
    )
    .await
}

fn liaison(body: &str) -> pb::LiaisonMessage {
    pb::LiaisonMessage {
        body: Some(enlace::payloads::text("en", body)),
        ..Default::default()
    }
}

fn records(lines: &[String]) -> Vec<Record> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn all(client: &Client, q: pb::LogQuery) -> Result<Vec<String>, SubmitError> {
    let mut a = client.log(q).await?;
    let mut out = Vec::new();
    while let Some(f) = a.next().await? {
        out.extend(f.records);
    }
    Ok(out)
}

/// How many `accepted` records of the log name `actor`, as an operator reads them.
async fn accepted_from(ops: &Client, actor: &str) -> usize {
    let q = pb::LogQuery {
        event: "accepted".into(),
        ..Default::default()
    };
    let recs = records(&all(ops, q).await.unwrap());
    recs.iter().filter(|r| r.actor == actor).count()
}

fn log_dir(net: &TestNet, node: &str) -> PathBuf {
    net.dir.path().join("data").join(node).join("log")
}

/// Sends `n` liaison messages DEA → PGR and reads them.
async fn traffic(net: &TestNet, n: usize) {
    let pgr = net.subscriber("pgr", "duty-desk").await;
    let dea = net.client("dea", "duty-desk").await;
    let mut inbox = pgr.inbox().unwrap();
    for i in 0..n {
        dea.submit(Draft::new(&liaison(&format!("note {i}"))).to("pgr"))
            .await
            .unwrap();
    }
    for _ in 0..n {
        let d = within("a delivery", inbox.next()).await.unwrap();
        d.ack().await.unwrap();
    }
}

#[tokio::test]
async fn a_trace_across_three_nodes_through_a_relay_shows_every_hop_and_receipt() {
    // DEA reaches AFI only through CENAPI.
    let links = [("dea-1", "cenapi-1"), ("afi-1", "cenapi-1")];
    let extra = [
        ("dea-1", format!("[routes]\nafi = \"cenapi-1\"\n{FAST}")),
        ("afi-1", format!("[routes]\ndea = \"cenapi-1\"\n{FAST}")),
        ("cenapi-1", FAST.to_owned()),
    ];
    let net = TestNet::federation(&["dea", "afi", "cenapi"], &links, &extra, &[]).await;
    let afi = net.subscriber("afi", "duty-desk").await;
    let mut inbox = afi.inbox().unwrap();
    let dea = net.client("dea", "duty-desk").await;
    let mut receipts = dea.receipts().await.unwrap();
    let draft = Draft::new(&liaison("load of pseudoephedrine heading for Manzanillo"))
        .to("afi")
        .precedence(Precedence::Flash);
    let id = dea.submit(draft).await.unwrap().id;
    let d = within("the alert at AFI", inbox.next()).await.unwrap();
    d.ack().await.unwrap();
    // Wait until the acknowledgement's receipt is back at DEA: the whole journey is logged.
    loop {
        let r = within("a receipt", receipts.next_for(id)).await.unwrap();
        if r.stage.name() == "acknowledged" {
            break;
        }
    }

    let ops = Client::connect(net.options("dea", "ops")).await.unwrap();
    let q = pb::LogQuery {
        message_id: id.to_bytes(),
        trace: true,
        ..Default::default()
    };
    let recs = records(&all(&ops, q).await.unwrap());
    let has = |node: &str, event: &str, f: &dyn Fn(&Record) -> bool| {
        recs.iter().any(|r| {
            r.node == node && r.event == event && r.id.as_deref() == Some(&id.to_string()) && f(r)
        })
    };
    let any = |_: &Record| true;
    assert!(
        has("dea-1", "accepted", &|r| r.actor == "dea/client/duty-desk"),
        "{recs:#?}"
    );
    assert!(has("dea-1", "forwarded", &|r| r.peer.as_deref()
        == Some("cenapi-1")));
    assert!(has("cenapi-1", "received", &|r| r.peer.as_deref()
        == Some("dea-1")));
    assert!(has("cenapi-1", "forwarded", &|r| r.peer.as_deref()
        == Some("afi-1")));
    assert!(has("afi-1", "received", &any));
    assert!(has("afi-1", "delivered", &|r| r.actor == "afi/client/duty-desk"));
    assert!(has("afi-1", "acknowledged", &|r| r.actor
        == "afi/client/duty-desk"));
    // Each record names the message's metadata and the hash of its exact bytes, never content.
    let first = recs.iter().find(|r| r.event == "accepted").unwrap();
    assert_eq!(first.precedence.as_deref(), Some("FLASH"));
    assert_eq!(first.sha256.as_ref().map(String::len), Some(64));
    assert!(
        recs.iter()
            .all(|r| !serde_json::to_string(r).unwrap().contains("Manzanillo"))
    );
    // Every hash of the message is the same at every node: the exact bytes travelled.
    let hashes: std::collections::BTreeSet<_> = recs
        .iter()
        .filter(|r| r.id.as_deref() == Some(&id.to_string()))
        .filter_map(|r| r.sha256.clone())
        .collect();
    assert_eq!(hashes.len(), 1, "{hashes:?}");
    // The receipts on their way back: the acknowledgement's receipt reached DEA's node
    // through CENAPI.
    let receipt = |node: &str| {
        recs.iter()
            .any(|r| r.node == node && r.refers_to.as_deref() == Some(&id.to_string()))
    };
    assert!(
        receipt("afi-1") && receipt("cenapi-1") && receipt("dea-1"),
        "{recs:#?}"
    );
    net.stop().await;
}

#[tokio::test]
async fn the_log_interface_refuses_anyone_but_an_operator() {
    let net = TestNet::mesh(&["dea", "pgr"]).await;
    traffic(&net, 2).await;
    let client = net.client("dea", "duty-desk").await;
    for q in [
        pb::LogQuery::default(),
        pb::LogQuery {
            files: true,
            ..Default::default()
        },
        pb::LogQuery {
            follow: true,
            ..Default::default()
        },
    ] {
        match all(&client, q).await {
            Err(SubmitError::Refused { code, reason, .. }) => {
                assert_eq!(code, RefusalCode::Unauthorized);
                assert!(reason.contains("not an operator"), "{reason}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    // The operator of the same node reads it, and the client's traffic is there.
    let ops = Client::connect(net.options("dea", "ops")).await.unwrap();
    assert!(accepted_from(&ops, "dea/client/duty-desk").await >= 2);
    // Reading the log is logged, and so are the refused attempts.
    let q = pb::LogQuery {
        agency: "dea".into(),
        ..Default::default()
    };
    let recs = records(&all(&ops, q).await.unwrap());
    let read = |r: &Record| r.event == "log_read" && r.actor == "dea/operator/ops";
    assert!(
        recs.iter()
            .any(|r| read(r) && r.detail.as_deref() == Some("query event=accepted")),
        "{recs:#?}"
    );
    let refused = recs
        .iter()
        .filter(|r| r.event == "refused" && r.actor == "dea/client/duty-desk")
        .count();
    assert_eq!(refused, 3, "{recs:#?}");
    net.stop().await;
}

/// A stopped node's log, copied for tampering.
fn copy_log(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Stops every node and keeps their files.
async fn stop_keeping_files(net: TestNet) -> tempfile::TempDir {
    let TestNet { dir, nodes, .. } = net;
    for (_, n) in nodes {
        n.stop().await;
    }
    dir
}

fn records_file(dir: &Path) -> PathBuf {
    enlace::audit::files::record_files(dir).unwrap()[0]
        .1
        .clone()
}

fn edit_lines(dir: &Path, f: impl FnOnce(&mut Vec<String>)) {
    let path = records_file(dir);
    let mut lines: Vec<String> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    f(&mut lines);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
}

/// Recomputes every record's link to the one before, as a careful rewriter would.
fn rechain(lines: &mut [String]) {
    let mut prev = String::new();
    for l in lines.iter_mut() {
        let mut r: Record = serde_json::from_str(l).unwrap();
        r.prev = prev;
        *l = r.to_line();
        prev = enlace::audit::hex(&enlace::audit::leaf(l.as_bytes()));
    }
}

fn first_problem(r: &Report) -> String {
    assert!(!r.ok(), "the tampered log verified: {r:?}");
    r.problems[0].to_string()
}

#[tokio::test]
async fn verify_finds_each_kind_of_tampering_at_the_right_place() {
    let net = dea_pgr(FAST).await;
    let mut events = net.node("dea-1").events();
    traffic(&net, 10).await;
    // A checkpoint a few records in, and records after it.
    wait_event(
        &mut events,
        |e| matches!(e, Event::Checkpoint { size } if *size >= 3),
    )
    .await;
    traffic(&net, 2).await;
    let original = log_dir(&net, "dea-1");
    let kept = stop_keeping_files(net).await;
    let dir = kept.path().to_owned();
    let clean = verify_dir(&original).unwrap();
    assert!(clean.ok(), "{:?}", clean.problems);
    assert!(clean.records > 20 && clean.last_checkpoint == Some(clean.records));

    let work = tempfile::tempdir().unwrap();
    let case = |name: &str| {
        let d = work.path().join(name);
        copy_log(&original, &d);
        d
    };

    // One byte of record 7 changed.
    let d = case("edited");
    edit_lines(&d, |l| {
        l[7] = l[7].replacen("\"node\":\"dea-1\"", "\"node\":\"dea-2\"", 1)
    });
    let p = first_problem(&verify_dir(&d).unwrap());
    assert!(p.starts_with("record 7 (") && p.contains("altered"), "{p}");

    // One byte of the last record under a checkpoint changed: named as well, though the
    // checkpoint's root is checked before the next record's link. (The log keeps only that
    // checkpoint, a few records in and not at the end, so the record the checkpoint's check
    // would name, the first after the one before, is another.)
    let d = case("edited-at-checkpoint");
    let path = d.join(enlace::audit::CHECKPOINTS);
    let size_of = |e: &CheckpointEntry| match e {
        CheckpointEntry::Checkpoint { note, .. } => {
            let n = enlace::note::Note::parse(note).unwrap();
            enlace::note::Checkpoint::parse(&n.text).unwrap().size
        }
        CheckpointEntry::Cosignature { size, .. } => *size,
    };
    let entries: Vec<CheckpointEntry> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let cp = entries
        .iter()
        .map(size_of)
        .find(|s| *s >= 3 && *s < clean.records)
        .expect("a checkpoint a few records in, not at the end");
    let kept: String = entries
        .iter()
        .filter(|e| size_of(e) == cp)
        .map(|e| serde_json::to_string(e).unwrap() + "\n")
        .collect();
    std::fs::write(&path, kept).unwrap();
    let at = cp as usize - 1;
    edit_lines(&d, |l| {
        l[at] = l[at].replacen("\"node\":\"dea-1\"", "\"node\":\"dea-2\"", 1)
    });
    let p = first_problem(&verify_dir(&d).unwrap());
    assert!(
        p.starts_with(&format!("record {at} (")) && p.contains("altered"),
        "{p}"
    );

    // Record 5 deleted.
    let d = case("deleted");
    edit_lines(&d, |l| {
        l.remove(5);
    });
    let p = first_problem(&verify_dir(&d).unwrap());
    assert!(p.starts_with("record 5 (") && p.contains("missing"), "{p}");

    // Records 9 and 10 swapped.
    let d = case("reordered");
    edit_lines(&d, |l| l.swap(9, 10));
    let p = first_problem(&verify_dir(&d).unwrap());
    assert!(
        p.starts_with("record 9 (") && p.contains("out of order"),
        "{p}"
    );

    // The last five records cut off.
    let d = case("truncated");
    let n = clean.records as usize;
    edit_lines(&d, |l| l.truncate(n - 5));
    let p = first_problem(&verify_dir(&d).unwrap());
    assert!(
        p.contains(&format!("record {}", n - 5)) && p.contains("truncated"),
        "{p}"
    );

    // A checkpoint whose root was replaced: its signature no longer verifies.
    let d = case("forged");
    let path = d.join(enlace::audit::CHECKPOINTS);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        let mut e: CheckpointEntry = serde_json::from_str(line).unwrap();
        if let CheckpointEntry::Checkpoint { note, .. } = &mut e {
            let mut lines: Vec<String> = note.lines().map(str::to_owned).collect();
            lines[2] = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into();
            *note = lines.join("\n") + "\n";
        }
        out.push_str(&serde_json::to_string(&e).unwrap());
        out.push('\n');
    }
    std::fs::write(&path, out).unwrap();
    let p = first_problem(&verify_dir(&d).unwrap());
    assert!(p.contains("forged"), "{p}");

    // The CLI on the whole data directory: every node passes; after one byte changed, it fails
    // and names the record.
    let cli = |dir: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_enlace"))
            .args(["log", "verify", "--data-dir"])
            .arg(dir)
            .output()
            .unwrap()
    };
    let ok = cli(&dir);
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{out}");
    assert!(
        out.contains("dea-1: ok") && out.contains("pgr-1: ok"),
        "{out}"
    );
    let path = records_file(&original);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(2)
        .unwrap()
        .0
        + 20;
    bytes[at] = if bytes[at] == b'x' { b'y' } else { b'x' };
    std::fs::write(&path, bytes).unwrap();
    let bad = cli(&dir);
    let out = String::from_utf8_lossy(&bad.stdout);
    assert!(!bad.status.success(), "{out}");
    assert!(
        out.contains("dea-1: FAILED") && out.contains("problem: record 3 ("),
        "{out}"
    );
}

#[tokio::test]
async fn a_node_that_rewrites_its_history_is_caught_by_its_witness() {
    let mut net = dea_pgr(FAST).await;
    let mut dea_events = net.node("dea-1").events();
    traffic(&net, 5).await;
    // PGR cosigns a checkpoint of DEA's that covers the record rewritten below (the second).
    // An earlier checkpoint, of the first record alone, may be cosigned first on a slow
    // machine; the rewrite cannot contradict that one.
    wait_event(&mut dea_events, |e| {
        matches!(e, Event::Witnessed { peer, whose: "own", size, .. }
            if peer == "pgr-1" && *size > 1)
    })
    .await;
    // DEA's operator rewrites its history while it is stopped, carefully: one record changed,
    // the hash chain recomputed after it, and its own checkpoints (which would betray it)
    // removed. Alone, the rewritten log is self-consistent.
    net.nodes.remove("dea-1").unwrap().stop().await;
    let dir = log_dir(&net, "dea-1");
    std::fs::remove_file(dir.join(enlace::audit::CHECKPOINTS)).unwrap();
    edit_lines(&dir, |l| {
        l[1] = l[1].replacen("\"event\":\"", "\"event\":\"x", 1);
        rechain(l);
    });
    let mut pgr_events = net.node("pgr-1").events();
    net.nodes
        .insert("dea-1".into(), net.net.start("dea-1").await.unwrap());
    traffic(&net, 3).await;
    let refused = wait_event(&mut pgr_events, |e| {
        matches!(e, Event::WitnessRefused { .. })
    })
    .await;
    let Event::WitnessRefused { peer, reason } = refused else {
        unreachable!()
    };
    assert_eq!(peer, "dea-1");
    assert!(reason.contains("rewritten"), "{reason}");
    // It stays caught: PGR keeps the checkpoint it cosigned, and refuses the next one too.
    let again = wait_event(&mut pgr_events, |e| {
        matches!(e, Event::WitnessRefused { .. })
    })
    .await;
    assert!(matches!(again, Event::WitnessRefused { .. }));
    // PGR's log says so.
    let pgr_log = log_dir(&net, "pgr-1");
    let _kept = stop_keeping_files(net).await;
    let filter = enlace::audit::Filter {
        event: Some("witness_refused".into()),
        ..Default::default()
    };
    let mut found = 0;
    enlace::audit::files::scan(&pgr_log, &filter, |_, r| {
        found += usize::from(r.peer.as_deref() == Some("dea-1"));
        true
    })
    .unwrap();
    assert!(found >= 2, "{found}");
    // Offline, DEA's log checks alone (the rewriter signed new checkpoints with its own key),
    // but not against the checkpoint PGR cosigned.
    let dea_log = dir;
    let alone = verify_dir(&dea_log).unwrap();
    assert!(alone.ok(), "{:?}", alone.problems);
    let reports = enlace::audit::verify::verify_dirs(&[dea_log, pgr_log]).unwrap();
    let p = first_problem(&reports[0]);
    assert!(p.contains("pgr-1 cosigned") && p.contains("altered"), "{p}");
    assert!(reports[1].ok(), "{:?}", reports[1].problems);
}

#[tokio::test]
async fn old_records_are_pruned_behind_a_checkpoint_and_the_log_still_verifies() {
    let net = dea_pgr(SMALL_FILES).await;
    let mut events = net.node("dea-1").events();
    traffic(&net, 30).await;
    let dir = log_dir(&net, "dea-1");
    let listed = enlace::audit::files::record_files(&dir).unwrap();
    let files = listed.len();
    assert!(files > 3, "{files} files");
    // A checkpoint up to the last file listed (an earlier one, over the first file
    // only, would leave nothing prunable behind it).
    let last = listed.last().unwrap().0;
    wait_event(
        &mut events,
        |e| matches!(e, Event::Checkpoint { size } if *size >= last),
    )
    .await;
    // Nothing is old yet.
    assert_eq!(
        net.node("dea-1")
            .prune_log(SystemTime::now())
            .await
            .unwrap(),
        None
    );
    let later = SystemTime::now() + Duration::from_secs(401 * 86_400);
    let pruned = net.node("dea-1").prune_log(later).await.unwrap().unwrap();
    assert!(pruned.contains("older than 400 days"), "{pruned}");
    let left = enlace::audit::files::record_files(&dir).unwrap();
    assert!(left.len() < files && left[0].0 > 0);
    // The pruning is itself a record.
    let ops = Client::connect(net.options("dea", "ops")).await.unwrap();
    let q = pb::LogQuery {
        event: "pruned".into(),
        ..Default::default()
    };
    assert_eq!(all(&ops, q).await.unwrap().len(), 1);
    let _ = Mailbox::Inbox;
    // Verified offline once the node has stopped (a running node may be mid-write).
    let _kept = stop_keeping_files(net).await;
    let report = verify_dir(&dir).unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.first, left[0].0);
}

#[tokio::test]
async fn a_peer_node_gets_traces_only_and_a_forged_checkpoint_is_refused() {
    let mut net = TestNet::mesh(&["dea", "pgr", "afi"]).await;
    traffic(&net, 2).await;
    // A raw connection holding afi-1's node certificate, as an attacker at AFI would (afi-1
    // itself stopped, so that its link does not replace the attacker's connection).
    net.nodes.remove("afi-1").unwrap().stop().await;
    let raw = net
        .raw("dea", "nodes/afi/afi-1", pb::Role::Node)
        .await
        .unwrap();
    use enlace::pb::frame::Body;
    for q in [
        pb::LogQuery::default(),
        pb::LogQuery {
            trace: true,
            files: true,
            message_id: vec![1; 16].into(),
            ..Default::default()
        },
        pb::LogQuery {
            trace: true,
            follow: true,
            message_id: vec![1; 16].into(),
            ..Default::default()
        },
    ] {
        let r = common::raw::refused(raw.exchange(&common::raw::frame(Body::LogQuery(q))).await);
        assert_eq!(r.code, RefusalCode::Unauthorized as i32, "{}", r.reason);
        assert!(r.reason.contains("not an operator"), "{}", r.reason);
    }
    // A trace of a message PGR's node never handled discloses nothing.
    let q = pb::LogQuery {
        trace: true,
        message_id: enlace::MessageId::new_v7(SystemTime::now()).to_bytes(),
        ..Default::default()
    };
    let r = common::raw::refused(
        raw.exchange(&common::raw::frame(Body::LogQuery(q.clone())))
            .await,
    );
    assert!(r.reason.contains("did not handle"), "{}", r.reason);
    // Each trace reads the whole log: asked four times at once, the node is busy for most.
    let ask = || raw.exchange_owned(common::raw::frame(Body::LogQuery(q.clone())));
    let answers = tokio::join!(ask(), ask(), ask(), ask());
    let busy: Vec<_> = [answers.0, answers.1, answers.2, answers.3]
        .into_iter()
        .map(common::raw::refused)
        .filter(|r| r.code == RefusalCode::QueueFull as i32)
        .collect();
    assert!(!busy.is_empty(), "no trace was refused as busy");
    for r in busy {
        assert!(
            r.retry_after_ms > 0 && r.reason.contains("retry later"),
            "{}",
            r.reason
        );
    }
    // A checkpoint not signed by afi-1's key, and one of another node's log, are refused.
    let forged = "enlace/afi/afi-1\n5\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\n\u{2014} afi/node/afi-1 AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n";
    let other = forged.replace("enlace/afi/afi-1", "enlace/pgr/pgr-1");
    for (note, why) in [
        (forged, "forged"),
        (other.as_str(), "not of enlace/afi/afi-1"),
    ] {
        let c = pb::LogCheckpoint {
            note: note.to_owned(),
            ..Default::default()
        };
        let r = common::raw::refused(
            raw.exchange(&common::raw::frame(Body::LogCheckpoint(c)))
                .await,
        );
        assert!(r.reason.contains(why), "{}", r.reason);
    }
    // Oversized notes and proofs are refused before any work on them.
    let long_note = format!("{forged}{}", "x".repeat(5000));
    let long_proof = vec![bytes::Bytes::from_static(&[0; 32]); 129];
    for c in [
        pb::LogCheckpoint {
            note: long_note,
            ..Default::default()
        },
        pb::LogCheckpoint {
            note: forged.to_owned(),
            old_size: 1,
            proof: long_proof,
        },
    ] {
        let r = common::raw::refused(
            raw.exchange(&common::raw::frame(Body::LogCheckpoint(c)))
                .await,
        );
        assert!(r.reason.contains("oversized"), "{}", r.reason);
    }
    // A flood of forged checkpoints: every one refused, few logged.
    for _ in 0..100 {
        let c = pb::LogCheckpoint {
            note: forged.to_owned(),
            ..Default::default()
        };
        let f = raw
            .exchange(&common::raw::frame(Body::LogCheckpoint(c)))
            .await;
        common::raw::refused(f);
    }
    // A peer that holds afi-1's key signs as many valid, growing checkpoints as it likes: each
    // is cosigned, and the node keeps only the latest of them.
    let signer = common::raw::Signer::load("nodes/afi/afi-1");
    let leaves: Vec<_> = (0u64..40)
        .map(|i| enlace::merkle::leaf_hash(&i.to_be_bytes()))
        .collect();
    let root = |l: &[enlace::merkle::Hash]| {
        let mut f = enlace::merkle::Frontier::new();
        l.iter().for_each(|h| f.push(*h));
        f.root()
    };
    for n in 1..=leaves.len() {
        let cp = enlace::note::Checkpoint {
            origin: "enlace/afi/afi-1".into(),
            size: n as u64,
            root: root(&leaves[..n]),
        };
        let note = signed_note(&cp.text(), "afi/node/afi-1", &signer);
        let old = n as u64 - 1;
        let proof = if old == 0 {
            Vec::new()
        } else {
            let mut mth =
                |start: u64, len: u64| root(&leaves[start as usize..(start + len) as usize]);
            enlace::merkle::consistency_proof(old, n as u64, &mut mth).unwrap()
        };
        let c = pb::LogCheckpoint {
            note,
            old_size: old,
            proof: proof
                .iter()
                .map(|h| bytes::Bytes::copy_from_slice(h))
                .collect(),
        };
        let f = raw
            .exchange(&common::raw::frame(Body::LogCheckpoint(c)))
            .await;
        assert!(
            matches!(f.body, Some(Body::LogCosigned(_))),
            "size {n}: {f:?}"
        );
    }
    // The node still serves everyone else.
    traffic(&net, 1).await;
    let ops = Client::connect(net.options("dea", "ops")).await.unwrap();
    let q = pb::LogQuery {
        event: "witness_refused".into(),
        ..Default::default()
    };
    let logged = all(&ops, q).await.unwrap().len();
    // 104 refusals; the connection's refusal log rate (a burst of 20, then 5 a second).
    assert!((4..60).contains(&logged), "{logged} refusals logged");
    let dea_log = log_dir(&net, "dea-1");
    let _kept = stop_keeping_files(net).await;
    let witnessed = std::fs::read_to_string(dea_log.join(enlace::audit::WITNESSED)).unwrap();
    let afi: Vec<_> = witnessed.lines().filter(|l| l.contains("afi-1")).collect();
    assert_eq!(afi.len(), 1, "{witnessed}");
    assert!(afi[0].contains("\\n40\\n"), "{}", afi[0]);
}

/// A C2SP signed note of `text`, signed as key `name` by `signer` (the format written out from
/// its specification, not with the node's code).
fn signed_note(text: &str, name: &str, signer: &common::raw::Signer) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut id = name.as_bytes().to_vec();
    id.push(b'\n');
    id.push(0x01);
    id.extend_from_slice(signer.public_key());
    let mut sig = ring::digest::digest(&ring::digest::SHA256, &id).as_ref()[..4].to_vec();
    sig.extend_from_slice(&signer.sign_raw(text.as_bytes()));
    format!("{text}\n\u{2014} {name} {}\n", b64.encode(sig))
}

/// A node that signs a checkpoint for every record offers them to its witness one at a time,
/// newest first when it falls behind: never one after a newer one, which the witness would
/// refuse as a rollback (as it did, after restarts, when an old checkpoint slow to prove was
/// overtaken by newer ones).
#[tokio::test]
async fn a_witness_sees_checkpoints_in_the_order_they_were_signed() {
    let every_record = "\n[delivery_log]\ncheckpoint_records = 1\n";
    let net = dea_pgr(every_record).await;
    traffic(&net, 60).await;
    let (dea, pgr) = (log_dir(&net, "dea-1"), log_dir(&net, "pgr-1"));
    let _kept = stop_keeping_files(net).await;
    let events = |dir: &Path, event: &str| -> Vec<String> {
        enlace::audit::files::record_files(dir)
            .unwrap()
            .iter()
            .flat_map(|(_, p)| {
                std::fs::read_to_string(p)
                    .unwrap()
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .filter(|l| l.contains(&format!("\"event\":\"{event}\"")))
            .collect()
    };
    let cosigned = events(&dea, "checkpoint_witnessed");
    assert!(
        cosigned.len() >= 20,
        "{} checkpoints cosigned",
        cosigned.len()
    );
    for dir in [&dea, &pgr] {
        let refused = events(dir, "witness_refused");
        assert!(refused.is_empty(), "{}", refused.join("\n"));
    }
}

/// The runbook's "Back up a node, and restore it" (deploy/RUNBOOK.md, 7), as written there: a
/// backup of PGR's data directory taken with the node stopped, restored after more traffic.
/// The restored node serves, its witness (DEA) refuses its checkpoints (to a witness a restored
/// log is a history that went back), and once DEA's operator moves its `witnessed.jsonl` aside
/// and restarts, DEA cosigns PGR's log again.
#[tokio::test]
async fn a_node_restored_from_a_backup_is_witnessed_again_once_its_partner_accepts_it() {
    let mut net = dea_pgr(FAST).await;
    let cosigned_pgr = |above: u64| move |e: &Event| matches!(e, Event::Witnessed { peer, whose: "peer", size } if peer == "pgr-1" && *size > above);
    let mut dea_events = net.node("dea-1").events();
    traffic(&net, 3).await;
    wait_event(&mut dea_events, cosigned_pgr(0)).await;

    // The backup: stop, copy the whole data directory, start.
    let data = net.dir.path().join("data").join("pgr-1");
    let backup = net.dir.path().join("pgr-1.backup");
    net.nodes.remove("pgr-1").unwrap().stop().await;
    let cp = |from: &Path, to: &Path| {
        let ok = std::process::Command::new("cp")
            .arg("-a")
            .arg(from)
            .arg(to)
            .status()
            .unwrap();
        assert!(ok.success());
    };
    cp(&data, &backup);
    let backed_up = enlace::audit::verify::verify_dir(&backup.join("log")).unwrap();
    net.nodes
        .insert("pgr-1".into(), net.net.start("pgr-1").await.unwrap());

    // More traffic, which DEA cosigns past the backup.
    traffic(&net, 5).await;
    wait_event(&mut dea_events, cosigned_pgr(backed_up.records)).await;

    // The restore: stop, put the backup in place, start.
    net.nodes.remove("pgr-1").unwrap().stop().await;
    std::fs::rename(&data, net.dir.path().join("pgr-1.old")).unwrap();
    cp(&backup, &data);
    net.nodes
        .insert("pgr-1".into(), net.net.start("pgr-1").await.unwrap());
    traffic(&net, 2).await;
    let refused = wait_event(
        &mut dea_events,
        |e| matches!(e, Event::WitnessRefused { peer, .. } if peer == "pgr-1"),
    )
    .await;
    let Event::WitnessRefused { reason, .. } = refused else {
        unreachable!()
    };
    assert!(
        reason.contains("rollback") || reason.contains("rewritten"),
        "{reason}"
    );

    // DEA's operator accepts the restored log: stop, move witnessed.jsonl aside, start.
    net.nodes.remove("dea-1").unwrap().stop().await;
    let dea_log = log_dir(&net, "dea-1");
    std::fs::rename(
        dea_log.join(enlace::audit::WITNESSED),
        dea_log.join("witnessed.jsonl.before-restore"),
    )
    .unwrap();
    net.nodes
        .insert("dea-1".into(), net.net.start("dea-1").await.unwrap());
    let mut dea_events = net.node("dea-1").events();
    traffic(&net, 2).await;
    wait_event(&mut dea_events, cosigned_pgr(0)).await;
    let _kept = stop_keeping_files(net).await;
}

/// The niceness of this process's thread named `name`, from `/proc` (Linux).
fn niceness_of(name: &str) -> Option<i64> {
    std::fs::read_dir("/proc/self/task")
        .ok()?
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .find_map(|t| niceness(&std::fs::read_to_string(t.path().join("stat")).ok()?))
}

/// Field 19 of a `stat` line: the fields after the command's closing parenthesis start at 3.
fn niceness(stat: &str) -> Option<i64> {
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(16)?
        .parse()
        .ok()
}

#[tokio::test]
async fn the_writer_runs_below_the_nodes_work_and_says_how_far_behind_it_is() {
    let net = dea_pgr("").await;
    traffic(&net, 20).await;
    // On a busy machine the writer works in the gaps the node's threads leave: below the bulk
    // runtime's threads, which run below the node's own (this test's threads here).
    let own = niceness(&std::fs::read_to_string("/proc/thread-self/stat").unwrap()).unwrap();
    let bulk = niceness_of("node-dea-1-bulk").expect("the bulk runtime's threads");
    let writer = niceness_of("log-dea-1").expect("the log's writer thread");
    assert!(own < bulk && bulk < writer, "{own} {bulk} {writer}");
    // What it has not written yet is counted, and comes down to nothing once the traffic is
    // over (the writer polls every few milliseconds).
    within("the writer to catch up", async {
        while net.node("dea-1").log_pending() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let ops = Client::connect(net.options("dea", "ops")).await.unwrap();
    assert!(accepted_from(&ops, "dea/client/duty-desk").await >= 20);
}

/// The size of the last checkpoint in a log directory.
fn last_checkpoint(dir: &Path) -> u64 {
    enlace::audit::files::checkpoints(dir)
        .unwrap()
        .into_iter()
        .flatten()
        .filter_map(|e| match e {
            CheckpointEntry::Checkpoint { note, .. } => {
                let n = enlace::note::Note::parse(&note).unwrap();
                Some(enlace::note::Checkpoint::parse(&n.text).unwrap().size)
            }
            CheckpointEntry::Cosignature { .. } => None,
        })
        .next_back()
        .expect("a checkpoint")
}

/// Small records files and frequent checkpoints: after 30 messages, DEA's log spans many files,
/// most of them behind its last checkpoint. DEA's node is stopped with that checkpoint
/// cosigned by PGR; says its last checkpoint's size.
async fn behind_a_checkpoint(net: &mut TestNet) -> u64 {
    let mut pgr_events = net.node("pgr-1").events();
    traffic(net, 30).await;
    wait_event(&mut pgr_events, cosigned_by_pgr(0)).await;
    net.nodes.remove("dea-1").unwrap().stop().await;
    let dir = log_dir(net, "dea-1");
    let size = last_checkpoint(&dir);
    let files = enlace::audit::files::record_files(&dir).unwrap();
    let behind = files.windows(2).filter(|w| w[1].0 <= size).count();
    assert!(
        behind >= 2,
        "{behind} files behind the checkpoint of size {size}"
    );
    size
}

fn cosigned_by_pgr(above: u64) -> impl Fn(&Event) -> bool {
    move |e| matches!(e, Event::Witnessed { peer, whose: "peer", size } if peer == "dea-1" && *size > above)
}

const SMALL_FILES: &str = "\n[delivery_log]\ncheckpoint_interval_ms = 200\nsegment_bytes = 4096\n";

#[tokio::test]
async fn a_restarted_node_resumes_its_log_from_its_last_checkpoint() {
    let mut net = dea_pgr(SMALL_FILES).await;
    let size = behind_a_checkpoint(&mut net).await;
    net.nodes
        .insert("dea-1".into(), net.net.start("dea-1").await.unwrap());
    // Checkpoints over the resumed tree and new records; once the records pass the file the
    // restart started, the files behind them are pruned (never from a tree the node took
    // from files it did not hash).
    let mut events = net.node("dea-1").events();
    let later = SystemTime::now() + Duration::from_secs(401 * 86_400);
    within("a prune after the restart", async {
        loop {
            traffic(&net, 2).await;
            wait_event(&mut events, |e| matches!(e, Event::Checkpoint { .. })).await;
            if net.node("dea-1").prune_log(later).await.unwrap().is_some() {
                break;
            }
        }
    })
    .await;
    // Every checkpoint, those before the restart and those after, is the tree of the records
    // kept on top of where they start.
    let dir = log_dir(&net, "dea-1");
    let _kept = stop_keeping_files(net).await;
    let report = verify_dir(&dir).unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert!(report.first > 0 && report.last_checkpoint > Some(size));
}

#[tokio::test]
async fn a_record_edited_behind_the_last_checkpoint_is_left_to_verify() {
    let mut net = dea_pgr(SMALL_FILES).await;
    let size = behind_a_checkpoint(&mut net).await;
    // An edit in the first file, which the checkpoint covers.
    let dir = log_dir(&net, "dea-1");
    let first = enlace::audit::files::record_files(&dir).unwrap()[0]
        .1
        .clone();
    let text = std::fs::read_to_string(&first).unwrap();
    let edited = text.replacen("\"node\":\"dea-1\"", "\"node\":\"dea-9\"", 1);
    assert_ne!(text, edited);
    std::fs::write(&first, edited).unwrap();
    // The node resumes from the tree it signed, not from the edited file: its witness takes
    // the next checkpoint as an extension of the last (a tree rebuilt from the edited record
    // would not be one, and the witness would refuse it).
    net.nodes
        .insert("dea-1".into(), net.net.start("dea-1").await.unwrap());
    let mut pgr_events = net.node("pgr-1").events();
    traffic(&net, 3).await;
    wait_event(&mut pgr_events, cosigned_by_pgr(size)).await;
    // Finding the edit is `verify`'s: it names the record.
    let _kept = stop_keeping_files(net).await;
    let report = verify_dir(&dir).unwrap();
    let p = first_problem(&report);
    assert!(p.starts_with("record 0 (") && p.contains("altered"), "{p}");
}
