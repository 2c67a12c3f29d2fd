//! A relay killed mid-transfer: DEA's node reaches AFI's only through CENAPI's, which runs as a
//! real `enlaced` process. It is killed with SIGKILL while it relays a mixed load and restarted on
//! its data directory. Everything DEA's node accepted must reach AFI's application once.
//!
//! So that the relay holds unforwarded copies when it is killed, AFI's node is stopped first
//! and DEA goes on sending; the relay's restart must recover them from its store (its log says
//! how many), and AFI's node, started again, gets them.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::{Daemon, SendAndWait, certs, within};
use enlace::network::LocalNetwork;
use enlace::{Client, Dedup, Draft, Mailbox, MessageId, Precedence, pb};
use tokio::sync::Notify;

const MESSAGES: u64 = 400;

/// AFI's node is stopped once this many have reached AFI's application...
const KILL_AFTER: usize = 40;

/// ...and the relay killed once DEA's node has accepted this many more.
const HELD_BEFORE_KILL: usize = 60;

type Shown = Arc<Mutex<HashMap<MessageId, u32>>>;

/// AFI's application: counts what it is shown, acknowledges everything, until its node goes.
fn consume(mut inbox: enlace::Inbox, shown: Shown, progress: Arc<Notify>) {
    tokio::spawn(async move {
        while let Some(d) = inbox.next().await {
            assert_eq!(d.hops().len(), 3, "dea-1 → cenapi-1 → afi-1");
            *shown.lock().unwrap().entry(d.id()).or_default() += 1;
            progress.notify_waiters();
            // Its node may be going away: the acknowledgement is then remembered by `Dedup`.
            let _ = d.ack().await;
        }
    });
}

fn draft(id: MessageId, i: u64) -> Draft {
    let precedence = match i % 10 {
        0 => Precedence::Flash,
        1..=5 => Precedence::Routine,
        _ => Precedence::Bulk,
    };
    let body = pb::LiaisonMessage {
        body: Some(enlace::payloads::text(
            "es-MX",
            &format!("registro {i} {}", "x".repeat(600)),
        )),
        ..Default::default()
    };
    Draft::new(&body)
        .id(id)
        .to("afi")
        .precedence(precedence)
        .expires_in(Duration::from_secs(3600))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_mid_transfer_loses_nothing_and_delivers_nothing_twice() {
    common::init_logging();
    let dir = tempfile::tempdir().unwrap();
    let mut net = LocalNetwork::mesh(dir.path(), &certs(), &["dea", "cenapi", "afi"]).unwrap();
    net.extra
        .insert("dea-1".into(), "[routes]\nafi = \"cenapi-1\"\n".into());
    net.extra
        .insert("afi-1".into(), "[routes]\ndea = \"cenapi-1\"\n".into());
    net.links(&[("dea-1", "cenapi-1"), ("cenapi-1", "afi-1")])
        .unwrap();

    let mut relay = Daemon::start(&net.config_path("cenapi-1"));
    let dea = net.start("dea-1").await.unwrap();
    let afi = net.start("afi-1").await.unwrap();

    // One `Dedup` for both of AFI's readers: a copy shown and acknowledged before AFI's node
    // stopped, whose acknowledgement did not reach it, is offered again and dropped.
    let dedup = Dedup::default();
    let reader_options = || {
        net.client_options("afi", "duty-desk")
            .unwrap()
            .dedup(dedup.clone())
    };
    let reader = Client::connect(reader_options()).await.unwrap();
    let shown: Shown = Arc::default();
    let progress = Arc::new(Notify::new());
    let inbox = reader.subscribe(Mailbox::Inbox).await.unwrap();
    consume(inbox, shown.clone(), progress.clone());
    let count = |shown: &Shown| shown.lock().unwrap().len();

    // DEA sends while the relay is killed and restarted; DEA's node accepts throughout.
    let sender = Client::connect(net.client_options("dea", "analyst").unwrap())
        .await
        .unwrap();
    // The second half is sent once AFI's node is away (`go`).
    let sent = Arc::new(AtomicUsize::new(0));
    let sent_progress = Arc::new(Notify::new());
    let go = Arc::new(tokio::sync::Semaphore::new(0));
    let sending = tokio::spawn({
        let (sent, sent_progress, go) = (sent.clone(), sent_progress.clone(), go.clone());
        async move {
            let mut accepted = Vec::new();
            for i in 0..MESSAGES {
                if i == MESSAGES / 2 {
                    let _ = go.acquire().await.unwrap();
                }
                let id = MessageId::new_v7(SystemTime::now());
                sender.submit(draft(id, i)).await.unwrap();
                accepted.push(id);
                sent.fetch_add(1, Ordering::SeqCst);
                sent_progress.notify_waiters();
            }
            sender.close().await;
            accepted
        }
    });

    within("the first deliveries through the relay", async {
        loop {
            let wait = progress.notified();
            if count(&shown) >= KILL_AFTER {
                break;
            }
            wait.await;
        }
    })
    .await;
    // AFI's node goes away: what DEA's node sends on now waits at the relay.
    reader.close().await;
    afi.stop().await;
    go.add_permits(1);
    let stopped_at = MESSAGES as usize / 2;
    within("DEA's node accepting more while AFI is away", async {
        loop {
            let wait = sent_progress.notified();
            if sent.load(Ordering::SeqCst) >= stopped_at + HELD_BEFORE_KILL {
                break;
            }
            wait.await;
        }
    })
    .await;
    relay.kill9();
    assert!(
        sent.load(Ordering::SeqCst) < MESSAGES as usize,
        "the transfer was over before the kill"
    );
    let relay = Daemon::start(&net.config_path("cenapi-1"));
    // The relay held unforwarded copies when it was killed: it recovered them from its store.
    let recovered = relay
        .startup
        .iter()
        .find(|l| l.contains("recovered queues from the store"))
        .expect("the relay says what it recovered");
    let waiting: usize = recovered
        .split("waiting=")
        .nth(1)
        .and_then(|w| w.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no waiting count in {recovered:?}"));
    assert!(
        waiting >= 1,
        "the relay held nothing when killed: {recovered}"
    );

    // AFI's node back, with a new reader.
    let afi = net.start("afi-1").await.unwrap();
    let reader = Client::connect(reader_options()).await.unwrap();
    let inbox = reader.subscribe(Mailbox::Inbox).await.unwrap();
    consume(inbox, shown.clone(), progress.clone());

    let accepted = sending.await.unwrap();
    within("every accepted message at AFI after the restart", async {
        loop {
            let wait = progress.notified();
            if count(&shown) >= accepted.len() {
                break;
            }
            wait.await;
        }
    })
    .await;

    let shown = shown.lock().unwrap().clone();
    for id in &accepted {
        assert_eq!(
            shown.get(id),
            Some(&1),
            "{id} shown {:?} times",
            shown.get(id)
        );
    }
    assert_eq!(
        shown.len(),
        accepted.len(),
        "something never accepted was shown"
    );
    reader.close().await;
    let (status, _) = relay.terminate_keep_logs();
    assert!(status.success(), "{status}");
    tokio::join!(dea.stop(), afi.stop());
}
