//! Links to peer nodes: dial, prove the peer is who the peer table says, forward the outbox.
//!
//! One task per configured peer. It connects at start and after every loss (with jittered
//! exponential backoff after failures, cut short when the peer connects to us), checks the peer's certificate identity
//! against the peer table, and forwards up to [`WINDOW`] messages at a time: time-sensitive ones
//! each on its own stream, analytical ones pipelined on one long-lived stream. The relay forwards the originator's exact envelope bytes and signature, appending only
//! its hop record. A copy the peer refuses for good is dropped with an event; anything else
//! goes back: a lost connection puts the copy at the head of its lane, and QUEUE_FULL or
//! SHUTTING_DOWN parks it until the peer's retry-after.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use quinn::{Connection, Endpoint};
use rustls_pki_types::CertificateDer;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Node;
use super::events::Event;
use super::queue::{Item, Queue};
use crate::client::stream_priority;
use crate::config::Peer;
use crate::identity::{self, Role};
use crate::lanes::Entry;
use crate::message::{Precedence, timestamp};
use crate::pipeline::{DEFAULT_WINDOW_BYTES, Pipeline};
use crate::session::{self, ConnectError, SubmitError};
use crate::tls;
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

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

pub(super) async fn run(node: Arc<Node>, endpoint: Endpoint, peer: Peer) {
    let outbox = node.outboxes[&peer.node].clone();
    let slots = Slots {
        alerts: Arc::new(Semaphore::new(ALERT_WINDOW)),
        bulk: Arc::new(Semaphore::new(WINDOW)),
    };
    let mut backoff = BACKOFF_MIN;
    // Only state changes are recorded: a peer that stays down is not logged at every retry.
    let mut was_down = false;
    let wake = node.link_wake[&peer.node].clone();
    loop {
        // A connection from the peer means it is up: abandon a dial that may be waiting for a
        // node that was not listening yet, and dial again at once.
        let dialed = tokio::select! {
            r = connect(&node, &endpoint, &peer) => r,
            _ = wake.notified() => continue,
        };
        let conn = match dialed {
            Ok(c) => {
                backoff = BACKOFF_MIN;
                node.events.record(Event::Link {
                    peer: peer.node.clone(),
                    state: "up",
                    detail: peer.address.to_string(),
                });
                c
            }
            Err(e) => {
                if !was_down {
                    node.events.record(Event::Link {
                        peer: peer.node.clone(),
                        state: "down",
                        detail: e.to_string(),
                    });
                    was_down = true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(jitter(backoff)) => {}
                    _ = wake.notified() => backoff = BACKOFF_MIN,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let bulk = Arc::new(Pipeline::new(
            conn.clone(),
            DEFAULT_WINDOW_BYTES,
            stream_priority(Precedence::Routine),
            None,
        ));
        forward_while_up(&node, &conn, &bulk, &outbox, &peer, &slots).await;
        was_down = true;
        node.events.record(Event::Link {
            peer: peer.node.clone(),
            state: "down",
            detail: conn
                .close_reason()
                .map(|r| r.to_string())
                .unwrap_or_else(|| "closed".into()),
        });
    }
}

async fn forward_while_up(
    node: &Arc<Node>,
    conn: &Connection,
    bulk: &Arc<Pipeline>,
    outbox: &Arc<Queue>,
    peer: &Peer,
    slots: &Slots,
) {
    let on_expired = |expired| node.expired(outbox, expired);
    let forward = |entry: Entry<Item>, permit: OwnedSemaphorePermit| {
        let (node, conn, outbox, peer) = (
            node.clone(),
            conn.clone(),
            outbox.clone(),
            peer.node.clone(),
        );
        let bulk = bulk.clone();
        tokio::spawn(async move {
            forward_one(&node, &conn, &bulk, &outbox, &peer, entry).await;
            drop(permit);
        });
    };
    loop {
        // The semaphores are never closed.
        let alert_slot = tokio::select! {
            p = slots.alerts.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = conn.closed() => return,
        };
        // Time-sensitive copies are taken whenever an alert slot is free, whatever analytical
        // traffic holds; analytical ones only with a slot of their own.
        tokio::select! {
            biased;
            _ = conn.closed() => return,
            e = outbox.pop_class(true, on_expired) => forward(e, alert_slot),
            bulk_slot = slots.bulk.clone().acquire_owned() => {
                let bulk_slot = bulk_slot.expect("semaphore never closed");
                let e = tokio::select! {
                    e = outbox.pop(on_expired) => e,
                    _ = conn.closed() => return,
                };
                if e.precedence.is_time_sensitive() {
                    forward(e, alert_slot);
                } else {
                    forward(e, bulk_slot);
                }
            }
        }
    }
}

async fn forward_one(
    node: &Arc<Node>,
    conn: &Connection,
    bulk: &Pipeline,
    outbox: &Queue,
    peer: &str,
    entry: Entry<Item>,
) {
    let id = entry.item.id;
    let mut signed = (*entry.item.signed).clone();
    signed.hops.push(pb::HopRecord {
        node: node.config.name.clone(),
        agency: node.config.agency.to_string(),
        received_at: Some(timestamp(entry.item.received_at)),
        forwarded_at: Some(timestamp(SystemTime::now())),
    });
    let result = if entry.precedence.is_time_sensitive() {
        session::submit(conn, signed, stream_priority(entry.precedence)).await
    } else {
        bulk.submit(signed).await
    };
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
    node: &Node,
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
