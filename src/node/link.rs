//! Links to peer nodes: one authorized connection per peer, carrying traffic both ways.
//!
//! One task per configured peer. It dials at start and after every loss (with jittered
//! exponential backoff after failed dials), checks the peer's certificate identity against the
//! peer table, and adopts a connection the peer dialed to us as well. If both nodes dial at once,
//! exactly one connection survives, decided the same way on both sides: **the connection dialed
//! by the node whose name sorts first wins**; the other is closed with the reason
//! ([`CLOSE_DUPLICATE`]). A connection that the rule would refuse is still adopted when the
//! current one no longer answers a probe: the peer restarted and the old connection is dead.
//! QUIC keepalives (every 5 s) and the idle timeout (30 s) in [`crate::tls::transport_config`]
//! detect a silent peer. Every state change is counted and logged through [`Links`].
//!
//! While up, it forwards up to [`ALERT_WINDOW`] time-sensitive and [`WINDOW`] analytical messages
//! at a time (separate pools, so an alert never waits for a slot bulk holds): time-sensitive ones
//! each on its own stream, analytical ones pipelined on one long-lived stream, in the order the
//! outbox gives them and behind the alerts popped before them (see `forward_analytical`). It
//! forwards the originator's exact
//! envelope bytes and signature, appending only its hop record. A copy the peer refuses for good
//! is dropped with an event and a non-delivery report; anything else goes back: a lost
//! connection puts the copy at the head of its lane, and QUEUE_FULL or SHUTTING_DOWN parks it
//! until the peer's retry-after. The peer submits to us on the same connection; those streams
//! are served as on any accepted connection ([`super::server::serve_streams`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use quinn::{Connection, Endpoint};
use rustls_pki_types::CertificateDer;
use std::task::Poll;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::Instant;

use super::Node;
use super::events::Event;
use super::links::{Change, Links};
use super::queue::{Item, Queue};
use crate::client::stream_priority;
use crate::config::Peer;
use crate::identity::{self, Role};
use crate::lanes::Entry;
use crate::message::Precedence;
use crate::pipeline::{DEFAULT_WINDOW_BYTES, Pipeline};
use crate::session::{self, CONTROL_FRAME_LIMIT, ConnectError, SubmitError};
use crate::tls;
use crate::wire::frame::{FrameError, FrameReader};
use crate::wire::pb::{self, RefusalCode};

/// Unanswered analytical forwards per peer link.
pub const WINDOW: usize = 1024;

/// Unanswered time-sensitive forwards per peer link: a pool of their own, so an alert never
/// waits for a slot held by analytical traffic.
pub const ALERT_WINDOW: usize = 64;

/// Forwarding slots of one link, kept across reconnects.
struct Slots {
    alerts: Arc<Semaphore>,
    bulk: Arc<Semaphore>,
}

/// Application close code for the connection that loses to another one to the same peer.
pub const CLOSE_DUPLICATE: u32 = 0x11;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// How long the current connection has to answer a probe before a new one replaces it.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Connections handed to a link task at once (the peer's, or a finished dial). More from the
/// same peer while the task is busy are refused: a peer has one link.
pub(super) const INBOX_CAPACITY: usize = 8;

/// What a link task is told.
pub(super) enum Input {
    /// Our own dial finished.
    Dialed(Result<Connection, ConnectError>),
    /// The peer dialed us and was authorized.
    Incoming(Connection),
}

/// The connection in use and the task forwarding over it.
struct Current {
    conn: Connection,
    dialed_by_me: bool,
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
    outbox: Arc<Queue>,
    slots: Arc<Slots>,
    tx: mpsc::Sender<Input>,
    /// True when this node's name sorts before the peer's: its dials win.
    my_dials_win: bool,
    current: Option<Current>,
}

