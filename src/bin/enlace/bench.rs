//! `enlace bench`: analytical throughput and FLASH alert latency over real mTLS QUIC on loopback.
//!
//! The PKI is made once per invocation in a temporary directory; every scenario then gets a
//! fresh `LocalNetwork` (new configs and data directories, nodes started in this process through
//! the production config path, with their normal storage, each on a tokio runtime of its own as
//! if it were a process of its own) and the load of [`load`]. After a
//! warm-up comes the measured window; then the senders stop and the bench waits for every
//! accepted message to reach its application, so that losses and duplicates are counted, not
//! guessed. This module runs the scenarios and turns receipts into numbers; it tunes nothing and
//! asserts no targets.

mod backlog;
mod cpu;
mod load;
mod plot;
mod process;
mod quic;
mod restart;
mod soak;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::task::JoinSet;

use enlace::MessageId;
use enlace::network::LocalNetwork;
use enlace::pki::{DEMO_TRUST_DOMAIN, Pki, PkiOptions, demo_agencies};

use super::connect::parse_duration;
use super::exit::Failure;
use cpu::Cpu;
use load::{Flow, RECORD_BYTES, Sent, Stamp};

const AFTER_HELP: &str = "Run `enlace bench --help` for what each number means.";

const AFTER_LONG_HELP: &str = "\
Every scenario starts the nodes in this process on a fresh loopback network (PKI in a temporary
directory), each node on a runtime of its own (2 worker threads, as a separate enlaced process
would have; its bulk runtime, store writer and delivery-log writer threads besides), and
drives them through the client library from the bench's own runtime:
  records  1 KiB ROUTINE analytical reports, submitted by --producers tasks that together keep
           --outstanding sends in flight, as fast as the node accepts them (the client retries
           QUEUE_FULL after the node's retry-after, with the same id);
  alerts   512-byte FLASH precursor alerts, one every 5 ms, each sent and awaited in a task of
           its own (so no answer delays another alert).
Each receiving application acknowledges every delivery as soon as it has it. Records and alerts
have separate senders and receivers and share every node on the way:
  single     DEA analyst -> dea-1 -> DEA analyst (unit records)
             DEA duty desk -> dea-1 -> DEA duty desk (unit alerts)
  federated  DEA analyst -> dea-1 -> cenapi-1 -> CENAPI analyst (unit records)
             DEA duty desk -> dea-1 -> cenapi-1 -> CENAPI duty desk (unit alerts)
A scenario runs 1 s of warm-up, then the measured window (--duration); then the senders stop
and the bench waits up to 30 s for every accepted message to be delivered.

What is reported (JSON field names in brackets; null where a scenario has no such traffic):
  records/s [bulk_msgs_per_s]  records delivered to the receiving application during the
                               measured window, divided by the window's length in seconds
  MB/s [bulk_mb_per_s]         records/s x 1024 payload bytes / 1e6 (payload only: envelope,
                               signature and framing are not counted)
  alert latency                from the sender calling send() to the receiving application
  [alert_p50_us ... _max_us]   getting the delivery, for the alerts sent during the measured
                               window; nearest-rank percentiles, in whole microseconds
  lost [messages_lost,         records, alerts accepted by the node (send returned Ok, warm-up
  alerts_lost]                 included) but not delivered once the drain is over
  duplicates [duplicates]      deliveries of an id the application had already received
  [bulk_sent, alerts_sent]     accepted by the node, warm-up included
  [bulk_delivered, ...]        distinct ids delivered, warm-up included
  [duration_s]                 the measured window's actual length
  CPU N, CPU A                 CPU seconds (user and system) of the nodes' threads, and of the
  [node_cpu_s_per_1k,          applications' (the sending and receiving clients and the bench
   client_cpu_s_per_1k]        itself), per 1,000 messages (records and alerts) delivered to the
                               application in the measured window; [node_cpu_s, client_cpu_s]
                               are the totals over the window
  [log_pending]                events the nodes' delivery logs had not written yet at the end
                               of the window (the log's writer runs below the node's work; a
                               log that keeps up holds a few milliseconds' worth)

--scenario restart (not part of `all`) is about recovery instead: one node, run as an `enlaced`
process (next to this binary), a unit nobody reads filled with --copies ROUTINE records of
1 KiB, the process stopped with SIGTERM and started again on its data:
  [fill_s, fill_msgs_per_s]    filling the backlog
  [stop_s]                     SIGTERM to exit (the shutdown grace, then closing the store)
  [restart_s]                  from starting the process to a client's connection welcomed
  [log_open_ms, store_open_ms, from the restarted node's startup log line: opening its delivery
   memory_open_ms, queues_ms]  log, its store and (beside it) what it remembers for derived
                               products, and rebuilding its queues
  [first_delivery_s]           until a reader subscribing at once gets its first record
  [drain_msgs_per_s]           the reader's rate over the next 5 s
  [rss_mb_full, _restarted,    the node process's resident memory: backlog full, after the
   _end]                       restart, at the end
  [evicted_mb]                 with --cold: the node's files evicted from the page cache
                               before the restart (0 without it)

--scenario backlog (not part of `all`) queues --copies records of 1 KiB (one in ten BULK) and a
few IMMEDIATE alerts for PGR while its node is down, with DEA's node a process of its own
(`enlaced`, next to this binary), while DEA's duty desk sends CENAPI an alert every 5 ms; then
PGR's node starts and its readers read everything:
  [backlog_mb]                 DEA's store on disk, backlog full
  [holder_rss_mb_start,        DEA's node's resident memory: before, backlog full, and its peak
   _full, _peak]               (the kernel's high-water mark) through fill and drain
  [alert_p50_ms_before, ...]   the alerts to CENAPI, before and while the backlog builds
  [drain_s, last_alert_s,      the drain from PGR's start: when the last queued alert, ROUTINE
   last_routine_s, last_bulk_s] and BULK record arrived
  [bulk_share_before_last_routine] BULK's share before ROUTINE ran out (its minimum share)
  [lost, duplicates]

--scenario soak (not part of `all`; e.g. --duration 30m) runs four nodes for --duration: DEA's
reaches AFI's through CENAPI's (a relay) and PGR's directly; 100 records and 20 alerts (FLASH,
IMMEDIATE, PRIORITY in turn) a second go to each of AFI and PGR, read and acknowledged by their
duty desks; the relay is restarted every 3 minutes and PGR's node taken down for 20 s every 5
(less for short runs, so each happens at least once). It ends with a verdict: lost, duplicated,
refused, the bench process's resident memory every 10 s, and latency per destination and
precedence per minute of sending; it exits 1 unless nothing was lost, duplicated or refused.

With --plot FILE.svg the bench also draws, for each scenario, the latency of records and alerts
(send() to application, by percentile on an HDR axis) and records/s over the measured window
(100 ms bins).

--scenario raw-quic (not part of `all`) measures quinn alone, the ceiling a bulk transfer
between two nodes is compared with: two quinn endpoints set up as dea-1's and cenapi-1's are
(their certificates, mutual TLS 1.3, transport settings, UDP buffers), each on a runtime of its
own with 2 worker threads, one connection and one unidirectional stream, written as fast as it
takes for the warm-up and --duration; nothing stored, signed or parsed:
  [large_writes_mb_per_s]      stream bytes received per second, written 64 KiB at a time
  [framed_1k_mb_per_s,         the same written one 1,028-byte frame (a 1 KiB record and a
   framed_1k_msgs_per_s]       length) per write_all, and those frames per second
Compare with bulk_mb_per_s of `--scenario bulk-alone --topology federated` (payload only).

Exit status: 0 if nothing was lost, duplicated or refused; 1 otherwise.";

/// Arguments of `enlace bench`.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP, after_long_help = AFTER_LONG_HELP)]
pub struct BenchArgs {
    /// What to run: records and alerts together, either alone, or all three in turn.
    #[arg(long, value_enum, default_value_t = Scenario::All)]
    pub scenario: Scenario,
    /// Where the traffic goes: through one node, through two, or each in turn.
    #[arg(long, value_enum, default_value_t = Topology::Both)]
    pub topology: Topology,
    /// Measured load per scenario, after the warm-up (e.g. 10, 10s, 500ms).
    #[arg(long, default_value = "10", value_parser = measured_duration)]
    pub duration: Duration,
    /// Tasks submitting records.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub producers: u32,
    /// Record sends in flight at once, shared among the producers (at least one each); the
    /// client pipelines them within its 128 KiB window.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub outstanding: u32,
    /// Print one JSON object per scenario on stdout, and nothing else there.
    #[arg(long)]
    pub json: bool,
    /// Also draw latency percentiles and throughput over time into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<std::path::PathBuf>,
    /// For --scenario restart: the copies queued before the restart; for --scenario backlog:
    /// the records queued for the offline peer.
    #[arg(long, default_value_t = 1_000_000)]
    pub copies: u64,
    /// For --scenario restart: evict the node's files from the page cache before starting it
    /// again, as after a reboot (its store, log and state are then read from the disk).
    #[arg(long)]
    pub cold: bool,
}

/// A duration for `--duration`: as [`parse_duration`], and not zero.
fn measured_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("the measured window cannot be empty".into()),
        d => Ok(d),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Records at full speed while alerts go out every 5 ms.
    Mixed,
    /// Only the alerts.
    AlertsAlone,
    /// Only the records.
    BulkAlone,
    /// The three in turn, each on a fresh network.
    All,
    /// A node restarted with --copies records queued (not part of `all`).
    Restart,
    /// A peer offline while --copies records queue for it (not part of `all`).
    Backlog,
    /// Four nodes for --duration with mixed traffic, a relay restarted and a peer taken down
    /// again and again; ends with a verdict (not part of `all`; e.g. --duration 30m).
    Soak,
    /// quinn alone between two endpoints set up as two nodes' are, for --duration: the
    /// ceiling of a bulk transfer between nodes (not part of `all`).
    RawQuic,
}

