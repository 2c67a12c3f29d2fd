//! Connections that must be refused, each with a reason the other side and the log can act on.

mod common;

use std::sync::Arc;

use common::raw::{self, DialError, Raw};
use common::{SendAndWait, TestNet, certs, wait_event, within};
use enlace::node::Event;
use enlace::{Client, ClientError, pb};

fn refused_reason(e: &Event) -> Option<&str> {
    match e {
        Event::ConnectionRefused { reason, .. } => Some(reason),
        _ => None,
    }
}

/// Connects with `cert_stem` from certs/test, expects the client's error to contain
/// `client_sees` and the node to log a refusal containing `node_logs`.
async fn expect_refused(net: &TestNet, cert_stem: &str, client_sees: &str, node_logs: &str) {
    let mut events = net.node("dea-1").events();
    let err = match Client::connect(net.options_with("dea", cert_stem)).await {
        Ok(_) => panic!("{cert_stem} was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(client_sees), "{cert_stem}: client sees: {err}");
    // Other connections may be refused meanwhile; wait for this one's reason.
    wait_event(&mut events, |e| {
        refused_reason(e).is_some_and(|r| r.contains(node_logs))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_that_are_refused() {
    let net = TestNet::mesh(&["dea", "pgr"]).await;

    expect_refused(
        &net,
        "clients/dea/expired",
        "certificate expired",
        "certificate expired",
    )
    .await;
    expect_refused(
        &net,
        "clients/dea/revoked",
        "certificate revoked",
        "Revoked",
    )
    .await;
    // Same names, same trust domain, but signed by another federation's CA.
    expect_refused(
        &net,
        "rogue/clients/dea/duty-desk",
        "TLS handshake refused",
        "invalid peer certificate",
    )
    .await;
    // A valid client of another agency is told to use its own agency's node.
    expect_refused(&net, "clients/pgr/duty-desk", "own agency", "own agency").await;

    // The node kept serving: a good client still connects.
    let ok = net.client("dea", "duty-desk").await;
    assert_eq!(ok.identity().name, "duty-desk");
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_certificate_is_refused() {
    let net = TestNet::mesh(&["dea"]).await;
    let mut events = net.node("dea-1").events();
    let mut cfg = rustls::ClientConfig::builder_with_provider(raw::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(raw::roots())
        .with_no_client_auth();
    cfg.alpn_protocols = vec![enlace::protocol::ALPN.to_vec()];
    let quic = raw::quic(cfg);
    let r = raw::dial_explained(
        net.addr("dea"),
        &net.server_name("dea"),
        quic,
        pb::Role::Client,
    )
    .await;
    let err = r
        .err()
        .expect("a connection without a client certificate is refused")
        .described();
    assert!(err.contains("certificate required"), "client sees: {err}");
    let logged = wait_event(&mut events, |e| refused_reason(e).is_some()).await;
    assert!(
        refused_reason(&logged).unwrap().contains("no certificate"),
        "{logged:?}"
    );
    net.stop().await;
}

/// Dials dea-1 with a certificate and a Hello claiming `role`.
async fn dial_as(net: &TestNet, cert_stem: &str, role: pb::Role) -> Result<Raw, DialError> {
    net.raw("dea", cert_stem, role).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_cannot_act_as_a_node() {
    let net = TestNet::mesh(&["dea", "pgr"]).await;
    let r = dial_as(&net, "clients/dea/duty-desk", pb::Role::Node).await;
    match r {
        Err(DialError::Refused(r)) => {
            assert_eq!(r.code(), pb::RefusalCode::Unauthorized);
            assert!(
                r.reason.contains("grants role client, not node"),
                "{}",
                r.reason
            );
        }
        Err(e) => panic!("refused for the wrong reason: {e}"),
        Ok(_) => panic!("a client certificate was accepted as a node"),
    }
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_missing_from_the_peer_table_is_refused() {
    let net = TestNet::mesh(&["dea", "pgr"]).await;
    // pgr-2 holds a valid PGR node certificate, but dea-1's peer table lists only pgr-1.
    match dial_as(&net, "nodes/pgr/pgr-2", pb::Role::Node).await {
        Err(DialError::Refused(r)) => {
            assert_eq!(r.code(), pb::RefusalCode::Unauthorized);
            assert!(
                r.reason
                    .contains("pgr/node/pgr-2 is not in this node's peer table"),
                "{}",
                r.reason
            );
        }
        Err(e) => panic!("refused for the wrong reason: {e}"),
        Ok(_) => panic!("a node outside the peer table was accepted"),
    }
    // The listed peer is accepted.
    assert!(
        dial_as(&net, "nodes/pgr/pgr-1", pb::Role::Node)
            .await
            .is_ok()
    );
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialing_node_refuses_a_peer_with_the_wrong_identity() {
    // dea-1's table says pgr's node is "pgr-9" at pgr-1's address, with pgr-1's DNS name: TLS
    // succeeds, but the certificate names pgr-1, so the link must not come up.
    let dir = tempfile::tempdir().unwrap();
    let mut net =
        enlace::network::LocalNetwork::mesh(dir.path(), &certs(), &["dea", "pgr"]).unwrap();
    let pgr_addr = net.nodes["pgr-1"].addr;
    let text = net.render(&net.nodes["dea-1"].clone()).replace(
        "[[peers]]\nnode = \"pgr-1\"",
        "[[peers]]\nnode = \"pgr-9\"\nserver_name = \"pgr-1.pgr.enlace.test\"",
    );
    std::fs::write(net.config_path("dea-1"), text).unwrap();
    net.nodes.get_mut("dea-1").unwrap().peers = vec!["pgr-9".into()];
    let pgr = net.start("pgr-1").await.unwrap();
    let dea = net.start("dea-1").await.unwrap();
    let mut events = dea.events();
    let link = wait_event(
        &mut events,
        |e| matches!(e, Event::Link { state, .. } if *state == "down"),
    )
    .await;
    match link {
        Event::Link {
            peer,
            state,
            detail,
        } => {
            assert_eq!((peer.as_str(), state), ("pgr-9", "down"));
            assert!(
                detail.contains("presented pgr/node/pgr-1, the peer table expects pgr/node/pgr-9"),
                "{detail}"
            );
            assert!(detail.contains(&pgr_addr.to_string()));
        }
        _ => unreachable!(),
    }
    dea.stop().await;
    pgr.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_do_not_disturb_other_traffic() {
    let net = TestNet::mesh(&["dea", "pgr"]).await;
    let pgr = Arc::new(net.subscriber("pgr", "duty-desk").await);
    let dea = net.client("dea", "duty-desk").await;
    for stem in [
        "clients/dea/expired",
        "rogue/clients/dea/duty-desk",
        "clients/dea/revoked",
    ] {
        let r = Client::connect(net.options_with("dea", stem)).await;
        assert!(matches!(r, Err(ClientError::Connect(_))), "{stem}");
    }
    let body = pb::LiaisonMessage::default();
    let acc = dea
        .submit(enlace::Draft::new(&body).to("pgr"))
        .await
        .unwrap();
    let d = within("delivery after refusals", pgr.inbox().unwrap().next())
        .await
        .unwrap();
    assert_eq!(d.id(), acc.id);
    net.stop().await;
}
