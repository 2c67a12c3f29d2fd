//! Links to peer nodes: one authorized connection per peer, carrying traffic both ways.
//!
//! One task per configured peer. It dials at start and after every loss (with jittered
//! exponential backoff after failed dials, see [`crate::peering`]), checks the peer's certificate
//! identity against the peer table, and adopts a connection the peer dialed to us as well. If
//! both nodes dial at once, exactly one connection survives, decided the same way on both sides
//! ([`peering::keep_current`]); the other is closed with the reason ([`CLOSE_DUPLICATE`]). QUIC
//! keepalives (every 5 s) and the idle timeout (30 s) in [`crate::tls::transport_config`] detect
//! a silent peer. Every state change is counted and logged through [`Links`].
//!
//! While a connection is up, `forward` sends the peer's outbox over it, and `streams` serves what
//! the peer submits on it.

use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, Endpoint};
use rustls_pki_types::CertificateDer;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::links::{Change, Links};
use super::server;
use super::state::Node;
use crate::config::Peer;
use crate::error::ConnectError;
use crate::identity::{self, Role};
use crate::peering::{self, Backoff, Dialer};
use crate::session;
use crate::tls;
use crate::wire::CONTROL_FRAME_LIMIT;
use crate::wire::frame::{FrameError, FrameReader};
use crate::wire::pb;

/// Application close code for the connection that loses to another one to the same peer.
pub const CLOSE_DUPLICATE: u32 = 0x11;

/// How long the current connection has to answer a probe before a new one replaces it.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Connections handed to a link task at once (the peer's). More from the same peer while the
/// task is busy are refused: a peer has one link.
pub(super) const INBOX_CAPACITY: usize = 8;

/// The connection in use and the tasks serving it.
struct Current {
    conn: Connection,
    dialer: Dialer,
    forwarder: tokio::task::JoinHandle<()>,
}

impl Drop for Current {
    // The forwarder serves this connection only (also when the link task is aborted at shutdown).
    fn drop(&mut self) {
        self.forwarder.abort();
    }
}

struct Link {
    node: Arc<Node>,
    endpoint: Endpoint,
    peer: Peer,
    links: Arc<Links>,
    /// Our own dials report back here.
    dialed: mpsc::Sender<Result<Connection, ConnectError>>,
    /// True when this node's name sorts before the peer's: its dials win.
    my_dials_win: bool,
    current: Option<Current>,
}

