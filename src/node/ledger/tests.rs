//! The ledger's own tests: every change of fate records one event and the store records that
//! make it survive a restart; and, read from the source, nothing else changes a fate.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use prost::Message as _;
use tokio::sync::broadcast;

use super::*;
use crate::dispatch::{CLIENT_WINDOWS, Dispatcher, Outcome, PEER_WINDOWS, RetryPolicy};
use crate::draft::Draft;
use crate::message::{Originator, Status};
use crate::route::PeerCopy;
use crate::store::{LiveCopies, StoreOptions, StoredMessage};

fn agency(s: &str) -> AgencyId {
    AgencyId::new(s).unwrap()
}

fn ledger(dir: &Path) -> (Ledger, mpsc::Receiver<Notice>, LiveCopies) {
    let (store, recovered) = Store::open(dir, StoreOptions::default()).unwrap();
    let (l, notices) = ledger_on(store);
    (l, notices, recovered)
}

/// dea-1's ledger, with a link to pgr-1, on `store`.
fn ledger_on(store: Store) -> (Ledger, mpsc::Receiver<Notice>) {
    Ledger::new(
        "dea-1",
        &agency("dea"),
        ["pgr-1".to_string()].into_iter(),
        100,
        1000,
        store,
        Events::new("dea-1"),
    )
}

fn message(precedence: Precedence, lifetime: Duration) -> Arc<Message> {
    message_with(precedence, lifetime, |d| d)
}

/// As [`message`], with `edit` applied to its draft.
fn message_with(
    precedence: Precedence,
    lifetime: Duration,
    edit: impl FnOnce(Draft) -> Draft,
) -> Arc<Message> {
    let o = Originator {
        agency: agency("dea"),
        node: "dea-1".into(),
        client: Some("duty-desk".into()),
    };
    let draft = Draft::new(&pb::LiaisonMessage::default())
        .to("dea/desk")
        .to("pgr")
        .precedence(precedence)
        .status(Status::Actual)
        .expires_in(lifetime);
    let env = edit(draft).finish(&o, SystemTime::now());
    Arc::new(Message::parse(env.encode_to_vec().into(), None).unwrap())
}

fn plan() -> Plan {
    Plan {
        local: vec![Mailbox::unit("desk").unwrap()],
        peers: vec![PeerCopy {
            node: "pgr-1".into(),
            agencies: vec![agency("pgr")],
        }],
    }
}

async fn take(l: &Ledger, m: &Arc<Message>) {
    try_take(l, m).await.unwrap();
}

fn taking(m: &Arc<Message>) -> Taking<'static> {
    Taking {
        message: m.clone(),
        hops: Vec::new(),
        plan: plan(),
        from: "dea/client/duty-desk",
        from_peer: false,
        signer_chain: Arc::from([]),
        now: SystemTime::now(),
    }
}

async fn try_take(l: &Ledger, m: &Arc<Message>) -> Result<pb::Accepted, Refusal> {
    l.take(taking(m)).await
}

/// The events recorded since `rx` subscribed.
fn drain(rx: &mut broadcast::Receiver<Event>) -> Vec<Event> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

fn dispatch(l: &Ledger, q: &Arc<Queue>, d: &mut Dispatcher) -> (InFlight, crate::dispatch::Ticket) {
    match l.next(q, d, SystemTime::now(), |_| true) {
        Next::Send(copy, ticket) => (copy, ticket),
        _ => panic!("expected a copy to send"),
    }
}

/// What a restart recovers, once the store has applied what the ledger recorded in the
/// background.
async fn settled_store(dir: &Path, l: Ledger) -> Vec<StoredMessage> {
    l.flush().await;
    l.close().await.unwrap();
    drop(l);
    let (_, _, recovered) = ledger(dir);
    recovered.into_iter().collect()
}

