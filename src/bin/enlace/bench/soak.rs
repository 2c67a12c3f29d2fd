//! `enlace bench --scenario soak`: a long run with faults, ending with a verdict.
//!
//! Four nodes: DEA's reaches AFI's only through CENAPI's (a relay) and PGR's directly. For
//! `--duration`, DEA's analyst sends ROUTINE records of 1 KiB to AFI and PGR (100 a second
//! each) and its duty desk sends alerts to both (FLASH, IMMEDIATE and PRIORITY in turn, 20 a
//! second each), all to the duty desk's unit; AFI's and PGR's duty desks read and acknowledge
//! everything, reconnecting when their node goes away; DEA's duty desk reads the receipts its
//! alerts ask for, as an application does (unread, they fill its receipts unit: at its
//! `queue_capacity` every further receipt is refused and retried). Meanwhile the relay is restarted every [`RELAY_EVERY`] and PGR's node, DEA's direct
//! peer, is taken down for [`PEER_DOWN`] every [`PEER_EVERY`] (the link to it cut, and healed
//! when it returns); both intervals shrink for short runs, so that each fault happens at least
//! once. Every message has an hour to live: none may expire.
//!
//! At the end the senders stop and the bench waits (up to [`DRAIN`]) for every accepted message.
//! The verdict: messages accepted but never delivered (lost), delivered to an application twice
//! (duplicates), the bench process's resident memory every 10 s, and latency (send() to the
//! application) per destination and precedence per minute of sending.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use enlace::network::LocalNetwork;
use enlace::{Client, ClientOptions, Dedup, Draft, Mailbox, MessageId, Precedence};
use tokio::task::JoinSet;

use super::load::record_draft;
use super::{BenchArgs, Started, start_node, stop_nodes};

/// The relay is restarted this often (at most).
const RELAY_EVERY: Duration = Duration::from_secs(180);
/// DEA's direct peer goes down this often (at most)...
const PEER_EVERY: Duration = Duration::from_secs(300);
/// ...for this long.
const PEER_DOWN: Duration = Duration::from_secs(20);
/// How long the bench waits for the last messages after the senders stop.
const DRAIN: Duration = Duration::from_secs(120);
/// The senders' pace: per tick, to each of AFI and PGR, [`RECORDS_PER_TICK`] records and one
/// alert (100 records and 20 alerts a second each).
const TICK: Duration = Duration::from_millis(50);
const RECORDS_PER_TICK: u64 = 5;
/// Everything goes to the duty desk's own unit at AFI and PGR (records and alerts share its
/// mailbox, as they would at a desk), read by the desk.
const UNIT: &str = "duty-desk";

/// A send accepted by DEA's node: where to, its precedence, and when `send()` was called.
#[derive(Debug, Clone, Copy)]
struct Sent {
    to: &'static str,
    precedence: Precedence,
    at: Instant,
}

/// Latency of one precedence to one agency in one minute of sending.
#[derive(Debug, serde::Serialize)]
struct Minute {
    minute: u64,
    to: &'static str,
    precedence: String,
    delivered: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

/// The verdict, and its JSON line.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    scenario: &'static str,
    duration_s: f64,
    relay_restarts: u32,
    peer_outages: u32,
    sent: usize,
    delivered: usize,
    lost: usize,
    duplicates: usize,
    send_errors: u64,
    /// Receipts DEA's duty desk read (its alerts ask for every one).
    receipts_read: u64,
    drain_s: f64,
    /// Every 10 s: seconds since the start, resident MB of the bench process.
    rss_mb: Vec<(u64, f64)>,
    latency: Vec<Minute>,
    pub verdict: &'static str,
}

impl Report {
    /// Nothing lost, duplicated or refused.
    pub fn passed(&self) -> bool {
        self.lost == 0 && self.duplicates == 0 && self.send_errors == 0
    }
}

type Shown = Arc<Mutex<HashMap<MessageId, (u32, Instant)>>>;

pub async fn run(
    dir: &std::path::Path,
    pki: &std::path::Path,
    a: &BenchArgs,
) -> anyhow::Result<Report> {
    let mut net = LocalNetwork::mesh_with_limits(
        dir,
        pki,
        &["dea", "cenapi", "afi", "pgr"],
        &["shutdown_grace_ms = 200"],
    )?;
    net.extra
        .insert("dea-1".into(), "[routes]\nafi = \"cenapi-1\"\n".into());
    net.extra
        .insert("afi-1".into(), "[routes]\ndea = \"cenapi-1\"\n".into());
    net.links(&[
        ("dea-1", "cenapi-1"),
        ("cenapi-1", "afi-1"),
        ("dea-1", "pgr-1"),
    ])?;
    let mut nodes: HashMap<String, Started> = HashMap::new();
    for name in net.nodes.keys() {
        nodes.insert(name.clone(), start_node(&net, name).await?);
    }
    let result = soak(&net, &mut nodes, a.duration).await;
    stop_nodes(nodes.into_values().collect()).await;
    result
}

