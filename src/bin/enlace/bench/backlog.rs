//! `enlace bench --scenario backlog`: a peer offline while a large backlog queues for it.
//!
//! Three nodes (DEA's, PGR's and CENAPI's). DEA's node runs as a process of its own (`enlaced`,
//! found next to this binary), so that its resident memory is its own; the others run in this
//! process. PGR's node stays down while DEA's analyst sends `--copies` records of 1 KiB to PGR
//! (to its inbox; one in ten BULK, the rest ROUTINE) and DEA's duty desk a few IMMEDIATE alerts to PGR among
//! them: everything queues in DEA's outbox to PGR. Meanwhile DEA's duty desk sends FLASH alerts
//! to CENAPI every 5 ms, as before the backlog: their latency with and without the backlog.
//! Then PGR's node starts, and its readers read everything: what arrived (nothing lost, nothing
//! twice), and in which order (the alerts first, then ROUTINE, with BULK getting its minimum
//! share, one copy in `SHARE_EVERY + 1`).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use enlace::network::LocalNetwork;
use enlace::{Client, Mailbox, MessageId, Precedence};

use super::load::{Flow, alert_draft_to, record_draft_at};
use super::process::{NodeProcess, status_mb};
use super::soak::read_receipts;
use super::{BenchArgs, start_node, stop_nodes};

/// How long alerts are measured before the backlog builds up.
const BASELINE: Duration = Duration::from_secs(10);
/// One record in this many is BULK; the others ROUTINE.
const BULK_EVERY: u64 = 10;
/// IMMEDIATE alerts queued for PGR among the records.
const QUEUED_ALERTS: u64 = 8;
/// The drain gives up after this long without a delivery.
const STALL: Duration = Duration::from_secs(120);
/// The holding node's log: warnings, and the line that says it is listening.
const FILTER: &str = "warn,enlace::node::runtime=info";

/// The scenario's numbers, and its JSON line.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    scenario: &'static str,
    copies: u64,
    /// The holding node's store on disk when the backlog was full (every queued copy, its
    /// envelope and its store record).
    backlog_mb: f64,
    fill_s: f64,
    fill_msgs_per_s: f64,
    /// The holding node's resident memory: before the backlog, its peak while the backlog
    /// built up and drained (the kernel's high-water mark), and when the backlog was full.
    holder_rss_mb_start: f64,
    holder_rss_mb_full: f64,
    holder_rss_mb_peak: f64,
    /// FLASH alerts DEA -> CENAPI, send() to application: before and while the backlog builds.
    alert_p50_ms_before: f64,
    alert_p99_ms_before: f64,
    alert_p50_ms_during: f64,
    alert_p99_ms_during: f64,
    alert_max_ms_during: f64,
    /// The p99 of the alerts sent in the first and in the last tenth of the fill: the same
    /// load, beside a backlog under a tenth of its size and one over nine tenths.
    alert_p99_ms_first_tenth: f64,
    alert_p99_ms_last_tenth: f64,
    alerts_during: u64,
    alerts_lost: u64,
    /// The drain, from PGR's node starting.
    drain_s: f64,
    drain_msgs_per_s: f64,
    /// When the last queued IMMEDIATE alert, the last ROUTINE and the last BULK record arrived.
    last_alert_s: f64,
    last_routine_s: f64,
    last_bulk_s: f64,
    /// Of the BULK records, the share delivered before the last ROUTINE one (their minimum
    /// share is one copy in 17 while ROUTINE waits).
    bulk_share_before_last_routine: f64,
    lost: u64,
    duplicates: u64,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.lost == 0 && self.duplicates == 0 && self.alerts_lost == 0
    }
}

