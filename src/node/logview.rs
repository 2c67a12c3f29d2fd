//! The delivery log's interface for operators (`enlace log`): queries, following, the log's
//! files for verification, and traces gathered from the peers a message passed.
//!
//! Operators of this node's agency read everything in its log. A peer node may ask for a trace
//! only, and gets the records of that message only if it handled the message too (a copy went to
//! it or came from it) or its agency sent or was sent it. Everyone else is refused. Records
//! carry metadata, never payload content. A peer's trace reads the whole log, so peers get one
//! at a time and at most five a second, all together.

use std::collections::{BTreeSet, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quinn::SendStream;

use super::conn::Conn;
use super::events::Event;
use super::state::Node;
use crate::audit::{self, Filter, Record};
use crate::identity::Role;
use crate::message::MessageId;
use crate::wire::frame::{self, FrameReader};
use crate::wire::pb::{self, RefusalCode, frame::Body};

/// Records returned by a query when it names no limit.
const DEFAULT_LIMIT: usize = 1000;
/// Records returned by a query at most.
const MAX_LIMIT: usize = 100_000;
/// Records per answer frame.
const PER_FRAME: usize = 256;
/// Bytes of a file per answer frame.
const FILE_PIECE: usize = 1 << 20;
/// Peers' traces: at most one this often (see `trace`).
pub(super) const PEER_TRACE_EVERY: Duration = Duration::from_millis(200);
/// How long a peer has to answer a trace.
const TRACE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of records a peer's part of a trace may hold at most.
const TRACE_BYTES: usize = 64 << 20;
/// Largest answer frame read from a peer.
const ANSWER_LIMIT: u64 = 8 << 20;

/// Serves one `LogQuery` stream.
pub(super) async fn serve(node: Arc<Node>, conn: Arc<Conn>, q: pb::LogQuery, mut send: SendStream) {
    let answer = match answer(&node, &conn, q, &mut send).await {
        Ok(()) => return,
        Err(r) => r,
    };
    let _ = frame::write_body(&mut send, Body::Refused(answer)).await;
    let _ = send.finish();
}

fn refused(code: RefusalCode, reason: impl Into<String>) -> pb::Refused {
    pb::Refused {
        code: code as i32,
        reason: reason.into(),
        ..Default::default()
    }
}

async fn answer(
    node: &Arc<Node>,
    conn: &Conn,
    q: pb::LogQuery,
    send: &mut SendStream,
) -> Result<(), pb::Refused> {
    let log = node
        .events()
        .log()
        .cloned()
        .ok_or_else(|| refused(RefusalCode::Invalid, "this node keeps no delivery log"))?;
    let role = conn.who.identity.role;
    // A peer node asks for a trace and nothing else.
    let peer_trace = role == Role::Node && q.trace && !q.files && !q.follow;
    if role != Role::Operator && !peer_trace {
        let r = crate::refusal::Refusal::new(
            RefusalCode::Unauthorized,
            format!(
                "{} is not an operator; the delivery log needs an operator certificate",
                conn.name
            ),
        );
        // An attempt to read the log is logged too (within the connection's refusal log rate).
        super::streams::log_refusal(node, conn, &r, None);
        return Err(r.to_pb(Default::default()));
    }
    let filter = filter(&q)?;
    // Reading the log is itself logged (consultation; for a peer's trace, disclosure).
    node.events().record(Event::LogRead {
        by: conn.name.clone(),
        what: describe(&q, &filter),
    });
    let dir = log.dir().to_owned();
    log.flush().await;
    if q.files {
        return send_files(&dir, send).await;
    }
    if q.trace {
        let id = filter
            .id
            .clone()
            .ok_or_else(|| refused(RefusalCode::Malformed, "a trace needs a message id"))?;
        return trace(node, conn, &dir, id, q.visited, send).await;
    }
    let limit = match q.limit as usize {
        0 => DEFAULT_LIMIT,
        n => n.min(MAX_LIMIT),
    };
    let mut follow = q.follow.then(|| log.follow());
    let (lines, last) = read(&dir, &filter, limit).await;
    write_records(send, &node.config.name, lines, !q.follow).await?;
    let Some(rx) = follow.as_mut() else {
        return Ok(());
    };
    let mut after = last;
    // The reader going away (or its connection) ends the follow even if nothing is written.
    let stopped = send.stopped();
    tokio::pin!(stopped);
    loop {
        let next = tokio::select! {
            l = rx.recv() => l,
            _ = &mut stopped => return Ok(()),
        };
        let line = match next {
            Ok(l) => l,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                let note = format!("{{\"missed\":{n}}}");
                write_records(send, &node.config.name, vec![note], false).await?;
                continue;
            }
            Err(_) => return Ok(()),
        };
        let Ok(r) = serde_json::from_str::<Record>(&line) else {
            continue;
        };
        if after.is_some_and(|a| r.seq <= a) || !filter.matches(&r) {
            continue;
        }
        after = Some(r.seq);
        write_records(send, &node.config.name, vec![line.to_string()], false).await?;
    }
}

