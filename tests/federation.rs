//! Federation: relays, the agency directory's aliases, loops, hop limits and dual dials, over real
//! QUIC on loopback with the committed test certificates.
//!
//! The relay topology: DEA has no link to AFI; DEA → CENAPI → AFI (CENAPI's node relays). PGR is
//! linked to everyone.

mod common;

use std::time::SystemTime;

use common::raw::{self, Signer};
use common::{SendAndWait, TestNet, wait_event, within};
use enlace::node::{Event, LinkState, RunningNode};
use enlace::pb::{self, RefusalCode, frame::Body};
use enlace::{Client, Draft, Hop, Mailbox, MessageId, Precedence, SubmitError};
use prost::Message as _;

/// The agency directory every node of these tests carries: AFI is known today as CMI (and was
/// PFM), PGR as FGR.
const DIRECTORY: &str = r#"
[agencies.afi]
display = "CMI"
aliases = ["pfm", "cmi"]
served_by = "afi-1"

[agencies.pgr]
display = "FGR"
aliases = ["FGR"]
served_by = "pgr-1"
"#;

fn liaison(body: &str) -> pb::LiaisonMessage {
    pb::LiaisonMessage {
        body: Some(enlace::payloads::text("en", body)),
        ..Default::default()
    }
}

/// DEA, PGR, AFI and CENAPI; DEA and AFI reach each other only through CENAPI.
async fn relay_federation(limits: &[&str]) -> TestNet {
    let links = [
        ("dea-1", "pgr-1"),
        ("dea-1", "cenapi-1"),
        ("pgr-1", "afi-1"),
        ("pgr-1", "cenapi-1"),
        ("afi-1", "cenapi-1"),
    ];
    let extra = [
        (
            "dea-1",
            format!("{DIRECTORY}\n[routes]\nCMI = \"cenapi-1\"\n"),
        ),
        (
            "afi-1",
            format!("{DIRECTORY}\n[routes]\ndea = \"cenapi-1\"\n"),
        ),
        ("pgr-1", DIRECTORY.to_owned()),
        ("cenapi-1", DIRECTORY.to_owned()),
    ];
    TestNet::federation(&["dea", "pgr", "afi", "cenapi"], &links, &extra, limits).await
}

fn hop_nodes(signed: &pb::SignedEnvelope) -> Vec<&str> {
    signed.hops.iter().map(|h| h.node.as_str()).collect()
}

fn at(t: Option<SystemTime>) -> SystemTime {
    t.expect("timestamp present")
}