/// Runs the link to `peer`: `incoming` brings the connections the peer dials to us.
pub(super) async fn run(
    node: Arc<Node>,
    endpoint: Endpoint,
    peer: Peer,
    mut incoming: mpsc::Receiver<Connection>,
) {
    let (dialed, mut dials) = mpsc::channel(1);
    let mut link = Link {
        links: node.links.clone(),
        my_dials_win: node.config.name < peer.node,
        endpoint,
        peer,
        node,
        dialed,
        current: None,
    };
    let mut backoff = Backoff::default();
    let mut dialing = false;
    let mut dial_at = Some(Instant::now());
    loop {
        if link.current.is_none() && !dialing && dial_at.is_some_and(|t| t <= Instant::now()) {
            dial_at = None;
            dialing = true;
            link.dial();
        }
        let watch = link.current.as_ref().map(|c| c.conn.clone());
        let timer = dial_at.filter(|_| link.current.is_none() && !dialing);
        tokio::select! {
            e = async move {
                match watch {
                    Some(c) => c.closed().await,
                    None => std::future::pending().await,
                }
            } => {
                // Dropping it stops its forwarder.
                link.current = None;
                let detail = tls::describe_connection_error(&e);
                link.links.set(&link.peer.node, Change::Lost, detail, None);
                // Dial again at once: the peer may just have closed one connection of two.
                backoff.reset();
                dial_at = Some(Instant::now());
            }
            _ = async move {
                match timer {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {}
            Some(result) = dials.recv() => {
                dialing = false;
                match result {
                    Ok(conn) => {
                        backoff.reset();
                        link.offer(conn, Dialer::Me).await;
                    }
                    Err(e) if link.current.is_none() => {
                        let delay = backoff.failed(random_fraction());
                        let peer = &link.peer.node;
                        link.links.set(peer, Change::DialFailed, e.to_string(), None);
                        link.links.set(peer, Change::Backoff, format!("next dial in {delay:?}"), None);
                        dial_at = Some(Instant::now() + delay);
                    }
                    Err(_) => {}
                }
            }
            Some(conn) = incoming.recv() => link.offer(conn, Dialer::Peer).await,
        }
    }
}

impl Link {
    /// Dials the peer in the background; the result comes back on `dialed`.
    fn dial(&self) {
        self.links.set(
            &self.peer.node,
            Change::Dialing,
            self.peer.address.to_string(),
            None,
        );
        let (node, endpoint, peer, tx) = (
            self.node.clone(),
            self.endpoint.clone(),
            self.peer.clone(),
            self.dialed.clone(),
        );
        tokio::spawn(async move {
            let r = connect(&node, &endpoint, &peer).await;
            let _ = tx.send(r).await;
        });
    }

    /// The node whose dial a connection came from.
    fn dialer(&self, d: Dialer) -> &str {
        match d {
            Dialer::Me => &self.node.config.name,
            Dialer::Peer => &self.peer.node,
        }
    }

    /// Adopts a new authorized connection to the peer, or closes it if the current one wins.
    async fn offer(&mut self, conn: Connection, dialer: Dialer) {
        if let Some(cur) = &self.current {
            let keep = peering::needs_probe(self.my_dials_win, cur.dialer, dialer)
                && peering::keep_current(
                    self.my_dials_win,
                    cur.dialer,
                    dialer,
                    alive(&cur.conn).await,
                );
            let (loser, winner) = match keep {
                true => (&conn, cur.dialer),
                false => (&cur.conn, dialer),
            };
            let reason = format!(
                "duplicate link to {}: keeping the connection dialed by {}",
                self.peer.node,
                self.dialer(winner)
            );
            loser.close(CLOSE_DUPLICATE.into(), reason.as_bytes());
            self.links.duplicate_closed(&self.peer.node, reason);
            if keep {
                return;
            }
            // Dropping it stops its forwarder.
            self.current = None;
        }
        let outbox = self
            .node
            .ledger
            .outbox(&self.peer.node)
            .expect("every peer in the config has an outbox");
        let forwarder = tokio::spawn(super::forward::run(
            self.node.clone(),
            conn.clone(),
            self.peer.node.clone(),
            outbox,
        ));
        let detail = format!(
            "{} (dialed by {})",
            conn.remote_address(),
            self.dialer(dialer)
        );
        let by = self.dialer(dialer).to_owned();
        self.node.set_peer_conn(&self.peer.node, conn.clone());
        self.links
            .set(&self.peer.node, Change::Up, detail, Some(&by));
        self.current = Some(Current {
            conn,
            dialer,
            forwarder,
        });
    }
}

/// True when the connection still carries a round trip: an empty stream opened and finished,
/// which the peer answers by finishing its side.
async fn alive(conn: &Connection) -> bool {
    let probe = async {
        let (mut send, recv) = conn.open_bi().await.ok()?;
        send.finish().ok()?;
        let mut reader = FrameReader::new(recv, CONTROL_FRAME_LIMIT);
        match reader.read().await {
            Err(FrameError::End) => Some(()),
            _ => None,
        }
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, probe).await,
        Ok(Some(()))
    )
}

/// Dials a peer and checks that its certificate names exactly the node the peer table expects.
async fn connect(
    node: &Arc<Node>,
    endpoint: &Endpoint,
    peer: &Peer,
) -> Result<Connection, ConnectError> {
    let config = tls::quic_client_config(
        node.own()
            .tls
            .client_config()
            .map_err(|e| ConnectError::Handshake(e.to_string()))?,
    )
    .map_err(|e| ConnectError::Handshake(e.to_string()))?;
    let hello = pb::Hello {
        protocol_version: crate::wire::PROTOCOL_VERSION,
        role: pb::Role::Node as i32,
    };
    let session = session::dial(
        endpoint,
        config,
        peer.address,
        &peer.server_name,
        hello,
        node.config.limits.handshake_timeout,
    )
    .await?;
    let conn = session.connection;
    let chain = conn
        .peer_identity()
        .and_then(|a| a.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or_else(|| ConnectError::WrongPeer("no certificate".into()))?;
    let leaf = chain
        .first()
        .ok_or_else(|| ConnectError::WrongPeer("empty certificate chain".into()))?;
    let cert = identity::from_certificate(leaf, &node.config.trust_domain)
        .map_err(|e| ConnectError::WrongPeer(e.to_string()))?;
    let id = &cert.identity;
    if id.role != Role::Node || id.agency != peer.agency || id.name != peer.node {
        conn.close(0u32.into(), b"unexpected peer identity");
        return Err(ConnectError::WrongPeer(format!(
            "{} presented {id}, the peer table expects {}/node/{}",
            peer.address, peer.agency, peer.node
        )));
    }
    let registered = node
        .registry
        .register(&cert, &chain, &conn)
        .inspect_err(|r| conn.close(0u32.into(), r.reason.as_bytes()))
        .map_err(|r| ConnectError::WrongPeer(r.reason))?;
    // Its chain was verified by the handshake: what it signs can be checked here.
    node.signers.trusted(cert.clone(), (*chain).clone());
    // The peer submits to us on this connection too.
    tokio::spawn({
        let (node, conn) = (node.clone(), conn.clone());
        async move { server::serve_authorized(node, conn, cert, &chain, registered).await }
    });
    // Keep the control stream open for the life of the link.
    let control = session.control;
    tokio::spawn({
        let conn = conn.clone();
        async move {
            conn.closed().await;
            drop(control);
        }
    });
    Ok(conn)
}

/// A random number in `0.0..=1.0`, for jitter (0.5 if the system has no randomness to give).
fn random_fraction() -> f64 {
    let mut b = [0u8; 2];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).is_err() {
        return 0.5;
    }
    f64::from(u16::from_be_bytes(b)) / f64::from(u16::MAX)
}