async fn soak(
    net: &LocalNetwork,
    nodes: &mut HashMap<String, Started>,
    duration: Duration,
) -> anyhow::Result<Report> {
    let stop = Arc::new(AtomicBool::new(false));
    let shown: Shown = Arc::default();
    let mut readers = JoinSet::new();
    for agency in ["afi", "pgr"] {
        let options = net.client_options(agency, "duty-desk")?;
        let (shown, stop) = (shown.clone(), stop.clone());
        readers.spawn(read(options, UNIT, shown, stop));
    }
    let sent: Arc<Mutex<HashMap<MessageId, Sent>>> = Arc::default();
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let records = Client::connect(net.client_options("dea", "analyst")?).await?;
    let alerts = Client::connect(net.client_options("dea", "duty-desk")?).await?;
    let receipts_read = Arc::new(std::sync::atomic::AtomicU64::new(0));
    readers.spawn(read_receipts(
        net.client_options("dea", "duty-desk")?,
        receipts_read.clone(),
        stop.clone(),
    ));
    let started = Instant::now();
    let relay_every = RELAY_EVERY.min(duration / 3);
    let peer_every = PEER_EVERY.min(duration / 2);
    let (mut relay_restarts, mut peer_outages) = (0u32, 0u32);
    let mut next_relay = started + relay_every;
    let mut next_peer = started + peer_every;
    let mut peer_back: Option<Instant> = None;
    let mut rss = Vec::new();
    let mut next_rss = started;
    let mut tick = tokio::time::interval(TICK);
    let mut n = 0u64;
    let mut sends = JoinSet::new();
    while started.elapsed() < duration {
        tick.tick().await;
        let now = Instant::now();
        if now >= next_rss {
            rss.push((
                started.elapsed().as_secs(),
                super::process::status_mb("self", "VmRSS"),
            ));
            next_rss += Duration::from_secs(10);
        }
        if now >= next_relay {
            eprintln!(
                "  {:>5.0} s: restarting the relay",
                started.elapsed().as_secs_f64()
            );
            if let Some(s) = nodes.remove("cenapi-1") {
                stop_nodes(vec![s]).await;
            }
            nodes.insert("cenapi-1".into(), start_again(net, "cenapi-1").await?);
            relay_restarts += 1;
            next_relay += relay_every;
        }
        if peer_back.is_none() && now >= next_peer {
            eprintln!(
                "  {:>5.0} s: PGR's node down",
                started.elapsed().as_secs_f64()
            );
            if let Some(s) = nodes.remove("pgr-1") {
                stop_nodes(vec![s]).await;
            }
            peer_back = Some(now + PEER_DOWN);
            peer_outages += 1;
            next_peer += peer_every;
        }
        if peer_back.is_some_and(|t| now >= t) {
            eprintln!(
                "  {:>5.0} s: PGR's node back",
                started.elapsed().as_secs_f64()
            );
            nodes.insert("pgr-1".into(), start_again(net, "pgr-1").await?);
            peer_back = None;
        }
        // Per tick: records and an alert to each destination.
        for to in ["afi", "pgr"] {
            for _ in 0..RECORDS_PER_TICK {
                let d = record_draft(&format!("{to}/{UNIT}"));
                let what = (to, Precedence::Routine);
                send(&records, d, what, &sent, &errors, &mut sends).await;
            }
            let p = [
                Precedence::Flash,
                Precedence::Immediate,
                Precedence::Priority,
            ];
            let p = p[(n % 3) as usize];
            send(
                &alerts,
                alert_draft(to, p),
                (to, p),
                &sent,
                &errors,
                &mut sends,
            )
            .await;
        }
        n += 1;
        while sends.try_join_next().is_some() {}
    }
    if peer_back.is_some() {
        nodes.insert("pgr-1".into(), start_again(net, "pgr-1").await?);
    }
    while sends.join_next().await.is_some() {}
    let duration_s = started.elapsed().as_secs_f64();
    eprintln!("  sending over after {duration_s:.0} s; draining");
    let sent = std::mem::take(&mut *sent.lock().expect("sent lock"));
    let draining = Instant::now();
    while draining.elapsed() < DRAIN {
        let missing = {
            let shown = shown.lock().expect("shown lock");
            sent.keys().filter(|id| !shown.contains_key(id)).count()
        };
        if missing == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drain_s = draining.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    readers.abort_all();
    records.close().await;
    alerts.close().await;
    let shown = std::mem::take(&mut *shown.lock().expect("shown lock"));
    let lost = sent.keys().filter(|id| !shown.contains_key(id)).count();
    let duplicates = shown
        .values()
        .map(|(times, _)| (*times as usize).saturating_sub(1))
        .sum();
    let delivered = sent.keys().filter(|id| shown.contains_key(id)).count();
    let latency = latency_by_minute(&sent, &shown, started);
    let send_errors = errors.load(Ordering::Relaxed);
    let mut report = Report {
        scenario: "soak",
        duration_s: (duration_s * 10.0).round() / 10.0,
        relay_restarts,
        peer_outages,
        sent: sent.len(),
        delivered,
        lost,
        duplicates,
        send_errors,
        receipts_read: receipts_read.load(Ordering::Relaxed),
        drain_s: (drain_s * 10.0).round() / 10.0,
        rss_mb: rss,
        latency,
        verdict: "",
    };
    report.verdict = match report.passed() {
        true => "pass: nothing lost, nothing duplicated",
        false => "FAIL: messages lost, duplicated or refused",
    };
    Ok(report)
}

/// Starts a node that was just stopped, trying again for up to 10 s while what the last run
/// held (its socket, its store's lock) is still being released; each failure is said.
async fn start_again(net: &LocalNetwork, name: &str) -> anyhow::Result<Started> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match start_node(net, name).await {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() < deadline => {
                eprintln!("  {name} did not start ({e:#}); trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Hands `d` over; a task notes it as sent once DEA's node accepts it.
async fn send(
    client: &Client,
    d: Draft,
    (to, precedence): (&'static str, Precedence),
    sent: &Arc<Mutex<HashMap<MessageId, Sent>>>,
    errors: &Arc<std::sync::atomic::AtomicU64>,
    sends: &mut JoinSet<()>,
) {
    let at = Instant::now();
    let (sent, errors) = (sent.clone(), errors.clone());
    match client.send(d).await {
        Ok(acceptance) => {
            sends.spawn(async move {
                match acceptance.await {
                    Ok(a) => {
                        let s = Sent { to, precedence, at };
                        sent.lock().expect("sent lock").insert(a.id, s);
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        eprintln!("  send refused: {e}");
                    }
                }
            });
        }
        Err(e) => {
            errors.fetch_add(1, Ordering::Relaxed);
            eprintln!("  send failed: {e}");
        }
    }
}

fn alert_draft(to: &str, p: Precedence) -> Draft {
    let body = enlace::pb::LiaisonMessage {
        body: Some(enlace::payloads::text(
            "es-MX",
            "alerta de prueba de resistencia",
        )),
        ..Default::default()
    };
    Draft::new(&body)
        .id(MessageId::new_v7(SystemTime::now()))
        .to(&format!("{to}/{UNIT}"))
        .precedence(p)
        .expires_in(Duration::from_secs(3600))
}

/// An application reading `unit` (connecting with `options`) until `stop`: it acknowledges
/// everything and connects again whenever its node goes away (one `Dedup` for all its
/// connections).
async fn read(options: ClientOptions, unit: &'static str, shown: Shown, stop: Arc<AtomicBool>) {
    let dedup = Dedup::default();
    while !stop.load(Ordering::Relaxed) {
        let Ok(c) = Client::connect(options.clone().dedup(dedup.clone())).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let Ok(mut inbox) = c
            .subscribe(Mailbox::unit(unit).expect("a valid unit"))
            .await
        else {
            continue;
        };
        while let Some(d) = inbox.next().await {
            let now = Instant::now();
            shown
                .lock()
                .expect("shown lock")
                .entry(d.id())
                .and_modify(|(n, _)| *n += 1)
                .or_insert((1, now));
            let _ = d.ack().await;
        }
    }
}

/// DEA's duty desk reading its receipts until `stop`, connecting again whenever its node goes
/// away; counts what it read.
pub(super) async fn read_receipts(
    options: ClientOptions,
    read: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(c) = Client::connect(options.clone()).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let Ok(mut receipts) = c.receipts().await else {
            continue;
        };
        while receipts.next().await.is_some() {
            read.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Latency per precedence per minute of sending: nearest-rank p50, p99 and the maximum.
fn latency_by_minute(
    sent: &HashMap<MessageId, Sent>,
    shown: &HashMap<MessageId, (u32, Instant)>,
    started: Instant,
) -> Vec<Minute> {
    let mut buckets: HashMap<(u64, &'static str, String), Vec<f64>> = HashMap::new();
    for (id, s) in sent {
        if let Some((_, got)) = shown.get(id) {
            let minute = s.at.saturating_duration_since(started).as_secs() / 60;
            let ms = got.saturating_duration_since(s.at).as_secs_f64() * 1e3;
            let key = (minute, s.to, format!("{:?}", s.precedence).to_uppercase());
            buckets.entry(key).or_default().push(ms);
        }
    }
    let mut out: Vec<Minute> = buckets
        .into_iter()
        .map(|((minute, to, precedence), mut l)| {
            l.sort_by(f64::total_cmp);
            let pct = |p: f64| l[((p * l.len() as f64).ceil() as usize).clamp(1, l.len()) - 1];
            let round = |x: f64| (x * 10.0).round() / 10.0;
            Minute {
                minute,
                to,
                precedence,
                delivered: l.len(),
                p50_ms: round(pct(0.5)),
                p99_ms: round(pct(0.99)),
                max_ms: round(*l.last().expect("a bucket has a latency")),
            }
        })
        .collect();
    out.sort_by(|a, b| (a.minute, a.to, &a.precedence).cmp(&(b.minute, b.to, &b.precedence)));
    out
}
