//! Accepting connections: TLS identity, `Hello`/`Welcome`, then one task per submitted message.
//!
//! A connection is authorized only after its certificate yields an identity and
//! [`crate::policy::authorize`] accepts its `Hello`; a refusal is sent as a `Refused` frame and
//! repeated in the connection close reason, so the other side learns why either way.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use quinn::{Connection, RecvStream, SendStream};
use rustls_pki_types::CertificateDer;

use super::events::Event;
use super::{Node, deliver};
use crate::identity::{self, PeerCert, Role};
use crate::policy::{self, Authorized};
use crate::session::CONTROL_FRAME_LIMIT;
use crate::validate::{self, NodeContext, Refusal};
use crate::wire::frame::{self, FrameError, FrameReader};
use crate::wire::pb::{self, RefusalCode, frame::Body};

/// Application close code for a connection refused after the TLS handshake.
pub const CLOSE_REFUSED: u32 = 0x10;

/// How long a refused peer gets to read the refusal before the connection is closed.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

pub(super) async fn accept(node: Arc<Node>, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(handle(node.clone(), incoming));
    }
}

async fn handle(node: Arc<Node>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(c) => c,
        // The other side gave up on its own (e.g. a peer abandoning a dial): not a refusal.
        Err(
            e @ (quinn::ConnectionError::ConnectionClosed(_)
            | quinn::ConnectionError::ApplicationClosed(_)),
        ) => {
            tracing::debug!(%remote, error = %e, "connection abandoned during the handshake");
            return;
        }
        Err(e) => {
            node.events.record(Event::ConnectionRefused {
                remote,
                who: None,
                reason: format!("TLS handshake failed: {e}"),
            });
            return;
        }
    };
    let who = match peer_cert(&conn, &node.config.trust_domain) {
        Ok(w) => Arc::new(w),
        Err(reason) => {
            return refuse_connection(&node, &conn, None, None, unauthorized(reason)).await;
        }
    };
    let hello = tokio::time::timeout(node.config.limits.handshake_timeout, read_hello(&conn)).await;
    let (mut send, recv, hello) = match hello {
        Ok(Ok(x)) => x,
        Ok(Err(reason)) => {
            return refuse_connection(&node, &conn, Some(&who), None, unauthorized(reason)).await;
        }
        Err(_) => {
            let reason = "no Hello within the handshake timeout".to_owned();
            return refuse_connection(&node, &conn, Some(&who), None, unauthorized(reason)).await;
        }
    };
    let auth = policy::authorize(
        &who.identity,
        &hello,
        &node.config.agency,
        &node.config.peers,
    );
    let auth = match auth {
        Ok(a) => a,
        Err(r) => return refuse_connection(&node, &conn, Some(&who), Some(send), r).await,
    };
    if let Authorized::Client {
        subscribe: true,
        unit,
    } = &auth
        && node.mailbox(unit).is_none()
    {
        let r = Refusal::new(
            RefusalCode::UnknownRecipient,
            format!(
                "no mailbox for unit {unit:?}: this node keeps at most {} mailboxes",
                super::MAX_MAILBOXES
            ),
        );
        return refuse_connection(&node, &conn, Some(&who), Some(send), r).await;
    }
    let welcome = pb::Welcome {
        protocol_version: crate::wire::PROTOCOL_VERSION,
        node: Some(peer_identity(&node.me)),
        you: Some(peer_identity(&who)),
        max_frame_bytes: node.config.limits.max_frame_bytes,
    };
    if frame::write_body(&mut send, Body::Welcome(welcome))
        .await
        .is_err()
    {
        return;
    }
    node.events.record(Event::Connected {
        remote,
        who: who.identity.to_string(),
    });
    // The control stream stays open; its end (or the connection's) ends the session.
    drop(recv);
    let _keep_open = send;
    // A peer's connection becomes (or competes to become) its link; see `link`.
    if let Authorized::Peer { node: peer } = &auth
        && let Some(link) = node.link_inbox.get(peer)
        && link
            .try_send(super::link::Input::Incoming(conn.clone()))
            .is_err()
    {
        conn.close(
            CLOSE_REFUSED.into(),
            b"too many connections from this peer at once",
        );
        return;
    }
    let from_peer = matches!(auth, Authorized::Peer { .. });
    if let Authorized::Client {
        subscribe: true,
        unit,
    } = &auth
    {
        tokio::spawn(deliver::run(
            node.clone(),
            conn.clone(),
            who.clone(),
            unit.clone(),
        ));
    }
    serve_streams(node, conn, who, from_peer).await;
}

