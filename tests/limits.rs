//! Bounded resources per client, probed with the raw client: slow frames, partial frames beyond
//! the byte budget, many connections per certificate, envelopes naming too many addressees,
//! attacker-sized log lines and floods of bad frames. Each bound is asserted exactly, and then
//! that the node still serves everyone else.

mod common;

use std::time::{Duration, SystemTime};

use common::raw::{self, Raw, Signer};
use common::{SendAndWait, TestNet, wait_event, within};
use enlace::node::Event;
use enlace::pb::{self, RefusalCode, frame::Body};
use enlace::{Draft, Mailbox};
use tokio::sync::broadcast;

fn liaison(body: &str) -> pb::LiaisonMessage {
    pb::LiaisonMessage {
        body: Some(enlace::payloads::text("en", body)),
        ..Default::default()
    }
}

async fn desk(net: &TestNet) -> Raw {
    net.raw("dea", "clients/dea/duty-desk", pb::Role::Client)
        .await
        .unwrap()
}

/// A valid alert of dea/duty-desk to `to`, signed, as a frame.
fn alert_frame(to: &[&str]) -> (Vec<u8>, pb::SignedEnvelope) {
    let env = raw::envelope(
        ("dea", "dea-1", "duty-desk"),
        to,
        pb::Precedence::Flash,
        SystemTime::now(),
        Duration::from_secs(60),
        "alert",
    );
    let signed = Signer::load("clients/dea/duty-desk").seal(&env);
    let frame = raw::frame(Body::Submit(pb::Submit {
        envelope: Some(signed.clone()),
    }));
    (frame, signed)
}

/// The node still serves: a client of DEA sends to PGR and PGR's reader gets it.
async fn still_serves(net: &TestNet) {
    let pgr = net.subscriber("pgr", "duty-desk").await;
    let dea = net.client("dea", "analyst").await;
    let sent = dea
        .submit(Draft::new(&liaison("still served")).to("pgr"))
        .await
        .unwrap();
    let mut inbox = pgr.inbox().unwrap();
    // Alerts the test sent to PGR before may come first.
    loop {
        let d = within("a delivery", inbox.next()).await.unwrap();
        let id = d.id();
        d.ack().await.unwrap();
        if id == sent.id {
            break;
        }
    }
    dea.close().await;
    pgr.close().await;
}

