//! `enlace bench --scenario restart`: how long a node with a large backlog takes to serve again
//! after a restart.
//!
//! One node (DEA's), its `queue_capacity` raised to `--copies`, run as an `enlaced` process (a
//! restart is a new process, as in production, and its memory is its own). The bench fills a
//! unit nobody reads with `--copies` ROUTINE records of 1 KiB (as fast as the node accepts
//! them), stops the process with SIGTERM as an operator does, and starts it again on the same
//! data directory: `restart_s` is from the start to a client's connection being welcomed (the
//! node listening, its log, store and queues open); `first_delivery_s` until a reader
//! subscribing at once gets its first record; then it reads for `DRAIN_SAMPLE` and reports the
//! rate. The node's own startup log line gives the time its delivery log, store and queues took
//! to open; its resident memory is read when full, after the restart, and at the end. With
//! `--cold`, the node's files are evicted from the page cache between the two lives (written
//! back, then `posix_fadvise(DONTNEED)`), so the restart reads them from the disk as after a
//! reboot, without needing root to drop every cache.

use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use enlace::network::LocalNetwork;
use enlace::{Client, Mailbox};

use super::BenchArgs;
use super::load::record_draft;
use super::process::NodeProcess;

/// How long the restarted node's backlog is read to measure its drain rate.
const DRAIN_SAMPLE: Duration = Duration::from_secs(5);

/// The unit the backlog waits in (the one the analyst reads in the other scenarios).
const UNIT: &str = "dea/records";

/// The node's log: warnings, and its startup lines (how long the log, store and queues took
/// to open; listening).
const FILTER: &str = "warn,enlace::node::runtime=info";

/// The scenario's numbers, and its JSON line.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    scenario: &'static str,
    copies: u64,
    fill_s: f64,
    fill_msgs_per_s: f64,
    stop_s: f64,
    restart_s: f64,
    /// From the restarted node's startup log line (null if it was not found); the store and
    /// what the node remembers for derived products open side by side.
    log_open_ms: Option<u64>,
    store_open_ms: Option<u64>,
    memory_open_ms: Option<u64>,
    queues_ms: Option<u64>,
    first_delivery_s: f64,
    drain_msgs_per_s: f64,
    rss_mb_full: f64,
    rss_mb_restarted: f64,
    rss_mb_end: f64,
    evicted_mb: f64,
}

pub async fn run(dir: &Path, pki: &Path, a: &BenchArgs) -> anyhow::Result<Report> {
    // Room for the whole backlog in the unit's queue (100,000 copies by default).
    let capacity = format!("queue_capacity = {}", a.copies.max(1));
    let net = LocalNetwork::mesh_with_limits(dir, pki, &["dea"], &[&capacity])?;
    let node = net.node_of("dea")?.name.clone();
    let mut first = NodeProcess::spawn(&net, &node, &dir.join(format!("{node}.log")), FILTER)?;
    first.ready(&net, "dea", "analyst").await?;
    eprintln!("  filling {UNIT} with {} copies", a.copies);
    let started = Instant::now();
    let filled = fill(&net, a.copies, a.outstanding as usize).await;
    let fill_s = started.elapsed().as_secs_f64();
    let rss_mb_full = first.rss_mb("VmRSS");
    filled?;
    let stopping = Instant::now();
    first.terminate().await?;
    let stop_s = stopping.elapsed().as_secs_f64();
    let evicted = match a.cold {
        true => evict(&net.data_dir(&node))?,
        false => 0,
    };

    let restarting = Instant::now();
    let restarted_log = dir.join(format!("{node}-restarted.log"));
    let mut second = NodeProcess::spawn(&net, &node, &restarted_log, FILTER)?;
    second.ready(&net, "dea", "analyst").await?;
    let restart_s = restarting.elapsed().as_secs_f64();
    let rss_mb_restarted = second.rss_mb("VmRSS");
    eprintln!("  serving again after {restart_s:.2} s");
    let read = read_back(&net, restarting).await;
    let rss_mb_end = second.rss_mb("VmRSS");
    let opened = startup_phases(&second.log_text());
    second.kill();
    let (first_delivery_s, drain_msgs_per_s) = read?;
    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    Ok(Report {
        scenario: "restart",
        copies: a.copies,
        fill_s: round(fill_s),
        fill_msgs_per_s: round(a.copies as f64 / fill_s),
        stop_s: round(stop_s),
        restart_s: round(restart_s),
        log_open_ms: opened[0],
        store_open_ms: opened[1],
        memory_open_ms: opened[2],
        queues_ms: opened[3],
        first_delivery_s: round(first_delivery_s),
        drain_msgs_per_s: round(drain_msgs_per_s),
        rss_mb_full: round(rss_mb_full),
        rss_mb_restarted: round(rss_mb_restarted),
        rss_mb_end: round(rss_mb_end),
        evicted_mb: round(evicted as f64 / 1e6),
    })
}

