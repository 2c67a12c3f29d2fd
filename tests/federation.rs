//! Federation: relays, the agency directory's aliases, loops, hop limits and dual dials, over real
//! QUIC on loopback with the committed test certificates.
//!
//! The relay topology: DEA has no link to AFI; DEA → CENAPI → AFI (CENAPI's node relays). PGR is
//! linked to everyone.

mod common;

use common::{TestNet, material, wait_event, within};
use enlace::identity;
use enlace::node::{Event, LinkState, RunningNode};
use enlace::session::SubmitError;
use enlace::wire::pb::{self, RefusalCode};
use enlace::{Draft, Precedence, signature};

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

/// The public key and certificate hash a client signs with, from its committed certificate.
fn signer_of(stem: &str) -> identity::PeerCert {
    identity::from_certificate(&material(stem).chain[0], "enlace.test").unwrap()
}

fn hop_nodes(signed: &pb::SignedEnvelope) -> Vec<&str> {
    signed.hops.iter().map(|h| h.node.as_str()).collect()
}

fn at(t: &Option<prost_types::Timestamp>) -> (i64, i32) {
    let t = t.as_ref().expect("timestamp present");
    (t.seconds, t.nanos)
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
        .send(
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
        records.push(analyst.send(d).await.unwrap().id);
    }

    let desk_key = signer_of("clients/dea/duty-desk");
    let analyst_key = signer_of("clients/dea/analyst");
    let direct = within("PGR's copy", pgr_inbox.next()).await.unwrap();
    assert_eq!(direct.id, alert.id);
    assert_eq!(hop_nodes(&direct.signed), ["dea-1", "pgr-1"]);
    let direct_signed = direct.signed.clone();
    direct.ack().await.unwrap();

    let mut seen = Vec::new();
    while seen.len() < 21 {
        let d = within("AFI's copies", afi_inbox.next()).await.unwrap();
        assert!(!seen.contains(&d.id), "{} delivered twice", d.id);
        seen.push(d.id);
        // Every hop, in order, each node's record complete.
        assert_eq!(hop_nodes(&d.signed), ["dea-1", "cenapi-1", "afi-1"]);
        let agencies: Vec<_> = d.signed.hops.iter().map(|h| h.agency.as_str()).collect();
        assert_eq!(agencies, ["dea", "cenapi", "afi"]);
        let h = &d.signed.hops;
        assert!(at(&h[0].received_at) <= at(&h[0].forwarded_at));
        assert!(at(&h[0].forwarded_at) <= at(&h[1].received_at));
        assert!(at(&h[1].received_at) <= at(&h[1].forwarded_at));
        assert!(at(&h[1].forwarded_at) <= at(&h[2].received_at));
        assert!(h[2].forwarded_at.is_none());
        // Routing metadata stays between nodes.
        assert!(d.signed.route_to.is_empty());
        // The originator's signature over the bytes AFI received.
        let key = if d.id == alert.id {
            &desk_key
        } else {
            &analyst_key
        };
        signature::verify(
            &d.signed.envelope,
            d.signed.signature.as_ref(),
            &key.sha256,
            key.ed25519_public_key.as_deref(),
            None,
        )
        .unwrap();
        if d.id == alert.id {
            assert_eq!(d.precedence, Precedence::Flash);
            // Exactly the bytes and signature PGR got directly: the relay re-encoded nothing,
            // and the addressees are still as the originator wrote them.
            assert_eq!(d.signed.envelope, direct_signed.envelope);
            assert_eq!(d.signed.signature, direct_signed.signature);
            let to: Vec<_> = d
                .envelope
                .addressees
                .iter()
                .map(|a| a.agency.as_str())
                .collect();
            assert_eq!(to, ["FGR", "PFM"]);
        }
        d.ack().await.unwrap();
    }
    for id in &records {
        assert!(seen.contains(id));
    }
    desk.close().await;
    analyst.close().await;
    afi.close().await;
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
        .send(
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
        .send(
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
        .send(Draft::new(&liaison("one relay too many")).to("afi"))
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
    let dea_desk = enlace::Client::connect(opts("dea").subscribe(""))
        .await
        .unwrap();
    let pgr_desk = enlace::Client::connect(opts("pgr").subscribe(""))
        .await
        .unwrap();
    let (mut dea_inbox, mut pgr_inbox) = (dea_desk.inbox().unwrap(), pgr_desk.inbox().unwrap());
    dea_desk
        .send(Draft::new(&liaison("to PGR")).to("pgr"))
        .await
        .unwrap();
    pgr_desk
        .send(Draft::new(&liaison("to DEA")).to("dea"))
        .await
        .unwrap();
    let got = within("PGR receives", pgr_inbox.next()).await.unwrap();
    assert_eq!(hop_nodes(&got.signed), ["dea-1", "pgr-1"]);
    let got = within("DEA receives", dea_inbox.next()).await.unwrap();
    assert_eq!(hop_nodes(&got.signed), ["pgr-1", "dea-1"]);
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
