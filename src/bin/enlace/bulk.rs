//! `enlace send --bulk FILE`: stream a file of analytical records into the analytical queue.
//!
//! One JSON object per line: `{"type": "AnalyticalReport", "payload": {...}}`, optionally with
//! `"to"`, `"precedence"` and `"caseId"`. Each line's message id derives from the file's path,
//! the line number and the line's content, so a re-run produces the same ids; progress (the
//! count of leading lines done, and a hash of those bytes) is saved beside the file in
//! `FILE.enlace-progress`. A re-run skips the lines done, and the node drops any later line it
//! had already accepted (same id), so nothing is sent twice. Progress is a bar on a terminal and
//! plain lines otherwise.
//!
//! When the node goes away mid-run (its connection lost or reset, a restart, a full or failed
//! disk) the run reconnects by itself, for up to [`AWAY_WAIT`], and sends again the lines whose
//! answer it did not get (same ids: the node keeps each once).

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use enlace::{Acceptance, BusyRetry, Client, Draft, MessageId, Precedence, SubmitError, json};

use super::exit::{self, Failure, connect_failure, fail, submit_failure};
use super::send::SendArgs;

/// Sends in flight at once (the client pipelines them on one stream with a bounded window).
const IN_FLIGHT: usize = 512;

/// How long a line refused as busy (`QUEUE_FULL`) is retried before the run stops (to be
/// resumed later): a feed waits out a full queue.
const BUSY_WAIT: Duration = Duration::from_secs(24 * 3600);

/// How long the run waits for its node to come back (reconnecting with backoff) before it stops
/// (to be resumed later).
const AWAY_WAIT: Duration = Duration::from_secs(300);

/// Whether a failure means the node is away for now (connection lost or reset, stopping, disk
/// full or failed): reconnect and send again.
fn node_away(e: &SubmitError) -> bool {
    use enlace::pb::RefusalCode;
    match e {
        SubmitError::Connection(_) => true,
        SubmitError::Refused { code, .. } => matches!(
            code,
            RefusalCode::ShuttingDown | RefusalCode::StoreFull | RefusalCode::StoreFailed
        ),
        SubmitError::Protocol(_) => false,
    }
}

