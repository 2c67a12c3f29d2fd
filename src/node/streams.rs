//! Serving the request streams of an authorized connection: submitted messages, subscriptions
//! and operator requests, each stream in its own task.
//!
//! A stream carries a sequence of request frames (one, for an alert on its own stream; many, for
//! the pipelined analytical stream), answered in order. The frames after a stream's first are
//! answered in groups (see [`group`]): up to [`PIPELINE_DEPTH`] read ahead, [`GROUPS_IN_FLIGHT`]
//! groups being answered at once, each group's submissions taken with one store request. A frame over the
//! size limit is refused without being decoded, and its body skipped so the stream stays usable;
//! a frame declaring an absurd length ends the stream instead. An empty stream, finished at once,
//! is answered by finishing the other side: peers use it to probe a link.
//!
//! Streams are served in their own tasks because QUIC hands them over in the order they were
//! opened: an alert opened after a bulk transfer must not wait behind it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use quinn::{RecvStream, SendStream};
use tokio::sync::watch;

use super::conn::Conn;
use super::state::Node;
use crate::address::Mailbox;
use crate::identity::Role;
use crate::message::MessageId;
use crate::policy;
use crate::refusal::Refusal;
use crate::validate;
use crate::wire::FRAME_SLACK;
use crate::wire::frame::{self, FrameError, FrameReader};
use crate::wire::pb::{self, RefusalCode, frame::Body};

/// Requests read ahead of their answers per stream (queued for the grouper).
const PIPELINE_DEPTH: usize = 1024;

/// Most requests answered as one group (see [`group`]).
const MAX_GROUP: usize = 256;

/// Groups being answered at once per stream, ahead of the writer (see [`group`]).
const GROUPS_IN_FLIGHT: usize = 4;

/// Ready answers are gathered into one write up to about this many bytes.
const ANSWER_BATCH_BYTES: usize = 16 * 1024;

/// Oversized frames up to this many times the limit are skipped; larger claims end the stream.
const SKIP_FACTOR: u64 = 16;

/// What a sender is told to wait before retrying a QUEUE_FULL or SHUTTING_DOWN refusal.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// Serves the streams the other side opens, each in its own task, until the connection ends.
pub(super) async fn serve(node: Arc<Node>, conn: Arc<Conn>) {
    while let Ok((send, recv)) = conn.conn.accept_bi().await {
        tokio::spawn(stream(node.clone(), conn.clone(), send, recv));
    }
}

