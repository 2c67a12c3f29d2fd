//! `enlace demo`: a small agency network on this machine, playing stories 1 and 2 of the domain
//! brief.
//!
//! Generates a PKI in a temporary directory (or `--data-dir`), writes node configs, starts four
//! nodes (DEA, PGR, AFI, CENAPI) in this process on loopback, and has a DEA analyst stream
//! ROUTINE/BULK analytical records to CENAPI while the DEA duty desk sends FLASH precursor alerts to
//! PGR and AFI, addressed by the agencies' current names (FGR, CMI). DEA's node has no link to
//! AFI's: those copies go through CENAPI's node, a relay. Prints, per message, the recipient,
//! precedence, path and time from send to delivery; then AFI's duty desk answers the first alert
//! (action taken) and the demo prints that alert's receipts as the DEA duty desk's receipt
//! stream got them (AFI's back through the relay). Then story 2, originator control: a report
//! CENAPI derives from a DEA alert that needs DEA's consent is refused, DEA releases it, and it
//! goes through (`originator_control`). Then it stops everything it started. The nodes run the
//! laboratory policy `LocalNetwork` writes (every agency may send everything to every other).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use tokio::task::JoinSet;

use enlace::network::LocalNetwork;
use enlace::payloads::{Chemical, PrecursorAlert, Quantity, UnLocode, seaport, text};
use enlace::pki::{DEMO_TRUST_DOMAIN, Pki, PkiOptions, demo_agencies};
use enlace::{Acceptance, Client, Draft, Mailbox, Message, MessageId, Precedence, Receipts, pb};

use super::exit::Failure;

/// Arguments of `enlace demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Keep the PKI, node configs and data here (default: a temporary directory, removed after).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Analytical records the DEA analyst streams to CENAPI.
    #[arg(long, default_value_t = 2000)]
    pub records: usize,
    /// FLASH alerts the DEA duty desk sends during the transfer.
    #[arg(long, default_value_t = 3)]
    pub alerts: usize,
    /// Print the nodes' logs (delivery events) as they happen.
    #[arg(long, short)]
    pub verbose: bool,
}

const AGENCIES: [&str; 4] = ["dea", "pgr", "afi", "cenapi"];

/// Every pair of nodes is linked except DEA and AFI, which reach each other through CENAPI.
const LINKS: [(&str, &str); 5] = [
    ("dea-1", "pgr-1"),
    ("dea-1", "cenapi-1"),
    ("pgr-1", "afi-1"),
    ("pgr-1", "cenapi-1"),
    ("afi-1", "cenapi-1"),
];

/// The agency directory every node carries: stable ids, today's names, earlier names.
const DIRECTORY: &str = r#"[agencies.afi]
display = "CMI"
aliases = ["pfm", "cmi"]
served_by = "afi-1"

[agencies.pgr]
display = "FGR"
aliases = ["fgr"]
served_by = "pgr-1"
"#;

/// The `[routes]` of the nodes that reach an agency through a relay.
fn routes(node: &str) -> &'static str {
    match node {
        "dea-1" => "\n[routes]\nafi = \"cenapi-1\"\n",
        "afi-1" => "\n[routes]\ndea = \"cenapi-1\"\n",
        _ => "",
    }
}

/// Analytical record sends in flight at once.
const BULK_CONCURRENCY: usize = 32;

/// A port code written in this file.
fn port(code: &str) -> UnLocode {
    code.parse().expect("a valid UN/LOCODE")
}

type SentLog = Arc<Mutex<HashMap<MessageId, (Instant, Precedence)>>>;

struct Arrival {
    id: MessageId,
    recipient: String,
    precedence: Precedence,
    path: String,
    latency: Duration,
    /// Kept for alerts, so the recipient can answer them.
    message: Option<Message>,
}