/// Serves the streams the other side opens, each in its own task, until the connection ends.
pub(super) async fn serve_streams(
    node: Arc<Node>,
    conn: Connection,
    who: Arc<PeerCert>,
    from_peer: bool,
) {
    while let Ok((send, recv)) = conn.accept_bi().await {
        tokio::spawn(submission(node.clone(), who.clone(), from_peer, send, recv));
    }
}

async fn read_hello(conn: &Connection) -> Result<(SendStream, RecvStream, pb::Hello), String> {
    let (send, recv) = conn
        .accept_bi()
        .await
        .map_err(|e| format!("connection ended before Hello: {e}"))?;
    let mut reader = FrameReader::new(recv, CONTROL_FRAME_LIMIT);
    match reader.read().await {
        Ok(pb::Frame {
            body: Some(Body::Hello(h)),
        }) => Ok((send, reader.into_inner(), h)),
        Ok(other) => Err(format!("expected Hello, got {other:?}")),
        Err(e) => Err(format!("bad Hello: {e}")),
    }
}

fn unauthorized(reason: String) -> Refusal {
    Refusal::new(RefusalCode::Unauthorized, reason)
}

async fn refuse_connection(
    node: &Node,
    conn: &Connection,
    who: Option<&PeerCert>,
    send: Option<SendStream>,
    refusal: Refusal,
) {
    node.events.record(Event::ConnectionRefused {
        remote: conn.remote_address(),
        who: who.map(|w| w.identity.to_string()),
        reason: refusal.reason.clone(),
    });
    if let Some(mut send) = send
        && frame::write_body(&mut send, Body::Refused(refusal.to_pb(None)))
            .await
            .is_ok()
    {
        let _ = send.finish();
        // Give the peer a bounded moment to read the refusal before the close overtakes it.
        let _ = tokio::time::timeout(REFUSAL_LINGER, send.stopped()).await;
    }
    conn.close(CLOSE_REFUSED.into(), refusal.reason.as_bytes());
}