impl Scenario {
    fn expand(self) -> &'static [Scenario] {
        match self {
            Scenario::All => &[Scenario::Mixed, Scenario::AlertsAlone, Scenario::BulkAlone],
            Scenario::Mixed => &[Scenario::Mixed],
            Scenario::AlertsAlone => &[Scenario::AlertsAlone],
            Scenario::BulkAlone => &[Scenario::BulkAlone],
            Scenario::Restart => &[Scenario::Restart],
            Scenario::Backlog => &[Scenario::Backlog],
            Scenario::Soak => &[Scenario::Soak],
            Scenario::RawQuic => &[Scenario::RawQuic],
        }
    }

    fn name(self) -> &'static str {
        match self {
            Scenario::Mixed => "mixed",
            Scenario::AlertsAlone => "alerts-alone",
            Scenario::BulkAlone => "bulk-alone",
            Scenario::All => "all",
            Scenario::Restart => "restart",
            Scenario::Backlog => "backlog",
            Scenario::Soak => "soak",
            Scenario::RawQuic => "raw-quic",
        }
    }

    fn records(self) -> bool {
        matches!(self, Scenario::Mixed | Scenario::BulkAlone)
    }

    fn alerts(self) -> bool {
        matches!(self, Scenario::Mixed | Scenario::AlertsAlone)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Topology {
    /// Client -> node -> client, all at DEA.
    Single,
    /// Client -> node -> node -> client, DEA to CENAPI.
    Federated,
    /// Each in turn.
    Both,
}

impl Topology {
    fn expand(self) -> &'static [Topology] {
        match self {
            Topology::Both => &[Topology::Single, Topology::Federated],
            Topology::Single => &[Topology::Single],
            Topology::Federated => &[Topology::Federated],
        }
    }

    fn name(self) -> &'static str {
        match self {
            Topology::Single => "single",
            Topology::Federated => "federated",
            Topology::Both => "both",
        }
    }

    /// The agencies whose nodes run, and the receiving agency (the sender is always DEA).
    fn agencies(self) -> (&'static [&'static str], &'static str) {
        match self {
            Topology::Federated => (&["dea", "cenapi"], "cenapi"),
            Topology::Single | Topology::Both => (&["dea"], "dea"),
        }
    }
}

