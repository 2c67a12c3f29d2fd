//! Accepting connections: TLS identity, `Hello`/`Welcome`, then the connection's streams.
//!
//! A connection is authorized only after its certificate yields an identity and
//! [`crate::policy::authorize`] accepts its `Hello`; a refusal is sent as a `Refused` frame and
//! repeated in the connection close reason, so the other side learns why either way. An
//! authorized peer node's connection goes to its link (`link`); every connection's request
//! streams are served by `streams`.

use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, RecvStream, SendStream};
use rustls_pki_types::CertificateDer;

use super::conn::Conn;
use super::events::Event;
use super::registry::Registered;
use super::state::Node;
use super::streams;
use crate::identity::{self, PeerCert, Role};
use crate::policy::{self, Authorized};
use crate::refusal::Refusal;
use crate::wire::CONTROL_FRAME_LIMIT;
use crate::wire::frame::{self, FrameReader};
use crate::wire::pb::{self, RefusalCode, frame::Body};

/// Application close code for a connection refused after the TLS handshake.
pub(super) const CLOSE_REFUSED: u32 = 0x10;

/// How long a refused peer gets to read the refusal before the connection is closed.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Accepts connections until the endpoint closes, each in its own task.
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
            node.events().record(Event::ConnectionRefused {
                remote,
                who: None,
                certificate: None,
                reason: format!("TLS handshake failed: {e}"),
            });
            return;
        }
    };
    let (who, chain) = match peer_cert(&node, &conn) {
        Ok(w) => w,
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
    let registered = match node.registry.register(&who, &chain, &conn) {
        Ok(r) => r,
        Err(r) => return refuse_connection(&node, &conn, Some(&who), Some(send), r).await,
    };
    if auth == Authorized::Client {
        // Fewer streams for clients than for peer nodes.
        conn.set_max_concurrent_bi_streams(node.config.limits.client_streams.into());
    }
    let welcome = pb::Welcome {
        protocol_version: crate::wire::PROTOCOL_VERSION,
        node: Some(peer_identity(&node.own().me)),
        you: Some(peer_identity(&who)),
        max_frame_bytes: node.config.limits.max_frame_bytes,
    };
    if frame::write_body(&mut send, Body::Welcome(welcome))
        .await
        .is_err()
    {
        return;
    }
    node.events().record(Event::Connected {
        remote,
        who: who.identity.to_string(),
        certificate: crate::audit::hex(&who.sha256),
    });
    // The control stream stays open; its end (or the connection's) ends the session.
    drop(recv);
    let _keep_open = send;
    // A peer's connection becomes (or competes to become) its link; see `link`.
    if let Authorized::Peer { node: peer } = &auth
        && let Some(link) = node.link_inbox.get(peer)
        && link.try_send(conn.clone()).is_err()
    {
        conn.close(
            CLOSE_REFUSED.into(),
            b"too many connections from this peer at once",
        );
        return;
    }
    serve_authorized(node, conn, who, &chain, registered).await;
}

/// Serves an authorized, registered connection's streams until it ends, and records its end.
pub(super) async fn serve_authorized(
    node: Arc<Node>,
    conn: Connection,
    who: PeerCert,
    chain: &[CertificateDer<'static>],
    registered: Registered,
) {
    let c = Conn::new(
        conn.clone(),
        who,
        chain,
        &node.config.limits,
        registered.closing.clone(),
    );
    streams::serve(node.clone(), c.clone()).await;
    let reason = match (registered.closing.reason(), conn.close_reason()) {
        (Some(ours), _) => format!("closed by this node: {ours}"),
        (None, Some(e)) => crate::tls::describe_connection_error(&e),
        (None, None) => "ended".to_owned(),
    };
    node.events().record(Event::Disconnected {
        remote: conn.remote_address(),
        who: c.name.clone(),
        reason,
    });
    drop(registered);
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
    node.events().record(Event::ConnectionRefused {
        remote: conn.remote_address(),
        who: who.map(|w| w.identity.to_string()),
        certificate: who.map(|w| crate::audit::hex(&w.sha256)),
        reason: refusal.reason.clone(),
    });
    if let Some(mut send) = send
        && frame::write_body(&mut send, Body::Refused(refusal.to_pb(Default::default())))
            .await
            .is_ok()
    {
        let _ = send.finish();
        // Give the peer a bounded moment to read the refusal before the close overtakes it.
        let _ = tokio::time::timeout(REFUSAL_LINGER, send.stopped()).await;
    }
    conn.close(CLOSE_REFUSED.into(), refusal.reason.as_bytes());
}

/// Reads the peer's verified certificate chain and derives its identity; the chain is
/// remembered as a signer's (the handshake verified it), so what this peer signs can be checked
/// here and handed on.
fn peer_cert(
    node: &Node,
    conn: &Connection,
) -> Result<(PeerCert, Vec<CertificateDer<'static>>), String> {
    let chain = conn
        .peer_identity()
        .and_then(|a| a.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or_else(|| "no client certificate".to_owned())?;
    let leaf = chain
        .first()
        .ok_or_else(|| "empty certificate chain".to_owned())?;
    let cert =
        identity::from_certificate(leaf, &node.config.trust_domain).map_err(|e| e.to_string())?;
    node.signers.trusted(cert.clone(), (*chain).clone());
    Ok((cert, *chain))
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
