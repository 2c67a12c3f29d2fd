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
        Err(reason) => return refuse_connection(&node, &conn, None, None, reason).await,
    };
    let hello = tokio::time::timeout(node.config.limits.handshake_timeout, read_hello(&conn)).await;
    let (mut send, recv, hello) = match hello {
        Ok(Ok(x)) => x,
        Ok(Err(reason)) => return refuse_connection(&node, &conn, Some(&who), None, reason).await,
        Err(_) => {
            let reason = "no Hello within the handshake timeout".to_owned();
            return refuse_connection(&node, &conn, Some(&who), None, reason).await;
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
        Err(r) => return refuse_connection(&node, &conn, Some(&who), Some(send), r.reason).await,
    };
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
    if let Authorized::Peer { node: peer } = &auth
        && let Some(wake) = node.link_wake.get(peer)
    {
        wake.notify_one();
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

async fn refuse_connection(
    node: &Node,
    conn: &Connection,
    who: Option<&PeerCert>,
    send: Option<SendStream>,
    reason: String,
) {
    node.events.record(Event::ConnectionRefused {
        remote: conn.remote_address(),
        who: who.map(|w| w.identity.to_string()),
        reason: reason.clone(),
    });
    if let Some(mut send) = send {
        let refused = Refusal::new(RefusalCode::Unauthorized, reason.clone()).to_pb(None);
        if frame::write_body(&mut send, Body::Refused(refused))
            .await
            .is_ok()
        {
            let _ = send.finish();
            // Give the peer a bounded moment to read the refusal before the close overtakes it.
            let _ = tokio::time::timeout(REFUSAL_LINGER, send.stopped()).await;
        }
    }
    conn.close(CLOSE_REFUSED.into(), reason.as_bytes());
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

/// Handles one submitted message on its own stream: size limit, decode, admit, route, enqueue.
async fn submission(
    node: Arc<Node>,
    who: Arc<PeerCert>,
    from_peer: bool,
    mut send: SendStream,
    recv: RecvStream,
) {
    let from = who.identity.to_string();
    let answer = match receive(&node, &who, from_peer, recv).await {
        Ok(answer) => answer,
        Err((refusal, id)) => {
            node.events.record(Event::Refused {
                id,
                from,
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
    };
    // A sender that went away does not need its answer.
    if frame::write_body(&mut send, answer).await.is_ok() {
        let _ = send.finish();
    }
}

/// What a sender is told to wait before retrying a QUEUE_FULL or SHUTTING_DOWN refusal.
const RETRY_AFTER: Duration = Duration::from_millis(500);

use super::lifecycle::Refused;

/// Reads one request frame and answers it: a submitted message, or an operator request.
async fn receive(
    node: &Arc<Node>,
    who: &PeerCert,
    from_peer: bool,
    recv: RecvStream,
) -> Result<Body, Refused> {
    let mut reader = FrameReader::new(recv, node.config.limits.max_frame_bytes);
    let frame = match tokio::time::timeout(node.config.limits.ack_timeout, reader.read()).await {
        Err(_) => {
            return Err((
                Refusal::new(RefusalCode::Malformed, "frame not received in time"),
                None,
            ));
        }
        Ok(Ok(f)) => f,
        Ok(Err(e)) => {
            if matches!(e, FrameError::TooLarge { .. }) {
                // Nothing more of this stream is read; the sender's write stops here.
                let _ = reader.stream().stop(0u32.into());
            }
            let r = e
                .refusal()
                .map(|r| Refusal::new(r.code(), r.reason))
                .unwrap_or_else(|| Refusal::new(RefusalCode::Malformed, e.to_string()));
            return Err((r, None));
        }
    };
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
            return Ok(super::operator::handle(node, &who.identity.to_string(), op));
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
    if node.is_shutting_down() {
        return Err((
            Refusal::new(RefusalCode::ShuttingDown, "the node is shutting down"),
            None,
        ));
    }
    let now = SystemTime::now();
    let ctx = NodeContext {
        agency: &node.config.agency,
        node: &node.config.name,
        max_hops: super::MAX_HOPS,
    };
    let admitted = validate::admit(signed, who, &ctx, now)?;
    let from = who.identity.to_string();
    node.take(admitted, from_peer, from, now)
        .await
        .map(Body::Accepted)
}