const WARMUP: Duration = Duration::from_secs(1);
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// One scenario's numbers, and its JSON line.
#[derive(Debug, serde::Serialize)]
struct Report {
    scenario: &'static str,
    topology: &'static str,
    bulk_msgs_per_s: Option<f64>,
    bulk_mb_per_s: Option<f64>,
    alert_p50_us: Option<u64>,
    alert_p90_us: Option<u64>,
    alert_p99_us: Option<u64>,
    alert_p999_us: Option<u64>,
    alert_max_us: Option<u64>,
    alerts_lost: u64,
    messages_lost: u64,
    duplicates: u64,
    duration_s: f64,
    producers: Option<u32>,
    bulk_sent: u64,
    bulk_delivered: u64,
    alerts_sent: u64,
    alerts_delivered: u64,
    /// CPU time of the nodes' threads and of the applications' (clients included) during the
    /// measured window, and per 1,000 messages delivered in it.
    node_cpu_s: Option<f64>,
    client_cpu_s: Option<f64>,
    node_cpu_s_per_1k: Option<f64>,
    client_cpu_s_per_1k: Option<f64>,
    /// Events the nodes' delivery logs had not written yet at the end of the measured window
    /// (all nodes together): a log that kept up holds a few milliseconds' worth.
    log_pending: u64,
    /// What `--plot` draws: latencies and the delivery rate over the window.
    #[serde(skip)]
    plot: plot::Series,
    /// Sends that failed other than by a busy refusal (reported on stderr and in the exit code).
    #[serde(skip)]
    send_errors: u64,
}