/// Connects again, with backoff, until `deadline`.
async fn reconnect(
    options: impl Fn() -> enlace::ClientOptions,
    deadline: Instant,
    why: &SubmitError,
) -> Result<Client, Failure> {
    let mut wait = Duration::from_millis(100);
    eprintln!("the node went away ({why}); reconnecting");
    loop {
        match Client::connect(options()).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() + wait > deadline => return Err(connect_failure(e)),
            Err(_) => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Saved progress: how many leading lines (and bytes) are done, and a hash of those bytes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Progress {
    lines_done: u64,
    bytes_done: u64,
    prefix_sha256: String,
}

fn progress_path(file: &Path) -> PathBuf {
    let mut p = file.as_os_str().to_owned();
    p.push(".enlace-progress");
    PathBuf::from(p)
}

/// Builds the message for one line.
fn line_draft(a: &SendArgs, namespace: &[u8], line_no: u64, line: &str) -> anyhow::Result<Draft> {
    let v: serde_json::Value = serde_json::from_str(line).context("not JSON")?;
    let ty = v["type"]
        .as_str()
        .ok_or_else(|| anyhow!("missing \"type\""))?;
    let payload = json::encode_json(ty, &v["payload"])?;
    let full = json::descriptor(ty)?.full_name().to_owned();
    let mut name = line_no.to_be_bytes().to_vec();
    name.extend_from_slice(line.as_bytes());
    let precedence = match v["precedence"].as_str() {
        Some(p) => p.parse::<Precedence>()?,
        None => a.precedence,
    };
    let mut d = Draft::from_raw(full, payload.into())
        .id(MessageId::derived(namespace, &name))
        .precedence(precedence)
        .status(a.status)
        .expires_in(a.expires_in)
        // A feed of thousands of records: the progress line is its receipt; only a record that
        // will not arrive is reported back.
        .non_delivery_receipts_only();
    if let Some(r) = a.respond_within {
        d = d.respond_within(r);
    }
    let to: Vec<String> = match v["to"].as_array() {
        Some(list) => list
            .iter()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect(),
        None => a.to.clone(),
    };
    for t in &to {
        d = d.to(t);
    }
    for i in &a.info {
        d = d.info(i);
    }
    if let Some(c) = v["caseId"].as_str().or(a.case_id.as_deref()) {
        d = d.case_id(c);
    }
    Ok(d)
}

/// Tracks which lines are done and advances the saved prefix in order.
struct Tracker {
    saved: Progress,
    digest: ring::digest::Context,
    /// Lines read but not yet part of the done prefix: line number → (bytes incl. newline, done).
    open: BTreeMap<u64, (Vec<u8>, bool)>,
}

impl Tracker {
    fn done(&mut self, line_no: u64) {
        if let Some(e) = self.open.get_mut(&line_no) {
            e.1 = true;
        }
        while let Some(entry) = self.open.first_entry() {
            if entry.key() != &(self.saved.lines_done + 1) || !entry.get().1 {
                break;
            }
            let (bytes, _) = entry.remove();
            self.digest.update(&bytes);
            self.saved.lines_done += 1;
            self.saved.bytes_done += bytes.len() as u64;
        }
        self.saved.prefix_sha256 = enlace::audit::hex(self.digest.clone().finish().as_ref());
    }

    fn save(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("enlace-progress.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&self.saved)?)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }
}

/// Runs `enlace send --bulk FILE`.
pub(super) async fn run(a: &SendArgs) -> Result<(), Failure> {
    let file = a.bulk.as_deref().expect("called for --bulk");
    let file = std::path::absolute(file).with_context(|| format!("{}", file.display()))?;
    let total_lines = BufReader::new(
        std::fs::File::open(&file).with_context(|| format!("cannot open {}", file.display()))?,
    )
    .lines()
    .count() as u64;
    let ppath = progress_path(&file);
    let saved: Option<Progress> = match std::fs::read(&ppath) {
        Ok(b) => Some(
            serde_json::from_slice(&b)
                .with_context(|| format!("{} is damaged", ppath.display()))?,
        ),
        Err(_) => None,
    };
    let mut reader = BufReader::new(std::fs::File::open(&file)?);
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut tracker_start = Progress {
        lines_done: 0,
        bytes_done: 0,
        prefix_sha256: enlace::audit::hex(
            ring::digest::digest(&ring::digest::SHA256, b"").as_ref(),
        ),
    };
    if let Some(p) = &saved {
        // The lines already done must be the same bytes as when they were sent.
        let mut buf = Vec::new();
        for _ in 0..p.lines_done {
            buf.clear();
            reader.read_until(b'\n', &mut buf)?;
            digest.update(&buf);
        }
        if enlace::audit::hex(digest.clone().finish().as_ref()) != p.prefix_sha256 {
            return Err(fail(
                exit::FAILURE,
                anyhow!(
                    "{} changed in its first {} lines since they were sent; remove {} to send the whole file again",
                    file.display(),
                    p.lines_done,
                    ppath.display()
                ),
            ));
        }
        eprintln!(
            "resuming {} after line {} of {total_lines}",
            file.display(),
            p.lines_done
        );
        tracker_start = p.clone();
    }
    let mut tracker = Tracker {
        saved: tracker_start,
        digest,
        open: BTreeMap::new(),
    };
    let busy = BusyRetry {
        max_wait: BUSY_WAIT,
        ..BusyRetry::default()
    };
    let options = || a.connect.options().busy_retry(busy);
    let mut client = Client::connect(options()).await.map_err(connect_failure)?;
    // Set when the node went away: why, and since when.
    let mut away: Option<(SubmitError, Instant)> = None;
    let namespace = file.as_os_str().as_encoded_bytes().to_vec();
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let first = tracker.saved.lines_done;
    let mut last_report = Instant::now();
    let mut last_save = Instant::now();
    let mut in_flight: VecDeque<(u64, Acceptance)> = VecDeque::new();
    let mut line_no = tracker.saved.lines_done;
    let mut bad_lines = Vec::new();
    let mut stop: Option<Failure> = None;
    let mut eof = false;
    let mut buf = Vec::new();
    loop {
        while stop.is_none() && !eof && in_flight.len() < IN_FLIGHT {
            buf.clear();
            if reader.read_until(b'\n', &mut buf)? == 0 {
                eof = true;
                break;
            }
            line_no += 1;
            let text = String::from_utf8_lossy(&buf).trim().to_owned();
            tracker.open.insert(line_no, (buf.clone(), false));
            if text.is_empty() {
                tracker.done(line_no);
                continue;
            }
            match line_draft(a, &namespace, line_no, &text) {
                Ok(d) => match client.send(d).await {
                    Ok(acceptance) => in_flight.push_back((line_no, acceptance)),
                    Err(e) if node_away(&e) => {
                        away.get_or_insert((e, Instant::now()));
                        break;
                    }
                    Err(e) => {
                        stop = Some(submit_failure(e));
                        break;
                    }
                },
                Err(e) => {
                    // A line that can never be sent is reported, and does not block the rest.
                    bad_lines.push(format!("line {line_no}: {e:#}"));
                    tracker.done(line_no);
                }
            }
        }
        if let Some((why, since)) = away.take() {
            // Every line not done is sent again on a new connection (same ids).
            in_flight.clear();
            client = match reconnect(options, since + AWAY_WAIT, &why).await {
                Ok(c) => c,
                Err(f) => {
                    stop = Some(f);
                    break;
                }
            };
            let open: Vec<(u64, Vec<u8>)> = tracker
                .open
                .iter()
                .filter(|(_, (_, done))| !done)
                .map(|(n, (bytes, _))| (*n, bytes.clone()))
                .collect();
            for (n, bytes) in open {
                let text = String::from_utf8_lossy(&bytes).trim().to_owned();
                // It made a draft before, and the line has not changed.
                let Ok(d) = line_draft(a, &namespace, n, &text) else {
                    continue;
                };
                match client.send(d).await {
                    Ok(acceptance) => in_flight.push_back((n, acceptance)),
                    Err(e) if node_away(&e) => {
                        away = Some((e, since));
                        break;
                    }
                    Err(e) => {
                        stop = Some(submit_failure(e));
                        break;
                    }
                }
            }
            continue;
        }
        let Some((n, acceptance)) = in_flight.pop_front() else {
            break;
        };
        match acceptance.await {
            Ok(_) => tracker.done(n),
            Err(e) if node_away(&e) => {
                away.get_or_insert((e, Instant::now()));
            }
            // The node is going away (or cannot store), or stayed busy: stop here and resume
            // later.
            Err(e) if e.is_busy() => {
                if stop.is_none() {
                    stop = Some(submit_failure(e));
                }
            }
            Err(e @ SubmitError::Refused { .. }) => {
                bad_lines.push(format!("line {n}: {e}"));
                tracker.done(n);
            }
            Err(e) => {
                if stop.is_none() {
                    stop = Some(submit_failure(e));
                }
            }
        }
        if last_save.elapsed() >= Duration::from_secs(1) {
            tracker.save(&ppath)?;
            last_save = Instant::now();
        }
        let every = if tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        if last_report.elapsed() >= every {
            report(tty, tracker.saved.lines_done, first, total_lines, started);
            last_report = Instant::now();
        }
    }
    tracker.save(&ppath)?;
    report(tty, tracker.saved.lines_done, first, total_lines, started);
    if tty {
        eprintln!();
    }
    client.close().await;
    for b in &bad_lines {
        eprintln!("not sent: {b}");
    }
    if let Some(mut f) = stop {
        f.error = f.error.context(format!(
            "interrupted after line {} of {total_lines}; run the same command again to resume",
            tracker.saved.lines_done
        ));
        return Err(f);
    }
    println!(
        "sent {} of {total_lines} lines from {} ({} not sendable)",
        tracker.saved.lines_done - first - bad_lines.len() as u64,
        file.display(),
        bad_lines.len()
    );
    if bad_lines.is_empty() {
        Ok(())
    } else {
        Err(fail(
            exit::REFUSED,
            anyhow!("{} line(s) were not sent", bad_lines.len()),
        ))
    }
}

fn report(tty: bool, done: u64, first: u64, total: u64, started: Instant) {
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    let rate = (done - first) as f64 / secs;
    let left = total.saturating_sub(done);
    let eta = if rate > 0.0 {
        left as f64 / rate
    } else {
        f64::INFINITY
    };
    let pct = if total > 0 {
        100.0 * done as f64 / total as f64
    } else {
        100.0
    };
    if tty {
        let width = 30usize;
        let filled = ((pct / 100.0) * width as f64) as usize;
        eprint!(
            "\r[{}{}] {done}/{total} {pct:5.1}% {rate:8.0} msg/s ETA {:>6}",
            "#".repeat(filled.min(width)),
            " ".repeat(width - filled.min(width)),
            fmt_eta(eta)
        );
        let _ = std::io::stderr().flush();
    } else {
        eprintln!(
            "progress: {done}/{total} lines ({pct:.1}%), {rate:.0} msg/s, ETA {}",
            fmt_eta(eta)
        );
    }
}

fn fmt_eta(secs: f64) -> String {
    if !secs.is_finite() {
        return "--".into();
    }
    let s = secs.round() as u64;
    format!("{}:{:02}", s / 60, s % 60)
}