fn refused_by(e: &Event, who: &str) -> bool {
    matches!(e, Event::Refused { from, .. } if from == who)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_sent_a_byte_at_a_time_is_refused_at_its_deadline() {
    let net = TestNet::mesh_with_limits(&["dea", "pgr"], &["frame_deadline_ms = 500"]).await;
    let conn = desk(&net).await;
    let (frame, signed) = alert_frame(&["pgr"]);
    let (mut send, recv) = conn.conn.open_bi().await.unwrap();
    // The length and a few bytes, then one byte every 100 ms: far slower than the frame needs.
    send.write_all(&frame[..8]).await.unwrap();
    let trickle = tokio::spawn(async move {
        for b in &frame[8..] {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if send.write_all(std::slice::from_ref(b)).await.is_err() {
                return;
            }
        }
    });
    let (_, answer) = within("the refusal", raw::read_frame(recv, 1 << 20))
        .await
        .unwrap();
    let r = raw::refused(answer);
    assert_eq!(r.code(), RefusalCode::Malformed);
    assert!(
        r.reason
            .contains("frame not complete within 500ms of its first byte"),
        "{}",
        r.reason
    );
    trickle.abort();
    // The same connection carries the next frame at a normal pace.
    conn.submit(signed).await.unwrap();
    still_serves(&net).await;
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_frames_take_a_budget_before_anything_is_allocated() {
    // Two frames of 1 MiB take the whole budget of a connection; the third waits for room
    // instead of being allocated, while other connections go on.
    let net = TestNet::mesh_with_limits(
        &["dea", "pgr"],
        &[
            "connection_frame_bytes = 2097152",
            "frame_deadline_ms = 3000",
        ],
    )
    .await;
    let mut events = net.node("dea-1").events();
    let hog = desk(&net).await;
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let (mut send, recv) = hog.conn.open_bi().await.unwrap();
        let len: u32 = 1024 * 1024;
        send.write_all(&len.to_be_bytes()).await.unwrap();
        // All but the last byte of the body.
        send.write_all(&vec![0u8; len as usize - 1]).await.unwrap();
        stalled.push((send, recv));
    }
    // Once the node has read both lengths, it holds their bytes (and reads nothing more).
    within("the node to take the stalled frames' budget", async {
        while net.node("dea-1").frame_bytes_held() < 2 * 1024 * 1024 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    // A small frame on the same connection: no budget left until a stalled one gives up.
    let (frame, _) = alert_frame(&["pgr"]);
    let small = {
        let hog = hog.conn.clone();
        tokio::spawn(async move {
            let (mut send, recv) = hog.open_bi().await.unwrap();
            send.write_all(&frame).await.unwrap();
            send.finish().unwrap();
            raw::read_frame(recv, 1 << 20).await.unwrap().1
        })
    };
    // Another connection of the same certificate is not held up: it is answered while the
    // hog's frames are still pending.
    let other = desk(&net).await;
    let (_, signed) = alert_frame(&["pgr"]);
    other.submit(signed).await.unwrap();
    assert!(
        !small.is_finished(),
        "the small frame did not wait for budget"
    );
    // The stalled frames miss their deadline; then the small one gets its budget and goes.
    for (_, recv) in stalled {
        let (_, answer) = within("a late frame", raw::read_frame(recv, 1 << 20))
            .await
            .unwrap();
        let r = raw::refused(answer);
        assert!(r.reason.contains("not complete within 3s"), "{}", r.reason);
    }
    let answer = within("the small frame", small).await.unwrap();
    // Given back once answered.
    within("the budget to be given back", async {
        while net.node("dea-1").frame_bytes_held() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(matches!(answer.body, Some(Body::Accepted(_))), "{answer:?}");
    wait_event(&mut events, |e| refused_by(e, "dea/client/duty-desk")).await;
    still_serves(&net).await;
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_certificate_are_capped() {
    let net =
        TestNet::mesh_with_limits(&["dea", "pgr"], &["max_connections_per_certificate = 2"]).await;
    let first = desk(&net).await;
    let _second = desk(&net).await;
    let third = net
        .raw("dea", "clients/dea/duty-desk", pb::Role::Client)
        .await;
    match third {
        Err(raw::DialError::Refused(r)) => {
            assert_eq!(r.code(), RefusalCode::Limit);
            assert!(
                r.reason.contains(
                    "dea/client/duty-desk already holds 2 connections to this node, the most \
                     one certificate may (limits.max_connections_per_certificate)"
                ),
                "{}",
                r.reason
            );
        }
        Err(e) => panic!("refused for the wrong reason: {e}"),
        Ok(_) => panic!("a third connection of one certificate was accepted"),
    }
    // Other certificates are not affected, and closing one connection makes room.
    let mut events = net.node("dea-1").events();
    first.conn.close(0u32.into(), b"done");
    wait_event(&mut events, |e| matches!(e, Event::Disconnected { .. })).await;
    let again = desk(&net).await;
    let (_, signed) = alert_frame(&["pgr"]);
    again.submit(signed).await.unwrap();
    still_serves(&net).await;
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_envelopes_create_no_mailboxes_and_addressees_are_capped() {
    let net = TestNet::mesh(&["dea", "pgr"]).await;
    let conn = desk(&net).await;
    let signer = Signer::load("clients/dea/duty-desk");
    let make = |units: std::ops::Range<usize>, created: SystemTime| {
        let names: Vec<String> = units.map(|i| format!("dea/unit-{i}")).collect();
        let to: Vec<&str> = names.iter().map(String::as_str).collect();
        raw::envelope(
            ("dea", "dea-1", "duty-desk"),
            &to,
            pb::Precedence::Flash,
            created,
            Duration::from_secs(60),
            "to many units",
        )
    };
    // The finding: one envelope naming 1,100 units filled the 1,024-mailbox table.
    let r = conn
        .submit(signer.seal(&make(0..1100, SystemTime::now())))
        .await
        .unwrap_err();
    assert_eq!(r.code(), RefusalCode::Limit);
    assert!(
        r.reason
            .contains("1100 addressees; an envelope names at most 1024"),
        "{}",
        r.reason
    );
    let r = conn
        .submit(signer.seal(&make(0..65, SystemTime::now())))
        .await
        .unwrap_err();
    assert_eq!(r.code(), RefusalCode::Limit);
    assert!(
        r.reason.contains(
            "the envelope names 65 addressees; this node accepts at most 64 (limits.max_addressees)"
        ),
        "{}",
        r.reason
    );
    // Twenty refused envelopes of 64 distinct units each (expired): more units than the
    // mailbox table holds, none of which gets a mailbox.
    let old = SystemTime::now() - Duration::from_secs(120);
    for i in 0..20 {
        let r = conn
            .submit(signer.seal(&make(i * 64..(i + 1) * 64, old)))
            .await
            .unwrap_err();
        assert_eq!(r.code(), RefusalCode::Expired, "{}", r.reason);
    }
    // A unit nobody used before still works.
    let analyst = net.client("dea", "analyst").await;
    let mut own = analyst
        .subscribe(Mailbox::unit("analyst").unwrap())
        .await
        .unwrap();
    let sent = net
        .client("dea", "duty-desk")
        .await
        .submit(Draft::new(&liaison("to the analyst")).to("dea/analyst"))
        .await
        .unwrap();
    let d = within("the analyst's copy", own.next()).await.unwrap();
    assert_eq!(d.id(), sent.id);
    still_serves(&net).await;
    net.stop().await;
}

/// Collects the node's refusal events for `who` until the connection of `who` is reported
/// closed, so the count is final; returns them and why it was closed.
async fn refusals_until_disconnected(
    events: &mut broadcast::Receiver<Event>,
    who: &str,
) -> (Vec<String>, String) {
    let mut reasons = Vec::new();
    let closed = within("the connection to be closed", async {
        loop {
            match events.recv().await {
                Ok(Event::Refused { from, reason, .. }) if from == who => reasons.push(reason),
                Ok(Event::Disconnected { who: w, reason, .. }) if w == who => return reason,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await;
    (reasons, closed)
}

/// The refusals of `who` recorded so far (the node records a refusal before it answers).
fn refusals_so_far(events: &mut broadcast::Receiver<Event>, who: &str) -> Vec<String> {
    let mut reasons = Vec::new();
    loop {
        match events.try_recv() {
            Ok(Event::Refused { from, reason, .. }) if from == who => reasons.push(reason),
            Ok(_) => continue,
            Err(broadcast::error::TryRecvError::Lagged(n)) => panic!("{n} events missed"),
            Err(_) => return reasons,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacker_sized_input_gives_bounded_logs_and_bad_frames_close_the_connection() {
    let net = TestNet::mesh_with_limits(
        &["dea", "pgr"],
        &["refusal_log_burst = 5", "refusal_log_per_second = 1"],
    )
    .await;
    let who = "dea/client/duty-desk";
    let mut events = net.node("dea-1").events();
    let conn = desk(&net).await;
    let signer = Signer::load("clients/dea/duty-desk");
    let start = std::time::Instant::now();

    // A 900 KB originator name: refused, and logged in a line of bounded size.
    let huge = "x".repeat(900 * 1024);
    let env = raw::envelope(
        ("dea", "dea-1", &huge),
        &["pgr"],
        pb::Precedence::Flash,
        SystemTime::now(),
        Duration::from_secs(60),
        "big name",
    );
    let r = conn.submit(signer.seal(&env)).await.unwrap_err();
    assert_eq!(r.code(), RefusalCode::Invalid, "{}", r.reason);
    assert!(r.reason.len() < 2048, "{} bytes sent back", r.reason.len());
    let logged = wait_event(&mut events, |e| refused_by(e, who)).await;
    let Event::Refused { reason, .. } = &logged else {
        unreachable!()
    };
    assert!(reason.len() <= 600, "a {} byte log reason", reason.len());
    assert!(format!("{logged:?}").len() < 1024, "{logged:?}");

    // Refusals are rate-limited in the log (a burst of 5, then 1 a second): 100 expired
    // envelopes, every one answered, only a few logged.
    let expired = || {
        let env = raw::envelope(
            ("dea", "dea-1", "duty-desk"),
            &["pgr"],
            pb::Precedence::Flash,
            SystemTime::now() - Duration::from_secs(120),
            Duration::from_secs(60),
            "expired",
        );
        let (signed, conn) = (signer.seal(&env), &conn);
        async move {
            let r = conn.submit(signed).await.unwrap_err();
            assert_eq!(r.code(), RefusalCode::Expired);
        }
    };
    for _ in 0..100 {
        expired().await;
    }
    let logged = 1 + refusals_so_far(&mut events, who).len();
    let allowed = 5 + start.elapsed().as_secs() as usize + 1;
    assert!(
        logged <= allowed,
        "{logged} refusals logged, {allowed} allowed"
    );
    // Once the rate allows another line, it says how many were left out. (Waiting for the
    // rate limit's clock is what is tested here.)
    tokio::time::sleep(Duration::from_millis(1100)).await;
    expired().await;
    let later = refusals_so_far(&mut events, who);
    assert_eq!(later.len(), 1, "{later:#?}");
    assert!(
        later[0].ends_with(&format!(
            "({} earlier refusals of this connection not logged)",
            101 - logged
        )),
        "{later:#?}"
    );

    // 40 malformed frames, each on a stream of its own: the 16th closes the connection.
    let mut answered = 0;
    for _ in 0..40 {
        let Ok((mut send, recv)) = conn.conn.open_bi().await else {
            break;
        };
        let junk = [0, 0, 0, 3, 0xff, 0xff, 0xff];
        if send.write_all(&junk).await.is_err() {
            break;
        }
        let _ = send.finish();
        match raw::read_frame(recv, 1 << 20).await {
            Ok(_) => answered += 1,
            Err(_) => break,
        }
    }
    let (_, closed) = refusals_until_disconnected(&mut events, who).await;
    assert!(
        closed.contains("16 bad frames") && closed.contains("limits.max_bad_frames"),
        "{closed}"
    );
    assert!((15..=16).contains(&answered), "{answered} answered");
    assert!(conn.conn.close_reason().is_some());
    still_serves(&net).await;
    net.stop().await;
}