pub async fn run(dir: &Path, pki: &Path, a: &BenchArgs) -> anyhow::Result<Report> {
    let capacity = format!("queue_capacity = {}", a.copies + QUEUED_ALERTS + 1000);
    let net = LocalNetwork::mesh_with_limits(dir, pki, &["dea", "pgr", "cenapi"], &[&capacity])?;
    let name = |agency| net.node_of(agency).map(|n| n.name.clone());
    let (dea, pgr, cenapi) = (name("dea")?, name("pgr")?, name("cenapi")?);
    let mut holder = NodeProcess::spawn(&net, &dea, &dir.join(format!("{dea}.log")), FILTER)?;
    let cenapi_node = start_node(&net, &cenapi).await?;
    holder.ready(&net, "dea", "duty-desk").await?;
    let holder_rss_mb_start = holder.rss_mb("VmRSS");
    // DEA's duty desk reads the receipts its alerts ask for, as an application does (unread,
    // they would wait in its receipts unit, whole: receipts of alerts are time-sensitive).
    let stop_receipts = Arc::new(AtomicBool::new(false));
    let receipts_read = Arc::new(AtomicU64::new(0));
    let receipts = tokio::spawn(read_receipts(
        net.client_options("dea", "duty-desk")?,
        receipts_read.clone(),
        stop_receipts.clone(),
    ));

    eprintln!("  alerts to CENAPI for {BASELINE:?}, without a backlog");
    let (before, ()) = alerts_while(&net, tokio::time::sleep(BASELINE)).await?;
    eprintln!("  queueing {} records for PGR (its node down)", a.copies);
    let started = Instant::now();
    let pid = holder.pid();
    let clients = (
        net.client_options("dea", "analyst")?,
        net.client_options("dea", "duty-desk")?,
    );
    let filling = apart(fill(clients, a.copies, a.outstanding as usize, pid));
    let (during, filled) = alerts_while(&net, filling).await?;
    let filled = filled?;
    let fill_s = started.elapsed().as_secs_f64();
    let holder_rss_mb_full = holder.rss_mb("VmRSS");
    // Where `LocalNetwork` keeps a node's data.
    let backlog_mb = dir_bytes(&dir.join("data").join(&dea).join("store")) as f64 / 1e6;
    eprintln!(
        "  {} queued in {fill_s:.0} s; holder at {holder_rss_mb_full:.0} MB",
        a.copies
    );

    let draining = Instant::now();
    let pgr_node = start_node(&net, &pgr).await?;
    let drained = drain(&net, &filled, draining).await;
    let holder_rss_mb_peak = holder.rss_mb("VmHWM");
    stop_receipts.store(true, Ordering::Relaxed);
    stop_nodes(vec![pgr_node, cenapi_node]).await;
    holder.kill();
    let _ = receipts.await;
    let d = drained?;
    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    let (b50, b99, _) = percentiles(&before.0);
    let (d50, d99, dmax) = percentiles(&during.0);
    let tenth = during.0.len() / 10;
    let (_, first99, _) = percentiles(&during.0[..tenth]);
    let (_, last99, _) = percentiles(&during.0[during.0.len() - tenth..]);
    Ok(Report {
        scenario: "backlog",
        copies: a.copies,
        backlog_mb: round(backlog_mb),
        fill_s: round(fill_s),
        fill_msgs_per_s: round(a.copies as f64 / fill_s),
        holder_rss_mb_start: round(holder_rss_mb_start),
        holder_rss_mb_full: round(holder_rss_mb_full),
        holder_rss_mb_peak: round(holder_rss_mb_peak),
        alert_p50_ms_before: round(b50),
        alert_p99_ms_before: round(b99),
        alert_p50_ms_during: round(d50),
        alert_p99_ms_during: round(d99),
        alert_max_ms_during: round(dmax),
        alert_p99_ms_first_tenth: round(first99),
        alert_p99_ms_last_tenth: round(last99),
        alerts_during: during.0.len() as u64,
        alerts_lost: before.1 + during.1,
        drain_s: round(d.drain_s),
        drain_msgs_per_s: round(d.received as f64 / d.drain_s.max(1e-9)),
        last_alert_s: round(d.last[0]),
        last_routine_s: round(d.last[1]),
        last_bulk_s: round(d.last[2]),
        bulk_share_before_last_routine: round(d.bulk_before_last_routine),
        lost: d.lost,
        duplicates: d.duplicates,
    })
}