/// Reads the peer's verified certificate chain and derives its identity.
fn peer_cert(conn: &Connection, trust_domain: &str) -> Result<PeerCert, String> {
    let chain = conn
        .peer_identity()
        .and_then(|a| a.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or_else(|| "no client certificate".to_owned())?;
    let leaf = chain
        .first()
        .ok_or_else(|| "empty certificate chain".to_owned())?;
    identity::from_certificate(leaf, trust_domain).map_err(|e| e.to_string())
}

fn peer_identity(p: &PeerCert) -> pb::PeerIdentity {
    pb::PeerIdentity {
        trust_domain: p.identity.trust_domain.clone(),
        agency: p.identity.agency.to_string(),
        role: match p.identity.role {
            Role::Node => pb::Role::Node,
            Role::Client => pb::Role::Client,
            Role::Operator => pb::Role::Operator,
        } as i32,
        name: p.identity.name.clone(),
    }
}

/// Serves one stream opened by the other side: a sequence of request frames (one, for an alert on
/// its own stream; many, for the pipelined analytical stream), answered in order.
///
/// Requests are processed concurrently (each may wait for storage), at most [`PIPELINE_DEPTH`]
/// at a time per stream; answers are written in request order. A frame over the size limit is
/// refused without being decoded, and its body skipped so the stream stays usable; a frame
/// declaring an absurd length ends the stream instead.
async fn submission(
    node: Arc<Node>,
    who: Arc<PeerCert>,
    from_peer: bool,
    mut send: SendStream,
    recv: RecvStream,
) {
    // Peers forward what a client submitted within the limit, plus hop records.
    let max = node.config.limits.max_frame_bytes + if from_peer { FRAME_SLACK } else { 0 };
    let mut reader = FrameReader::new(recv, max);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<tokio::task::JoinHandle<Body>>(PIPELINE_DEPTH);
    let writer = tokio::spawn(async move {
        let answer = |r: Result<Body, tokio::task::JoinError>| {
            r.unwrap_or_else(|e| {
                Body::Refused(
                    Refusal::new(RefusalCode::Invalid, format!("internal error: {e}")).to_pb(None),
                )
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
            let encode = |body, buf: &mut bytes::BytesMut| {
                frame::encode_into(&pb::Frame { body: Some(body) }, buf)
            };
            encode(answer(handle.await), &mut buf);
            // Answers that are ready already go out in the same write, still in order.
            while buf.len() < ANSWER_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(h) if h.is_finished() => encode(answer(h.await), &mut buf),
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
    loop {
        let (answer, stop) = match reader.read().await {
            Ok(frame) => {
                let (node, who) = (node.clone(), who.clone());
                let h = tokio::spawn(async move { answer(&node, &who, from_peer, frame).await });
                if tx.send(h).await.is_err() {
                    break;
                }
                continue;
            }
            // The stream or connection went away: nothing to answer.
            Err(FrameError::End | FrameError::Read(_) | FrameError::Write(_)) => break,
            Err(e @ FrameError::TooLarge { len, .. }) => {
                let r = refuse(&node, &who, frame_refusal(&e), None);
                // Skipping keeps the stream in sync; a wildly oversized claim is not worth reading.
                let stop = len > max.saturating_mul(SKIP_FACTOR) || reader.skip(len).await.is_err();
                (r, stop)
            }
            Err(e @ FrameError::Malformed(_)) => {
                (refuse(&node, &who, frame_refusal(&e), None), false)
            }
            Err(e) => (refuse(&node, &who, frame_refusal(&e), None), true),
        };
        if tx.send(tokio::spawn(async move { answer })).await.is_err() || stop {
            if stop {
                let _ = reader.stream().stop(0u32.into());
            }
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// Room above the frame limit for what nodes add to a message in transit (hop records, delivery
/// fields): a message accepted within the limit must still pass every later hop.
pub const FRAME_SLACK: u64 = 16 * 1024;

/// Requests processed at once per stream.
const PIPELINE_DEPTH: usize = 1024;

/// Ready answers are gathered into one write up to about this many bytes.
const ANSWER_BATCH_BYTES: usize = 16 * 1024;

/// Oversized frames up to this many times the limit are skipped; larger claims end the stream.
const SKIP_FACTOR: u64 = 16;

fn frame_refusal(e: &FrameError) -> Refusal {
    e.refusal()
        .map(|r| Refusal::new(r.code(), r.reason))
        .unwrap_or_else(|| Refusal::new(RefusalCode::Malformed, e.to_string()))
}

/// Records a refusal and returns its answer frame.
fn refuse(
    node: &Node,
    who: &PeerCert,
    refusal: Refusal,
    id: Option<crate::message::MessageId>,
) -> Body {
    node.events.record(Event::Refused {
        id,
        from: who.identity.to_string(),
        code: refusal.code,
        reason: refusal.reason.clone(),
    });
    let mut r = refusal.to_pb(id);
    if matches!(
        refusal.code,
        RefusalCode::QueueFull | RefusalCode::ShuttingDown
    ) {
        r.retry_after_ms = RETRY_AFTER.as_millis() as u64;
    }
    Body::Refused(r)
}

/// Answers one request frame.
async fn answer(node: &Arc<Node>, who: &PeerCert, from_peer: bool, frame: pb::Frame) -> Body {
    match receive(node, who, from_peer, frame).await {
        Ok(body) => body,
        Err((refusal, id)) => refuse(node, who, refusal, id),
    }
}

/// What a sender is told to wait before retrying a QUEUE_FULL or SHUTTING_DOWN refusal.
const RETRY_AFTER: Duration = Duration::from_millis(500);

use super::lifecycle::Refused;

/// Handles one request frame: a submitted message, or an operator request.
async fn receive(
    node: &Arc<Node>,
    who: &PeerCert,
    from_peer: bool,
    frame: pb::Frame,
) -> Result<Body, Refused> {
    let signed = match frame.body {
        Some(Body::Submit(pb::Submit {
            envelope: Some(signed),
        })) => signed,
        Some(op @ (Body::DlqList(_) | Body::DlqShow(_) | Body::DlqRedrive(_))) => {
            if who.identity.role != Role::Operator {
                let r = Refusal::new(
                    RefusalCode::Unauthorized,
                    format!(
                        "{} is not an operator; dead letters need an operator certificate",
                        who.identity
                    ),
                );
                return Err((r, None));
            }
            return Ok(super::operator::handle(node, &who.identity.to_string(), op).await);
        }
        other => {
            let got = match other {
                Some(Body::Submit(_)) => "Submit without an envelope".to_owned(),
                Some(b) => format!("{b:?}").chars().take(40).collect(),
                None => "an empty frame".to_owned(),
            };
            return Err((
                Refusal::new(
                    RefusalCode::Malformed,
                    format!("expected Submit, got {got}"),
                ),
                None,
            ));
        }
    };
    if let Some(refusal) = node.refusing_new_work() {
        return Err((refusal, None));
    }
    let now = SystemTime::now();
    let ctx = NodeContext {
        agency: &node.config.agency,
        node: &node.config.name,
        max_hops: node.config.limits.max_hops,
        verified: &node.verified,
    };
    let admitted = validate::admit(signed, who, &ctx, now)?;
    let from = who.identity.to_string();
    node.take(admitted, from_peer, from, now)
        .await
        .map(Body::Accepted)
}
