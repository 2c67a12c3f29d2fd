//! A relay killed mid-transfer: DEA's node reaches AFI's only through CENAPI's, which runs as a
//! real `enlaced` process. It is killed with SIGKILL while it relays a mixed load and restarted on
//! its data directory. Everything DEA's node accepted must reach AFI's application once.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::{Daemon, SendAndWait, certs, within};
use enlace::network::LocalNetwork;
use enlace::{Client, Draft, Mailbox, MessageId, Precedence, pb};
use tokio::sync::Notify;

const MESSAGES: u64 = 400;

/// Killed once this many have reached AFI's application.
const KILL_AFTER: usize = 40;

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

    // AFI's application: counts what it is shown, acknowledges everything.
    let reader = Client::connect(net.client_options("afi", "duty-desk").unwrap())
        .await
        .unwrap();
    let mut inbox = reader.subscribe(Mailbox::Inbox).await.unwrap();
    let shown: Arc<Mutex<HashMap<MessageId, u32>>> = Arc::default();
    let progress = Arc::new(Notify::new());
    let consumer = tokio::spawn({
        let (shown, progress) = (shown.clone(), progress.clone());
        async move {
            while let Some(d) = inbox.next().await {
                assert_eq!(d.hops().len(), 3, "dea-1 → cenapi-1 → afi-1");
                *shown.lock().unwrap().entry(d.id()).or_default() += 1;
                progress.notify_waiters();
                d.ack().await.unwrap();
            }
        }
    });
    let count = |shown: &Arc<Mutex<HashMap<MessageId, u32>>>| shown.lock().unwrap().len();

    // DEA sends while the relay is killed and restarted; DEA's node accepts throughout.
    let sender = Client::connect(net.client_options("dea", "analyst").unwrap())
        .await
        .unwrap();
    let sending = tokio::spawn(async move {
        let mut accepted = Vec::new();
        for i in 0..MESSAGES {
            let id = MessageId::new_v7(SystemTime::now());
            sender.submit(draft(id, i)).await.unwrap();
            accepted.push(id);
        }
        sender.close().await;
        accepted
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
    relay.kill9();
    let delivered_before = count(&shown);
    assert!(
        delivered_before < MESSAGES as usize,
        "the transfer was over before the kill"
    );
    let relay = Daemon::start(&net.config_path("cenapi-1"));

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
    consumer.abort();
    let (status, _) = relay.terminate_keep_logs();
    assert!(status.success(), "{status}");
    tokio::join!(dea.stop(), afi.stop());
}