pub(super) async fn run(a: DemoArgs) -> Result<(), Failure> {
    let temp;
    let dir = match &a.data_dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::tempdir().context("cannot create a temporary directory")?;
            temp.path().to_owned()
        }
    };
    let opts = PkiOptions {
        overwrite: true,
        ..Default::default()
    };
    Pki::federation(&dir.join("pki"), DEMO_TRUST_DOMAIN, &demo_agencies(), opts)?;
    let mut net = LocalNetwork::mesh(&dir, &dir.join("pki"), &AGENCIES)?;
    let names: Vec<String> = net.nodes.keys().cloned().collect();
    for node in names {
        let extra = format!("{DIRECTORY}{}", routes(&node));
        net.extra.insert(node, extra);
    }
    net.links(&LINKS)?;
    println!(
        "Enlace demo: four agency nodes on loopback, PKI and configs in {}",
        dir.display()
    );
    let mut nodes = Vec::new();
    for spec in net.nodes.values() {
        let node = net.start(&spec.name).await?;
        let metrics = match node.metrics_addr() {
            Some(m) => format!("metrics http://{m}/metrics  health /healthz /readyz"),
            None => "metrics off".to_owned(),
        };
        println!(
            "  node {:<9} agency {:<7} {:<16} {metrics}",
            spec.name,
            spec.agency.to_uppercase(),
            node.addr.to_string(),
        );
        nodes.push(node);
    }

    let result = play(&net, &a).await;
    let mut stopping = JoinSet::new();
    for n in nodes {
        stopping.spawn(n.stop());
    }
    while stopping.join_next().await.is_some() {}
    if a.data_dir.is_some() {
        println!(
            "\nKept {} (configs in config/, start a node with: enlaced --config <file>)",
            dir.display()
        );
    }
    result
}

async fn play(net: &LocalNetwork, a: &DemoArgs) -> Result<(), Failure> {
    let connect = |agency: &str, client: &str| {
        let opts = net.client_options(agency, client);
        async move { Client::connect(opts?).await.map_err(anyhow::Error::from) }
    };
    let receivers = [
        ("pgr", "duty-desk", a.alerts),
        ("afi", "duty-desk", a.alerts),
        ("cenapi", "analyst", a.records),
    ];
    let sent: SentLog = Arc::default();
    let mut readers = JoinSet::new();
    let mut receiving_clients = Vec::new();
    for (agency, name, expect) in receivers {
        let client = connect(agency, name).await?;
        let mut inbox = client.subscribe(Mailbox::Inbox).await?;
        let sent = sent.clone();
        let recipient = format!("{}/{name}", agency.to_uppercase());
        readers.spawn(async move {
            let mut got = Vec::with_capacity(expect);
            while got.len() < expect {
                let Some(d) = inbox.next().await else { break };
                let latency = sent
                    .lock()
                    .expect("sent log lock")
                    .get(&d.id())
                    .map(|(at, _)| at.elapsed())
                    .unwrap_or_default();
                let urgent = d.precedence().is_time_sensitive();
                got.push(Arrival {
                    id: d.id(),
                    recipient: recipient.clone(),
                    precedence: d.precedence(),
                    path: d.path().join(" → "),
                    latency,
                    message: urgent.then(|| d.message().clone()),
                });
                // A failed ack only means a redelivery, which the client drops.
                let _ = d.ack().await;
            }
            got
        });
        receiving_clients.push(client);
    }
    let desk = Arc::new(connect("dea", "duty-desk").await?);
    let mut receipts = desk
        .receipts()
        .await
        .context("DEA duty desk's receipt stream")?;
    let analyst = Arc::new(connect("dea", "analyst").await?);

    println!(
        "\nDEA analyst streams {} analytical records to CENAPI; DEA duty desk sends {} FLASH alert(s) to FGR and CMI meanwhile.\n\
         (The directory resolves FGR to agency pgr and CMI to agency afi; DEA's node has no link to AFI's, so CENAPI's node relays.)",
        a.records, a.alerts
    );
    let started = Instant::now();
    let bulk = tokio::spawn(stream_records(analyst.clone(), sent.clone(), a.records));
    let mut alerts = Vec::new();
    for i in 0..a.alerts {
        // Let the transfer get going, then space the alerts out across it.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let id = MessageId::new_v7(SystemTime::now());
        let draft = Draft::new(&sample_alert(i))
            .id(id)
            .to("FGR")
            .to("CMI")
            .precedence(Precedence::Flash)
            .expires_in(Duration::from_secs(6 * 3600))
            .case_id("DEA-DEMO-0001");
        sent.lock()
            .expect("sent log lock")
            .insert(id, (Instant::now(), Precedence::Flash));
        desk.send(draft)
            .await
            .context("FLASH alert not sent")?
            .await
            .context("FLASH alert refused")?;
        alerts.push(id);
    }
    let accepted = bulk.await.context("bulk sender task")??;
    let mut arrivals = Vec::new();
    let deadline = Duration::from_secs(120);
    let gathered = tokio::time::timeout(deadline, async {
        while let Some(r) = readers.join_next().await {
            arrivals.extend(r.context("receiver task")?);
        }
        Ok::<_, anyhow::Error>(())
    })
    .await;
    let elapsed = started.elapsed();
    match gathered {
        Ok(r) => r?,
        Err(_) => println!("(stopped waiting after {deadline:?}: some messages did not arrive)"),
    }
    for c in receiving_clients {
        c.close().await;
    }
    analyst.close().await;
    report(&arrivals, &alerts, accepted, a.records, elapsed);
    if let Some(first) = alerts.first() {
        show_receipts(&connect, &mut receipts, &arrivals, *first).await?;
    }
    drop(receipts);
    let story2 = originator_control(&connect, &desk).await;
    desk.close().await;
    story2?;
    let complete = arrivals.len() == a.records + 2 * a.alerts;
    if complete {
        Ok(())
    } else {
        Err(Failure::from(anyhow::anyhow!(
            "{} of {} deliveries arrived",
            arrivals.len(),
            a.records + 2 * a.alerts
        )))
    }
}