pub(super) async fn run(a: BenchArgs) -> Result<(), Failure> {
    let temp = tempfile::tempdir().context("cannot create a temporary directory")?;
    let pki = temp.path().join("pki");
    let opts = PkiOptions {
        overwrite: true,
        ..Default::default()
    };
    Pki::federation(&pki, DEMO_TRUST_DOMAIN, &demo_agencies(), opts)?;
    match a.scenario {
        Scenario::Restart => {
            eprintln!("bench restart: {} copies", a.copies);
            let report = restart::run(&temp.path().join("run-restart"), &pki, &a).await?;
            return print_one(&report, a.json);
        }
        Scenario::Backlog => {
            eprintln!("bench backlog: {} copies", a.copies);
            let report = backlog::run(&temp.path().join("run-backlog"), &pki, &a).await?;
            print_one(&report, a.json)?;
            return match report.passed() {
                true => Ok(()),
                false => Err(Failure::from(anyhow::anyhow!(
                    "backlog: lost or duplicated"
                ))),
            };
        }
        Scenario::Soak => {
            eprintln!("bench soak: {:?}", a.duration);
            let report = soak::run(&temp.path().join("run-soak"), &pki, &a).await?;
            print_one(&report, a.json)?;
            return match report.passed() {
                true => Ok(()),
                false => Err(Failure::from(anyhow::anyhow!("soak: {}", report.verdict))),
            };
        }
        Scenario::RawQuic => {
            eprintln!(
                "bench raw-quic: {WARMUP:?} warm-up, then {:?} measured",
                a.duration
            );
            let report = quic::run(&temp.path().join("run-raw-quic"), &pki, &a).await?;
            return print_one(&report, a.json);
        }
        _ => {}
    }
    let mut reports = Vec::new();
    for &topology in a.topology.expand() {
        for &scenario in a.scenario.expand() {
            eprintln!(
                "bench {} / {}: {:?} warm-up, then {:?} measured",
                scenario.name(),
                topology.name(),
                WARMUP,
                a.duration
            );
            let dir = temp.path().join(format!("run-{}", reports.len() + 1));
            let report = run_one(&dir, &pki, scenario, topology, &a).await?;
            if a.json {
                println!("{}", serde_json::to_string(&report)?);
            }
            reports.push(report);
        }
    }
    if !a.json {
        print_table(&reports);
    }
    if let Some(path) = &a.plot {
        let series: Vec<&plot::Series> = reports.iter().map(|r| &r.plot).collect();
        plot::draw(path, &series)?;
        eprintln!("plot written to {}", path.display());
    }
    let bad: Vec<String> = reports
        .iter()
        .filter(|r| r.messages_lost + r.alerts_lost + r.duplicates + r.send_errors > 0)
        .map(|r| {
            format!(
                "{} / {}: {} records and {} alerts lost, {} duplicates, {} sends failed",
                r.scenario, r.topology, r.messages_lost, r.alerts_lost, r.duplicates, r.send_errors
            )
        })
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(Failure::from(anyhow::anyhow!("{}", bad.join("; "))))
    }
}

