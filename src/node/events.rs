//! Lifecycle events: the one place every message event in the node passes through.
//!
//! Every change of a copy's fate is recorded here by the ledger (`node::ledger`), and connection
//! and link changes by the server and links, and nothing else logs under target `enlace::event`,
//! so the delivery log, metrics and (later) the tamper-evident log hang off a single hook. Today an event becomes a structured `tracing` record (target
//! `enlace::event`) and is offered to in-process observers (tests, the demo) on a bounded
//! broadcast channel. Payload content is never logged: only ids, identities and reasons.

use std::net::SocketAddr;
use std::time::SystemTime;

use tokio::sync::broadcast;

use crate::message::{MessageId, Precedence};
use crate::wire::pb::RefusalCode;

/// Something that happened to a message or a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A connection was authorized.
    Connected { remote: SocketAddr, who: String },
    /// A connection was refused before it was authorized.
    ConnectionRefused {
        remote: SocketAddr,
        who: Option<String>,
        reason: String,
    },
    /// The node took responsibility for a message.
    Accepted {
        id: MessageId,
        from: String,
        precedence: Precedence,
        destinations: usize,
    },
    /// A message (or a frame that may have been one) was refused.
    Refused {
        id: Option<MessageId>,
        from: String,
        code: RefusalCode,
        reason: String,
    },
    /// A peer node accepted a forwarded copy.
    Forwarded { id: MessageId, peer: String },
    /// A peer node refused a forwarded copy; it will not be retried.
    ForwardRefused {
        id: MessageId,
        peer: String,
        code: RefusalCode,
        reason: String,
    },
    /// A copy was taken from its queue for an attempt (to a client or a peer).
    Dispatched {
        id: MessageId,
        queue: String,
        attempt: u32,
    },
    /// A copy went back to the head of its lane without an attempt counted (its connection went
    /// away before an answer).
    Returned {
        id: MessageId,
        queue: String,
        reason: String,
    },
    /// A copy waits until `until` because the peer was busy (no attempt counted).
    Deferred {
        id: MessageId,
        queue: String,
        until: SystemTime,
    },
    /// An attempt failed; the copy is tried again at `at`.
    Retrying {
        id: MessageId,
        queue: String,
        attempts: u32,
        at: SystemTime,
        reason: String,
    },
    /// A stored copy was removed without being delivered.
    Purged {
        id: Option<MessageId>,
        queue: String,
        reason: String,
    },
    /// A copy was handed to a client.
    Delivered {
        id: MessageId,
        to: String,
        attempt: u32,
    },
    /// A client acknowledged a copy.
    Acknowledged { id: MessageId, by: String },
    /// A copy failed too many times and was moved to its queue's dead letters.
    DeadLettered {
        id: MessageId,
        queue: String,
        reason: String,
    },
    /// An operator put a dead-lettered copy back in its queue.
    Redriven {
        id: MessageId,
        queue: String,
        by: String,
    },
    /// A copy expired while waiting and was removed.
    Expired { id: MessageId, queue: String },
    /// A peer link changed state: `connecting`, `up` (detail: address and which node dialed),
    /// `down` (detail: the reason), `backoff` (detail: the next delay), or `duplicate-closed` (a
    /// second connection to the peer was closed; the link is unchanged). See `node::links`.
    Link {
        peer: String,
        state: &'static str,
        detail: String,
    },
}

/// How many events an observer may fall behind before it misses some (observers only: the
/// tracing record is always written).
const OBSERVER_CAPACITY: usize = 4096;

/// The node's event hook.
#[derive(Debug, Clone)]
pub struct Events {
    node: String,
    tx: broadcast::Sender<Event>,
}

impl Events {
    pub(crate) fn new(node: &str) -> Events {
        Events {
            node: node.to_owned(),
            tx: broadcast::channel(OBSERVER_CAPACITY).0,
        }
    }

    /// Observes events from now on. A slow observer misses events (it gets `Lagged`).
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    /// Records an event.
    pub(crate) fn record(&self, e: Event) {
        let node = self.node.as_str();
        match &e {
            Event::Connected { remote, who } => {
                tracing::info!(target: "enlace::event", node, event = "connected", %remote, %who)
            }
            Event::ConnectionRefused {
                remote,
                who,
                reason,
            } => tracing::warn!(
                target: "enlace::event", node, event = "connection_refused", %remote,
                who = who.as_deref().unwrap_or("-"), %reason
            ),
            Event::Accepted {
                id,
                from,
                precedence,
                destinations,
            } => tracing::info!(
                target: "enlace::event", node, event = "accepted", %id, %from,
                %precedence, destinations
            ),
            Event::Refused {
                id,
                from,
                code,
                reason,
            } => tracing::warn!(
                target: "enlace::event", node, event = "refused",
                id = id.map(|i| i.to_string()).unwrap_or_else(|| "-".into()), %from,
                code = code.as_str_name(), %reason
            ),
            Event::Forwarded { id, peer } => {
                tracing::info!(target: "enlace::event", node, event = "forwarded", %id, %peer)
            }
            Event::ForwardRefused {
                id,
                peer,
                code,
                reason,
            } => tracing::warn!(
                target: "enlace::event", node, event = "forward_refused", %id, %peer,
                code = code.as_str_name(), %reason
            ),
            Event::Delivered { id, to, attempt } => tracing::info!(
                target: "enlace::event", node, event = "delivered", %id, %to, attempt
            ),
            Event::Acknowledged { id, by } => {
                tracing::info!(target: "enlace::event", node, event = "acknowledged", %id, %by)
            }
            Event::DeadLettered { id, queue, reason } => tracing::warn!(
                target: "enlace::event", node, event = "dead_lettered", %id, %queue, %reason
            ),
            Event::Redriven { id, queue, by } => tracing::info!(
                target: "enlace::event", node, event = "redriven", %id, %queue, %by
            ),
            Event::Expired { id, queue } => {
                tracing::info!(target: "enlace::event", node, event = "expired", %id, %queue)
            }
            Event::Dispatched { id, queue, attempt } => tracing::debug!(
                target: "enlace::event", node, event = "dispatched", %id, %queue, attempt
            ),
            Event::Returned { id, queue, reason } => tracing::debug!(
                target: "enlace::event", node, event = "returned", %id, %queue, %reason
            ),
            Event::Deferred { id, queue, until } => tracing::debug!(
                target: "enlace::event", node, event = "deferred", %id, %queue,
                until = %crate::message::rfc3339(*until)
            ),
            Event::Retrying {
                id,
                queue,
                attempts,
                at,
                reason,
            } => tracing::debug!(
                target: "enlace::event", node, event = "retrying", %id, %queue, attempts,
                at = %crate::message::rfc3339(*at), %reason
            ),
            Event::Purged { id, queue, reason } => tracing::warn!(
                target: "enlace::event", node, event = "purged",
                id = id.map(|i| i.to_string()).unwrap_or_else(|| "-".into()), %queue, %reason
            ),
            Event::Link {
                peer,
                state,
                detail,
            } => tracing::info!(
                target: "enlace::event", node, event = "link", %peer, state, %detail
            ),
        }
        // No observers is normal.
        let _ = self.tx.send(e);
    }
}
