//! Trust above TLS, probed as an attacker would with the raw client (`common/raw.rs`): forged
//! control traffic and paths from clients, peer nodes claiming other originators or tampering
//! with what they relay (story 3), resubmissions and colliding ids, and mailboxes a client may
//! not read. Each refusal is asserted exactly, and after it the node still serves everyone else.

mod common;

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::raw::{self, Raw, Signer};
use common::{SendAndWait, TestNet, wait_event, within};
use enlace::node::Event;
use enlace::pb::{self, RefusalCode, frame::Body};
use enlace::{Client, ClientError, Draft, Mailbox, MessageId, Precedence, Stage};
use prost::{Message as _, Name as _};

fn liaison(body: &str) -> pb::LiaisonMessage {
    pb::LiaisonMessage {
        body: Some(enlace::payloads::text("en", body)),
        ..Default::default()
    }
}

/// An envelope of `originator` to `to`, created now, valid for a minute.
fn envelope(originator: (&str, &str, &str), to: &[&str], p: pb::Precedence) -> pb::Envelope {
    raw::envelope(
        originator,
        to,
        p,
        SystemTime::now(),
        Duration::from_secs(60),
        "test",
    )
}

fn refusal(r: Result<pb::Accepted, pb::Refused>) -> (RefusalCode, String) {
    match r {
        Err(r) => (r.code(), r.reason),
        Ok(a) => panic!("expected a refusal, got {a:?}"),
    }
}

/// Asserts that `r` is a refusal with `code` whose reason contains `words`.
fn assert_refused(r: Result<pb::Accepted, pb::Refused>, code: RefusalCode, words: &str) {
    let (c, reason) = refusal(r);
    assert_eq!(c, code, "{reason}");
    assert!(reason.contains(words), "expected {words:?} in: {reason}");
}

async fn submit(conn: &Raw, signed: pb::SignedEnvelope) -> Result<pb::Accepted, pb::Refused> {
    within("answer to a submission", conn.submit(signed)).await
}