/// What a query asked, in a few words.
fn describe(q: &pb::LogQuery, f: &Filter) -> String {
    let kind = match (q.files, q.trace, q.follow) {
        (true, ..) => "files",
        (_, true, _) => "trace",
        (_, _, true) => "follow",
        _ => "query",
    };
    let mut parts = vec![kind.to_owned()];
    let mut add = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            parts.push(format!("{k}={}", v.chars().take(64).collect::<String>()));
        }
    };
    add("id", &f.id);
    add("originator", &f.originator);
    add("agency", &f.agency);
    add("event", &f.event);
    add("precedence", &f.precedence);
    if f.since.is_some() || f.until.is_some() {
        parts.push("time range".into());
    }
    parts.join(" ")
}

fn filter(q: &pb::LogQuery) -> Result<Filter, pb::Refused> {
    let text = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let id = match q.message_id.len() {
        0 => None,
        _ => Some(
            MessageId::from_slice(&q.message_id)
                .ok_or_else(|| refused(RefusalCode::Malformed, "message_id must be 16 bytes"))?
                .to_string(),
        ),
    };
    let time = |t: &Option<prost_types::Timestamp>| {
        t.as_ref()
            .and_then(|t| std::time::SystemTime::try_from(*t).ok())
    };
    Ok(Filter {
        id,
        originator: text(&q.originator),
        agency: text(&q.agency),
        event: text(&q.event),
        precedence: text(&q.precedence),
        since: time(&q.since),
        until: time(&q.until),
    })
}

/// The last `limit` records matching, and the last record's position.
async fn read(dir: &Path, filter: &Filter, limit: usize) -> (Vec<String>, Option<u64>) {
    let (dir, filter) = (dir.to_owned(), filter.clone());
    tokio::task::spawn_blocking(move || {
        let mut out = VecDeque::new();
        let mut last = None;
        let _ = audit::files::scan(&dir, &filter, |line, r| {
            if out.len() == limit {
                out.pop_front();
            }
            out.push_back(line.to_owned());
            last = Some(r.seq);
            true
        });
        (out.into_iter().collect(), last)
    })
    .await
    .unwrap_or_default()
}

async fn write_records(
    send: &mut SendStream,
    node: &str,
    lines: Vec<String>,
    done: bool,
) -> Result<(), pb::Refused> {
    let mut chunks: Vec<Vec<String>> = lines.chunks(PER_FRAME).map(|c| c.to_vec()).collect();
    if chunks.is_empty() {
        chunks.push(Vec::new());
    }
    let n = chunks.len();
    for (i, records) in chunks.into_iter().enumerate() {
        let body = Body::LogRecords(pb::LogRecords {
            records,
            done: done && i + 1 == n,
            node: node.to_owned(),
            ..Default::default()
        });
        // The reader went away: nothing more to do, and nothing to answer.
        if frame::write_body(send, body).await.is_err() {
            return Ok(());
        }
    }
    if done {
        let _ = send.finish();
    }
    Ok(())
}

/// Sends the log's files, keys and checkpoints first, in pieces.
async fn send_files(dir: &Path, send: &mut SendStream) -> Result<(), pb::Refused> {
    let mut names = vec![
        audit::KEYS.to_owned(),
        audit::BASE.to_owned(),
        audit::CHECKPOINTS.to_owned(),
    ];
    if let Ok(files) = audit::files::record_files(dir) {
        names.extend(
            files
                .iter()
                .filter_map(|(_, p)| p.file_name()?.to_str().map(str::to_owned)),
        );
    }
    for name in names {
        let Ok(data) = tokio::fs::read(dir.join(&name)).await else {
            continue;
        };
        for piece in data
            .chunks(FILE_PIECE)
            .chain(data.is_empty().then_some(&[][..]))
        {
            let body = Body::LogRecords(pb::LogRecords {
                file: name.clone(),
                data: bytes::Bytes::copy_from_slice(piece),
                ..Default::default()
            });
            if frame::write_body(send, body).await.is_err() {
                return Ok(());
            }
        }
    }
    let done = Body::LogRecords(pb::LogRecords {
        done: true,
        ..Default::default()
    });
    let _ = frame::write_body(send, done).await;
    let _ = send.finish();
    Ok(())
}