pub(super) async fn run(
    node: Arc<Node>,
    endpoint: Endpoint,
    peer: Peer,
    tx: mpsc::Sender<Input>,
    mut inbox: mpsc::Receiver<Input>,
) {
    let mut link = Link {
        outbox: node.outboxes[&peer.node].clone(),
        links: node.links.clone(),
        slots: Arc::new(Slots {
            alerts: Arc::new(Semaphore::new(ALERT_WINDOW)),
            bulk: Arc::new(Semaphore::new(WINDOW)),
        }),
        my_dials_win: node.config.name < peer.node,
        endpoint,
        peer,
        node,
        tx,
        current: None,
    };
    let mut backoff = BACKOFF_MIN;
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
                backoff = BACKOFF_MIN;
                dial_at = Some(Instant::now());
            }
            _ = async move {
                match timer {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {}
            Some(input) = inbox.recv() => match input {
                Input::Dialed(Ok(conn)) => {
                    dialing = false;
                    backoff = BACKOFF_MIN;
                    link.offer(conn, true).await;
                }
                Input::Dialed(Err(e)) => {
                    dialing = false;
                    if link.current.is_none() {
                        let delay = jitter(backoff);
                        let peer = &link.peer.node;
                        link.links.set(peer, Change::DialFailed, e.to_string(), None);
                        link.links.set(peer, Change::Backoff, format!("next dial in {delay:?}"), None);
                        dial_at = Some(Instant::now() + delay);
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
                Input::Incoming(conn) => link.offer(conn, false).await,
            },
        }
    }
}

impl Link {
    /// Dials the peer in the background; the result comes back as [`Input::Dialed`].
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
            self.tx.clone(),
        );
        tokio::spawn(async move {
            let r = connect(&node, &endpoint, &peer).await;
            let _ = tx.send(Input::Dialed(r)).await;
        });
    }

    /// The node whose dial a connection came from.
    fn dialer(&self, dialed_by_me: bool) -> &str {
        if dialed_by_me {
            &self.node.config.name
        } else {
            &self.peer.node
        }
    }

    /// Adopts a new authorized connection to the peer, or closes it if the current one wins.
    async fn offer(&mut self, conn: Connection, dialed_by_me: bool) {
        let wins = |mine: bool| mine == self.my_dials_win;
        if let Some(cur) = &self.current {
            // The rule, and between two connections from the same dialer, the newer one: that
            // side dialed again because it has given the older one up.
            let keep_current =
                wins(cur.dialed_by_me) && !wins(dialed_by_me) && alive(&cur.conn).await;
            if keep_current {
                let reason = format!(
                    "duplicate link to {}: keeping the connection dialed by {}",
                    self.peer.node,
                    self.dialer(cur.dialed_by_me)
                );
                conn.close(CLOSE_DUPLICATE.into(), reason.as_bytes());
                self.links.duplicate_closed(&self.peer.node, reason);
                return;
            }
            // Dropping it stops its forwarder.
            let old = self.current.take().expect("checked above");
            let reason = format!(
                "duplicate link to {}: replaced by the connection dialed by {}",
                self.peer.node,
                self.dialer(dialed_by_me)
            );
            old.conn.close(CLOSE_DUPLICATE.into(), reason.as_bytes());
            self.links.duplicate_closed(&self.peer.node, reason);
        }
        let bulk = Arc::new(Pipeline::new(
            conn.clone(),
            DEFAULT_WINDOW_BYTES,
            stream_priority(Precedence::Routine),
            None,
        ));
        let forwarder = tokio::spawn(forward_while_up(
            self.node.clone(),
            conn.clone(),
            bulk,
            self.outbox.clone(),
            self.peer.node.clone(),
            self.slots.clone(),
        ));
        let detail = format!(
            "{} (dialed by {})",
            conn.remote_address(),
            self.dialer(dialed_by_me)
        );
        let dialer = self.dialer(dialed_by_me).to_owned();
        self.links
            .set(&self.peer.node, Change::Up, detail, Some(&dialer));
        self.current = Some(Current {
            conn,
            dialed_by_me,
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

async fn forward_while_up(
    node: Arc<Node>,
    conn: Connection,
    bulk: Arc<Pipeline>,
    outbox: Arc<Queue>,
    peer: String,
    slots: Arc<Slots>,
) {
    let on_expired = |expired| node.expired(&outbox, expired);
    // Time-sensitive copies popped, and answered by the peer, on this connection (see
    // `forward_analytical`).
    let mut alerts_popped = 0u64;
    let answered = Arc::new(watch::Sender::new(0u64));
    // Analytical copies in the order the outbox gave them; bounded by the window's slots, which
    // are taken before a copy is sent here.
    let (analytical, rx) = mpsc::channel(WINDOW);
    tokio::spawn(forward_analytical(
        node.clone(),
        conn.clone(),
        bulk.clone(),
        outbox.clone(),
        peer.clone(),
        rx,
        answered.subscribe(),
    ));
    loop {
        // The semaphores are never closed.
        let alert_slot = tokio::select! {
            p = slots.alerts.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = conn.closed() => return,
        };
        // Time-sensitive copies are taken whenever an alert slot is free, whatever analytical
        // traffic holds; analytical ones only with a slot of their own.
        let (entry, permit) = tokio::select! {
            biased;
            _ = conn.closed() => return,
            e = outbox.pop_class(true, on_expired) => (e, alert_slot),
            bulk_slot = slots.bulk.clone().acquire_owned() => {
                let bulk_slot = bulk_slot.expect("semaphore never closed");
                let e = tokio::select! {
                    e = outbox.pop(on_expired) => e,
                    _ = conn.closed() => return,
                };
                if e.precedence.is_time_sensitive() {
                    (e, alert_slot)
                } else {
                    (e, bulk_slot)
                }
            }
        };
        if !entry.precedence.is_time_sensitive() {
            let next = Analytical {
                entry,
                permit,
                alerts_before: alerts_popped,
            };
            if let Err(mpsc::error::SendError(next)) = analytical.send(next).await {
                outbox.requeue(next.entry);
                return;
            }
            continue;
        }
        alerts_popped += 1;
        let (node, conn, outbox, peer) = (node.clone(), conn.clone(), outbox.clone(), peer.clone());
        let answered = answered.clone();
        tokio::spawn(async move {
            let signed = with_hop(&node, &entry);
            let result = session::submit(&conn, signed, stream_priority(entry.precedence)).await;
            settle(&node, &outbox, &peer, entry, result);
            answered.send_modify(|n| *n += 1);
            drop(permit);
        });
    }
}

/// An analytical copy on its way to the pipeline.
struct Analytical {
    entry: Entry<Item>,
    /// Its slot in the link's window.
    permit: OwnedSemaphorePermit,
    /// How many time-sensitive copies the outbox gave before this one.
    alerts_before: u64,
}

/// Forwards analytical copies through the pipeline in the order the outbox gave them, many in
/// flight at once.
///
/// Two rules keep the outbox's precedence order on the wire and at the peer. A copy waits
/// until the peer has answered as many alerts as were popped before it, so those alerts are
/// stored at the peer before the records queued behind them arrive. This holds the analytical
/// flow for about one round trip per burst of alerts, never longer: alerts popped later do not
/// hold it. And each copy takes its place in the pipeline (its window bytes, then the writer's
/// channel, both first come, first served) before the next one is considered, so the order in
/// which the runtime happens to run tasks cannot reorder them.
async fn forward_analytical(
    node: Arc<Node>,
    conn: Connection,
    bulk: Arc<Pipeline>,
    outbox: Arc<Queue>,
    peer: String,
    mut rx: mpsc::Receiver<Analytical>,
    mut answered: watch::Receiver<u64>,
) {
    while let Some(Analytical {
        entry,
        permit,
        alerts_before,
    }) = rx.recv().await
    {
        let alerts_answered = tokio::select! {
            r = answered.wait_for(|n| *n >= alerts_before) => r.is_ok(),
            _ = conn.closed() => false,
        };
        if !alerts_answered {
            outbox.requeue(entry);
            break;
        }
        let signed = with_hop(&node, &entry);
        let bulk = bulk.clone();
        let mut submit = Box::pin(async move { bulk.submit(signed).await });
        // Poll once here: the submission is handed over or waits in line, in this order.
        let first = std::future::poll_fn(|cx| Poll::Ready(submit.as_mut().poll(cx))).await;
        let (node, outbox, peer) = (node.clone(), outbox.clone(), peer.clone());
        tokio::spawn(async move {
            let result = match first {
                Poll::Ready(r) => r,
                Poll::Pending => submit.await,
            };
            settle(&node, &outbox, &peer, entry, result);
            drop(permit);
        });
    }
    // The connection is gone: what was waiting here goes back to the outbox.
    rx.close();
    while let Ok(next) = rx.try_recv() {
        outbox.requeue(next.entry);
    }
}

/// The copy to forward: the originator's envelope with this node's hop record appended.
fn with_hop(node: &Node, entry: &Entry<Item>) -> pb::SignedEnvelope {
    let mut signed = (*entry.item.signed).clone();
    signed
        .hops
        .push(node.hop_record(entry.item.received_at, Some(SystemTime::now())));
    signed
}

/// Settles a forward by the peer's answer.
fn settle(
    node: &Arc<Node>,
    outbox: &Queue,
    peer: &str,
    entry: Entry<Item>,
    result: Result<pb::Accepted, SubmitError>,
) {
    let id = entry.item.id;
    match result {
        Ok(_) => node.finished(
            &entry.item,
            Event::Forwarded {
                id,
                peer: peer.to_owned(),
            },
        ),
        // The peer is busy: try again when it says, without counting it against the message.
        Err(SubmitError::Refused {
            code: RefusalCode::QueueFull | RefusalCode::ShuttingDown,
            retry_after,
            ..
        }) => {
            let wait = retry_after.unwrap_or(Duration::from_millis(500));
            outbox.retry_at(entry, SystemTime::now() + wait);
        }
        Err(SubmitError::Refused { code, reason, .. }) => {
            node.forward_refused(outbox, &entry.item, code, reason)
        }
        Err(e) => {
            tracing::debug!(%id, peer, error = %e, "forward failed; requeued");
            outbox.requeue(entry);
        }
    }
}

/// Dials a peer and checks that its certificate names exactly the node the peer table expects.
async fn connect(
    node: &Arc<Node>,
    endpoint: &Endpoint,
    peer: &Peer,
) -> Result<Connection, ConnectError> {
    let config = tls::quic_client_config(
        node.tls
            .client_config()
            .map_err(|e| ConnectError::Handshake(e.to_string()))?,
    )
    .map_err(|e| ConnectError::Handshake(e.to_string()))?;
    let hello = pb::Hello {
        protocol_version: crate::wire::PROTOCOL_VERSION,
        role: pb::Role::Node as i32,
        subscribe: false,
        unit: String::new(),
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
    let cert = identity::from_certificate(&chain[0], &node.config.trust_domain)
        .map_err(|e| ConnectError::WrongPeer(e.to_string()))?;
    let id = &cert.identity;
    if id.role != Role::Node || id.agency != peer.agency || id.name != peer.node {
        conn.close(0u32.into(), b"unexpected peer identity");
        return Err(ConnectError::WrongPeer(format!(
            "{} presented {id}, the peer table expects {}/node/{}",
            peer.address, peer.agency, peer.node
        )));
    }
    // The peer submits to us on this connection too.
    tokio::spawn(super::server::serve_streams(
        node.clone(),
        conn.clone(),
        Arc::new(cert),
        true,
    ));
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

/// Up to ±25 % of the delay, so that many nodes do not retry in step.
fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    // Without randomness the delay is simply not jittered.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    let frac = f64::from(u16::from_be_bytes(b)) / f64::from(u16::MAX); // 0..=1
    d.mul_f64(0.75 + 0.5 * frac)
}