/// A message from dea/duty-desk to PGR goes through and is delivered: the node still serves.
async fn still_serves(net: &TestNet, pgr: &common::Subscriber, inbox: &mut enlace::Inbox) {
    let desk = net.client("dea", "duty-desk").await;
    let ok = desk
        .submit(Draft::new(&liaison("still served")).to("pgr"))
        .await
        .unwrap();
    let d = within("a later delivery", inbox.next()).await.unwrap();
    assert_eq!(d.id(), ok.id);
    d.ack().await.unwrap();
    desk.close().await;
    let _ = pgr;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_cannot_forge_receipts_system_traffic_or_paths() {
    let net = TestNet::mesh(&["dea", "pgr"]).await;
    let pgr = net.subscriber("pgr", "duty-desk").await;
    let mut pgr_inbox = pgr.inbox().unwrap();
    let mut events = net.node("pgr-1").events();
    // The finding: a PGR client put a fake "acknowledged" receipt into DEA duty desk's
    // receipts unit.
    let desk = net.client("dea", "duty-desk").await;
    let receipts_unit = desk.receipts_mailbox().to_string();
    let mut receipts = desk.receipts().await.unwrap();
    let real = desk
        .submit(Draft::new(&liaison("real")).to("pgr"))
        .await
        .unwrap();

    let attacker = net
        .raw("pgr", "clients/pgr/duty-desk", pb::Role::Client)
        .await
        .unwrap();
    let signer = Signer::load("clients/pgr/duty-desk");
    let fake = pb::Receipt {
        message_id: Bytes::copy_from_slice(real.id.as_bytes()),
        addressee_agency: "pgr".into(),
        stage: pb::ReceiptStage::Acknowledged as i32,
        by: "pgr/client/duty-desk".into(),
        ..Default::default()
    };
    let receipt_env = |status: pb::Status| {
        let mut env = envelope(
            ("pgr", "pgr-1", "duty-desk"),
            &[&format!("dea/{receipts_unit}")],
            pb::Precedence::Flash,
        );
        env.status = status as i32;
        env.payload_type = pb::Receipt::full_name();
        env.payload = fake.encode_to_vec().into();
        env
    };
    assert_refused(
        submit(&attacker, signer.seal(&receipt_env(pb::Status::System))).await,
        RefusalCode::Unauthorized,
        "only nodes send SYSTEM traffic",
    );
    assert_refused(
        submit(&attacker, signer.seal(&receipt_env(pb::Status::Actual))).await,
        RefusalCode::Unauthorized,
        "only nodes send enlace.v1.Receipt payloads",
    );
    let logged = wait_event(
        &mut events,
        |e| matches!(e, Event::Refused { from, .. } if from.contains("duty-desk")),
    )
    .await;
    assert!(matches!(
        logged,
        Event::Refused {
            code: RefusalCode::Unauthorized,
            ..
        }
    ));

    // Hop records and route_to are the nodes' to write.
    let mut forged = signer.seal(&envelope(
        ("pgr", "pgr-1", "duty-desk"),
        &["dea"],
        pb::Precedence::Flash,
    ));
    forged.hops = vec![pb::HopRecord {
        node: "cenapi-1".into(),
        agency: "cenapi".into(),
        ..Default::default()
    }];
    assert_refused(
        submit(&attacker, forged.clone()).await,
        RefusalCode::Invalid,
        "clients cannot set hop records or route_to",
    );
    forged.hops.clear();
    forged.route_to = vec!["dea".into()];
    assert_refused(
        submit(&attacker, forged).await,
        RefusalCode::Invalid,
        "clients cannot set hop records or route_to",
    );

    // The originator sees only genuine receipts for its message: the node's acceptance and
    // PGR's, and no acknowledgement until PGR's client really acknowledges.
    let d = within("PGR's copy", pgr_inbox.next()).await.unwrap();
    assert_eq!(d.id(), real.id);
    assert_eq!(d.path(), ["dea-1", "pgr-1"]);
    d.ack().await.unwrap();
    let mut stages = Vec::new();
    while !stages.contains(&"acknowledged".to_string()) {
        let r = within("receipts", receipts.next_for(real.id))
            .await
            .unwrap();
        if let Stage::Acknowledged = r.stage {
            assert_eq!(r.by, "pgr/client/duty-desk", "{r:?}");
        }
        stages.push(r.stage.name());
    }
    assert_eq!(receipts.dropped(), 0);
    still_serves(&net, &pgr, &mut pgr_inbox).await;
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reads_only_its_own_units_and_those_granted_to_it() {
    let net = TestNet::mesh(&["dea", "pgr"]).await;
    let desk = net.client("dea", "duty-desk").await;
    let analyst = net.client("dea", "analyst").await;
    let desk_receipts = desk.receipts_mailbox();

    let refused = |r: Result<enlace::Inbox, ClientError>| match r {
        Err(e) => e.to_string(),
        Ok(i) => panic!("subscription to {} was granted", i.mailbox()),
    };
    // A colleague's receipts: never.
    let err = refused(analyst.subscribe(desk_receipts.clone()).await);
    assert!(
        err.contains("a receipts unit is read by its own client only"),
        "{err}"
    );
    // A unit the config grants to the analyst only (`[units.records] readers = ["analyst"]`).
    let records = Mailbox::unit("records").unwrap();
    let err = refused(desk.subscribe(records.clone()).await);
    assert!(err.contains("denied by default"), "{err}");
    assert!(err.contains("[units.records] readers"), "{err}");
    assert!(analyst.subscribe(records).await.is_ok());
    // A unit nobody was granted, other than one's own.
    let err = refused(analyst.subscribe(Mailbox::unit("duty-desk").unwrap()).await);
    assert!(err.contains("[units.duty-desk] readers"), "{err}");
    assert!(
        desk.subscribe(Mailbox::unit("duty-desk").unwrap())
            .await
            .is_ok()
    );
    // Operators read dead letters and logs, not mailboxes.
    let ops = Client::connect(net.options_with("dea", "clients/dea/ops"))
        .await
        .unwrap();
    let err = refused(ops.subscribe(Mailbox::Inbox).await);
    assert!(
        err.contains("operators read dead letters and logs"),
        "{err}"
    );

    // The owner still reads its receipts, and the inbox is open to every client by default.
    let mut mine = desk.receipts().await.unwrap();
    let mut inbox = analyst.subscribe(Mailbox::Inbox).await.unwrap();
    let sent = desk
        .submit(Draft::new(&liaison("to our own inbox")).to("dea"))
        .await
        .unwrap();
    let r = within("own receipt", mine.next_for(sent.id)).await.unwrap();
    assert_eq!(r.stage, Stage::Accepted);
    let d = within("inbox copy", inbox.next()).await.unwrap();
    assert_eq!(d.id(), sent.id);
    net.stop().await;
}

/// A DEA/PGR mesh whose pgr-1 is stopped, so that the test can dial dea-1 holding pgr-1's node
/// certificate and act as that peer.
async fn mesh_with_a_fake_pgr() -> (TestNet, Raw) {
    let mut net = TestNet::mesh(&["dea", "pgr"]).await;
    net.nodes.remove("pgr-1").unwrap().stop().await;
    let peer = net
        .raw("dea", "nodes/pgr/pgr-1", pb::Role::Node)
        .await
        .unwrap();
    (net, peer)
}

fn hop(node: &str) -> pb::HopRecord {
    let now = SystemTime::now();
    let ts = |t: SystemTime| {
        let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
        prost_types::Timestamp {
            seconds: d.as_secs() as i64,
            nanos: d.subsec_nanos() as i32,
        }
    };
    pb::HopRecord {
        node: node.into(),
        agency: node.split('-').next().unwrap().into(),
        received_at: Some(ts(now)),
        forwarded_at: Some(ts(now)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_cannot_claim_another_originator_or_hide_from_the_path() {
    let (net, peer) = mesh_with_a_fake_pgr().await;
    let dea = net.subscriber("dea", "duty-desk").await;
    let mut inbox = dea.inbox().unwrap();
    let mut events = net.node("dea-1").events();
    let afi = Signer::load("clients/afi/duty-desk");
    let from_afi = || {
        envelope(
            ("afi", "afi-1", "duty-desk"),
            &["dea"],
            pb::Precedence::Flash,
        )
    };
    let relayed = |mut s: pb::SignedEnvelope, hops: &[&str], chain: Vec<Bytes>| {
        s.hops = hops.iter().map(|h| hop(h)).collect();
        s.route_to = vec!["dea".into()];
        s.signer_chain = chain;
        s
    };

    // The finding: "from afi/duty-desk" with a junk signature, pgr-1 nowhere in the path.
    let mut junk = afi.seal(&from_afi());
    junk.signature.as_mut().unwrap().signature = Bytes::from(vec![7u8; 64]);
    assert_refused(
        submit(&peer, relayed(junk.clone(), &["afi-1"], afi.chain())).await,
        RefusalCode::Unauthorized,
        "the last hop record must be the sending node's (pgr-1), not \"afi-1\"",
    );
    assert_refused(
        submit(&peer, relayed(junk, &["afi-1", "pgr-1"], afi.chain())).await,
        RefusalCode::Invalid,
        "originator signature",
    );
    let logged = wait_event(&mut events, |e| {
        matches!(
            e,
            Event::Refused {
                code: RefusalCode::Invalid,
                ..
            }
        )
    })
    .await;
    match logged {
        Event::Refused { from, reason, .. } => {
            assert_eq!(from, "pgr/node/pgr-1");
            assert!(reason.contains("originator signature"), "{reason}");
        }
        _ => unreachable!(),
    }
    // A genuine signature, but the path does not start at the originator's node.
    assert_refused(
        submit(
            &peer,
            relayed(afi.seal(&from_afi()), &["pgr-1"], afi.chain()),
        )
        .await,
        RefusalCode::Unauthorized,
        "the first hop record must be the originator's node (afi/afi-1)",
    );
    // Signed by a PGR client while claiming to come from AFI's duty desk.
    let pgr_client = Signer::load("clients/pgr/duty-desk");
    assert_refused(
        submit(
            &peer,
            relayed(
                pgr_client.seal(&from_afi()),
                &["afi-1", "pgr-1"],
                pgr_client.chain(),
            ),
        )
        .await,
        RefusalCode::Unauthorized,
        "the signer must be the originator",
    );
    // A node originates only SYSTEM traffic.
    let node_key = Signer::load("nodes/pgr/pgr-1");
    let own = envelope(("pgr", "pgr-1", ""), &["dea"], pb::Precedence::Flash);
    assert_refused(
        submit(
            &peer,
            relayed(node_key.seal(&own), &["pgr-1"], node_key.chain()),
        )
        .await,
        RefusalCode::Unauthorized,
        "nodes originate only their own receipts and reports",
    );
    // A signer this node has not met, without its chain, cannot be checked (a chain seen once
    // is cached by its SHA-256).
    let cenapi = Signer::load("clients/cenapi/analyst-2");
    let from_cenapi = envelope(
        ("cenapi", "cenapi-1", "analyst-2"),
        &["dea"],
        pb::Precedence::Flash,
    );
    assert_refused(
        submit(
            &peer,
            relayed(
                cenapi.seal(&from_cenapi),
                &["cenapi-1", "pgr-1"],
                Vec::new(),
            ),
        )
        .await,
        RefusalCode::ChainNeeded,
        "the signer's certificate chain is missing (send it again with the chain)",
    );

    // A genuine relayed copy is accepted, delivered once with its whole path, even when the
    // peer sends it again (as after a new link).
    let good = relayed(afi.seal(&from_afi()), &["afi-1", "pgr-1"], afi.chain());
    let first = submit(&peer, good.clone()).await.unwrap();
    let again = submit(&peer, good.clone()).await.unwrap();
    assert_eq!(first.message_id, again.message_id);
    let d = within("the relayed copy", inbox.next()).await.unwrap();
    assert_eq!(d.id().as_bytes(), &first.message_id[..]);
    assert_eq!(d.path(), ["afi-1", "pgr-1", "dea-1"]);
    assert_eq!(d.signed_envelope().envelope, good.envelope);
    d.ack().await.unwrap();
    wait_event(&mut events, |e| matches!(e, Event::Duplicate { .. })).await;

    // The node still serves its own clients.
    let desk = net.client("dea", "analyst").await;
    let ok = desk
        .submit(
            Draft::new(&liaison("after"))
                .to("dea")
                .precedence(Precedence::Flash),
        )
        .await
        .unwrap();
    let d = within("a later delivery", inbox.next()).await.unwrap();
    assert_eq!(d.id(), ok.id, "the relayed copy came twice");
    net.stop().await;
}

type Events = std::sync::Arc<std::sync::Mutex<Vec<Event>>>;

/// Picks the message id out of one kind of event.
type Pick = fn(&Event) -> Option<MessageId>;

/// Every event of `node` from now on, collected as it happens (none missed while the test
/// reads others).
fn collect(net: &TestNet, node: &str) -> Events {
    let all = Events::default();
    let mut rx = net.node(node).events();
    tokio::spawn({
        let all = all.clone();
        async move {
            loop {
                match rx.recv().await {
                    Ok(e) => all.lock().unwrap().push(e),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        panic!("{n} events missed")
                    }
                    Err(_) => return,
                }
            }
        }
    });
    all
}

/// Serves the streams dea-1 opens on `conn` (a link it thinks is to cenapi-1): link probes
/// are answered, and each forwarded copy is handed to `relay`, whose answer goes back.
async fn act_as_relay<F, Fut>(conn: quinn::Connection, relay: F)
where
    F: Fn(pb::SignedEnvelope) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Body> + Send,
{
    while let Ok((mut send, recv)) = conn.accept_bi().await {
        let relay = relay.clone();
        tokio::spawn(async move {
            let Ok((_, f)) = raw::read_frame(recv, 16 * 1024 * 1024).await else {
                let _ = send.finish();
                return;
            };
            if let Some(Body::Submit(s)) = f.body {
                let answer = relay(s.envelope.unwrap()).await;
                let _ = send.write_all(&raw::frame(answer)).await;
                let _ = send.finish();
            }
        });
    }
}

/// Story 3: a copy tampered in transit fails the originator's signature check at the first
/// hop that sees it, which logs the sending peer; the originator gets `NonDelivery(INVALID)`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_tampered_in_transit_is_refused_and_the_originator_told() {
    // DEA reaches AFI only through CENAPI; CENAPI's node is played by the test, holding
    // cenapi-1's certificate from the test PKI, and flips one byte of the first copy.
    let links = [("dea-1", "cenapi-1"), ("afi-1", "cenapi-1")];
    let extra = [
        ("dea-1", "[routes]\nafi = \"cenapi-1\"\n".to_string()),
        ("afi-1", "[routes]\ndea = \"cenapi-1\"\n".to_string()),
    ];
    let mut net = TestNet::federation(&["dea", "afi", "cenapi"], &links, &extra, &[]).await;
    net.nodes.remove("cenapi-1").unwrap().stop().await;
    let afi = net.subscriber("afi", "duty-desk").await;
    let mut afi_inbox = afi.inbox().unwrap();
    let mut afi_events = net.node("afi-1").events();
    let to_afi = std::sync::Arc::new(
        net.raw("afi", "nodes/cenapi/cenapi-1", pb::Role::Node)
            .await
            .unwrap(),
    );
    let from_dea = net
        .raw("dea", "nodes/cenapi/cenapi-1", pb::Role::Node)
        .await
        .unwrap();
    let tampered = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let relay = {
        let (to_afi, tampered) = (to_afi.clone(), tampered.clone());
        move |mut signed: pb::SignedEnvelope| {
            let (to_afi, tampered) = (to_afi.clone(), tampered.clone());
            async move {
                if !tampered.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    // One byte of the alert's text: the envelope still decodes.
                    let mut bytes = signed.envelope.to_vec();
                    let at = bytes
                        .windows(15)
                        .position(|w| w == b"pseudoephedrine")
                        .expect("the text is in the envelope");
                    bytes[at] ^= 0x20;
                    signed.envelope = bytes.into();
                }
                signed.hops.push(hop("cenapi-1"));
                match to_afi.submit(signed).await {
                    Ok(a) => Body::Accepted(a),
                    Err(r) => Body::Refused(r),
                }
            }
        }
    };
    let serving = tokio::spawn(act_as_relay(from_dea.conn.clone(), relay));

    let desk = net.client("dea", "duty-desk").await;
    let mut receipts = desk.receipts().await.unwrap();
    let alert = |text: &str| {
        Draft::new(&liaison(text))
            .to("afi")
            .precedence(Precedence::Flash)
    };
    let sent = desk
        .submit(alert("pseudoephedrine load heading for Manzanillo"))
        .await
        .unwrap();
    // AFI's node refuses it and logs who handed it over.
    let logged = wait_event(&mut afi_events, |e| matches!(e, Event::Refused { .. })).await;
    match logged {
        Event::Refused {
            id,
            from,
            code,
            reason,
        } => {
            assert_eq!(id, Some(sent.id));
            assert_eq!(from, "cenapi/node/cenapi-1");
            assert_eq!(code, RefusalCode::Invalid);
            assert!(reason.contains("originator signature"), "{reason}");
        }
        _ => unreachable!(),
    }
    // The originator hears of it from its own node, which the relay's refusal reached.
    let nd = within("the non-delivery report", async {
        loop {
            let r = receipts.next_for(sent.id).await.unwrap();
            if matches!(r.stage, Stage::NonDelivery(_)) {
                return r;
            }
        }
    })
    .await;
    assert_eq!(nd.stage, Stage::NonDelivery(pb::NonDeliveryReason::Invalid));
    assert_eq!((nd.addressee.as_str(), nd.by.as_str()), ("afi", "dea-1"));

    // Nothing tampered reached AFI; the next alert, relayed faithfully, does, with every hop.
    let next = desk
        .submit(alert("pseudoephedrine, second load"))
        .await
        .unwrap();
    let d = within("the faithful copy", afi_inbox.next()).await.unwrap();
    assert_eq!(d.id(), next.id);
    assert_eq!(d.path(), ["dea-1", "cenapi-1", "afi-1"]);
    serving.abort();
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubmitted_alerts_are_delivered_once_and_colliding_ids_refused() {
    let net = TestNet::mesh(&["dea", "pgr"]).await;
    let pgr = net.subscriber("pgr", "duty-desk").await;
    let mut inbox = pgr.inbox().unwrap();
    let (dea_events, pgr_events) = (collect(&net, "dea-1"), collect(&net, "pgr-1"));
    let desk = std::sync::Arc::new(
        net.raw("dea", "clients/dea/duty-desk", pb::Role::Client)
            .await
            .unwrap(),
    );
    let signer = Signer::load("clients/dea/duty-desk");
    for precedence in [
        pb::Precedence::Flash,
        pb::Precedence::Immediate,
        pb::Precedence::Priority,
        pb::Precedence::Routine,
    ] {
        let env = envelope(("dea", "dea-1", "duty-desk"), &["pgr"], precedence);
        let signed = signer.seal(&env);
        // Four submissions of the same bytes, at once.
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let (desk, signed) = (desk.clone(), signed.clone());
            set.spawn(async move { desk.submit(signed).await });
        }
        while let Some(r) = set.join_next().await {
            let a = r.unwrap().expect("a resubmission is answered Accepted");
            assert_eq!(a.message_id, env.message_id);
        }
        // A marker after them (time-sensitive copies travel on streams of their own, so the
        // two may arrive in either order).
        let marker = envelope(("dea", "dea-1", "duty-desk"), &["pgr"], precedence);
        submit(&desk, signer.seal(&marker)).await.unwrap();
        let (mut copies, mut marked) = (0, false);
        while copies == 0 || !marked {
            let d = within("deliveries", inbox.next()).await.unwrap();
            let id = Bytes::copy_from_slice(d.id().as_bytes());
            d.ack().await.unwrap();
            match id == marker.message_id {
                true => marked = true,
                false => {
                    assert_eq!(id, env.message_id);
                    copies += 1;
                }
            }
        }
        assert_eq!(copies, 1, "{precedence:?} delivered {copies} times");
        // The origin took it once and answered the other three as duplicates; the
        // destination was handed one copy and delivered it once.
        let id = MessageId::from_slice(&env.message_id).unwrap();
        let count = |events: &Events, what: Pick| {
            events
                .lock()
                .unwrap()
                .iter()
                .filter(|e| what(e) == Some(id))
                .count()
        };
        let accepted = |e: &Event| match e {
            Event::Accepted { id, .. } => Some(*id),
            _ => None,
        };
        let duplicate = |e: &Event| match e {
            Event::Duplicate { id, .. } => Some(*id),
            _ => None,
        };
        let delivered = |e: &Event| match e {
            Event::Delivered { id, .. } => Some(*id),
            _ => None,
        };
        // An alert is delivered before its store write ends (cut-through), and the Accepted
        // event comes after that write: wait for the events expected, then check there are
        // no more.
        let expected: [(&Events, Pick, usize); 4] = [
            (&dea_events, accepted, 1),
            (&dea_events, duplicate, 3),
            (&pgr_events, accepted, 1),
            (&pgr_events, delivered, 1),
        ];
        within("the node events", async {
            while expected.iter().any(|(e, what, n)| count(e, *what) < *n) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        for (i, (events, what, n)) in expected.into_iter().enumerate() {
            assert_eq!(count(events, what), n, "{precedence:?}, event kind {i}");
        }
    }

    // The same id from another originator of the agency: refused with its own code.
    let first = envelope(
        ("dea", "dea-1", "duty-desk"),
        &["pgr"],
        pb::Precedence::Flash,
    );
    submit(&desk, signer.seal(&first)).await.unwrap();
    let analyst = net
        .raw("dea", "clients/dea/analyst", pb::Role::Client)
        .await
        .unwrap();
    let mut other = envelope(("dea", "dea-1", "analyst"), &["pgr"], pb::Precedence::Flash);
    other.message_id = first.message_id.clone();
    assert_refused(
        submit(&analyst, Signer::load("clients/dea/analyst").seal(&other)).await,
        RefusalCode::DuplicateId,
        "was already used by another originator",
    );
    let d = within("the first one", inbox.next()).await.unwrap();
    assert_eq!(Bytes::copy_from_slice(d.id().as_bytes()), first.message_id);
    d.ack().await.unwrap();
    still_serves(&net, &pgr, &mut inbox).await;
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_addressed_agency_may_answer_a_message() {
    let net = TestNet::mesh(&["dea", "pgr", "afi"]).await;
    let afi = net.subscriber("afi", "duty-desk").await;
    let mut afi_inbox = afi.inbox().unwrap();
    let mut dea_events = net.node("dea-1").events();
    let desk = net.client("dea", "duty-desk").await;
    let mut receipts = desk.receipts().await.unwrap();
    // DEA asks AFI, and only AFI.
    let sent = desk
        .submit(Draft::new(&liaison("verify this consignee")).to("afi"))
        .await
        .unwrap();
    let d = within("AFI's copy", afi_inbox.next()).await.unwrap();
    let original = d.message().clone();
    d.ack().await.unwrap();

    // A PGR client answers it anyway, as the library would: its node accepts (it cannot know
    // what DEA asked whom); DEA's node, which does, refuses it.
    let pgr = net.client("pgr", "duty-desk").await;
    let forged = pgr
        .respond(
            &original,
            pb::BusinessResponse {
                outcome: pb::BusinessOutcome::ActionTaken as i32,
                reason: "not ours to answer".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let refused = wait_event(
        &mut dea_events,
        |e| matches!(e, Event::Refused { id, .. } if *id == Some(forged.id)),
    )
    .await;
    let Event::Refused {
        from, code, reason, ..
    } = refused
    else {
        unreachable!()
    };
    assert_eq!(
        (from.as_str(), code),
        ("pgr/node/pgr-1", RefusalCode::Unauthorized)
    );
    assert!(
        reason.contains(&format!(
            "a business response to message {} from agency pgr, which that message was not \
             addressed to",
            sent.id
        )),
        "{reason}"
    );
    // AFI's answer goes through, and it is the only response DEA's desk sees.
    afi.respond(
        &original,
        pb::BusinessResponse {
            outcome: pb::BusinessOutcome::PositiveHit as i32,
            reason: "front company".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let response = within("AFI's response", async {
        loop {
            let r = receipts.next_for(sent.id).await.unwrap();
            if matches!(r.stage, Stage::Response { .. }) {
                return r;
            }
        }
    })
    .await;
    assert_eq!(response.by, "afi/duty-desk");
    assert_eq!(response.detail, "front company");
    net.stop().await;
}