/// Serves one stream: reads request frames and writes their answers in order.
async fn stream(node: Arc<Node>, conn: Arc<Conn>, mut send: SendStream, recv: RecvStream) {
    // Peers forward what a client submitted within the limit, plus hop records.
    let max = node.config.limits.max_frame_bytes + if conn.is_peer() { FRAME_SLACK } else { 0 };
    let bounds = frame::Bounds {
        budgets: vec![conn.frame_budget.clone(), node.frame_budget.clone()],
        deadline: node.config.limits.frame_deadline,
    };
    let mut reader = FrameReader::bounded(recv, max, bounds);
    // A delivery-log query has many answers on its stream: it is served on its own.
    let mut first = Some(reader.read_held().await);
    if let Some(Ok((
        pb::Frame {
            body: Some(Body::LogQuery(_)),
        },
        _,
    ))) = &first
        && let Some(Ok((
            pb::Frame {
                body: Some(Body::LogQuery(q)),
            },
            held,
        ))) = first.take()
    {
        drop(held);
        super::logview::serve(node, conn, q, send).await;
        return;
    }
    // Answers go out in request order: the writer awaits each group's answers in turn.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Answers>(GROUPS_IN_FLIGHT);
    let writer = tokio::spawn(async move {
        // A group that failed still gets one answer per request, so the answers after it
        // keep their places.
        let answers = |(r, n): (Result<Vec<Body>, tokio::task::JoinError>, usize)| {
            r.unwrap_or_else(|e| {
                let r = Refusal::invalid(format!("internal error: {e}"));
                vec![Body::Refused(r.to_pb(Default::default())); n]
            })
        };
        let mut next = None;
        loop {
            let handle = match next.take() {
                Some(h) => h,
                None => match rx.recv().await {
                    Some(h) => h,
                    None => break,
                },
            };
            let mut buf = bytes::BytesMut::new();
            let encode = |bodies: Vec<Body>, buf: &mut bytes::BytesMut| {
                for body in bodies {
                    frame::encode_into(&pb::Frame { body: Some(body) }, buf)
                }
            };
            encode(answers((handle.0.await, handle.1)), &mut buf);
            // Answers that are ready already go out in the same write, still in order.
            while buf.len() < ANSWER_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(h) if h.0.is_finished() => encode(answers((h.0.await, h.1)), &mut buf),
                    Ok(h) => {
                        next = Some(h);
                        break;
                    }
                    Err(_) => break,
                }
            }
            // A sender that went away does not need its answers.
            if send.write_all(&buf).await.is_err() {
                return;
            }
        }
        let _ = send.finish();
    });
    // The frames after the first go to the grouper, which answers them in groups.
    let (items, queued) = tokio::sync::mpsc::channel::<Item>(PIPELINE_DEPTH);
    let grouper = tokio::spawn(group(node.clone(), conn.clone(), queued, tx.clone()));
    let mut first_answered = false;
    loop {
        let next = match first.take() {
            Some(r) => r,
            None => reader.read_held().await,
        };
        let (answer, stop) = match next {
            Ok((frame, held)) => {
                let signer = peer_signer(&node, &conn, &frame);
                let item = Item::Frame(frame, held, signer);
                // A stream's first frame is worked on here (an alert is alone on its stream);
                // the frames after it, a pipelined stream's, in groups on the bulk runtime
                // (see `bulk`).
                if !first_answered {
                    first_answered = true;
                    let task = answer_group(node.clone(), conn.clone(), vec![item]);
                    if tx.send((tokio::spawn(task), 1)).await.is_err() {
                        break;
                    }
                } else if items.send(item).await.is_err() {
                    break;
                }
                continue;
            }
            // The stream or connection went away: nothing to answer.
            Err(FrameError::End | FrameError::Read(_) | FrameError::Write(_)) => break,
            Err(e @ FrameError::TooLarge { len, .. }) => {
                let r = refuse(&node, &conn, frame_refusal(&e), None);
                // Skipping keeps the stream in sync; a wildly oversized claim is not worth reading.
                let stop = len > max.saturating_mul(SKIP_FACTOR) || reader.skip(len).await.is_err();
                (r, stop)
            }
            Err(e @ FrameError::Malformed(_)) => {
                (refuse(&node, &conn, frame_refusal(&e), None), false)
            }
            Err(e) => (refuse(&node, &conn, frame_refusal(&e), None), true),
        };
        if conn.bad_frame(node.config.limits.max_bad_frames) {
            let reason = format!(
                "{} bad frames (malformed, oversized, truncated or late) on this connection; \
                 closing it (limits.max_bad_frames)",
                node.config.limits.max_bad_frames
            );
            // The connection's end is recorded, with this reason, where it is served.
            conn.closing
                .close(&conn.conn, super::server::CLOSE_REFUSED, reason);
            break;
        }
        // In order with the frames before it: straight to the writer before the first good
        // frame (which then still runs on the main runtime), else behind the grouper's work.
        let sent = match first_answered {
            false => {
                let ready = tokio::spawn(async move { vec![answer] });
                tx.send((ready, 1)).await.is_ok()
            }
            true => items.send(Item::Answer(answer)).await.is_ok(),
        };
        if !sent || stop {
            if stop {
                let _ = reader.stream().stop(0u32.into());
            }
            break;
        }
    }
    drop((items, tx));
    let _ = grouper.await;
    let _ = writer.await;
}

/// A group's answers, one per request, in order, and how many requests it holds.
type Answers = (tokio::task::JoinHandle<Vec<Body>>, usize);

/// A request read from a stream, or the answer to a frame that could not be read.
enum Item {
    Frame(pb::Frame, frame::Held, Option<PeerSigner>),
    Answer(Body),
}

/// Gathers the requests waiting when it is free into one group (at most [`MAX_GROUP`]), and
/// has each group answered on the bulk runtime, at most [`GROUPS_IN_FLIGHT`] groups ahead of
/// the writer: while those are being answered (mostly, waiting for their fsync), the next
/// group fills. A group's submissions are taken with one store request
/// ([`Node::take_many`]), so a pipelined stream costs one task, one store request and one
/// wake-up per group, not per message.
async fn group(
    node: Arc<Node>,
    conn: Arc<Conn>,
    mut queued: tokio::sync::mpsc::Receiver<Item>,
    answers: tokio::sync::mpsc::Sender<Answers>,
) {
    while let Some(first) = queued.recv().await {
        let mut items = vec![first];
        while items.len() < MAX_GROUP
            && let Ok(item) = queued.try_recv()
        {
            items.push(item);
        }
        // A group starts only once the writer has room for its answers.
        let Ok(room) = answers.reserve().await else {
            return;
        };
        let n = items.len();
        let task = answer_group(node.clone(), conn.clone(), items);
        room.send((node.bulk.handle().spawn(task), n));
    }
}

