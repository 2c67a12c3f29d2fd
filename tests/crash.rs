//! Crash tests with real processes: `enlaced` is killed with SIGKILL in the middle of mixed load
//! and restarted on the same data directory, several times. Every message the node acknowledged
//! to a sender must reach the application, and none twice.
//!
//! `ENLACE_CRASH_ROUNDS` sets the number of kill/restart rounds (default 3, the CI version; the
//! longer run documented in README.md uses 50).

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::{Daemon, SendAndWait, certs, within};
use enlace::network::LocalNetwork;
use enlace::{
    Client, ClientOptions, Dedup, Draft, Inbox, Mailbox, MessageId, Precedence, SubmitError, pb,
};
use tokio::sync::Notify;
use tokio::task::JoinSet;

/// What the application saw.
#[derive(Default)]
struct Seen {
    /// Times each id was handed to the application.
    shown: HashMap<MessageId, u32>,
    /// Ids the application acknowledged.
    acked: HashSet<MessageId>,
    /// Ids handed to the application again after it had acknowledged them: the library's
    /// promise is that this stays empty.
    shown_after_ack: Vec<MessageId>,
}

fn record(body: &str) -> pb::LiaisonMessage {
    pb::LiaisonMessage {
        body: Some(enlace::payloads::text("es-MX", body)),
        ..Default::default()
    }
}

fn draft(id: MessageId, i: u64) -> Draft {
    let precedence = match i % 10 {
        0 => Precedence::Flash,
        1..=5 => Precedence::Routine,
        _ => Precedence::Bulk,
    };
    Draft::new(&record(&format!("registro {i} {}", "x".repeat(900))))
        .id(id)
        .to("dea")
        .precedence(precedence)
        .expires_in(Duration::from_secs(3600))
}