#[tokio::test]
async fn every_change_records_one_event_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (l, mut notices, _) = ledger(dir.path());
    let mut events = l.events().subscribe();
    let m = message(Precedence::Routine, Duration::from_secs(3600));
    take(&l, &m).await;
    assert!(matches!(
        &drain(&mut events)[..],
        [Event::Accepted {
            destinations: 2,
            ..
        }]
    ));
    assert!(matches!(notices.try_recv(), Ok(Notice::Taken { .. })));

    // The mailbox copy: dispatched, delivered, then its client went away (returned).
    let mailbox = l.mailbox(&Mailbox::unit("desk").unwrap()).unwrap();
    let mut d = Dispatcher::new(CLIENT_WINDOWS, RetryPolicy::default(), false);
    let (copy, ticket) = dispatch(&l, &mailbox, &mut d);
    l.delivered(&copy, "dea/client/desk");
    let action = d.settle(
        ticket,
        Outcome::Lost,
        copy.copy().attempts,
        SystemTime::now(),
    );
    l.settle(copy, action, "dea/client/desk");
    let e = drain(&mut events);
    assert!(
        matches!(
            &e[..],
            [
                Event::Dispatched { .. },
                Event::Delivered { attempt: 1, .. },
                Event::Returned { .. }
            ]
        ),
        "{e:?}"
    );
    // Then an attempt that timed out: retried later, its attempt counted.
    let (copy, ticket) = dispatch(&l, &mailbox, &mut d);
    let action = d.settle(
        ticket,
        Outcome::TimedOut,
        copy.copy().attempts,
        SystemTime::now(),
    );
    l.settle(copy, action, "dea/client/desk");
    let e = drain(&mut events);
    assert!(
        matches!(
            &e[..],
            [
                Event::Dispatched { .. },
                Event::Retrying { attempts: 1, .. }
            ]
        ),
        "{e:?}"
    );

    // The outbox copy: the peer is busy (deferred), then refuses it for good.
    let outbox = l.outbox("pgr-1").unwrap();
    let mut p = Dispatcher::new(PEER_WINDOWS, RetryPolicy::default(), true);
    let (copy, ticket) = dispatch(&l, &outbox, &mut p);
    let action = p.settle(
        ticket,
        Outcome::Busy(Some(Duration::ZERO)),
        0,
        SystemTime::now(),
    );
    l.settle(copy, action, "pgr-1");
    let (copy, ticket) = dispatch(&l, &outbox, &mut p);
    let refused = Outcome::Refused {
        code: RefusalCode::UnknownRecipient,
        reason: "no such unit".into(),
    };
    let action = p.settle(ticket, refused, 0, SystemTime::now());
    l.settle(copy, action, "pgr-1");
    let e = drain(&mut events);
    assert!(
        matches!(
            &e[..],
            [
                Event::Dispatched { .. },
                Event::Deferred { .. },
                Event::Dispatched { .. },
                Event::ForwardRefused { .. }
            ]
        ),
        "{e:?}"
    );
    // The originator hears of the refusal (after the delivered receipt of the mailbox copy).
    let told: Vec<Notice> = std::iter::from_fn(|| notices.try_recv().ok()).collect();
    assert!(
        matches!(
            &told[..],
            [
                Notice::Stage {
                    stage: pb::ReceiptStage::Delivered,
                    ..
                },
                Notice::Undelivered {
                    reason: pb::NonDeliveryReason::UnknownRecipient,
                    ..
                }
            ]
        ),
        "{told:?}"
    );

    // After a restart: the outbox copy is finished, the mailbox copy waits with its attempt.
    let recovered = settled_store(dir.path(), l).await;
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    assert_eq!(recovered[0].queue, "mailbox:dea/desk");
    assert_eq!(recovered[0].attempts, 1);
}

/// How many copies wait in `q`.
fn waiting(q: &Queue) -> usize {
    q.with_lanes(|l| l.len())
}

/// Takes every copy of `mailbox` as a client would (acknowledging each), waiting while cold
/// copies are brought back; returns their ids in the order they came.
async fn consume_all(l: &Ledger, mailbox: &Arc<Queue>) -> Vec<crate::message::MessageId> {
    let mut d = Dispatcher::new(CLIENT_WINDOWS, RetryPolicy::default(), false);
    let mut ids = Vec::new();
    while !mailbox.is_empty() {
        let changed = mailbox.notified();
        match l.next(mailbox, &mut d, SystemTime::now(), |_| true) {
            Next::Send(copy, ticket) => {
                ids.push(copy.copy().id());
                let action = d.settle(ticket, Outcome::Done, 0, SystemTime::now());
                l.settle(copy, action, "dea/client/desk");
            }
            _ => tokio::time::timeout(Duration::from_secs(10), changed)
                .await
                .expect("cold copies come back"),
        }
    }
    ids
}