/// Answers a group of requests in order: runs of submissions are admitted one by one and
/// taken together; any other request is handled on its own, once the submissions before it
/// are taken. Each frame's share of the budgets is given back once it is answered.
async fn answer_group(node: Arc<Node>, conn: Arc<Conn>, items: Vec<Item>) -> Vec<Body> {
    let mut out: Vec<Option<Body>> = Vec::with_capacity(items.len());
    let mut run = Run::default();
    for item in items {
        let (frame, held, signer) = match item {
            Item::Answer(body) => {
                out.push(Some(body));
                continue;
            }
            Item::Frame(frame, held, signer) => (frame, held, signer),
        };
        if !matches!(frame.body, Some(Body::Submit(_))) {
            take_group(&node, &conn, std::mem::take(&mut run), &mut out).await;
        }
        let now = SystemTime::now();
        match request(&node, &conn, frame, signer, now).await {
            Ok(Request::Take(admitted)) => {
                run.taking
                    .push((out.len(), admitted.message.id(), *admitted));
                run.held.push(held);
                out.push(None);
            }
            Ok(Request::Answered(body)) => out.push(Some(*body)),
            Err((refusal, id)) => out.push(Some(refuse(&node, &conn, refusal, id))),
        }
    }
    take_group(&node, &conn, run, &mut out).await;
    out.into_iter()
        .map(|b| b.expect("every request answered"))
        .collect()
}

/// Admitted submissions waiting to be taken together, with their frames' shares of the
/// budgets.
#[derive(Default)]
struct Run {
    taking: Vec<(usize, MessageId, validate::Admitted)>,
    held: Vec<frame::Held>,
}

/// Takes a run of admitted submissions with one store request and fills in their answers.
async fn take_group(node: &Arc<Node>, conn: &Arc<Conn>, run: Run, out: &mut [Option<Body>]) {
    let Run {
        taking,
        held: _held,
    } = run;
    if taking.is_empty() {
        return;
    }
    let now = SystemTime::now();
    let (slots, admitted): (Vec<_>, Vec<_>) = taking
        .into_iter()
        .map(|(slot, id, a)| ((slot, id), a))
        .unzip();
    let taken = node
        .take_many(admitted, &conn.name, conn.is_peer(), now)
        .await;
    for ((slot, id), answer) in slots.into_iter().zip(taken) {
        out[slot] = Some(match answer {
            Ok(accepted) => Body::Accepted(accepted),
            Err(refusal) => refuse(node, conn, refusal, Some(id)),
        });
    }
}

fn frame_refusal(e: &FrameError) -> Refusal {
    e.refusal()
        .map(|r| Refusal::new(r.code(), r.reason))
        .unwrap_or_else(|| Refusal::new(RefusalCode::Malformed, e.to_string()))
}

/// Records a refusal (within the connection's log rate; see [`Conn::may_log_refusal`]) and
/// returns its answer frame.
fn refuse(node: &Node, conn: &Conn, refusal: Refusal, id: Option<MessageId>) -> Body {
    log_refusal(node, conn, &refusal, id);
    let mut r = refusal.to_pb(id.map(MessageId::to_bytes).unwrap_or_default());
    if refusal.is_busy() {
        r.retry_after_ms = RETRY_AFTER.as_millis() as u64;
    }
    Body::Refused(r)
}

/// Records a refusal of `conn`'s, within the connection's refusal log rate.
pub(super) fn log_refusal(node: &Node, conn: &Conn, refusal: &Refusal, id: Option<MessageId>) {
    if let Some(reason) = conn.refusal_to_log(&node.config.limits, &refusal.reason) {
        node.ledger
            .refused(id, &conn.name, &Refusal::new(refusal.code, reason));
    }
}

/// What a request frame comes to: a submission admitted, to be taken with the others of its
/// group, or an answer already.
enum Request {
    Take(Box<validate::Admitted>),
    Answered(Box<Body>),
}

/// The signer of an envelope a peer submitted, or why there is none.
type PeerSigner = Result<Arc<crate::signers::Signer>, crate::signers::SignerError>;

/// For an envelope a peer submitted: its signer, from the node's cache or the chain it carries.
/// A peer sends a signer's chain once per stream, with the first copy, and the copies after it
/// are answered concurrently: so this runs in the stream's reading loop, in stream order, and
/// the chain is verified (and cached) before any later copy looks for it. `None` for
/// anything else (the client's own certificate signs what it submits).
fn peer_signer(node: &Node, conn: &Conn, frame: &pb::Frame) -> Option<PeerSigner> {
    let Some(Body::Submit(pb::Submit {
        envelope: Some(signed),
    })) = &frame.body
    else {
        return None;
    };
    conn.is_peer().then(|| {
        node.signers.signer_for(
            signed.signature.as_ref(),
            &signed.signer_chain,
            SystemTime::now(),
        )
    })
}