/// The bytes of the files directly in `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// FLASH alerts DEA -> CENAPI every 5 ms while `work` runs: their latencies (ms, in the order
/// they were sent), how many were lost, and what `work` gave.
async fn alerts_while<T>(
    net: &LocalNetwork,
    work: impl Future<Output = T>,
) -> anyhow::Result<((Vec<f64>, u64), T)> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut flow = Flow::alerts(net, "cenapi", &stop).await?;
    let out = work.await;
    stop.store(true, Ordering::Relaxed);
    let sent = flow.sent().await?;
    // What was accepted arrives within a few seconds, backlog or not.
    let deadline = Instant::now() + Duration::from_secs(10);
    while flow.received() < sent.accepted.len() as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let received: std::collections::HashMap<MessageId, Instant> =
        flow.finish().await?.into_iter().collect();
    let mut latencies = Vec::new();
    let mut lost = 0;
    for (id, at) in &sent.accepted {
        match received.get(id) {
            Some(got) => latencies.push((*at, got.duration_since(*at).as_secs_f64() * 1e3)),
            None => lost += 1,
        }
    }
    // In the order they were sent.
    latencies.sort_by_key(|(at, _)| *at);
    let latencies = latencies.into_iter().map(|(_, ms)| ms).collect();
    Ok(((latencies, lost), out))
}

/// p50, p99 and the maximum of `v`.
fn percentiles(v: &[f64]) -> (f64, f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let at = |q: f64| match v.len() {
        0 => 0.0,
        n => v[((n - 1) as f64 * q).round() as usize],
    };
    (at(0.5), at(0.99), at(1.0))
}

/// What the backlog holds: every accepted id and its precedence.
struct Filled {
    ids: std::collections::HashMap<MessageId, Precedence>,
}

/// Sends `copies` records to PGR as DEA's analyst (one in [`BULK_EVERY`] BULK), with
/// [`QUEUED_ALERTS`] IMMEDIATE alerts from its duty desk spread among them, `outstanding` in
/// flight; reports the holder's (process `holder`) memory every 10 s.
async fn fill(
    (analyst, duty_desk): (enlace::ClientOptions, enlace::ClientOptions),
    copies: u64,
    outstanding: usize,
    holder: String,
) -> anyhow::Result<Filled> {
    let sender = Client::connect(analyst).await?;
    let desk = Client::connect(duty_desk).await?;
    let mut filled = Filled {
        ids: std::collections::HashMap::with_capacity(copies as usize),
    };
    let mut in_flight = std::collections::VecDeque::new();
    let mut last_report = Instant::now();
    let alert_every = (copies / QUEUED_ALERTS).max(1);
    for i in 0..copies {
        if i % alert_every == alert_every / 2 {
            let draft = alert_draft_to("pgr/alerts", Precedence::Immediate);
            let accepted = desk.send(draft).await?.await?;
            filled.ids.insert(accepted.id, Precedence::Immediate);
        }
        if in_flight.len() >= outstanding.max(1)
            && let Some((p, a)) = in_flight.pop_front()
        {
            note(&mut filled, p, a).await?;
        }
        let p = match i % BULK_EVERY {
            0 => Precedence::Bulk,
            _ => Precedence::Routine,
        };
        let draft = record_draft_at("pgr", p);
        in_flight.push_back((p, sender.send(draft).await?));
        if last_report.elapsed() >= Duration::from_secs(10) {
            eprintln!(
                "  {i} of {copies}; holder at {:.0} MB",
                status_mb(&holder, "VmRSS")
            );
            last_report = Instant::now();
        }
    }
    for (p, a) in in_flight {
        note(&mut filled, p, a).await?;
    }
    sender.close().await;
    desk.close().await;
    Ok(filled)
}

