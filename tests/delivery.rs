//! End to end: a FLASH precursor alert from a DEA client reaches PGR and AFI clients through
//! their nodes, with the typed payload and the originator's signed bytes intact.

mod common;

use std::time::Duration;

use common::{SendAndWait, TestNet, raw, within};
use enlace::payloads::{Chemical, PrecursorAlert, Quantity, seaport, text};
use enlace::{Draft, Precedence, pb};

fn alert() -> pb::PrecursorChemicalAlert {
    PrecursorAlert::new(pb::PrecursorAlertKind::SuspiciousShipment)
        .chemical(
            Chemical::new("Pseudoephedrine hydrochloride")
                .cas("345-78-8".parse().unwrap())
                .quantity(Quantity::kilograms(1200.0)),
        )
        .vessel(
            "MSC Test",
            seaport("CNSHA".parse().unwrap(), "Shanghai"),
            seaport("MXZLO".parse().unwrap(), "Manzanillo"),
        )
        .party(pb::PartyRole::Consignee, "Importadora Ejemplo", "MX")
        .reference("PEN Online", "PEN-2026-000123")
        .action(pb::PrecursorRequestedAction::Intercept)
        .narrative(text("es-MX", "Carga desviada declarada como vitamina C."))
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flash_alert_reaches_clients_at_two_other_nodes() {
    let net = TestNet::mesh(&["dea", "pgr", "afi"]).await;
    let pgr = net.subscriber("pgr", "duty-desk").await;
    let afi = net.subscriber("afi", "duty-desk").await;
    let dea = net.client("dea", "duty-desk").await;

    let sent = alert();
    let accepted = dea
        .submit(
            Draft::new(&sent)
                .to("pgr")
                .to("afi")
                .precedence(Precedence::Flash)
                .expires_in(Duration::from_secs(3600))
                .case_id("DEA-2026-0142"),
        )
        .await
        .expect("DEA's node accepts the alert");
    assert_eq!(accepted.routed, 2, "routed to two peer nodes");

    // The originator's certificate and key, to check the signature over the bytes that arrived.
    let dea_signer = raw::Signer::load("clients/dea/duty-desk");

    for (client, node) in [(&pgr, "pgr-1"), (&afi, "afi-1")] {
        let mut inbox = client.inbox().unwrap();
        let d = within("delivery", inbox.next()).await.expect("a delivery");
        assert_eq!(d.id(), accepted.id);
        assert_eq!(d.precedence(), Precedence::Flash);
        assert_eq!(d.attempt(), 1);
        let got: pb::PrecursorChemicalAlert = d.payload().expect("typed payload decodes");
        assert_eq!(got, sent, "payload intact");
        let o = d.message().originator().clone();
        assert_eq!(
            (o.agency.as_str(), o.client.as_deref(), o.node.as_str()),
            ("dea", Some("duty-desk"), "dea-1")
        );
        assert_eq!(d.message().case_id(), "DEA-2026-0142");
        let signed = d.signed_envelope();
        assert!(
            signed
                .signature
                .as_ref()
                .is_some_and(|sig| dea_signer.verify(&signed.envelope, sig)),
            "the originator's signature holds over the delivered bytes"
        );
        assert_eq!(d.path(), ["dea-1", node]);
        d.ack().await.unwrap();
    }
    net.stop().await;
}

fn liaison(body: &str) -> pb::LiaisonMessage {
    pb::LiaisonMessage {
        body: Some(text("es-MX", body)),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_delivery_and_shared_inbox() {
    let net = TestNet::mesh(&["dea", "cenapi"]).await;
    // Two CENAPI analysts share the agency inbox: each message goes to one of them, once.
    let a1 = net.subscriber("cenapi", "analyst").await;
    let a2 = net.subscriber("cenapi", "analyst-2").await;
    let dea = net.client("dea", "analyst").await;
    let n = 40;
    for i in 0..n {
        dea.submit(Draft::new(&liaison(&format!("registro {i}"))).to("cenapi"))
            .await
            .unwrap();
    }
    let (mut i1, mut i2) = (a1.inbox().unwrap(), a2.inbox().unwrap());
    let mut seen = std::collections::HashSet::new();
    while seen.len() < n {
        let d = within("shared inbox", async {
            tokio::select! {
                Some(d) = i1.next() => d,
                Some(d) = i2.next() => d,
            }
        })
        .await;
        assert!(seen.insert(d.id()), "message {} delivered twice", d.id());
        d.ack().await.unwrap();
    }
    // A DEA client also receives mail for its own agency from its own node.
    let desk = net.subscriber("dea", "duty-desk").await;
    dea.submit(Draft::new(&liaison("local")).to("dea"))
        .await
        .unwrap();
    let d = within("local delivery", desk.inbox().unwrap().next())
        .await
        .unwrap();
    assert_eq!(d.hops().len(), 1, "delivered by the origin node itself");
    net.stop().await;
}