/// AFI's duty desk answers the first alert; prints that alert's receipts in time order.
async fn show_receipts<F, Fut>(
    connect: &F,
    receipts: &mut Receipts,
    arrivals: &[Arrival],
    alert: MessageId,
) -> Result<(), Failure>
where
    F: Fn(&str, &str) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Client>>,
{
    let afi_copy = arrivals
        .iter()
        .find(|a| a.id == alert && a.recipient.starts_with("AFI"))
        .and_then(|a| a.message.as_ref());
    if let Some(original) = afi_copy {
        let afi = connect("afi", "duty-desk").await?;
        let answer = pb::BusinessResponse {
            outcome: pb::BusinessOutcome::ActionTaken as i32,
            reason: "interception team dispatched to Manzanillo".into(),
            ..Default::default()
        };
        afi.respond(original, answer)
            .await
            .context("AFI's business response not sent")?
            .await
            .context("AFI's business response refused")?;
        afi.close().await;
    }
    // Accepted, persisted, delivered and acknowledged for PGR and AFI, and AFI's response.
    let expected = 9;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while got.len() < expected {
            match receipts.next_for(alert).await {
                Some(r) => got.push(r),
                None => break,
            }
        }
    })
    .await;
    got.sort_by_key(|r| r.at);
    println!(
        "\nReceipts of alert {alert} (`enlace status {alert}` shows the same), AFI's back through CENAPI's node:"
    );
    println!(
        "{:<24} {:<24} {:<10} {:<22} {:<28} DETAIL",
        "AT (UTC)", "STAGE", "ADDRESSEE", "BY", "RECEIPT'S PATH"
    );
    for r in &got {
        println!(
            "{:<24} {:<24} {:<10} {:<22} {:<28} {}",
            r.at.map(enlace::rfc3339).unwrap_or_default(),
            r.stage.name(),
            r.addressee,
            r.by,
            r.path.join(" → "),
            r.detail
        );
    }
    if got.len() < expected {
        println!("({} of {expected} receipts arrived within 10 s)", got.len());
    }
    Ok(())
}