/// Reads the inbox until the connection ends, acknowledging everything.
fn consume(
    mut inbox: Inbox,
    seen: Arc<Mutex<Seen>>,
    progress: Arc<Notify>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(d) = inbox.next().await {
            {
                let mut s = seen.lock().unwrap();
                if s.acked.contains(&d.id()) {
                    s.shown_after_ack.push(d.id());
                }
                *s.shown.entry(d.id()).or_default() += 1;
                s.acked.insert(d.id());
            }
            progress.notify_waiters();
            // A failed ack (the node died) only means a redelivery, which the client drops.
            let _ = d.ack().await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_under_mixed_load_loses_nothing_acknowledged() {
    let rounds: u64 = std::env::var("ENLACE_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let net = LocalNetwork::mesh(dir.path(), &certs(), &["dea"]).unwrap();
    let config = net.config_path("dea-1");
    let options = |client: &str| -> ClientOptions { net.client_options("dea", client).unwrap() };
    let dedup = Dedup::default();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let progress = Arc::new(Notify::new());
    let accepted = Arc::new(Mutex::new(HashSet::<MessageId>::new()));
    // Sends whose outcome is unknown (the node died with them in flight): resent, same id.
    let mut unknown: Vec<(MessageId, u64)> = Vec::new();
    let mut next = 0u64;
    let per_round = 400u64;

    let mut daemon = Daemon::start(&config);
    for round in 0..=rounds {
        let consumer_options = options("duty-desk").dedup(dedup.clone());
        let consumer_client = Client::connect(consumer_options).await.unwrap();
        let inbox = consumer_client.subscribe(Mailbox::Inbox).await.unwrap();
        let consumer = consume(inbox, seen.clone(), progress.clone());
        let sender = Arc::new(Client::connect(options("analyst")).await.unwrap());

        let mut batch: Vec<(MessageId, u64)> = std::mem::take(&mut unknown);
        let last = round == rounds;
        for _ in 0..per_round {
            batch.push((MessageId::new_v7(SystemTime::now()), next));
            next += 1;
        }
        let kill_after = if last { u64::MAX } else { per_round / 2 };
        let mut in_flight = JoinSet::new();
        let mut accepted_now = 0u64;
        let mut killed = false;
        let mut pending = batch.into_iter();
        loop {
            while !killed && in_flight.len() < 64 {
                let Some((id, i)) = pending.next() else { break };
                let s = sender.clone();
                in_flight.spawn(async move { (id, i, s.submit(draft(id, i)).await) });
            }
            let Some(done) = in_flight.join_next().await else {
                break;
            };
            let (id, i, result) = done.unwrap();
            match result {
                Ok(a) => {
                    assert_eq!(a.id, id);
                    accepted.lock().unwrap().insert(id);
                    accepted_now += 1;
                }
                Err(SubmitError::Connection(_)) => unknown.push((id, i)),
                Err(e) => panic!("message {id} refused: {e}"),
            }
            if !killed && accepted_now >= kill_after {
                // SIGKILL in the middle of the load: sends and deliveries are in flight. The
                // clients then give up on the dead node at once instead of waiting for QUIC's
                // idle timeout; what they had in flight has an unknown outcome.
                daemon.kill9();
                sender.abort();
                consumer_client.abort();
                killed = true;
            }
        }
        unknown.extend(pending);
        if last {
            // Everything the node accepted, in any round, must reach the application.
            let everything = accepted.lock().unwrap().clone();
            let all_shown = async {
                loop {
                    let notified = progress.notified();
                    if everything
                        .iter()
                        .all(|id| seen.lock().unwrap().shown.contains_key(id))
                    {
                        return;
                    }
                    notified.await;
                }
            };
            tokio::time::timeout(Duration::from_secs(60), all_shown)
                .await
                .expect("every accepted message is delivered within 60 s");
        }
        drop(sender);
        // The consumer's inbox ends with its connection (bounded: a test must fail, not hang).
        let inbox_ends = "the consumer's inbox ends with its connection";
        if !last {
            let _ = within(inbox_ends, consumer).await;
            drop(consumer_client);
            daemon = Daemon::start(&config);
        } else {
            consumer_client.close().await;
            let _ = within(inbox_ends, consumer).await;
        }
    }
    let status = daemon.terminate_keep_logs().0;
    assert!(status.success(), "enlaced exited with {status}");

    let s = seen.lock().unwrap();
    let accepted = accepted.lock().unwrap();
    assert!(
        unknown.is_empty(),
        "{} sends never completed",
        unknown.len()
    );
    assert!(
        accepted.len() as u64 >= per_round * (rounds + 1) / 2,
        "load actually ran"
    );
    let missing: Vec<_> = accepted
        .iter()
        .filter(|id| !s.shown.contains_key(id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} accepted messages never delivered",
        missing.len()
    );
    assert!(
        s.shown_after_ack.is_empty(),
        "shown again after ack: {:?}",
        s.shown_after_ack
    );
    let phantom = s.shown.keys().filter(|id| !accepted.contains(id)).count();
    assert_eq!(phantom, 0, "delivered messages that were never accepted");
}

/// A node that restarts resets the connections of its previous life at once (a stateless reset
/// from the key it keeps in its data directory): a client's next packet draws it, and the
/// client hears that the connection is gone in well under a second, instead of after its idle
/// timeout (30 s); an idle reader hears it with its next keep-alive (every second). A new
/// connection then works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_resets_its_previous_connections_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let net = LocalNetwork::mesh(dir.path(), &certs(), &["dea"]).unwrap();
    let config = net.config_path("dea-1");
    let options = net.client_options("dea", "analyst").unwrap();
    let note = |i: u64| draft(MessageId::new_v7(SystemTime::now()), i);

    let mut daemon = Daemon::start(&config);
    let client = Client::connect(options.clone()).await.unwrap();
    client.submit(note(0)).await.unwrap();
    let reader = Client::connect(net.client_options("dea", "duty-desk").unwrap())
        .await
        .unwrap();
    let mut inbox = reader.subscribe(Mailbox::Inbox).await.unwrap();
    let d = within("the first note", inbox.next()).await.unwrap();
    d.ack().await.unwrap();
    assert!(dir.path().join("data/dea-1/reset.key").exists());
    daemon.kill9();
    let _daemon = Daemon::start(&config);

    let started = std::time::Instant::now();
    let answer = within("the old connection's end", async {
        client.send(note(1)).await?.await
    })
    .await;
    let waited = started.elapsed();
    // Without the reset the send would wait out the idle timeout: 30 s.
    assert!(
        matches!(answer, Err(SubmitError::Connection(_))),
        "expected the old connection to be gone, got {answer:?}"
    );
    assert!(waited < Duration::from_secs(1), "noticed after {waited:?}");
    // The idle reader's subscription ends with its next keep-alive.
    assert!(
        within("the idle reader's end", inbox.next())
            .await
            .is_none()
    );
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(3),
        "the idle reader noticed after {waited:?}"
    );
    let again = Client::connect(options).await.unwrap();
    again.submit(note(2)).await.unwrap();
}
