//! `enlace log`: the delivery log for operators (an operator certificate is needed online):
//! `tail`, `query`, `trace`, `verify` and `export`. `query`, `verify` and `export` also read a
//! node's data directory offline (`--data-dir`), or every node of a demo's directory.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use enlace::audit::{self, Filter, Record, verify};
use enlace::{Client, MessageId, SubmitError, pb};

use super::connect::ConnectArgs;
use super::exit::{self, Failure, fail};

/// Subcommands of `enlace log`.
#[derive(Debug, clap::Subcommand)]
pub enum LogCommand {
    /// Follow the node's delivery log as records are written (after the last few).
    Tail {
        #[command(flatten)]
        connect: ConnectArgs,
        #[command(flatten)]
        filter: FilterArgs,
        /// How many earlier records to show first.
        #[arg(long, default_value_t = 20)]
        last: u32,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Records matching a query (the last --limit of them).
    Query {
        #[command(flatten)]
        source: Source,
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many records (the latest).
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// One message's journey across every node that handled it, receipts included, as one
    /// timeline (gathered by your node from its peers).
    Trace {
        #[command(flatten)]
        connect: ConnectArgs,
        /// The message id.
        id: String,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Check a delivery log: records, tree, checkpoints, signatures and cosignatures. Names
    /// the first bad record and what is wrong with it. Exits 1 if anything is wrong.
    Verify {
        #[command(flatten)]
        source: Source,
        /// The report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Every record (matching the filter) as JSON lines, for a SIEM.
    Export {
        #[command(flatten)]
        source: Source,
        #[command(flatten)]
        filter: FilterArgs,
    },
}

/// Where the log is: a node (operator connection) or a directory (offline).
#[derive(Debug, clap::Args)]
pub struct Source {
    /// Read offline: a node's data directory, its `log` directory, or a demo's directory
    /// (`enlace demo --data-dir DIR`: every node in it).
    #[arg(long, conflicts_with = "node")]
    data_dir: Option<PathBuf>,
    /// The node's address (online), as for other commands.
    #[arg(long, env = "ENLACE_NODE")]
    node: Option<String>,
    /// The node certificate's DNS name.
    #[arg(long, env = "ENLACE_SERVER_NAME")]
    server_name: Option<String>,
    /// Your operator certificate chain (PEM).
    #[arg(long, env = "ENLACE_CERT")]
    cert: Option<PathBuf>,
    /// Your private key (PEM, PKCS#8).
    #[arg(long, env = "ENLACE_KEY")]
    key: Option<PathBuf>,
    /// The federation's CA bundle (PEM).
    #[arg(long, env = "ENLACE_CA")]
    ca: Option<PathBuf>,
}

impl Source {
    fn connect_args(&self) -> Result<ConnectArgs, Failure> {
        let missing = |what: &str| {
            fail(
                exit::USAGE,
                anyhow::anyhow!("give --data-dir to read offline, or {what} to ask a node"),
            )
        };
        Ok(ConnectArgs {
            node: self.node.clone().ok_or_else(|| missing("--node"))?,
            server_name: self.server_name.clone(),
            cert: self.cert.clone().ok_or_else(|| missing("--cert"))?,
            key: self.key.clone().ok_or_else(|| missing("--key"))?,
            ca: self.ca.clone().ok_or_else(|| missing("--ca"))?,
        })
    }
}

/// What records to pick.
#[derive(Debug, clap::Args)]
pub struct FilterArgs {
    /// A message id (records about it, and about its receipts and reports).
    #[arg(long)]
    id: Option<String>,
    /// The originator, `<agency>/<name>`.
    #[arg(long)]
    originator: Option<String>,
    /// An agency named in the record (originator, actor or addressee).
    #[arg(long)]
    agency: Option<String>,
    /// The event: accepted, received, refused, delivered, acknowledged, forwarded, ...
    #[arg(long)]
    event: Option<String>,
    /// The precedence: FLASH, IMMEDIATE, PRIORITY, ROUTINE, BULK.
    #[arg(long)]
    precedence: Option<String>,
    /// From this time (RFC 3339, e.g. 2026-12-02T10:00:00Z).
    #[arg(long, value_parser = time_arg)]
    since: Option<SystemTime>,
    /// Before this time (RFC 3339).
    #[arg(long, value_parser = time_arg)]
    until: Option<SystemTime>,
}

fn time_arg(s: &str) -> Result<SystemTime, String> {
    audit::parse_time(s).ok_or_else(|| format!("{s:?} is not an RFC 3339 time"))
}

impl FilterArgs {
    fn filter(&self) -> Result<Filter, Failure> {
        let id = match &self.id {
            Some(i) => Some(
                i.parse::<MessageId>()
                    .map_err(|e| fail(exit::USAGE, e))?
                    .to_string(),
            ),
            None => None,
        };
        Ok(Filter {
            id,
            originator: self.originator.clone(),
            agency: self.agency.clone(),
            event: self.event.clone(),
            precedence: self.precedence.clone(),
            since: self.since,
            until: self.until,
        })
    }

    fn query(&self) -> Result<pb::LogQuery, Failure> {
        let f = self.filter()?;
        let id = match &f.id {
            Some(i) => i
                .parse::<MessageId>()
                .map_err(|e| fail(exit::USAGE, e))?
                .to_bytes(),
            None => Default::default(),
        };
        let ts = |t: Option<SystemTime>| t.map(prost_types::Timestamp::from);
        Ok(pb::LogQuery {
            message_id: id,
            originator: f.originator.unwrap_or_default(),
            agency: f.agency.unwrap_or_default(),
            event: f.event.unwrap_or_default(),
            precedence: f.precedence.unwrap_or_default(),
            since: ts(f.since),
            until: ts(f.until),
            ..Default::default()
        })
    }
}

fn refused(e: SubmitError) -> Failure {
    fail(exit::REFUSED, e)
}

pub(super) async fn run(cmd: LogCommand) -> Result<(), Failure> {
    match cmd {
        LogCommand::Tail {
            connect,
            filter,
            last,
            json,
        } => {
            let client = connect.connect().await?;
            let q = pb::LogQuery {
                follow: true,
                limit: last.max(1),
                ..filter.query()?
            };
            let mut answers = client.log(q).await.map_err(refused)?;
            if !json {
                print_header();
            }
            while let Some(f) = answers.next().await.map_err(refused)? {
                print_lines(&f.records, json);
            }
            Ok(())
        }
        LogCommand::Query {
            source,
            filter,
            limit,
            json,
        } => {
            let lines = match &source.data_dir {
                Some(dir) => offline(dir, &filter.filter()?, limit as usize)?,
                None => {
                    let client = source.connect_args()?.connect().await?;
                    let q = pb::LogQuery {
                        limit,
                        ..filter.query()?
                    };
                    collect(&client, q).await?.0
                }
            };
            if !json {
                print_header();
            }
            print_lines(&lines, json);
            Ok(())
        }
        LogCommand::Export { source, filter } => {
            let lines = match &source.data_dir {
                Some(dir) => offline(dir, &filter.filter()?, usize::MAX)?,
                None => {
                    let client = source.connect_args()?.connect().await?;
                    let q = pb::LogQuery {
                        limit: 100_000,
                        ..filter.query()?
                    };
                    collect(&client, q).await?.0
                }
            };
            print_lines(&lines, true);
            Ok(())
        }
        LogCommand::Trace { connect, id, json } => {
            let id: MessageId = id.parse().map_err(|e| fail(exit::USAGE, e))?;
            let client = connect.connect().await?;
            let q = pb::LogQuery {
                message_id: id.to_bytes(),
                trace: true,
                ..Default::default()
            };
            let (mut lines, unreachable) = collect(&client, q).await?;
            // One timeline: every node's records by time.
            lines.sort_by_cached_key(|l| {
                serde_json::from_str::<Record>(l)
                    .map(|r| (r.time, r.node, r.seq))
                    .unwrap_or_default()
            });
            if !json {
                print_header();
            }
            print_lines(&lines, json);
            for u in unreachable {
                eprintln!("not traced: {u}");
            }
            Ok(())
        }
        LogCommand::Verify { source, json } => {
            let (dirs, fetched) = match &source.data_dir {
                Some(dir) => (log_dirs(dir)?, false),
                None => {
                    let client = source.connect_args()?.connect().await?;
                    (vec![download(&client).await?], true)
                }
            };
            // Several nodes' logs (a demo's directory): each is also checked against the
            // checkpoints of it its partners cosigned.
            let reports = verify::verify_dirs(&dirs);
            if fetched {
                let _ = std::fs::remove_dir_all(&dirs[0]);
            }
            let reports = reports.map_err(|e| fail(exit::FAILURE, e))?;
            let mut ok = true;
            for (dir, report) in dirs.iter().zip(&reports) {
                ok &= report.ok();
                print_report(dir, report, json);
            }
            if ok {
                Ok(())
            } else {
                Err(fail(
                    exit::FAILURE,
                    anyhow::anyhow!("the delivery log does not verify"),
                ))
            }
        }
    }
}

/// Every frame's records of a query, and the nodes a trace did not reach.
async fn collect(client: &Client, q: pb::LogQuery) -> Result<(Vec<String>, Vec<String>), Failure> {
    let mut answers = client.log(q).await.map_err(refused)?;
    let (mut lines, mut unreachable) = (Vec::new(), Vec::new());
    while let Some(f) = answers.next().await.map_err(refused)? {
        lines.extend(f.records);
        unreachable.extend(f.unreachable);
    }
    Ok((lines, unreachable))
}

/// Fetches the node's log files into a temporary directory, to verify them here.
async fn download(client: &Client) -> Result<PathBuf, Failure> {
    let dir = std::env::temp_dir().join(format!(
        "enlace-log-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| fail(exit::FAILURE, e))?;
    let q = pb::LogQuery {
        files: true,
        ..Default::default()
    };
    let mut answers = client.log(q).await.map_err(refused)?;
    while let Some(f) = answers.next().await.map_err(refused)? {
        if f.file.is_empty() || f.file.contains('/') || f.file.contains("..") {
            continue;
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(&f.file))
            .map_err(|e| fail(exit::FAILURE, e))?;
        file.write_all(&f.data)
            .map_err(|e| fail(exit::FAILURE, e))?;
    }
    // The node kept writing while it sent: a last line cut by the copy is not a fault of the log.
    if let Some((_, last)) = audit::files::record_files(&dir)
        .map_err(|e| fail(exit::FAILURE, e))?
        .last()
    {
        let data = std::fs::read(last).map_err(|e| fail(exit::FAILURE, e))?;
        let end = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        std::fs::write(last, &data[..end]).map_err(|e| fail(exit::FAILURE, e))?;
    }
    Ok(dir)
}

/// The log directories under `dir`: itself, its `log`, or each node's of a demo directory.
fn log_dirs(dir: &Path) -> Result<Vec<PathBuf>, Failure> {
    let is_log = |d: &Path| d.join(audit::CHECKPOINTS).exists() || has_records(d);
    if is_log(dir) {
        return Ok(vec![dir.to_owned()]);
    }
    if is_log(&dir.join("log")) {
        return Ok(vec![dir.join("log")]);
    }
    let mut out = Vec::new();
    for parent in [dir.join("data"), dir.to_owned()] {
        let Ok(entries) = std::fs::read_dir(&parent) else {
            continue;
        };
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path().join("log")))
            .filter(|d| is_log(d))
            .collect();
        found.sort();
        out.extend(found);
        if !out.is_empty() {
            break;
        }
    }
    if out.is_empty() {
        return Err(fail(
            exit::USAGE,
            anyhow::anyhow!("no delivery log found in {}", dir.display()),
        ));
    }
    Ok(out)
}

fn has_records(d: &Path) -> bool {
    audit::files::record_files(d).is_ok_and(|f| !f.is_empty())
}

/// The records matching `filter` in every log under `dir`, the last `limit` of each.
fn offline(dir: &Path, filter: &Filter, limit: usize) -> Result<Vec<String>, Failure> {
    let mut lines = Vec::new();
    for d in log_dirs(dir)? {
        let mut mine = std::collections::VecDeque::new();
        audit::files::scan(&d, filter, |line, _| {
            if mine.len() == limit {
                mine.pop_front();
            }
            mine.push_back(line.to_owned());
            true
        })
        .map_err(|e| fail(exit::FAILURE, e))?;
        lines.extend(mine);
    }
    Ok(lines)
}

fn print_header() {
    println!(
        "{:<26}  {:<9}  {:<17}  {:<36}  {:<28}  {:<9}  DETAIL",
        "TIME (UTC)", "NODE", "EVENT", "MESSAGE", "ACTOR", "PREC"
    );
}

fn print_lines(lines: &[String], json: bool) {
    let mut out = std::io::stdout().lock();
    for l in lines {
        if json {
            let _ = writeln!(out, "{l}");
            continue;
        }
        let Ok(r) = serde_json::from_str::<Record>(l) else {
            let _ = writeln!(out, "{l}");
            continue;
        };
        let detail: Vec<String> = [
            r.peer.as_ref().map(|p| format!("peer {p}")),
            r.queue.as_ref().map(|q| format!("queue {q}")),
            r.refers_to.as_ref().map(|x| format!("about {x}")),
            r.code.clone(),
            r.reason.clone(),
            r.detail.clone(),
            r.remote.clone(),
        ]
        .into_iter()
        .flatten()
        .collect();
        let _ = writeln!(
            out,
            "{:<26}  {:<9}  {:<17}  {:<36}  {:<28}  {:<9}  {}",
            r.time,
            r.node,
            r.event,
            r.id.as_deref().unwrap_or("-"),
            r.actor,
            r.precedence.as_deref().unwrap_or("-"),
            detail.join("; ")
        );
    }
}

fn print_report(dir: &Path, r: &verify::Report, json: bool) {
    if json {
        let v = serde_json::json!({
            "dir": dir.display().to_string(),
            "node": r.node,
            "ok": r.ok(),
            "first": r.first,
            "records": r.records,
            "checkpoints": r.checkpoints,
            "last_checkpoint": r.last_checkpoint,
            "cosignatures": r.cosignatures,
            "problems": r.problems.iter().map(|p| serde_json::json!({
                "record": p.record, "place": p.place, "what": p.what,
            })).collect::<Vec<_>>(),
            "notes": r.notes,
        });
        println!("{v}");
        return;
    }
    let node = r.node.as_deref().unwrap_or("?");
    let status = if r.ok() { "ok" } else { "FAILED" };
    println!(
        "{node}: {status}: {} records from {}, {} checkpoints verified (last at {}), cosigned by {}",
        r.records,
        r.first,
        r.checkpoints,
        r.last_checkpoint.map_or("-".into(), |s| s.to_string()),
        if r.cosignatures.is_empty() {
            "nobody".to_owned()
        } else {
            r.cosignatures
                .iter()
                .map(|(w, n)| format!("{w} ({n})"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    println!("  ({})", dir.display());
    for p in &r.problems {
        println!("  problem: {p}");
    }
    for n in &r.notes {
        println!("  note: {n}");
    }
}