/// One step of story 2, as the demo prints it.
struct Step {
    who: &'static str,
    what: String,
    outcome: String,
}

/// Story 2: CENAPI derives a report from a DEA alert whose handling needs DEA's consent for
/// onward dissemination. Sent to a third agency (FGR), it is refused, naming the rule; CENAPI
/// asks DEA for a release, DEA's duty desk approves it for FGR, and the same report then goes
/// through. Prints the steps as a table.
async fn originator_control<F, Fut>(connect: &F, desk: &Client) -> Result<(), Failure>
where
    F: Fn(&str, &str) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Client>>,
{
    println!(
        "\nStory 2, originator control: CENAPI derives a report from a DEA alert whose onward \
         dissemination needs DEA's consent, and sends it to FGR."
    );
    let mut steps = Vec::new();
    let cenapi = connect("cenapi", "analyst").await?;
    let mut cenapi_inbox = cenapi.subscribe(Mailbox::Inbox).await?;
    let mut desk_inbox = desk.subscribe(Mailbox::Inbox).await?;
    let pgr = connect("pgr", "duty-desk").await?;
    let mut pgr_inbox = pgr.subscribe(Mailbox::Inbox).await?;
    let within = |what: &'static str| {
        move |r: Result<Option<enlace::Delivery>, tokio::time::error::Elapsed>| {
            r.ok()
                .flatten()
                .with_context(|| format!("{what} did not arrive"))
        }
    };
    let wait = Duration::from_secs(10);

    // DEA's alert to CENAPI: TLP:GREEN, onward dissemination with DEA's consent only.
    let source = desk
        .send(
            Draft::new(&sample_alert(99))
                .to("cenapi")
                .precedence(Precedence::Immediate)
                .case_id("DEA-DEMO-0002")
                .handling(pb::HandlingPolicy {
                    tlp: pb::TlpLabel::Green as i32,
                    onward_dissemination: pb::Permission::OriginatorConsent as i32,
                    purpose: "interdiction of precursor shipment".into(),
                    ..Default::default()
                }),
        )
        .await
        .context("DEA's alert to CENAPI not sent")?
        .await
        .context("DEA's alert to CENAPI refused")?
        .id;
    steps.push(Step {
        who: "DEA/duty-desk",
        what: "IMMEDIATE alert to CENAPI: TLP:GREEN, onward only by consent".into(),
        outcome: format!("accepted ({source})"),
    });
    loop {
        let d =
            within("DEA's alert at CENAPI")(tokio::time::timeout(wait, cenapi_inbox.next()).await)?;
        let done = d.id() == source;
        let _ = d.ack().await;
        if done {
            break;
        }
    }
    let report = || {
        Draft::new(&pb::AnalyticalReport {
            kind: pb::AnalyticalReportKind::OperationalAnalysis as i32,
            title: Some(text("es-MX", "Red de desvío de pseudoefedrina, Manzanillo")),
            source_message_ids: vec![source.to_bytes()],
            ..Default::default()
        })
        .to("FGR")
        .derived_from(source)
        .case_id("DEA-DEMO-0002")
        .handling(pb::HandlingPolicy {
            purpose: "interdiction of precursor shipment".into(),
            ..Default::default()
        })
    };
    let refused = cenapi
        .send(report())
        .await
        .context("CENAPI's report not sent")?
        .await;
    steps.push(Step {
        who: "CENAPI/analyst",
        what: "report derived from it, to FGR".into(),
        outcome: match &refused {
            Ok(a) => format!("accepted ({}): the release was not needed?", a.id),
            Err(e) => e.to_string(),
        },
    });
    let request = cenapi
        .send(
            Draft::new(&pb::DisseminationRequest {
                source_message_ids: vec![source.to_bytes()],
                to_agencies: vec!["pgr".into()],
                purpose: "interdiction of precursor shipment".into(),
                justification: "FGR prosecutes the consignee".into(),
            })
            .to("dea")
            .precedence(Precedence::Priority),
        )
        .await
        .context("CENAPI's request not sent")?
        .await
        .context("CENAPI's dissemination request refused")?
        .id;
    steps.push(Step {
        who: "CENAPI/analyst",
        what: "DisseminationRequest to DEA: release it to FGR".into(),
        outcome: format!("accepted ({request})"),
    });
    let asked = loop {
        let d =
            within("CENAPI's request at DEA")(tokio::time::timeout(wait, desk_inbox.next()).await)?;
        if d.id() == request {
            break d;
        }
        let _ = d.ack().await;
    };
    let req: pb::DisseminationRequest = asked.payload().context("the request")?;
    let _ = asked.ack().await;
    let decision = desk
        .send(
            Draft::new(&pb::DisseminationDecision {
                request_id: request.to_bytes(),
                source_message_ids: req.source_message_ids,
                approved: true,
                to_agencies: req.to_agencies,
                purpose: req.purpose,
                reason: "approved for prosecution of the consignee".into(),
                ..Default::default()
            })
            .to("cenapi")
            .precedence(Precedence::Priority),
        )
        .await
        .context("DEA's decision not sent")?
        .await
        .context("DEA's dissemination decision refused")?
        .id;
    steps.push(Step {
        who: "DEA/duty-desk",
        what: "DisseminationDecision to CENAPI: approved for FGR (signed)".into(),
        outcome: format!("accepted ({decision})"),
    });
    loop {
        let d = within("DEA's decision at CENAPI")(
            tokio::time::timeout(wait, cenapi_inbox.next()).await,
        )?;
        let done = d.id() == decision;
        let _ = d.ack().await;
        if done {
            break;
        }
    }
    let second = cenapi
        .send(report())
        .await
        .context("CENAPI's report not sent")?
        .await;
    let delivered = match &second {
        Ok(a) => loop {
            let d = within("CENAPI's report at FGR")(
                tokio::time::timeout(wait, pgr_inbox.next()).await,
            )?;
            let done = d.id() == a.id;
            let path = d.path().join(" → ");
            let _ = d.ack().await;
            if done {
                break Some(path);
            }
        },
        Err(_) => None,
    };
    steps.push(Step {
        who: "CENAPI/analyst",
        what: "the same report, to FGR".into(),
        outcome: match (&second, &delivered) {
            (Ok(a), Some(path)) => format!("accepted ({}), delivered to FGR via {path}", a.id),
            (Ok(a), None) => format!("accepted ({})", a.id),
            (Err(e), _) => e.to_string(),
        },
    });
    println!("{:<16} {:<62} OUTCOME", "WHO", "WHAT");
    for s in &steps {
        println!("{:<16} {:<62} {}", s.who, s.what, s.outcome);
    }
    cenapi.close().await;
    pgr.close().await;
    match (refused, second) {
        (Err(_), Ok(_)) => Ok(()),
        (Ok(_), _) => Err(Failure::from(anyhow::anyhow!(
            "story 2: the derived report went out without DEA's release"
        ))),
        (_, Err(e)) => Err(Failure::from(anyhow::anyhow!(
            "story 2: the derived report was refused after DEA's release: {e}"
        ))),
    }
}