#[tokio::test]
async fn a_deep_backlog_waits_cold_and_comes_back_in_order_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let deep = |store| {
        Ledger::new(
            "dea-1",
            &agency("dea"),
            std::iter::empty(),
            10_000,
            10_000,
            store,
            Events::new("dea-1"),
        )
        .0
    };
    let (store, _) = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let l = deep(store);
    let local = Plan {
        local: vec![Mailbox::unit("desk").unwrap()],
        peers: Vec::new(),
    };
    let take_all = async |l: &Ledger, n: usize, p: Precedence| {
        let mut ids = Vec::new();
        for _ in 0..n {
            let m = message(p, Duration::from_secs(3600));
            ids.push(m.id);
            let taking = Taking {
                message: m,
                hops: Vec::new(),
                plan: local.clone(),
                from: "dea/client/duty-desk",
                from_peer: false,
                signer_chain: Arc::from([]),
                now: SystemTime::now(),
            };
            l.take(taking).await.unwrap();
        }
        ids
    };
    let n = 2 * queue::HOT_COPIES + 10;
    let first = take_all(&l, n, Precedence::Routine).await;
    let mailbox = l.mailbox(&Mailbox::unit("desk").unwrap()).unwrap();
    assert_eq!(waiting(&mailbox), n);
    assert_eq!(
        mailbox.with_lanes(|q| q.hot_len()),
        queue::HOT_COPIES,
        "beyond its hot copies a lane keeps copies cold"
    );
    assert_eq!(
        consume_all(&l, &mailbox).await,
        first,
        "in order, each once"
    );

    // A restart brings analytical copies back cold, alerts whole; all in their order.
    let routine = take_all(&l, n, Precedence::Routine).await;
    let flash = take_all(&l, 3, Precedence::Flash).await;
    l.flush().await;
    l.close().await.unwrap();
    drop(l);
    let (store, recovered) = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let l = deep(store);
    l.recover(recovered).await;
    let mailbox = l.mailbox(&Mailbox::unit("desk").unwrap()).unwrap();
    assert_eq!(waiting(&mailbox), n + 3);
    assert_eq!(
        mailbox.with_lanes(|q| q.hot_len()),
        3,
        "only the alerts are read back"
    );
    let expected: Vec<_> = flash.into_iter().chain(routine).collect();
    assert_eq!(consume_all(&l, &mailbox).await, expected);
    let left = settled_store(dir.path(), l).await;
    assert!(left.is_empty(), "every copy was finished: {}", left.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_read_back_from_the_store_keeps_its_deadline_attempts_and_arrival() {
    // A cold copy, or one recovered whole, comes back as it was queued: due to go at the
    // earlier of its expiry and its originator's retention period.
    let dir = tempfile::tempdir().unwrap();
    let (l, _notices, _) = ledger(dir.path());
    let retain = SystemTime::now() + Duration::from_secs(60);
    let m = message_with(Precedence::Routine, Duration::from_secs(3600), |d| {
        d.handling(pb::HandlingPolicy {
            retain_until: Some(crate::message::timestamp(retain)),
            ..Default::default()
        })
    });
    assert!(m.deadline() < m.expires_at);
    try_take(&l, &m).await.unwrap();
    let mailbox = l.mailbox(&Mailbox::unit("desk").unwrap()).unwrap();
    let mut d = Dispatcher::new(CLIENT_WINDOWS, RetryPolicy::default(), false);
    let (copy, _) = dispatch(&l, &mailbox, &mut d);
    let seq = copy.copy().seq.wait().await.unwrap();
    l.0.store.commit(vec![Op::Attempt(seq, 2)]).await.unwrap();
    let cold = Entry {
        precedence: Precedence::Routine,
        expires_at: m.expires_at,
        item: seq,
    };
    let back = l.read_whole(&[cold]).await;
    let [super::cold::Back::Whole(e)] = &back[..] else {
        panic!("the copy reads back whole");
    };
    assert_eq!(e.expires_at, m.deadline());
    assert_eq!(e.item.attempts, 2);
    let millis = crate::message::millis;
    assert_eq!(millis(e.item.received_at), millis(copy.copy().received_at));
    assert!(!l.recovered(seq), "taken in this run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubmissions_are_taken_once_whatever_the_precedence() {
    let dir = tempfile::tempdir().unwrap();
    let (l, _notices, _) = ledger(dir.path());
    let mut events = l.events().subscribe();
    for precedence in [Precedence::Flash, Precedence::Routine] {
        let m = message(precedence, Duration::from_secs(3600));
        // Concurrent resubmissions, and one after the first was taken.
        let (a, b, c) = tokio::join!(try_take(&l, &m), try_take(&l, &m), try_take(&l, &m));
        for r in [a, b, c] {
            assert_eq!(r.unwrap().message_id, m.id.to_bytes());
        }
        try_take(&l, &m).await.unwrap();
        let e = drain(&mut events);
        let accepted = e.iter().filter(|e| matches!(e, Event::Accepted { .. }));
        let duplicates = e.iter().filter(|e| matches!(e, Event::Duplicate { .. }));
        assert_eq!((accepted.count(), duplicates.count()), (1, 3), "{e:?}");
    }
    // One copy of each message per destination.
    let mailbox = l.mailbox(&Mailbox::unit("desk").unwrap()).unwrap();
    assert_eq!(waiting(&mailbox), 2);
    assert_eq!(waiting(&l.outbox("pgr-1").unwrap()), 2);

    // The same id from another originator is refused; from the same originator with other
    // bytes (rebuilt for a retry) it is a duplicate.
    let m = message(Precedence::Flash, Duration::from_secs(3600));
    take(&l, &m).await;
    let mut other = Message::clone(&m);
    other.originator.client = Some("analyst".into());
    let r = try_take(&l, &Arc::new(other)).await.unwrap_err();
    assert_eq!(r.code, RefusalCode::DuplicateId);
    assert!(r.reason.contains("fresh id"), "{}", r.reason);
    let mut rebuilt = Message::clone(&m);
    rebuilt.envelope = bytes::Bytes::from_static(b"rebuilt");
    try_take(&l, &Arc::new(rebuilt)).await.unwrap();
    assert_eq!(waiting(&mailbox), 3);

    // After a restart, a resend of a message still queued is a duplicate too.
    l.flush().await;
    l.close().await.unwrap();
    drop(l);
    let (l, _notices, recovered) = ledger(dir.path());
    l.recover(recovered).await;
    try_take(&l, &m).await.unwrap();
    let mailbox = l.mailbox(&Mailbox::unit("desk").unwrap()).unwrap();
    assert_eq!(waiting(&mailbox), 3);
}

/// A batch is taken with one store request, and each message in it on its own: a duplicate
/// in the batch (or of a message taken before) is answered `Accepted` and queued once, and two
/// batches holding each other's ids (the same messages, in opposite orders, at once) both
/// finish instead of each waiting for the other's claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_take_each_message_once_and_never_wait_on_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let (l, _notices, _) = ledger(dir.path());
    let mut events = l.events().subscribe();
    let before = message(Precedence::Routine, Duration::from_secs(3600));
    take(&l, &before).await;
    drain(&mut events);
    let ms: Vec<_> = (0..32)
        .map(|_| message(Precedence::Routine, Duration::from_secs(3600)))
        .collect();
    // One batch: the messages, one of them twice, and the one taken before.
    let mut batch: Vec<_> = ms.iter().map(taking).collect();
    batch.push(taking(&ms[3]));
    batch.push(taking(&before));
    let answers = tokio::time::timeout(Duration::from_secs(10), l.take_all(batch, true))
        .await
        .expect("a batch holding one id twice waited on itself");
    assert_eq!(answers.len(), 34);
    for (a, m) in answers.iter().zip(ms.iter().chain([&ms[3], &before])) {
        assert_eq!(a.as_ref().unwrap().message_id, m.id.to_bytes());
    }
    let e = drain(&mut events);
    let accepted = e.iter().filter(|e| matches!(e, Event::Accepted { .. }));
    let duplicates = e.iter().filter(|e| matches!(e, Event::Duplicate { .. }));
    assert_eq!((accepted.count(), duplicates.count()), (32, 2));
    let mailbox = l.mailbox(&Mailbox::unit("desk").unwrap()).unwrap();
    assert_eq!(waiting(&mailbox), 33);

    // Crossed batches, many times over: each message is taken once, every submission answered.
    for round in 0..8 {
        let ms: Vec<_> = (0..6)
            .map(|_| message(Precedence::Routine, Duration::from_secs(3600)))
            .collect();
        let forward: Vec<_> = ms.iter().map(taking).collect();
        let backward: Vec<_> = ms.iter().rev().map(taking).collect();
        let both = async { tokio::join!(l.take_all(forward, true), l.take_all(backward, true)) };
        let (a, b) = tokio::time::timeout(Duration::from_secs(10), both)
            .await
            .unwrap_or_else(|_| panic!("round {round}: crossed batches waited on each other"));
        assert!(a.iter().chain(&b).all(Result::is_ok), "{a:?} {b:?}");
        let e = drain(&mut events);
        let accepted = e.iter().filter(|e| matches!(e, Event::Accepted { .. }));
        let duplicates = e.iter().filter(|e| matches!(e, Event::Duplicate { .. }));
        assert_eq!(
            (accepted.count(), duplicates.count()),
            (6, 6),
            "round {round}"
        );
    }
    assert_eq!(waiting(&mailbox), 33 + 8 * 6);
}

#[tokio::test]
async fn dropped_copies_return_and_dead_letters_are_redriven() {
    let dir = tempfile::tempdir().unwrap();
    let (l, _notices, _) = ledger(dir.path());
    let mut events = l.events().subscribe();
    let m = message(Precedence::Flash, Duration::from_secs(3600));
    take(&l, &m).await;
    let mailbox = l.mailbox(&Mailbox::unit("desk").unwrap()).unwrap();
    // A copy abandoned in flight (its task ended) goes back to its queue.
    let one = RetryPolicy {
        max_attempts: 1,
        ..RetryPolicy::default()
    };
    let mut d = Dispatcher::new(CLIENT_WINDOWS, one, false);
    let (copy, _) = dispatch(&l, &mailbox, &mut d);
    drop(copy);
    assert!(!mailbox.is_empty());
    // One failed attempt is all this policy allows: dead-lettered.
    let (copy, ticket) = dispatch(&l, &mailbox, &mut d);
    let action = d.settle(
        ticket,
        Outcome::Failed("reset".into()),
        0,
        SystemTime::now(),
    );
    l.settle(copy, action, "dea/client/desk");
    assert_eq!(mailbox.dead_letters().len(), 1);
    drain(&mut events);
    // The copy's write is durable (`take` returned), so it can be redriven at once.
    let ids = l.redrive(None, |_| true, "dea/operator/ops").await.unwrap();
    assert_eq!(ids, vec![m.id]);
    let e = drain(&mut events);
    assert!(matches!(&e[..], [Event::Redriven { .. }]), "{e:?}");
    assert!(mailbox.dead_letters().is_empty() && !mailbox.is_empty());
}

#[tokio::test]
async fn expired_copies_are_finished_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (l, mut notices, _) = ledger(dir.path());
    let m = message(Precedence::Routine, Duration::from_millis(1));
    take(&l, &m).await;
    let _ = notices.try_recv();
    let mut events = l.events().subscribe();
    l.sweep(SystemTime::now() + Duration::from_secs(1));
    let e = drain(&mut events);
    assert!(
        matches!(&e[..], [Event::Expired { .. }, Event::Expired { .. }]),
        "{e:?}"
    );
    assert!(matches!(notices.try_recv(), Ok(Notice::Undelivered { .. })));
    let recovered = settled_store(dir.path(), l).await;
    assert!(recovered.is_empty(), "{recovered:?}");
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(sources(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

#[test]
fn no_fate_changes_outside_the_ledger() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let rel = |p: &Path| p.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
    let ledger = |f: &str| f == "node/ledger.rs" || f.starts_with("node/ledger/");
    let reads_events = |f: &str| f == "node/events.rs" || f == "node/metrics.rs";
    // What changes a fate, and the only files that may name it.
    // Each rule: a pattern, and which files (relative to src/) may contain it.
    type Allowed<'a> = &'a dyn Fn(&str) -> bool;
    let rules: &[(&str, Allowed)] = &[
        // The store's fate records and commits: the ledger writes them; the store defines them.
        ("Op::Put", &|f| ledger(f) || f.starts_with("store/")),
        ("Op::Done", &|f| ledger(f) || f.starts_with("store/")),
        ("Op::Attempt", &|f| ledger(f) || f.starts_with("store/")),
        ("Op::DeadLetter", &|f| ledger(f) || f.starts_with("store/")),
        ("Op::Redrive", &|f| ledger(f) || f.starts_with("store/")),
        (".commit(", &|f| ledger(f) || f.starts_with("store/")),
        (".commit_if_new(", &|f| ledger(f) || f.starts_with("store/")),
        (".commit_each(", &|f| ledger(f) || f.starts_with("store/")),
        // The store is opened once, and handed to the ledger.
        ("Store::open", &|f| {
            f == "node/runtime.rs" || ledger(f) || f.starts_with("store/")
        }),
        // Queues change only through the ledger (their mutators are private to it, too).
        (".push_checked(", &|f| ledger(f) || f == "lanes.rs"),
        // The dispatcher's unit tests move plain lanes (no queue, no ledger) to show its rules.
        (".requeue(", &|f| {
            ledger(f) || f == "lanes.rs" || f == "dispatch.rs"
        }),
        (".retry_at(", &|f| {
            ledger(f) || f == "lanes.rs" || f == "dispatch.rs"
        }),
        (".take_dead(", &ledger),
        (".drain_expired(", &|f| ledger(f) || f == "lanes.rs"),
        // The events of fate changes are recorded by the ledger alone (events.rs defines them;
        // the metrics count them, reading each event `Events::record` hands them, and record
        // none: see the last rule).
        ("Event::Accepted {", &|f| ledger(f) || reads_events(f)),
        ("Event::Refused {", &|f| ledger(f) || reads_events(f)),
        ("Event::Dispatched {", &|f| ledger(f) || reads_events(f)),
        ("Event::Delivered {", &|f| ledger(f) || reads_events(f)),
        ("Event::Acknowledged {", &|f| ledger(f) || reads_events(f)),
        ("Event::Forwarded {", &|f| ledger(f) || reads_events(f)),
        ("Event::ForwardRefused {", &|f| ledger(f) || reads_events(f)),
        ("Event::Returned {", &|f| ledger(f) || reads_events(f)),
        ("Event::Deferred {", &|f| ledger(f) || reads_events(f)),
        ("Event::Retrying {", &|f| ledger(f) || reads_events(f)),
        ("Event::DeadLettered {", &|f| ledger(f) || reads_events(f)),
        ("Event::Redriven {", &|f| ledger(f) || reads_events(f)),
        ("Event::Expired {", &|f| ledger(f) || reads_events(f)),
        ("Event::Purged {", &|f| ledger(f) || reads_events(f)),
        ("Event::Duplicate {", &|f| ledger(f) || reads_events(f)),
        (".record(", &|f| {
            f != "node/metrics.rs" && !f.starts_with("node/metrics/")
        }),
    ];
    let mut found = Vec::new();
    for path in sources(&src) {
        let file = rel(&path);
        let text = std::fs::read_to_string(&path).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for (pattern, allowed) in rules {
                if code.contains(pattern) && !allowed(&file) {
                    found.push(format!("src/{file}:{}: {pattern}", n + 1));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "a copy's fate changes outside node::ledger:\n{}",
        found.join("\n")
    );
}

#[tokio::test]
async fn a_failed_fsync_refuses_store_failed_naming_no_file_stops_the_node_and_loses_nothing() {
    use crate::store::disk::sim::SimDisk;
    use std::sync::atomic::Ordering;

    let disk = SimDisk::default();
    let dir = Path::new("/var/lib/enlace/data/store");
    let (store, _) = Store::open_simulated(dir, StoreOptions::default(), disk.clone()).unwrap();
    let (l, _notices) = ledger_on(store);
    let kept = message(Precedence::Routine, Duration::from_secs(3600));
    try_take(&l, &kept).await.unwrap();

    disk.flags.fail_sync.store(true, Ordering::SeqCst);
    for precedence in [Precedence::Routine, Precedence::Flash] {
        let lost = message(precedence, Duration::from_secs(3600));
        let refusal = try_take(&l, &lost).await.unwrap_err();
        assert_eq!(refusal.code, RefusalCode::StoreFailed, "{}", refusal.reason);
        assert!(refusal.is_busy(), "retry later or elsewhere");
        let named = ["/var/lib", "seg-", "fdatasync", "injected"];
        assert!(
            !named.iter().any(|w| refusal.reason.contains(w)),
            "names no file and no cause: {}",
            refusal.reason
        );
        assert!(refusal.reason.contains("retry"), "{}", refusal.reason);
    }
    // The node is told to stop (its runtime exits with `NodeError::StorageFailed`), and never
    // retries the fsync: with the fault gone, the store stays failed.
    tokio::time::timeout(Duration::from_secs(5), l.fatal())
        .await
        .expect("the ledger reports the failure");
    disk.flags.fail_sync.store(false, Ordering::SeqCst);
    let after = message(Precedence::Routine, Duration::from_secs(3600));
    let refusal = try_take(&l, &after).await.unwrap_err();
    assert_eq!(refusal.code, RefusalCode::StoreFailed);

    // Restarted after a power cut, the node has what it accepted, and nothing it refused.
    let (store, recovered) =
        Store::open_simulated(dir, StoreOptions::default(), disk.crash(|_| 0)).unwrap();
    let ids: Vec<[u8; 16]> = recovered.into_iter().map(|m| m.message_id).collect();
    assert!(
        !ids.is_empty() && ids.iter().all(|id| id == kept.id.as_bytes()),
        "{ids:?}"
    );
    store.close().await.unwrap();
}
