//! Queue semantics: redelivery of unacknowledged messages, dead letters and their redrive by an
//! operator, and expiry with a non-delivery report to the originator.

mod common;

use std::time::Duration;

use common::{SendAndWait, TestNet, wait_event, within};
use enlace::node::Event;
use enlace::{BusyRetry, Client, Draft, Precedence, Status, SubmitError, pb};

fn liaison(body: &str) -> pb::LiaisonMessage {
    pb::LiaisonMessage {
        body: Some(enlace::payloads::text("en", body)),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_messages_are_redelivered_then_dead_lettered_and_redriven() {
    let net = TestNet::mesh_with_limits(
        &["dea"],
        &["ack_timeout_ms = 300", "max_delivery_attempts = 2"],
    )
    .await;
    let mut events = net.node("dea-1").events();
    let desk = net.subscriber("dea", "duty-desk").await;
    let analyst = net.client("dea", "analyst").await;
    let mut inbox = desk.inbox().unwrap();

    let acc = analyst
        .submit(Draft::new(&liaison("needs an ack")).to("dea"))
        .await
        .unwrap();
    // First attempt: the application drops it without acknowledging.
    let d = within("first delivery", inbox.next()).await.unwrap();
    assert_eq!((d.id(), d.attempt()), (acc.id, 1));
    drop(d);
    // Offered again (same id, next attempt) after the backoff; dropped again.
    let d = within("redelivery", inbox.next()).await.unwrap();
    assert_eq!((d.id(), d.attempt()), (acc.id, 2));
    drop(d);
    let dead = wait_event(&mut events, |e| matches!(e, Event::DeadLettered { .. })).await;
    match dead {
        Event::DeadLettered { id, queue, reason } => {
            assert_eq!(id, acc.id);
            assert_eq!(queue, "mailbox:dea");
            assert!(reason.contains("2 attempts failed"), "{reason}");
        }
        _ => unreachable!(),
    }

    // Dead letters are for operators only.
    match desk.dlq_list("").await {
        Err(SubmitError::Refused { code, reason, .. }) => {
            assert_eq!(code, pb::RefusalCode::Unauthorized);
            assert!(reason.contains("operator certificate"), "{reason}");
        }
        other => panic!("a client listed dead letters: {other:?}"),
    }
    let ops = net.client("dea", "ops").await;
    let list = ops.dlq_list("").await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].message_id.as_ref(), acc.id.as_bytes());
    assert_eq!(list[0].attempts, 2);
    assert_eq!(list[0].payload_type, "enlace.v1.LiaisonMessage");
    assert_eq!(ops.dlq_show(acc.id).await.unwrap().len(), 1);

    // Redriven, it is delivered again with attempts reset, and this time acknowledged.
    assert_eq!(
        ops.dlq_redrive(Some(acc.id), "").await.unwrap(),
        vec![acc.id]
    );
    let d = within("delivery after redrive", inbox.next())
        .await
        .unwrap();
    assert_eq!((d.id(), d.attempt()), (acc.id, 1));
    d.ack().await.unwrap();
    wait_event(
        &mut events,
        |e| matches!(e, Event::Acknowledged { id, .. } if *id == acc.id),
    )
    .await;
    assert!(ops.dlq_list("").await.unwrap().is_empty());
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_message_is_not_delivered_and_the_originator_is_told() {
    let net = TestNet::mesh(&["dea", "pgr"]).await;
    let dea_desk = net.subscriber("dea", "duty-desk").await;
    let sender = net.client("dea", "analyst").await;
    let mut pgr_events = net.node("pgr-1").events();

    // Nobody at PGR reads their inbox while this alert is alive.
    let acc = sender
        .submit(
            Draft::new(&liaison("the ship already sailed"))
                .to("pgr")
                .precedence(Precedence::Flash)
                .expires_in(Duration::from_millis(1500)),
        )
        .await
        .unwrap();
    wait_event(
        &mut pgr_events,
        |e| matches!(e, Event::Expired { id, .. } if *id == acc.id),
    )
    .await;

    // DEA's inbox gets a NonDelivery(EXPIRED) about it, from PGR's node.
    let d = within("non-delivery report", dea_desk.inbox().unwrap().next())
        .await
        .unwrap();
    assert_eq!(d.message().status(), Status::System);
    assert_eq!(d.message().in_reply_to(), Some(acc.id));
    let report: pb::NonDelivery = d.payload().unwrap();
    assert_eq!(report.reason(), pb::NonDeliveryReason::Expired);
    assert_eq!(report.message_id.as_ref(), acc.id.as_bytes());
    assert_eq!(
        (report.node.as_str(), report.addressee_agency.as_str()),
        ("pgr-1", "pgr")
    );
    d.ack().await.unwrap();

    // A PGR reader that connects now gets the next message, never the expired one.
    let pgr = net.subscriber("pgr", "duty-desk").await;
    let next = sender
        .submit(Draft::new(&liaison("fresh")).to("pgr"))
        .await
        .unwrap();
    let d = within("fresh message", pgr.inbox().unwrap().next())
        .await
        .unwrap();
    assert_eq!(d.id(), next.id);
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_refuses_with_retry_after_and_still_takes_flash() {
    let net = TestNet::mesh_with_limits(&["dea"], &["queue_capacity = 5"]).await;
    // This client must see the QUEUE_FULL refusal, not retry it.
    let sender = Client::connect(net.options("dea", "analyst").busy_retry(BusyRetry::never()))
        .await
        .unwrap();
    // Nobody reads the DEA inbox: five analytical messages fill it.
    for i in 0..5 {
        sender
            .submit(
                Draft::new(&liaison(&format!("record {i}")))
                    .to("dea")
                    .precedence(Precedence::Bulk),
            )
            .await
            .unwrap();
    }
    match sender
        .submit(Draft::new(&liaison("one too many")).to("dea"))
        .await
    {
        Err(SubmitError::Refused {
            code,
            reason,
            retry_after,
        }) => {
            assert_eq!(code, pb::RefusalCode::QueueFull);
            assert!(reason.contains("mailbox:dea is full"), "{reason}");
            assert_eq!(retry_after, Some(Duration::from_millis(500)));
        }
        other => panic!("expected QUEUE_FULL, got {other:?}"),
    }
    // Time-sensitive traffic has its own room: a FLASH alert is still accepted, and all six
    // are delivered once someone reads the inbox.
    let flash = sender
        .submit(
            Draft::new(&liaison("alert"))
                .to("dea")
                .precedence(Precedence::Flash),
        )
        .await
        .unwrap();
    let desk = net.subscriber("dea", "duty-desk").await;
    let mut inbox = desk.inbox().unwrap();
    let mut got = Vec::new();
    while got.len() < 6 {
        let d = within("deliveries", inbox.next()).await.unwrap();
        got.push(d.id());
        d.ack().await.unwrap();
    }
    assert!(got.contains(&flash.id));
    net.stop().await;
}

/// Lower lanes keep moving under a sustained FLASH flood, end to end: a backlog of FLASH alerts
/// far longer than the others, topped up while the reader reads. ROUTINE moves on its own
/// window (analytical traffic never waits for time-sensitive windows); PRIORITY, which shares
/// the time-sensitive window with FLASH, gets the lanes' minimum share (one in
/// `SHARE_EVERY + 1` deliveries of that class), long before the FLASH backlog is through.
/// Strict precedence alone would hold every PRIORITY message back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lower_lanes_still_move_under_a_sustained_flash_flood() {
    const FLASH: usize = 800;
    const EACH: usize = 20;
    let net = TestNet::mesh(&["dea"]).await;
    let analyst = net.client("dea", "analyst").await;
    let draft = |p: Precedence, i: usize| {
        Draft::new(&liaison(&format!("{p:?} {i}")))
            .to("dea")
            .precedence(p)
    };
    // The backlog: FLASH first, then PRIORITY and ROUTINE, nobody reading yet.
    for i in 0..FLASH {
        analyst.submit(draft(Precedence::Flash, i)).await.unwrap();
    }
    for p in [Precedence::Priority, Precedence::Routine] {
        for i in 0..EACH {
            analyst.submit(draft(p, i)).await.unwrap();
        }
    }
    // The flood goes on while the reader reads.
    let flood = tokio::spawn({
        let analyst = net.client("dea", "analyst").await;
        async move {
            for i in FLASH.. {
                if analyst.submit(draft(Precedence::Flash, i)).await.is_err() {
                    break;
                }
            }
        }
    });
    let desk = net.subscriber("dea", "duty-desk").await;
    let mut inbox = desk.inbox().unwrap();
    let (mut priority, mut routine, mut n) = (0, 0, 0);
    while priority < EACH || routine < EACH {
        let d = within("deliveries under the flood", inbox.next())
            .await
            .unwrap();
        n += 1;
        match d.precedence() {
            Precedence::Priority => priority += 1,
            Precedence::Routine => routine += 1,
            _ => {}
        }
        d.ack().await.unwrap();
        assert!(
            n <= FLASH,
            "starved: {priority} PRIORITY, {routine} ROUTINE after {n} deliveries"
        );
    }
    // `lanes::SHARE_EVERY` (16) + 1 per PRIORITY message, as many per ROUTINE one (the share
    // goes to the most urgent waiting lane, so ROUTINE may wait for PRIORITY to drain: it moves
    // sooner only while the reader's window for alerts is full, which depends on how fast the
    // reader acknowledges), and the client's window of 64 unacknowledged alerts.
    let bound = 2 * EACH * 17 + 64;
    assert!(
        n <= bound,
        "{n} deliveries for {EACH} PRIORITY and {EACH} ROUTINE (bound {bound})"
    );
    flood.abort();
}