/// Prints a one-off scenario's report: a JSON line, or indented JSON for people.
fn print_one(report: &impl serde::Serialize, json: bool) -> Result<(), Failure> {
    let text = match json {
        true => serde_json::to_string(report),
        false => serde_json::to_string_pretty(report),
    };
    println!("{}", text.map_err(anyhow::Error::from)?);
    Ok(())
}

/// Starts a fresh network for one scenario, measures, and stops the nodes whatever happened.
async fn run_one(
    dir: &Path,
    pki: &Path,
    scenario: Scenario,
    topology: Topology,
    a: &BenchArgs,
) -> anyhow::Result<Report> {
    let net = LocalNetwork::mesh(dir, pki, topology.agencies().0)?;
    let nodes = start_nodes(&net).await?;
    let result = measure(&net, &nodes, scenario, topology, a).await;
    stop_nodes(nodes).await;
    result
}

/// A node started by the bench, and the runtime it runs on.
type Started = (enlace::node::RunningNode, tokio::runtime::Runtime);

/// Starts every node of `net`, each on a runtime of its own, as it would be a process of its
/// own: the load's tasks never share a scheduler queue with a node's.
async fn start_nodes(net: &LocalNetwork) -> anyhow::Result<Vec<Started>> {
    let mut nodes = Vec::new();
    for name in net.nodes.keys() {
        nodes.push(start_node(net, name).await?);
    }
    Ok(nodes)
}

/// A runtime standing in for one node's process (2 worker threads, as `enlaced` has), its
/// threads named `threads`.
fn node_runtime(threads: String) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(threads)
        .enable_all()
        .build()
        .context("cannot start a node's runtime")
}

/// Starts node `name` of `net` on a runtime of its own.
async fn start_node(net: &LocalNetwork, name: &str) -> anyhow::Result<Started> {
    let rt = node_runtime(format!("node-{name}"))?;
    let config = net.config(name)?;
    match rt.spawn(enlace::node::start(config)).await {
        Ok(Ok(node)) => Ok((node, rt)),
        failed => {
            // A runtime is not dropped from within an asynchronous context.
            rt.shutdown_background();
            Err(match failed {
                Ok(Err(e)) => anyhow::Error::from(e),
                Err(e) => anyhow::Error::from(e),
                Ok(Ok(_)) => unreachable!("handled above"),
            })
            .with_context(|| format!("starting node {name}"))
        }
    }
}

/// Stops the nodes (concurrently) and their runtimes.
async fn stop_nodes(nodes: Vec<Started>) {
    let mut stopping = JoinSet::new();
    let mut runtimes = Vec::new();
    for (n, rt) in nodes {
        stopping.spawn(n.stop());
        runtimes.push(rt);
    }
    while stopping.join_next().await.is_some() {}
    for rt in runtimes {
        rt.shutdown_background();
    }
}

