//! The client library as an integrator uses it: many sends in flight without a task each, a busy
//! node's refusals retried inside the acceptance and reported, several mailboxes and the receipts
//! on one connection, inboxes as streams that unsubscribe when dropped, documents with their
//! hash, and a client shared between tasks and closed through the share.

mod common;

use std::collections::{HashSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;

use common::{SendAndWait, TestNet, wait_event, within};
use enlace::node::Event;
use enlace::payloads::{Document, text};
use enlace::{BusyRetry, Client, Draft, Inbox, Mailbox, Precedence, Stage, SubmitError, pb};

fn liaison(body: &str) -> pb::LiaisonMessage {
    pb::LiaisonMessage {
        body: Some(text("en", body)),
        ..Default::default()
    }
}

/// The next item of any `Stream`, through the trait alone (no inherent `next`).
async fn next_of<S: futures_core::Stream + Unpin>(s: &mut S) -> Option<S::Item> {
    std::future::poll_fn(|cx| Pin::new(&mut *s).poll_next(cx)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sends_in_flight_from_one_task_all_accepted_in_order() {
    let net = TestNet::mesh(&["dea", "cenapi"]).await;
    let analyst = net.subscriber("cenapi", "analyst").await;
    let sender = net.client("dea", "analyst").await;
    // One task hands 300 messages over, keeping up to 64 acceptances pending, as a load
    // generator would.
    let mut pending = VecDeque::new();
    let mut accepted = Vec::new();
    for i in 0..300 {
        let draft = Draft::from(liaison(&format!("record {i}")))
            .to("cenapi")
            .precedence(Precedence::Routine)
            .non_delivery_receipts_only();
        let acceptance = sender.send(draft).await.unwrap();
        pending.push_back(acceptance);
        if pending.len() == 64 {
            let a = pending.pop_front().unwrap();
            let id = a.id();
            let acc = a.await.unwrap();
            assert_eq!(acc.id, id, "an acceptance answers for its own message");
            accepted.push(acc.id);
        }
    }
    for a in pending {
        accepted.push(a.await.unwrap().id);
    }
    assert_eq!(accepted.len(), 300);
    let mut inbox = analyst.inbox().unwrap();
    let mut seen = HashSet::new();
    while seen.len() < 300 {
        let d = within("deliveries", next_of(&mut inbox)).await.unwrap();
        assert!(seen.insert(d.id()), "{} delivered twice", d.id());
        d.ack().await.unwrap();
    }
    assert_eq!(seen, accepted.into_iter().collect());
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_retried_inside_the_acceptance_and_reported() {
    let net = TestNet::mesh_with_limits(&["dea"], &["queue_capacity = 3"]).await;
    let sender = net.client("dea", "analyst").await;
    let mut events = net.node("dea-1").events();
    for i in 0..3 {
        let d = Draft::from(liaison(&format!("fills {i}"))).to("dea");
        assert_eq!(sender.submit(d).await.unwrap().busy_retries, 0);
    }
    // The mailbox is full: this one is refused QUEUE_FULL until a reader makes room, and the
    // client keeps retrying it (same id) meanwhile.
    let acceptance = sender
        .send(Draft::from(liaison("waits for room")).to("dea"))
        .await
        .unwrap();
    let id = acceptance.id();
    let waiting = tokio::spawn(acceptance);
    // Only once the node has refused it does a reader come.
    wait_event(&mut events, |e| {
        matches!(e, Event::Refused { id: Some(i), code: pb::RefusalCode::QueueFull, .. } if *i == id)
    })
    .await;
    let desk = net.subscriber("dea", "duty-desk").await;
    let mut inbox = desk.inbox().unwrap();
    let mut got = Vec::new();
    while got.len() < 4 {
        let d = within("deliveries", inbox.next()).await.unwrap();
        got.push(d.id());
        d.ack().await.unwrap();
    }
    let accepted = within("the retried acceptance", waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(accepted.id, id);
    assert!(accepted.busy_retries >= 1, "{accepted:?}");
    assert!(got.contains(&id));
    // With retries off, the refusal comes back at once.
    let impatient = Client::connect(net.options("dea", "analyst").busy_retry(BusyRetry::never()))
        .await
        .unwrap();
    for i in 0..3 {
        impatient
            .submit(Draft::from(liaison(&format!("again {i}"))).to("dea/nobody-reads"))
            .await
            .unwrap();
    }
    let refused = impatient
        .submit(Draft::from(liaison("too many")).to("dea/nobody-reads"))
        .await
        .unwrap_err();
    assert!(refused.is_busy(), "{refused}");
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_reads_several_mailboxes_and_its_receipts() {
    let net = TestNet::mesh(&["dea", "pgr"]).await;
    let pgr = net.client("pgr", "duty-desk").await;
    let mut inbox = pgr.subscribe(Mailbox::Inbox).await.unwrap();
    let mut desk = pgr
        .subscribe(Mailbox::unit("24x7-desk").unwrap())
        .await
        .unwrap();
    // The same mailbox twice on one connection is refused.
    assert!(pgr.subscribe(Mailbox::Inbox).await.is_err());

    let dea = net.client("dea", "duty-desk").await;
    let mut receipts = dea.receipts().await.unwrap();
    let to_inbox = dea
        .submit(Draft::from(liaison("for the agency")).to("pgr"))
        .await
        .unwrap();
    let to_desk = dea
        .submit(
            Draft::from(liaison("for the 24/7 desk"))
                .to("pgr/24x7-desk")
                .precedence(Precedence::Flash),
        )
        .await
        .unwrap();
    let d = within("inbox delivery", inbox.next()).await.unwrap();
    assert_eq!((d.id(), d.mailbox()), (to_inbox.id, &Mailbox::Inbox));
    d.ack().await.unwrap();
    let d = within("desk delivery", next_of(&mut desk)).await.unwrap();
    assert_eq!(d.id(), to_desk.id);
    assert_eq!(d.mailbox(), &Mailbox::unit("24x7-desk").unwrap());
    d.ack().await.unwrap();
    // The sender's receipts come on the sender's own connection.
    let mut stages = Vec::new();
    while !stages.contains(&Stage::Acknowledged) {
        let r = within("receipts", receipts.next_for(to_desk.id))
            .await
            .unwrap();
        assert_eq!(r.message_id, to_desk.id);
        stages.push(r.stage);
    }
    assert!(stages.contains(&Stage::Accepted), "{stages:?}");
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_inbox_unsubscribes_and_its_unacknowledged_copy_goes_to_another_reader() {
    let net = TestNet::mesh(&["dea"]).await;
    let first = net.client("dea", "duty-desk").await;
    let mut inbox = first
        .subscribe(Mailbox::unit("24x7-desk").unwrap())
        .await
        .unwrap();
    let sender = net.client("dea", "analyst").await;
    let acc = sender
        .submit(Draft::from(liaison("who takes it?")).to("dea/24x7-desk"))
        .await
        .unwrap();
    let d = within("first delivery", inbox.next()).await.unwrap();
    assert_eq!(d.id(), acc.id);
    // Not acknowledged: the reader lets the mailbox go. The node stops delivering it there and
    // puts the copy back (no attempt counted), long before its 30 s ack timeout.
    drop(d);
    drop(inbox);
    // Another reader of the unit: a second connection of the desk.
    let second = net.client("dea", "duty-desk").await;
    let mut other: Inbox = second
        .subscribe(Mailbox::unit("24x7-desk").unwrap())
        .await
        .unwrap();
    let d = within("the copy, put back", other.next()).await.unwrap();
    assert_eq!((d.id(), d.attempt()), (acc.id, 1));
    d.ack().await.unwrap();
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_arrive_whole_and_a_shared_client_closes_through_its_share() {
    let net = TestNet::mesh(&["dea", "pgr"]).await;
    let pgr = net.subscriber("pgr", "duty-desk").await;
    let dea = Arc::new(net.client("dea", "duty-desk").await);
    let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let doc = Document::new("scans/manifest.pdf", "application/pdf", content.clone());
    let task = {
        let dea = dea.clone();
        tokio::spawn(async move { dea.send(doc.into_draft().to("pgr")).await?.await })
    };
    let accepted = task.await.unwrap().unwrap();
    dea.close().await;
    let d = within("document", pgr.inbox().unwrap().next())
        .await
        .unwrap();
    assert_eq!(d.id(), accepted.id);
    let got: pb::Document = d.payload().unwrap();
    assert_eq!(
        (got.file_name.as_str(), got.media_type.as_str()),
        ("manifest.pdf", "application/pdf")
    );
    assert_eq!(got.content.as_ref(), &content[..]);
    Document::verify(&got).expect("the content matches its SHA-256");
    d.ack().await.unwrap();
    // Closed through the share: sending again fails, whoever holds it, and says the connection
    // is gone.
    let again = match dea
        .send(Draft::from(liaison("after close")).to("pgr"))
        .await
    {
        Ok(acceptance) => acceptance.await,
        Err(e) => Err(e),
    };
    assert!(
        matches!(again, Err(SubmitError::Connection(_))),
        "a closed client still sent: {again:?}"
    );
    net.stop().await;
}