/// Evicts every file under `dir` from the page cache (each written back first: dirty pages
/// cannot be dropped), so that the next start reads them from the disk. Returns their bytes.
fn evict(dir: &Path) -> anyhow::Result<u64> {
    let mut bytes = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            bytes += evict(&entry.path())?;
        } else if kind.is_file() {
            let file = std::fs::File::open(entry.path())?;
            file.sync_data()?;
            rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed)
                .with_context(|| format!("evicting {}", entry.path().display()))?;
            bytes += file.metadata()?.len();
        }
    }
    Ok(bytes)
}

/// The milliseconds the last startup line of a node's log gives for opening its delivery log,
/// its store, what it remembers for derived products, and its queues (`log_ms`, `store_ms`,
/// `memory_ms`, `queues_ms`).
fn startup_phases(log: &str) -> [Option<u64>; 4] {
    let line = log
        .lines()
        .rfind(|l| l.contains("opened the delivery log"))
        .unwrap_or_default();
    ["log_ms=", "store_ms=", "memory_ms=", "queues_ms="].map(|key| {
        let at = line.find(key)? + key.len();
        let digits: String = line[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    })
}

/// Subscribes to the backlog of the restarted node: seconds from `restarting` to the first
/// delivery, and the rate of the next [`DRAIN_SAMPLE`].
async fn read_back(net: &LocalNetwork, restarting: Instant) -> anyhow::Result<(f64, f64)> {
    let reader = Client::connect(net.client_options("dea", "analyst")?).await?;
    let mut inbox = reader.subscribe(Mailbox::unit("records")?).await?;
    let first = inbox
        .next()
        .await
        .context("no delivery after the restart")?;
    let first_delivery_s = restarting.elapsed().as_secs_f64();
    first.ack().await?;
    let (mut read, reading) = (0u64, Instant::now());
    while reading.elapsed() < DRAIN_SAMPLE {
        match tokio::time::timeout(DRAIN_SAMPLE, inbox.next()).await {
            Ok(Some(d)) => {
                read += 1;
                d.ack().await?;
            }
            _ => break,
        }
    }
    let drain_msgs_per_s = read as f64 / reading.elapsed().as_secs_f64();
    reader.close().await;
    Ok((first_delivery_s, drain_msgs_per_s))
}

/// Sends `copies` records to [`UNIT`], `outstanding` in flight.
async fn fill(net: &LocalNetwork, copies: u64, outstanding: usize) -> anyhow::Result<()> {
    let sender = Client::connect(net.client_options("dea", "analyst")?).await?;
    let mut in_flight = VecDeque::new();
    let mut last_report = Instant::now();
    for i in 0..copies {
        if in_flight.len() >= outstanding.max(1)
            && let Some(a) = in_flight.pop_front()
        {
            a.await?;
        }
        in_flight.push_back(sender.send(record_draft(UNIT)).await?);
        if last_report.elapsed() >= Duration::from_secs(10) {
            eprintln!("  {i} of {copies}");
            last_report = Instant::now();
        }
    }
    for a in in_flight {
        a.await?;
    }
    sender.close().await;
    Ok(())
}