/// Runs `work` on a thread and runtime of its own, as the application sending the backlog
/// would be: the harness's signing and sending then share the cores with the alert flow and
/// CENAPI's node as the operating system shares threads, rather than queueing ahead of their
/// tasks on one tokio runtime (which has no priorities: an alert's task woken behind a few
/// hundred of the sender's waits for them all, and its latency would be the harness's).
fn apart<T: Send + 'static>(
    work: impl Future<Output = anyhow::Result<T>> + Send + 'static,
) -> impl Future<Output = anyhow::Result<T>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("bench-fill".into())
        .spawn(move || {
            let out = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(work));
            let _ = tx.send(out);
        });
    async move {
        spawned?;
        rx.await
            .map_err(|_| anyhow::anyhow!("the backlog's sender stopped"))?
    }
}

async fn note(filled: &mut Filled, p: Precedence, a: enlace::Acceptance) -> anyhow::Result<()> {
    filled.ids.insert(a.await?.id, p);
    Ok(())
}

/// What the drain found.
struct Drained {
    drain_s: f64,
    received: u64,
    lost: u64,
    duplicates: u64,
    /// Seconds from the start of the drain to the last alert, ROUTINE and BULK copy.
    last: [f64; 3],
    bulk_before_last_routine: f64,
}

/// Reads PGR's records and alerts until everything in `filled` arrived (or nothing did for
/// [`STALL`]).
async fn drain(net: &LocalNetwork, filled: &Filled, started: Instant) -> anyhow::Result<Drained> {
    // PGR has no analyst in the demo PKI: its duty desk reads both, on two connections.
    let analyst = Client::connect(net.client_options("pgr", "duty-desk")?).await?;
    let desk = Client::connect(net.client_options("pgr", "duty-desk")?).await?;
    let mut records = analyst.subscribe(Mailbox::Inbox).await?;
    let mut alerts = desk.subscribe(Mailbox::unit("alerts")?).await?;
    let mut seen: HashSet<MessageId> = HashSet::with_capacity(filled.ids.len());
    let mut arrivals: Vec<(Precedence, f64)> = Vec::with_capacity(filled.ids.len());
    let mut duplicates = 0;
    let mut last_report = Instant::now();
    while seen.len() < filled.ids.len() {
        let next = tokio::select! {
            d = alerts.next() => d,
            d = records.next() => d,
            _ = tokio::time::sleep(STALL) => None,
        };
        let Some(d) = next else { break };
        let id = d.message().id();
        let p = d.message().precedence();
        d.ack().await?;
        if !seen.insert(id) {
            duplicates += 1;
            continue;
        }
        if filled.ids.contains_key(&id) {
            arrivals.push((p, started.elapsed().as_secs_f64()));
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            eprintln!("  drained {} of {}", seen.len(), filled.ids.len());
            last_report = Instant::now();
        }
    }
    let drain_s = started.elapsed().as_secs_f64();
    analyst.close().await;
    desk.close().await;
    let last = |p: Precedence| {
        arrivals
            .iter()
            .filter(|(q, _)| *q == p)
            .map(|(_, t)| *t)
            .fold(0.0, f64::max)
    };
    let last_routine = last(Precedence::Routine);
    let bulk = arrivals.iter().filter(|(p, _)| *p == Precedence::Bulk);
    let bulk_total = bulk.clone().count().max(1);
    let bulk_early = bulk.filter(|(_, t)| *t < last_routine).count();
    let received = seen.iter().filter(|id| filled.ids.contains_key(id)).count() as u64;
    Ok(Drained {
        drain_s,
        received,
        lost: filled.ids.len() as u64 - received,
        duplicates,
        last: [
            last(Precedence::Immediate),
            last_routine,
            last(Precedence::Bulk),
        ],
        bulk_before_last_routine: bulk_early as f64 / bulk_total as f64,
    })
}
