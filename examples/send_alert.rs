//! Sends one FLASH precursor alert from the DEA duty desk to the PGR duty desk and reads it back.
//!
//! Everything runs in this process on loopback: two nodes (`dea-1`, `pgr-1`) configured from the
//! committed test PKI in `certs/test/` (test-only keys: never reuse them), one subscribed client at
//! PGR and one sending client at DEA. Run it with:
//!
//! ```sh
//! cargo run --example send_alert
//! ```
//!
//! It does not show the daemon, config files written by hand or a real PKI: see README.md and
//! `deploy/` for those.
#![forbid(unsafe_code)]

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use enlace::network::LocalNetwork;
use enlace::payloads::{Chemical, PrecursorAlert, Quantity, seaport, text};
use enlace::{Client, Mailbox, Precedence, pb};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Node configs and data go to a temporary directory, removed when `dir` is dropped.
    let dir = tempfile::tempdir()?;
    let certs = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs/test");
    let net = LocalNetwork::mesh(dir.path(), &certs, &["dea", "pgr"])?;
    let dea = net.start("dea-1").await?;
    let pgr = net.start("pgr-1").await?;

    // The PGR duty desk reads its agency's inbox; the DEA duty desk only sends.
    let desk = Client::connect(net.client_options("pgr", "duty-desk")?).await?;
    let mut inbox = desk.subscribe(Mailbox::Inbox).await?;
    let sender = Client::connect(net.client_options("dea", "duty-desk")?).await?;

    let draft = PrecursorAlert::new(pb::PrecursorAlertKind::SuspiciousShipment)
        .chemical(
            Chemical::new("Pseudoephedrine hydrochloride")
                .cas("345-78-8".parse()?)
                .quantity(Quantity::kilograms(1200.0)),
        )
        .vessel(
            "MSC Example",
            seaport("CNSHA".parse()?, "Shanghai"),
            seaport("MXZLO".parse()?, "Manzanillo"),
        )
        .party(
            pb::PartyRole::Consignee,
            "Importadora Ejemplo S.A. de C.V.",
            "MX",
        )
        .reference("PEN Online", "PEN-2026-000123")
        .action(pb::PrecursorRequestedAction::Intercept)
        .narrative(text(
            "en",
            "Diverted pseudoephedrine declared as vitamin C; expected at Manzanillo within 72 h.",
        ))
        .into_draft()
        .to("pgr")
        .precedence(Precedence::Flash)
        .expires_in(Duration::from_secs(6 * 3600))
        .case_id("DEA-2026-0142");
    let accepted = sender
        .send(draft)
        .await? // handed over
        .await?; // accepted by dea-1
    println!(
        "dea-1 accepted {} (routed to {} destination)",
        accepted.id, accepted.routed
    );

    let delivery = tokio::time::timeout(Duration::from_secs(10), inbox.next())
        .await
        .context("no delivery within 10 s")?
        .context("the connection to pgr-1 ended")?;
    let received: pb::PrecursorChemicalAlert = delivery.payload()?;
    let chemical = received
        .chemicals
        .first()
        .context("the alert lost its chemical line")?;
    let amount = chemical
        .quantity
        .as_ref()
        .map(|q| format!("{} {}", q.value, q.unit))
        .unwrap_or_default();
    println!(
        "PGR duty desk received {} {} via {}: {} {} (CAS {}), case {}",
        delivery.precedence(),
        delivery.id(),
        delivery.path().join(" → "),
        amount,
        chemical.name_as_labelled,
        chemical.cas_number,
        delivery.message().case_id(),
    );
    // Until acknowledged, the node offers the message again after its ack timeout.
    delivery.ack().await?;

    sender.close().await;
    desk.close().await;
    dea.stop().await;
    pgr.stop().await;
    Ok(())
}
