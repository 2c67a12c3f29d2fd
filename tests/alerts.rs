//! Alerts never wait on a dead or slow reader (the rule is in `node/deliver.rs`): readers that
//! take alerts and never acknowledge them, and a reader whose process was killed, hold an alert
//! for the alert deadline at most, and `enlace inbox` closes its connection cleanly when it is
//! interrupted, so the node does not wait for the connection to time out.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::raw::{self, Raw};
use common::{SendAndWait, TestNet, wait_event, within};
use enlace::node::Event;
use enlace::pb::{self, frame::Body};
use enlace::{Draft, Precedence};
use tokio::io::{AsyncBufReadExt, BufReader};

const ENLACE: &str = env!("CARGO_BIN_EXE_enlace");

fn liaison(body: &str) -> pb::LiaisonMessage {
    pb::LiaisonMessage {
        body: Some(enlace::payloads::text("en", body)),
        ..Default::default()
    }
}

/// A reader of PGR's inbox that takes every delivery and never acknowledges any; it holds
/// each stream open. Dropping it closes its connection.
struct Stuck {
    _conn: Raw,
    taken: tokio::task::JoinHandle<()>,
}

impl Drop for Stuck {
    fn drop(&mut self) {
        self.taken.abort();
    }
}

async fn stuck_reader(net: &TestNet) -> Stuck {
    let conn = net
        .raw("pgr", "clients/pgr/duty-desk", pb::Role::Client)
        .await
        .unwrap();
    let answer = conn
        .exchange(&raw::frame(Body::Subscribe(pb::Subscribe {
            unit: String::new(),
        })))
        .await;
    assert!(
        matches!(answer.body, Some(Body::Subscribed(_))),
        "{answer:?}"
    );
    let quic = conn.conn.clone();
    let taken = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok(stream) = quic.accept_bi().await {
            held.push(stream);
        }
    });
    Stuck { _conn: conn, taken }
}

/// `enlace inbox --follow` reading PGR's inbox, once it has subscribed (it prints its table
/// header then).
async fn cli_reader(net: &TestNet) -> tokio::process::Child {
    let mut child = tokio::process::Command::new(ENLACE)
        .args(["inbox", "--follow"])
        .envs(net.cli_env("pgr", "duty-desk"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let header = within("the inbox header", lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert!(header.starts_with("RECEIVED (UTC)"), "{header}");
    // Keep reading its output so that it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_reach_a_healthy_reader_past_readers_that_never_ack_or_vanished() {
    let net = TestNet::mesh(&["dea", "pgr"]).await;
    let mut events = net.node("pgr-1").events();
    // Two readers that never acknowledge, and one whose process is killed (its connection
    // lingers until the idle timeout, 30 s), all subscribed before the healthy one.
    let _stuck = [stuck_reader(&net).await, stuck_reader(&net).await];
    let mut vanished = cli_reader(&net).await;
    vanished.start_kill().unwrap();
    vanished.wait().await.unwrap();
    let healthy = net.subscriber("pgr", "duty-desk").await;
    let mut inbox = healthy.inbox().unwrap();

    let dea = net.client("dea", "duty-desk").await;
    let start = Instant::now();
    let mut sent = Vec::new();
    for i in 0..4 {
        let a = dea
            .submit(
                Draft::new(&liaison(&format!("alert {i}")))
                    .to("pgr")
                    .precedence(Precedence::Flash),
            )
            .await
            .unwrap();
        sent.push(a.id);
    }
    let mut got = Vec::new();
    while got.len() < sent.len() {
        let d = within("alerts at the healthy reader", inbox.next())
            .await
            .unwrap();
        if !got.contains(&d.id()) {
            got.push(d.id());
        }
        d.ack().await.unwrap();
    }
    let took = start.elapsed();
    got.sort();
    sent.sort();
    assert_eq!(got, sent);
    // Each of the three bad readers holds an alert for the alert deadline (2 s) at most, and
    // then gets no more alerts until it acknowledges: 6 s in the worst case, not 30.
    assert!(
        took < Duration::from_secs(3 * 2 + 2),
        "the healthy reader waited {took:?}"
    );
    // The node said why the copies came back.
    let returned = wait_event(
        &mut events,
        |e| matches!(e, Event::Returned { reason, .. } if reason.contains("deadline")),
    )
    .await;
    let Event::Returned { reason, .. } = returned else {
        unreachable!()
    };
    assert_eq!(
        reason,
        "pgr/client/duty-desk did not acknowledge within the alert deadline \
         (limits.alert_ack_timeout_ms)"
    );
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enlace_inbox_closes_its_connection_on_sigint_and_sigterm() {
    let net = TestNet::mesh(&["dea", "pgr"]).await;
    for signal in ["-INT", "-TERM"] {
        let mut events = net.node("pgr-1").events();
        let mut reader = cli_reader(&net).await;
        let pid = reader.id().unwrap().to_string();
        let ok = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap();
        assert!(ok.success());
        let status = within("enlace inbox to exit", reader.wait()).await.unwrap();
        assert!(status.success(), "{signal}: {status}");
        // The node learns at once that the reader is gone: closed by it, not timed out.
        let gone = wait_event(
            &mut events,
            |e| matches!(e, Event::Disconnected { who, .. } if who == "pgr/client/duty-desk"),
        )
        .await;
        let Event::Disconnected { reason, .. } = gone else {
            unreachable!()
        };
        assert!(reason.contains("client closed"), "{signal}: {reason}");
    }
    net.stop().await;
}