/// A message's records here and, through the peers it passed, everywhere it went.
async fn trace(
    node: &Arc<Node>,
    conn: &Conn,
    dir: &Path,
    id: String,
    visited: Vec<String>,
    send: &mut SendStream,
) -> Result<(), pb::Refused> {
    let filter = Filter {
        id: Some(id.clone()),
        ..Filter::default()
    };
    // A trace reads the whole log. Peers (all of them together) get one at a time, at most one
    // every `PEER_TRACE_EVERY`; operators are this agency's own.
    let _turn = match conn.who.identity.role {
        Role::Node => match node.peer_traces.try_lock() {
            Ok(mut last) if last.elapsed() >= PEER_TRACE_EVERY => {
                *last = std::time::Instant::now();
                Some(last)
            }
            _ => {
                return Err(pb::Refused {
                    retry_after_ms: PEER_TRACE_EVERY.as_millis() as u64,
                    ..refused(
                        RefusalCode::QueueFull,
                        "busy with another trace; retry later",
                    )
                });
            }
        },
        _ => None,
    };
    let (lines, _) = read(dir, &filter, MAX_LIMIT).await;
    let records: Vec<Record> = lines
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    if conn.who.identity.role == Role::Node && !may_disclose(node, conn, &records) {
        return Err(refused(
            RefusalCode::Unauthorized,
            format!("{} did not handle message {id} here", conn.name),
        ));
    }
    let me = node.config.name.clone();
    let mut seen: BTreeSet<String> = visited.into_iter().collect();
    seen.insert(me.clone());
    if conn.who.identity.role == Role::Node {
        seen.insert(conn.who.identity.name.clone());
    }
    let next: BTreeSet<String> = records
        .iter()
        .filter_map(|r| r.peer.clone())
        .filter(|p| !seen.contains(p))
        .collect();
    seen.extend(next.iter().cloned());
    write_records(send, &me, lines, false).await?;
    let mut unreachable = Vec::new();
    for peer in next {
        match ask_peer(node, &peer, &id, &seen).await {
            Ok(frames) => {
                for f in frames {
                    unreachable.extend(f.unreachable.iter().cloned());
                    let body = Body::LogRecords(pb::LogRecords {
                        done: false,
                        unreachable: Vec::new(),
                        ..f
                    });
                    if frame::write_body(send, body).await.is_err() {
                        return Ok(());
                    }
                }
            }
            Err(why) => unreachable.push(format!("{peer}: {why}")),
        }
    }
    let done = Body::LogRecords(pb::LogRecords {
        done: true,
        node: me,
        unreachable,
        ..Default::default()
    });
    let _ = frame::write_body(send, done).await;
    let _ = send.finish();
    Ok(())
}

/// Whether a peer node may see this node's records of a message: a copy went to it or came
/// from it, or its agency is the originator's or an addressee's.
fn may_disclose(node: &Node, conn: &Conn, records: &[Record]) -> bool {
    let (agency, name) = (&conn.who.identity.agency, &conn.who.identity.name);
    records.iter().any(|r| {
        r.peer.as_deref() == Some(name.as_str())
            || r.originator
                .as_deref()
                .and_then(|o| o.split('/').next())
                .is_some_and(|a| a.eq_ignore_ascii_case(agency.as_str()))
            || r.addressees.iter().any(|a| {
                let name = a.split('/').next().unwrap_or(a);
                node.config
                    .directory
                    .resolve(name)
                    .is_some_and(|id| id == *agency)
            })
    })
}

/// Asks `peer` for its part of a trace.
async fn ask_peer(
    node: &Node,
    peer: &str,
    id: &str,
    visited: &BTreeSet<String>,
) -> Result<Vec<pb::LogRecords>, String> {
    let conn = node.peer_conn(peer).ok_or("its link is down")?;
    let message_id = id
        .parse::<MessageId>()
        .map_err(|e| e.to_string())?
        .to_bytes();
    let q = pb::LogQuery {
        message_id,
        trace: true,
        visited: visited.iter().cloned().collect(),
        ..Default::default()
    };
    let ask = async {
        let (mut s, r) = conn.open_bi().await.map_err(|e| e.to_string())?;
        frame::write_body(&mut s, Body::LogQuery(q))
            .await
            .map_err(|e| e.to_string())?;
        let _ = s.finish();
        let mut reader = FrameReader::new(r, ANSWER_LIMIT);
        let mut out = Vec::new();
        // What a peer's answer may make this node hold: as many records as a query of its
        // own returns at most, and `TRACE_BYTES` (an empty frame counts as a record).
        let (mut records, mut bytes) = (0, 0);
        loop {
            match reader.read().await.map_err(|e| e.to_string())?.body {
                Some(Body::LogRecords(f)) => {
                    let done = f.done;
                    records += f.records.len().max(1);
                    bytes += f.records.iter().map(String::len).sum::<usize>() + f.data.len();
                    if records > MAX_LIMIT || bytes > TRACE_BYTES {
                        return Err(format!(
                            "answered more than {MAX_LIMIT} records or {TRACE_BYTES} bytes"
                        ));
                    }
                    out.push(f);
                    if done {
                        return Ok(out);
                    }
                }
                Some(Body::Refused(r)) => return Err(r.reason),
                _ => return Err("an unexpected answer".to_owned()),
            }
        }
    };
    tokio::time::timeout(TRACE_TIMEOUT, ask)
        .await
        .map_err(|_| "no answer in time".to_owned())?
}