/// Runs one scenario's load on a started network and counts what arrived.
async fn measure(
    net: &LocalNetwork,
    nodes: &[Started],
    scenario: Scenario,
    topology: Topology,
    a: &BenchArgs,
) -> anyhow::Result<Report> {
    let to = topology.agencies().1;
    let stop = Arc::new(AtomicBool::new(false));
    let mut records = None;
    if scenario.records() {
        records = Some(Flow::records(net, to, a.producers, a.outstanding, &stop).await?);
    }
    let mut alerts = None;
    if scenario.alerts() {
        alerts = Some(Flow::alerts(net, to, &stop).await?);
    }

    tokio::time::sleep(WARMUP).await;
    let delivered = |f: &Option<Flow>| f.as_ref().map_or(0, Flow::received);
    let (start, before, cpu_before) = (Instant::now(), delivered(&records), Cpu::now());
    tokio::time::sleep(a.duration).await;
    let (end, after, cpu_after) = (Instant::now(), delivered(&records), Cpu::now());
    let log_pending = nodes.iter().map(|(n, _)| n.log_pending()).sum();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    let record_sends = sent(&mut records, "record").await?;
    let alert_sends = sent(&mut alerts, "alert").await?;
    let drain = Instant::now();
    let behind = |f: &Option<Flow>| f.as_ref().is_some_and(Flow::behind);
    while drain.elapsed() < DRAIN_LIMIT && (behind(&records) || behind(&alerts)) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("  drained in {:.2} s", drain.elapsed().as_secs_f64());
    // Closing a receiver waits (bounded) for the node to confirm its acknowledgements: in turn,
    // that would add up.
    let (record_receipts, alert_receipts) = tokio::join!(finish(records), finish(alerts));
    let (record_receipts, alert_receipts) = (record_receipts?, alert_receipts?);

    let records_seen = first_receipts(&record_receipts);
    let alerts_seen = first_receipts(&alert_receipts);
    let latencies_in = |sends: &Sent, seen: &HashMap<MessageId, Instant>| {
        let mut l: Vec<u64> = sends
            .accepted
            .iter()
            .filter(|(_, at)| (start..end).contains(at))
            .filter_map(|(id, at)| seen.get(id).map(|got| micros(*got - *at)))
            .collect();
        l.sort_unstable();
        l
    };
    let plot = plot::Series {
        name: format!("{} / {}", scenario.name(), topology.name()),
        records: latencies_in(&record_sends, &records_seen),
        alerts: latencies_in(&alert_sends, &alerts_seen),
        rate: plot::rate_over_time(&record_receipts, start, end),
    };
    let latencies = &plot.alerts;
    let pct = |p: f64| nearest_rank(latencies, p);
    let window = (end - start).as_secs_f64();
    let rate = scenario.records().then(|| (after - before) as f64 / window);
    let in_window = |r: &[Stamp]| r.iter().filter(|(_, at)| (start..end).contains(at)).count();
    let messages = in_window(&record_receipts) + in_window(&alert_receipts);
    let cpu = cpu_before.zip(cpu_after).map(|(b, a)| a.since(b));
    let per_1k =
        |t: Duration| (messages > 0).then(|| round(t.as_secs_f64() * 1e3 / messages as f64, 4));
    Ok(Report {
        scenario: scenario.name(),
        topology: topology.name(),
        bulk_msgs_per_s: rate.map(|r| round(r, 1)),
        bulk_mb_per_s: rate.map(|r| round(r * RECORD_BYTES as f64 / 1e6, 3)),
        alert_p50_us: pct(0.5),
        alert_p90_us: pct(0.9),
        alert_p99_us: pct(0.99),
        alert_p999_us: pct(0.999),
        alert_max_us: latencies.last().copied(),
        alerts_lost: lost(&alert_sends, &alerts_seen),
        messages_lost: lost(&record_sends, &records_seen),
        duplicates: (record_receipts.len() - records_seen.len() + alert_receipts.len()
            - alerts_seen.len()) as u64,
        duration_s: round(window, 3),
        producers: scenario.records().then_some(a.producers),
        bulk_sent: record_sends.accepted.len() as u64,
        bulk_delivered: records_seen.len() as u64,
        alerts_sent: alert_sends.accepted.len() as u64,
        alerts_delivered: alerts_seen.len() as u64,
        node_cpu_s: cpu.map(|c| round(c.node.as_secs_f64(), 3)),
        client_cpu_s: cpu.map(|c| round(c.client.as_secs_f64(), 3)),
        node_cpu_s_per_1k: cpu.and_then(|c| per_1k(c.node)),
        client_cpu_s_per_1k: cpu.and_then(|c| per_1k(c.client)),
        plot,
        send_errors: record_sends.errors + alert_sends.errors,
        log_pending,
    })
}