async fn stream_records(client: Arc<Client>, sent: SentLog, n: usize) -> anyhow::Result<usize> {
    let mut in_flight: std::collections::VecDeque<Acceptance> = Default::default();
    let mut accepted = 0;
    for i in 0..n {
        if in_flight.len() >= BULK_CONCURRENCY
            && let Some(oldest) = in_flight.pop_front()
        {
            oldest.await?;
            accepted += 1;
        }
        let precedence = if i % 2 == 0 {
            Precedence::Routine
        } else {
            Precedence::Bulk
        };
        let id = MessageId::new_v7(SystemTime::now());
        let draft = Draft::new(&sample_record(i))
            .id(id)
            .to("cenapi")
            .precedence(precedence)
            .expires_in(Duration::from_secs(7 * 86400))
            // An analytical feed, as `enlace send --bulk` sends it: no stage receipts.
            .non_delivery_receipts_only();
        sent.lock()
            .expect("sent log lock")
            .insert(id, (Instant::now(), precedence));
        in_flight.push_back(client.send(draft).await?);
    }
    for acceptance in in_flight {
        acceptance.await?;
        accepted += 1;
    }
    Ok(accepted)
}

fn sample_alert(i: usize) -> pb::PrecursorChemicalAlert {
    PrecursorAlert::new(pb::PrecursorAlertKind::SuspiciousShipment)
        .chemical(
            Chemical::new("Pseudoephedrine hydrochloride")
                .labelled("Vitamin C")
                .cas("345-78-8".parse().expect("a valid CAS number"))
                .quantity(Quantity::kilograms(1200.0)),
        )
        .vessel(
            "MSC Demo",
            seaport(port("CNSHA"), "Shanghai"),
            seaport(port("MXZLO"), "Manzanillo"),
        )
        .party(pb::PartyRole::Consignee, "Importadora Ejemplo S.A. de C.V.", "MX")
        .reference("PEN Online", &format!("PEN-DEMO-{:04}", i + 1))
        .action(pb::PrecursorRequestedAction::Intercept)
        .narrative(text(
            "en",
            "Diverted pseudoephedrine declared as vitamin C; expected at Manzanillo within 72 hours.",
        ))
        .build()
}