/// Handles one request frame: admits a submission, or answers anything else.
async fn request(
    node: &Arc<Node>,
    conn: &Arc<Conn>,
    frame: pb::Frame,
    signer: Option<PeerSigner>,
    now: SystemTime,
) -> Result<Request, (Refusal, Option<MessageId>)> {
    if conn.closing.revoked() {
        let r = Refusal::new(
            RefusalCode::Unauthorized,
            "this connection's certificate is no longer valid (revoked, or its CA's CRL is \
             stale); the connection is closing",
        );
        return Err((r, None));
    }
    let signed = match frame.body {
        Some(Body::Submit(pb::Submit {
            envelope: Some(signed),
        })) => signed,
        Some(Body::Subscribe(s)) => {
            return subscribe(node, conn, &s.unit)
                .map(|b| Request::Answered(Box::new(b)))
                .map_err(|r| (r, None));
        }
        Some(Body::Unsubscribe(u)) => {
            return Ok(Request::Answered(Box::new(unsubscribe(conn, &u.unit))));
        }
        Some(Body::LogCheckpoint(c)) if conn.is_peer() => {
            return super::witness::cosign(node, conn, c)
                .await
                .map(|b| Request::Answered(Box::new(b)))
                .map_err(|r| (r, None));
        }
        Some(op @ (Body::DlqList(_) | Body::DlqShow(_) | Body::DlqRedrive(_))) => {
            if conn.who.identity.role != Role::Operator {
                let r = Refusal::new(
                    RefusalCode::Unauthorized,
                    format!(
                        "{} is not an operator; dead letters need an operator certificate",
                        conn.name
                    ),
                );
                return Err((r, None));
            }
            let answer = super::operator::handle(node, &conn.name, op).await;
            return Ok(Request::Answered(Box::new(answer)));
        }
        other => {
            let got = match other {
                Some(Body::Submit(_)) => "Submit without an envelope".to_owned(),
                Some(b) => format!("{b:?}").chars().take(40).collect(),
                None => "an empty frame".to_owned(),
            };
            let r = Refusal::new(
                RefusalCode::Malformed,
                format!("expected Submit, got {got}"),
            );
            return Err((r, None));
        }
    };
    if let Some(refusal) = node.refusing_new_work() {
        return Err((refusal, None));
    }
    // From a client, the signer is the client itself, its chain the one its handshake
    // presented; from a peer, the one `peer_signer` found for the envelope.
    let cert = match &signer {
        Some(Ok(s)) => Ok(&s.cert),
        Some(Err(reason)) => Err(reason.clone()),
        None => Ok(&conn.who),
    };
    let mut admitted = validate::admit(signed, &conn.who, cert, &node.admission(), now)?;
    admitted.signer_chain = match &signer {
        Some(Ok(s)) => s.chain_bytes(),
        _ => conn.chain.clone(),
    };
    Ok(Request::Take(Box::new(admitted)))
}

/// Starts delivering a mailbox on this connection, if the client may read it.
fn subscribe(node: &Arc<Node>, conn: &Arc<Conn>, unit: &str) -> Result<Body, Refusal> {
    let (mailbox, rule) = policy::may_read(&conn.who.identity, unit, &node.config.readers)?;
    tracing::debug!(who = %conn.name, %mailbox, %rule, "subscription granted");
    let queue = node.ledger.mailbox(&mailbox).ok_or_else(|| {
        Refusal::new(
            RefusalCode::UnknownRecipient,
            format!(
                "no mailbox for {mailbox}: this node keeps at most {} mailboxes",
                super::ledger::MAX_MAILBOXES
            ),
        )
    })?;
    let (tx, stop) = watch::channel(false);
    if !conn.start_reading(&mailbox, tx) {
        return Err(Refusal::new(
            RefusalCode::Invalid,
            format!("this connection already reads {mailbox}"),
        ));
    }
    tokio::spawn(super::deliver::run(
        node.clone(),
        conn.clone(),
        mailbox,
        queue,
        stop,
    ));
    Ok(Body::Subscribed(pb::Subscribed {
        unit: unit.to_owned(),
    }))
}

/// Stops delivering a mailbox on this connection (nothing to do if it was not read here).
fn unsubscribe(conn: &Conn, unit: &str) -> Body {
    if let Ok(mailbox) = Mailbox::from_wire(unit) {
        conn.stop_reading(&mailbox);
    }
    Body::Unsubscribed(pb::Unsubscribed {
        unit: unit.to_owned(),
    })
}