/// Waits for a flow's senders (once `stop` is set) and reports failed sends on stderr.
async fn sent(flow: &mut Option<Flow>, what: &str) -> anyhow::Result<Sent> {
    let Some(f) = flow else {
        return Ok(Sent::default());
    };
    let s = f.sent().await?;
    if let Some(e) = &s.first_error {
        eprintln!("  {} {what} sends failed; the first: {e}", s.errors);
    }
    Ok(s)
}

async fn finish(flow: Option<Flow>) -> anyhow::Result<Vec<Stamp>> {
    match flow {
        Some(f) => f.finish().await,
        None => Ok(Vec::new()),
    }
}

/// When each id was first received.
fn first_receipts(receipts: &[Stamp]) -> HashMap<MessageId, Instant> {
    let mut seen = HashMap::with_capacity(receipts.len());
    for (id, at) in receipts {
        seen.entry(*id).or_insert(*at);
    }
    seen
}

/// Accepted ids that never reached the application.
fn lost(sent: &Sent, seen: &HashMap<MessageId, Instant>) -> u64 {
    sent.accepted
        .iter()
        .filter(|(id, _)| !seen.contains_key(id))
        .count() as u64
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn round(x: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (x * f).round() / f
}

/// The nearest-rank percentile `p` (0 < p <= 1) of sorted values: the smallest value that at
/// least `p` of all the values are at or below.
fn nearest_rank(sorted: &[u64], p: f64) -> Option<u64> {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.max(1) - 1).copied()
}

fn print_table(reports: &[Report]) {
    let ms = |us: Option<u64>| us.map_or("-".to_owned(), |u| format!("{:.2}", u as f64 / 1e3));
    let num = |x: Option<f64>, d: usize| x.map_or("-".to_owned(), |x| format!("{x:.d$}"));
    println!(
        "\n{:<13} {:<10} {:>9} {:>6}  {:>8} {:>6} {:>6} {:>6} {:>6}  {:>8} {:>6}  {:>4} {:>5} {:>4}  {:>6} {:>6}",
        "SCENARIO",
        "TOPOLOGY",
        "RECORDS/S",
        "MB/S",
        "ALERT ms",
        "p90",
        "p99",
        "p99.9",
        "max",
        "RECORDS",
        "ALERTS",
        "LOST",
        "ALOST",
        "DUP",
        "CPU N",
        "CPU A"
    );
    for r in reports {
        println!(
            "{:<13} {:<10} {:>9} {:>6}  {:>8} {:>6} {:>6} {:>6} {:>6}  {:>8} {:>6}  {:>4} {:>5} {:>4}  {:>6} {:>6}",
            r.scenario,
            r.topology,
            num(r.bulk_msgs_per_s, 0),
            num(r.bulk_mb_per_s, 2),
            ms(r.alert_p50_us),
            ms(r.alert_p90_us),
            ms(r.alert_p99_us),
            ms(r.alert_p999_us),
            ms(r.alert_max_us),
            r.bulk_sent,
            r.alerts_sent,
            r.messages_lost,
            r.alerts_lost,
            r.duplicates,
            num(r.node_cpu_s_per_1k, 3),
            num(r.client_cpu_s_per_1k, 3)
        );
    }
    println!(
        "\nRECORDS/S, MB/S: 1 KiB records delivered to the application per second of the measured \
         window.\nALERT ms: p50 to max, send() to application, of the alerts sent in the window.\n\
         RECORDS, ALERTS: accepted by the node (warm-up included). LOST, ALOST: records, alerts \
         accepted\nbut never delivered. DUP: ids delivered twice. CPU N, CPU A: CPU seconds of the nodes, of the\n\
         applications (clients included), per 1,000 messages delivered in the window. More in\n\
         `enlace bench --help`."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(nearest_rank(&v, 0.5), Some(500));
        assert_eq!(nearest_rank(&v, 0.99), Some(990));
        assert_eq!(nearest_rank(&v, 0.999), Some(999));
        assert_eq!(nearest_rank(&[7], 0.999), Some(7));
        assert_eq!(nearest_rank(&[3, 9], 0.5), Some(3));
        assert_eq!(nearest_rank(&[3, 9], 0.9), Some(9));
        assert_eq!(nearest_rank(&[], 0.5), None);
    }
}