fn sample_record(i: usize) -> pb::AnalyticalReport {
    pb::AnalyticalReport {
        kind: pb::AnalyticalReportKind::OperationalAnalysis as i32,
        title: Some(text("es-MX", &format!("Registro analítico {i}"))),
        // About 1 KiB of content, like an analytical record.
        summary: Some(text(
            "es-MX",
            &"Movimientos de carga observados en puerto. ".repeat(22),
        )),
        ..Default::default()
    }
}

fn report(
    arrivals: &[Arrival],
    alerts: &[MessageId],
    accepted: usize,
    records: usize,
    elapsed: Duration,
) {
    println!(
        "\n{:<38} {:<12} {:<20} {:<26} {:>12}",
        "MESSAGE", "PRECEDENCE", "RECIPIENT", "PATH", "SEND→DELIVER"
    );
    for id in alerts {
        for a in arrivals.iter().filter(|a| a.id == *id) {
            println!(
                "{:<38} {:<12} {:<20} {:<26} {:>9.1} ms",
                a.id.to_string(),
                a.precedence.as_str(),
                a.recipient,
                a.path,
                a.latency.as_secs_f64() * 1000.0
            );
        }
    }
    let mut bulk: Vec<Duration> = arrivals
        .iter()
        .filter(|a| !a.precedence.is_time_sensitive())
        .map(|a| a.latency)
        .collect();
    bulk.sort();
    if let Some(last) = bulk.last() {
        let pct = |p: f64| bulk[((bulk.len() as f64 * p) as usize).min(bulk.len() - 1)];
        let path = arrivals
            .iter()
            .find(|a| !a.precedence.is_time_sensitive())
            .map(|a| a.path.clone())
            .unwrap_or_default();
        println!(
            "{:<38} {:<12} {:<20} {:<26} {:>9.1} ms median, p99 {:.1} ms, max {:.1} ms",
            format!("{} analytical records", bulk.len()),
            "ROUTINE/BULK",
            "CENAPI/analyst",
            path,
            pct(0.5).as_secs_f64() * 1000.0,
            pct(0.99).as_secs_f64() * 1000.0,
            last.as_secs_f64() * 1000.0
        );
    }
    println!(
        "\n{} of {} records accepted and {} delivered in {:.2} s; {} of {} alert copies delivered.",
        accepted,
        records,
        bulk.len(),
        elapsed.as_secs_f64(),
        arrivals
            .iter()
            .filter(|a| a.precedence.is_time_sensitive())
            .count(),
        alerts.len() * 2
    );
}