/// Reads `n` deliveries of `agency`'s inbox with the raw client, as the node writes them on the
/// wire (transit fields included, which the client library does not show), acknowledging each.
async fn raw_deliveries(net: &TestNet, agency: &str, n: usize) -> Vec<pb::Deliver> {
    let stem = format!("clients/{agency}/duty-desk");
    let conn = net.raw(agency, &stem, pb::Role::Client).await.unwrap();
    let subscribe = Body::Subscribe(pb::Subscribe {
        unit: String::new(),
    });
    let answer = conn.exchange(&raw::frame(subscribe)).await;
    assert!(
        matches!(answer.body, Some(Body::Subscribed(_))),
        "{answer:?}"
    );
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let quic = conn.conn.clone();
    // The node opens a stream per alert and one for analytical traffic; each is read on its own.
    let accept = tokio::spawn(async move {
        while let Ok((mut send, mut recv)) = quic.accept_bi().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((r, frame)) = raw::read_frame(recv, 16 * 1024 * 1024).await else {
                        return;
                    };
                    recv = r;
                    let Some(Body::Deliver(d)) = frame.body else {
                        return;
                    };
                    let signed = d.envelope.as_ref().expect("a delivery carries an envelope");
                    let id = pb::Envelope::decode(signed.envelope.clone())
                        .unwrap()
                        .message_id;
                    let ack = Body::Ack(pb::Ack { message_id: id });
                    if send.write_all(&raw::frame(ack)).await.is_err() || tx.send(d).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        got.push(within("raw deliveries", rx.recv()).await.unwrap());
    }
    accept.abort();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_delivers_the_originators_exact_bytes_with_every_hop_in_order() {
    let net = relay_federation(&[]).await;
    let afi = net.subscriber("afi", "duty-desk").await;
    let pgr = net.subscriber("pgr", "duty-desk").await;
    let (mut afi_inbox, mut pgr_inbox) = (afi.inbox().unwrap(), pgr.inbox().unwrap());
    let desk = net.client("dea", "duty-desk").await;
    let analyst = net.client("dea", "analyst").await;

    // A FLASH alert to PGR and AFI under their current names: PGR direct, AFI through CENAPI.
    let alert = desk
        .submit(
            Draft::new(&liaison("precursor load heading for Manzanillo"))
                .to("FGR")
                .to("PFM")
                .precedence(Precedence::Flash),
        )
        .await
        .unwrap();
    assert_eq!(alert.routed, 2);
    // Analytical records to AFI under its newest name.
    let mut records = Vec::new();
    for i in 0..20 {
        let p = if i % 2 == 0 {
            Precedence::Routine
        } else {
            Precedence::Bulk
        };
        let d = Draft::new(&liaison(&format!("record {i}")))
            .to("cmi")
            .precedence(p);
        records.push(analyst.submit(d).await.unwrap().id);
    }

    let desk_key = Signer::load("clients/dea/duty-desk");
    let analyst_key = Signer::load("clients/dea/analyst");
    let direct = within("PGR's copy", pgr_inbox.next()).await.unwrap();
    assert_eq!(direct.id(), alert.id);
    assert_eq!(direct.path(), ["dea-1", "pgr-1"]);
    let direct_signed = direct.signed_envelope();
    direct.ack().await.unwrap();

    let mut seen = Vec::new();
    while seen.len() < 21 {
        let d = within("AFI's copies", afi_inbox.next()).await.unwrap();
        assert!(!seen.contains(&d.id()), "{} delivered twice", d.id());
        seen.push(d.id());
        // Every hop, in order, each node's record complete.
        assert_eq!(d.path(), ["dea-1", "cenapi-1", "afi-1"]);
        let h: Vec<Hop> = d.hops();
        let agencies: Vec<_> = h.iter().map(|h| h.agency.as_str()).collect();
        assert_eq!(agencies, ["dea", "cenapi", "afi"]);
        assert!(at(h[0].received_at) <= at(h[0].forwarded_at));
        assert!(at(h[0].forwarded_at) <= at(h[1].received_at));
        assert!(at(h[1].received_at) <= at(h[1].forwarded_at));
        assert!(at(h[1].forwarded_at) <= at(h[2].received_at));
        assert!(h[2].forwarded_at.is_none());
        // Routing metadata stays between nodes: checked on the wire below, since the client
        // library does not show transit fields.
        // The originator's signature over the bytes AFI received.
        let signed = d.signed_envelope();
        let key = if d.id() == alert.id {
            &desk_key
        } else {
            &analyst_key
        };
        let sig = signed.signature.as_ref().expect("signed by the originator");
        assert!(
            key.verify(&signed.envelope, sig),
            "{}: the originator's signature does not hold over the delivered bytes",
            d.id()
        );
        if d.id() == alert.id {
            assert_eq!(d.precedence(), Precedence::Flash);
            // Exactly the bytes and signature PGR got directly: the relay re-encoded nothing,
            // and the addressees are still as the originator wrote them.
            assert_eq!(signed.envelope, direct_signed.envelope);
            assert_eq!(signed.signature, direct_signed.signature);
            let to: Vec<_> = d
                .message()
                .envelope()
                .addressees
                .iter()
                .map(|a| a.agency.clone())
                .collect();
            assert_eq!(to, ["FGR", "PFM"]);
        }
        d.ack().await.unwrap();
    }
    for id in &records {
        assert!(seen.contains(id));
    }
    afi.close().await;

    // On the wire, relayed copies reach AFI's client without the routing metadata the nodes
    // exchanged (`route_to`), on an alert's own stream and on the analytical stream alike.
    let relayed = [
        desk.submit(
            Draft::new(&liaison("relayed alert"))
                .to("cmi")
                .precedence(Precedence::Flash),
        )
        .await
        .unwrap()
        .id,
        analyst
            .submit(
                Draft::new(&liaison("relayed record"))
                    .to("cmi")
                    .precedence(Precedence::Routine),
            )
            .await
            .unwrap()
            .id,
    ];
    let mut got = Vec::new();
    for d in raw_deliveries(&net, "afi", relayed.len()).await {
        let signed = d.envelope.unwrap();
        let env = pb::Envelope::decode(signed.envelope.clone()).unwrap();
        got.push(MessageId::from_slice(&env.message_id).unwrap());
        assert_eq!(hop_nodes(&signed), ["dea-1", "cenapi-1", "afi-1"]);
        assert!(signed.route_to.is_empty(), "{:?}", signed.route_to);
    }
    got.sort();
    let mut relayed = relayed.to_vec();
    relayed.sort();
    assert_eq!(got, relayed);
    desk.close().await;
    analyst.close().await;
    pgr.close().await;
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routing_loop_is_refused_and_reported_not_cycled() {
    // Misconfigured: DEA sends AFI's traffic to CENAPI, and CENAPI sends it back to DEA.
    let extra = [
        ("dea-1", "[routes]\nafi = \"cenapi-1\"\n".to_owned()),
        ("cenapi-1", "[routes]\nafi = \"dea-1\"\n".to_owned()),
    ];
    let net = TestNet::federation(&["dea", "cenapi"], &[("dea-1", "cenapi-1")], &extra, &[]).await;
    let dea = net.subscriber("dea", "duty-desk").await;
    let mut inbox = dea.inbox().unwrap();
    let mut cenapi_events = net.node("cenapi-1").events();
    let mut dea_events = net.node("dea-1").events();
    let sender = net.client("dea", "analyst").await;
    let acc = sender
        .submit(
            Draft::new(&liaison("to AFI"))
                .to("afi")
                .precedence(Precedence::Flash),
        )
        .await
        .unwrap();

    let refused = wait_event(
        &mut cenapi_events,
        |e| matches!(e, Event::Refused { id: Some(id), .. } if *id == acc.id),
    )
    .await;
    let Event::Refused { reason, code, .. } = refused else {
        unreachable!()
    };
    assert_eq!(code, RefusalCode::Unauthorized);
    assert!(reason.contains("routing loop"), "{reason}");
    assert!(reason.contains("dea-1 → cenapi-1 → dea-1"), "{reason}");
    wait_event(
        &mut dea_events,
        |e| matches!(e, Event::ForwardRefused { id, .. } if *id == acc.id),
    )
    .await;

    // The originator hears of it.
    let d = within("non-delivery report", inbox.next()).await.unwrap();
    let report: pb::NonDelivery = d.payload().unwrap();
    assert_eq!(report.message_id.as_ref(), acc.id.as_bytes());
    assert_eq!(report.reason(), pb::NonDeliveryReason::Refused);
    assert!(report.detail.contains("routing loop"), "{}", report.detail);
    d.ack().await.unwrap();
    sender.close().await;
    dea.close().await;
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_limits_are_refused_at_the_origin_and_at_the_node() {
    // Every node allows messages that have passed at most one node: the relayed copy (two hop
    // records when it reaches AFI) is over the limit.
    let extra = [
        ("dea-1", "[routes]\nafi = \"cenapi-1\"\n".to_owned()),
        ("afi-1", "[routes]\ndea = \"cenapi-1\"\n".to_owned()),
    ];
    let links = [("dea-1", "cenapi-1"), ("cenapi-1", "afi-1")];
    let net =
        TestNet::federation(&["dea", "cenapi", "afi"], &links, &extra, &["max_hops = 1"]).await;
    let dea = net.subscriber("dea", "duty-desk").await;
    let mut inbox = dea.inbox().unwrap();
    let sender = net.client("dea", "analyst").await;

    // The handling policy allows no relay: refused when submitted, before anything is queued.
    let direct_only = pb::HandlingPolicy {
        max_hops: Some(0),
        ..Default::default()
    };
    let err = sender
        .submit(
            Draft::new(&liaison("direct only"))
                .to("afi")
                .handling(direct_only),
        )
        .await
        .unwrap_err();
    match err {
        SubmitError::Refused { code, reason, .. } => {
            assert_eq!(code, RefusalCode::Unauthorized);
            assert!(reason.contains("allows 0"), "{reason}");
        }
        e => panic!("expected a refusal, got {e}"),
    }

    // AFI's node refuses the relayed copy; the relay reports it to the originator.
    let mut afi_events = net.node("afi-1").events();
    let acc = sender
        .submit(Draft::new(&liaison("one relay too many")).to("afi"))
        .await
        .unwrap();
    let refused = wait_event(
        &mut afi_events,
        |e| matches!(e, Event::Refused { id: Some(id), .. } if *id == acc.id),
    )
    .await;
    let Event::Refused { reason, .. } = refused else {
        unreachable!()
    };
    assert!(reason.contains("hop limit exceeded"), "{reason}");
    let d = within("non-delivery report", inbox.next()).await.unwrap();
    let report: pb::NonDelivery = d.payload().unwrap();
    assert_eq!(report.message_id.as_ref(), acc.id.as_bytes());
    assert_eq!(report.node, "cenapi-1");
    assert!(
        report.detail.contains("hop limit exceeded"),
        "{}",
        report.detail
    );
    d.ack().await.unwrap();
    sender.close().await;
    dea.close().await;
    net.stop().await;
}

/// Both nodes' view of their link to each other, once both are up on the same connection.
fn settled(a: &RunningNode, b: &RunningNode, winner: &str) -> Option<u64> {
    let (la, lb) = (a.links(), b.links());
    let up = |l: &[enlace::node::LinkStatus]| {
        l.len() == 1 && l[0].state == LinkState::Up && l[0].dialed_by.as_deref() == Some(winner)
    };
    let closed: u64 = la.iter().chain(&lb).map(|l| l.duplicates_closed).sum();
    (up(&la) && up(&lb) && closed >= 1).then_some(closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_both_nodes_dial_at_once_exactly_one_link_survives() {
    common::init_logging();
    let dir = tempfile::tempdir().unwrap();
    let net =
        enlace::network::LocalNetwork::mesh(dir.path(), &common::certs(), &["dea", "pgr"]).unwrap();
    // Started together, each dials the other at once.
    let (dea, pgr) = tokio::join!(net.start("dea-1"), net.start("pgr-1"));
    let (dea, pgr) = (dea.unwrap(), pgr.unwrap());
    let (mut ea, mut eb) = (dea.events(), pgr.events());
    // "dea-1" sorts before "pgr-1": the connection dea-1 dialed is the one both keep.
    within("one link, the same on both sides", async {
        while settled(&dea, &pgr, "dea-1").is_none() {
            tokio::select! {
                _ = ea.recv() => {}
                _ = eb.recv() => {}
            }
        }
    })
    .await;
    for l in dea.links().into_iter().chain(pgr.links()) {
        assert!(l.detail.contains("dialed by dea-1"), "{l:?}");
        assert_eq!(l.ups - l.downs, 1, "{l:?}");
    }

    // The one link carries traffic both ways.
    let opts = |agency: &str| net.client_options(agency, "duty-desk").unwrap();
    let dea_desk = Client::connect(opts("dea")).await.unwrap();
    let pgr_desk = Client::connect(opts("pgr")).await.unwrap();
    let mut dea_inbox = dea_desk.subscribe(Mailbox::Inbox).await.unwrap();
    let mut pgr_inbox = pgr_desk.subscribe(Mailbox::Inbox).await.unwrap();
    dea_desk
        .submit(Draft::new(&liaison("to PGR")).to("pgr"))
        .await
        .unwrap();
    pgr_desk
        .submit(Draft::new(&liaison("to DEA")).to("dea"))
        .await
        .unwrap();
    let got = within("PGR receives", pgr_inbox.next()).await.unwrap();
    assert_eq!(got.path(), ["dea-1", "pgr-1"]);
    let got = within("DEA receives", dea_inbox.next()).await.unwrap();
    assert_eq!(got.path(), ["pgr-1", "dea-1"]);
    assert!(settled(&dea, &pgr, "dea-1").is_some());
    dea_desk.close().await;
    pgr_desk.close().await;
    tokio::join!(dea.stop(), pgr.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_state_changes_are_logged_and_counted() {
    let mut net = TestNet::mesh_with_limits(&["dea", "pgr"], &["handshake_timeout_ms = 500"]).await;
    let mut events = net.node("dea-1").events();
    let link = |n: &RunningNode| n.links().into_iter().next().unwrap();
    within("dea-1's link to pgr-1 up", async {
        while link(net.node("dea-1")).state != LinkState::Up {
            let _ = events.recv().await;
        }
    })
    .await;

    // PGR's node stops: DEA's link goes down with the reason, then backs off.
    let pgr = net.nodes.remove("pgr-1").unwrap();
    pgr.stop().await;
    let is_link = |state: &'static str| move |e: &Event| matches!(e, Event::Link { peer, state: s, .. } if peer == "pgr-1" && *s == state);
    let down = wait_event(&mut events, is_link("down")).await;
    let Event::Link { detail, .. } = down else {
        unreachable!()
    };
    assert!(detail.contains("shutting down"), "{detail}");
    wait_event(&mut events, is_link("backoff")).await;
    let l = link(net.node("dea-1"));
    assert!(matches!(
        l.state,
        LinkState::Backoff | LinkState::Connecting | LinkState::Down
    ));
    assert!(l.dial_failures >= 1, "{l:?}");

    // Back on the same address and data directory: it dials DEA, and the link is up again.
    let pgr = net.net.start("pgr-1").await.unwrap();
    net.nodes.insert("pgr-1".into(), pgr);
    let up = wait_event(&mut events, is_link("up")).await;
    let Event::Link { detail, .. } = up else {
        unreachable!()
    };
    assert!(detail.contains("dialed by"), "{detail}");
    let l = link(net.node("dea-1"));
    assert_eq!((l.state, l.ups, l.downs), (LinkState::Up, 2, 1), "{l:?}");
    net.stop().await;
}
