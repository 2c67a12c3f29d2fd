//! Lifecycle events: the one place every message event in the node passes through.
//!
//! Every change of a copy's fate is recorded here by the ledger (`node::ledger`), and connection
//! and link changes by the server and links, and nothing else logs under target `enlace::event`,
//! so the delivery log, metrics and (later) the tamper-evident log hang off a single hook. Today
//! an event becomes a structured `tracing` record (target `enlace::event`) and is offered to
//! in-process observers (tests, the demo) on a bounded broadcast channel. Payload content is
//! never logged: only ids, identities and reasons.

use std::net::SocketAddr;
use std::time::SystemTime;

use std::sync::Arc;

use tokio::sync::broadcast;

use super::audit::Log;
use crate::audit::{self, hex};
use crate::merkle::Hash;
use crate::message::Message;

use crate::message::{MessageId, Precedence};
use crate::wire::pb::RefusalCode;

/// Longest reason an event keeps, in bytes; longer ones are cut and marked.
pub const REASON_LIMIT: usize = 512;

/// Something that happened to a message or a connection.
///
/// Every event is also written as a `tracing` record under target `enlace::event`; observers
/// get them from [`RunningNode::events`](crate::node::RunningNode::events). The fields carry ids,
/// identities and reasons only, never payload content. Identities are written
/// `<agency>/<role>/<name>`, e.g. `dea/client/duty-desk` or `pgr/node/pgr-1`. Queues are named as
/// the node's store names them: `mailbox:<agency>` (the agency inbox), `mailbox:<agency>/<unit>`,
/// `outbox:<peer node>`, or `orphans` (dead letters whose queue no longer exists).
///
/// ```no_run
/// # async fn example(node: enlace::node::RunningNode) {
/// use enlace::node::Event;
/// use tokio::sync::broadcast::error::RecvError;
///
/// let mut events = node.events();
/// loop {
///     match events.recv().await {
///         Ok(Event::DeadLettered { id, queue, reason }) => {
///             eprintln!("{id} dead-lettered in {queue}: {reason}");
///         }
///         Ok(_) => {}
///         Err(RecvError::Lagged(missed)) => eprintln!("fell behind: {missed} events missed"),
///         Err(RecvError::Closed) => break, // the node stopped
///     }
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A connection was authorized.
    Connected {
        /// The remote UDP address of the connection.
        remote: SocketAddr,
        /// The identity its certificate names, e.g. `dea/client/duty-desk`.
        who: String,
        /// The SHA-256 of its certificate, hex.
        certificate: String,
    },
    /// A connection was refused before it was authorized.
    ConnectionRefused {
        /// The remote UDP address of the connection.
        remote: SocketAddr,
        /// The identity its certificate names; `None` when the connection was refused before
        /// one could be read (a failed TLS handshake, a certificate without a valid identity).
        who: Option<String>,
        /// The SHA-256 of its certificate, hex, when one was verified.
        certificate: Option<String>,
        /// Why, in words; the same text is sent to the other side as the close reason.
        reason: String,
    },
    /// The node took responsibility for a message: it is durable and queued.
    Accepted {
        /// The message id.
        id: MessageId,
        /// Who handed it over: a client's or peer node's identity, or this node's own
        /// (`<agency>/node/<name>`) for the receipts and reports it writes itself.
        from: String,
        /// The message's precedence.
        precedence: Precedence,
        /// How many destinations it was routed to: local mailboxes plus peer outboxes.
        destinations: usize,
    },
    /// An authorized connection ended: closed by either side, timed out, or closed by the node
    /// (revoked certificate, too many bad frames).
    Disconnected {
        /// The other side's address.
        remote: SocketAddr,
        /// Who it was.
        who: String,
        /// Why it ended.
        reason: String,
    },
    /// The node reloaded part of its configuration (`what`: `tls` for its certificate, key,
    /// trust bundle and CRLs).
    Reloaded {
        /// What was reloaded.
        what: String,
        /// Why, and what changed.
        detail: String,
    },
    /// A reload of part of the configuration was refused (`what`: `policy`): the file in force
    /// before stays.
    ReloadRefused {
        /// What was to be reloaded.
        what: String,
        /// Why it was refused.
        reason: String,
    },
    /// A message the node had already taken arrived again with the same bytes (a client's
    /// resubmission, a peer's resend over a new link): answered `Accepted`, not queued again.
    Duplicate {
        /// The message id.
        id: MessageId,
        /// Who handed it over, as in [`Event::Accepted`].
        from: String,
    },
    /// A message (or a frame that may have been one) was refused.
    Refused {
        /// The message id; `None` when the frame did not yield a valid one.
        id: Option<MessageId>,
        /// Who handed it over, as in [`Event::Accepted`].
        from: String,
        /// The refusal code sent back to the submitter.
        code: RefusalCode,
        /// The refusal's reason, as sent back.
        reason: String,
    },
    /// A peer node accepted a forwarded copy.
    Forwarded {
        /// The message id.
        id: MessageId,
        /// The peer node's name, e.g. `pgr-1`.
        peer: String,
    },
    /// A peer node refused a forwarded copy; it will not be retried.
    ForwardRefused {
        /// The message id.
        id: MessageId,
        /// The peer node's name.
        peer: String,
        /// The peer's refusal code (never a busy one: those defer the copy instead).
        code: RefusalCode,
        /// The peer's reason, as it gave it.
        reason: String,
    },
    /// A copy was taken from its queue for an attempt (to a client or a peer).
    Dispatched {
        /// The message id.
        id: MessageId,
        /// The queue it was taken from.
        queue: String,
        /// This attempt's number: 1 for the first.
        attempt: u32,
    },
    /// A copy went back to the head of its lane without an attempt counted (its connection went
    /// away before an answer).
    Returned {
        /// The message id.
        id: MessageId,
        /// The queue it went back to.
        queue: String,
        /// Why: the client or peer whose connection went away, or `its attempt was abandoned`.
        reason: String,
    },
    /// A copy waits until `until` because the peer was busy (no attempt counted).
    Deferred {
        /// The message id.
        id: MessageId,
        /// The queue it waits in.
        queue: String,
        /// When it may be tried again: the peer's retry-after, or a short default wait when the
        /// peer named none.
        until: SystemTime,
    },
    /// An attempt failed; the copy is tried again at `at`.
    Retrying {
        /// The message id.
        id: MessageId,
        /// The queue it waits in.
        queue: String,
        /// Failed attempts so far, this one included.
        attempts: u32,
        /// When the next attempt is due (exponential backoff).
        at: SystemTime,
        /// Why this attempt failed, e.g. `did not acknowledge in time`.
        reason: String,
    },
    /// A copy was removed without being delivered: a stored copy that does not decode, or one
    /// whose originator's retention period (`retain_until`) ended (from its queue, and its
    /// originator is told it was not delivered; or from the dead letters).
    Purged {
        /// The message id; `None` when the stored record does not name a valid one.
        id: Option<MessageId>,
        /// The queue the stored copy belonged to.
        queue: String,
        /// Why, e.g. the stored copy does not decode.
        reason: String,
    },
    /// A copy was handed to a client.
    Delivered {
        /// The message id.
        id: MessageId,
        /// The identity of the client it was written to.
        to: String,
        /// This attempt's number: 1 for the first delivery.
        attempt: u32,
    },
    /// A client acknowledged a copy.
    Acknowledged {
        /// The message id.
        id: MessageId,
        /// The identity of the client that acknowledged it.
        by: String,
    },
    /// A copy failed too many times and was moved to its queue's dead letters.
    DeadLettered {
        /// The message id.
        id: MessageId,
        /// The queue whose dead letters now hold it (`orphans` when its own queue no longer
        /// exists).
        queue: String,
        /// Why, e.g. `10 attempts failed; last: ...`; an operator sees the same reason.
        reason: String,
    },
    /// An operator put a dead-lettered copy back in its queue.
    Redriven {
        /// The message id.
        id: MessageId,
        /// The queue it went back to.
        queue: String,
        /// The identity of the operator who asked, e.g. `dea/operator/ops`.
        by: String,
    },
    /// A copy expired while waiting and was removed.
    Expired {
        /// The message id.
        id: MessageId,
        /// The queue it waited in.
        queue: String,
    },

    /// The node signed a checkpoint of its delivery log (see [`crate::audit`]).
    Checkpoint {
        /// The log's size (records) at the checkpoint.
        size: u64,
    },
    /// A peer cosigned this node's checkpoint, or this node cosigned a peer's, as a witness.
    Witnessed {
        /// The peer node's name.
        peer: String,
        /// Whose checkpoint: `own` (cosigned by the peer) or `peer` (cosigned by this node).
        whose: &'static str,
        /// The checkpoint's size.
        size: u64,
    },
    /// A peer's checkpoint was refused: inconsistent with one it presented before (its log was
    /// rewritten), or forged. Or the peer refused this node's checkpoint.
    WitnessRefused {
        /// The peer node's name.
        peer: String,
        /// Why.
        reason: String,
    },
    /// Someone read the delivery log: an operator's query, follow or copy of its files, or a
    /// peer node's trace (a disclosure of this node's records of one message).
    LogRead {
        /// Who: the operator's or peer node's identity.
        by: String,
        /// What was asked, e.g. `query event=refused` or `trace 01a2...`.
        what: String,
    },
    /// Delivery-log records past their retention period were removed, behind a checkpoint.
    LogPruned {
        /// Which records, and why.
        detail: String,
    },

    /// A peer link changed state: `connecting`, `up` (detail: address and which node dialed),
    /// `down` (detail: the reason), `backoff` (detail: the next delay), or `duplicate-closed` (a
    /// second connection to the peer was closed; the link is unchanged). See
    /// [`LinkStatus`](crate::node::LinkStatus).
    Link {
        /// The peer node's name.
        peer: String,
        /// The new state, as above.
        state: &'static str,
        /// What goes with the state, as above.
        detail: String,
    },
}

/// How many events an observer may fall behind before it misses some (observers only: the
/// tracing record is always written).
const OBSERVER_CAPACITY: usize = 4096;

/// The node's event hook.
#[derive(Clone)]
pub struct Events {
    node: String,
    tx: broadcast::Sender<Event>,
    /// The delivery log, if the node keeps one (every node does; ledger tests do not).
    log: Option<Arc<Log>>,
    /// Counts every event for the metrics endpoint (see `node::metrics`).
    pub(super) metrics: Option<std::sync::Arc<super::metrics::Metrics>>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").field("node", &self.node).finish()
    }
}

impl Event {
    /// The message the event names, if any.
    fn message_id(&self) -> Option<MessageId> {
        match self {
            Event::Accepted { id, .. }
            | Event::Duplicate { id, .. }
            | Event::Forwarded { id, .. }
            | Event::ForwardRefused { id, .. }
            | Event::Dispatched { id, .. }
            | Event::Returned { id, .. }
            | Event::Deferred { id, .. }
            | Event::Retrying { id, .. }
            | Event::Delivered { id, .. }
            | Event::Acknowledged { id, .. }
            | Event::DeadLettered { id, .. }
            | Event::Redriven { id, .. }
            | Event::Expired { id, .. } => Some(*id),
            Event::Refused { id, .. } | Event::Purged { id, .. } => *id,
            Event::Connected { .. }
            | Event::ConnectionRefused { .. }
            | Event::Disconnected { .. }
            | Event::Reloaded { .. }
            | Event::ReloadRefused { .. }
            | Event::Link { .. }
            | Event::Checkpoint { .. }
            | Event::Witnessed { .. }
            | Event::WitnessRefused { .. }
            | Event::LogPruned { .. }
            | Event::LogRead { .. } => None,
        }
    }

    fn cut_reasons(&mut self) {
        let reason = match self {
            Event::ConnectionRefused { reason, .. }
            | Event::Disconnected { reason, .. }
            | Event::Refused { reason, .. }
            | Event::ForwardRefused { reason, .. }
            | Event::DeadLettered { reason, .. }
            | Event::Returned { reason, .. }
            | Event::Purged { reason, .. }
            | Event::WitnessRefused { reason, .. } => reason,
            _ => return,
        };
        if reason.len() > REASON_LIMIT {
            let cut = (0..=REASON_LIMIT)
                .rev()
                .find(|&i| reason.is_char_boundary(i))
                .unwrap_or(0);
            let total = reason.len();
            reason.truncate(cut);
            reason.push_str(&format!("… ({total} bytes)"));
        }
    }
}

impl Events {
    pub(crate) fn new(node: &str) -> Events {
        Events {
            node: node.to_owned(),
            tx: broadcast::channel(OBSERVER_CAPACITY).0,
            log: None,
            metrics: None,
        }
    }

    /// Events that are also written to the delivery log.
    pub(crate) fn with_log(node: &str, log: Arc<Log>) -> Events {
        Events {
            log: Some(log),
            ..Events::new(node)
        }
    }

    /// The delivery log, if there is one.
    pub(crate) fn log(&self) -> Option<&Arc<Log>> {
        self.log.as_ref()
    }

    /// Records an event about `message` (its metadata goes into the delivery log).
    pub(crate) fn record_about(&self, message: &Arc<Message>, e: Event) {
        self.record_with(e, Some(message));
    }

    /// Observes events from now on. A slow observer misses events (it gets `Lagged`).
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    /// Records an event. Reasons longer than [`REASON_LIMIT`] bytes are cut first: they may
    /// quote what a sender sent.
    pub(crate) fn record(&self, e: Event) {
        self.record_with(e, None);
    }

    fn record_with(&self, mut e: Event, message: Option<&Arc<Message>>) {
        e.cut_reasons();
        let node = self.node.as_str();
        match &e {
            Event::Connected { remote, who, .. } => {
                tracing::info!(target: "enlace::event", node, event = "connected", %remote, %who)
            }
            Event::ConnectionRefused {
                remote,
                who,
                reason,
                ..
            } => tracing::warn!(
                target: "enlace::event", node, event = "connection_refused", %remote,
                who = who.as_deref().unwrap_or("-"), %reason
            ),
            Event::Accepted {
                id,
                from,
                precedence,
                destinations,
            } => tracing::debug!(
                target: "enlace::event", node, event = "accepted", %id, %from,
                %precedence, destinations
            ),
            Event::Disconnected {
                remote,
                who,
                reason,
            } => tracing::info!(
                target: "enlace::event", node, event = "disconnected", %remote, %who,
                %reason
            ),
            Event::Reloaded { what, detail } => {
                tracing::info!(target: "enlace::event", node, event = "reloaded", %what, %detail)
            }
            Event::ReloadRefused { what, reason } => {
                tracing::error!(target: "enlace::event", node, event = "reload_refused", %what, %reason)
            }
            Event::Duplicate { id, from } => {
                tracing::info!(target: "enlace::event", node, event = "duplicate", %id, %from)
            }
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
                tracing::debug!(target: "enlace::event", node, event = "forwarded", %id, %peer)
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
            Event::Delivered { id, to, attempt } => tracing::debug!(
                target: "enlace::event", node, event = "delivered", %id, %to, attempt
            ),
            Event::Acknowledged { id, by } => {
                tracing::debug!(target: "enlace::event", node, event = "acknowledged", %id, %by)
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
            Event::Checkpoint { size } => {
                tracing::debug!(target: "enlace::event", node, event = "checkpoint", size)
            }
            Event::Witnessed { peer, whose, size } => tracing::debug!(
                target: "enlace::event", node, event = "witnessed", %peer, whose, size
            ),
            Event::WitnessRefused { peer, reason } => tracing::error!(
                target: "enlace::event", node, event = "witness_refused", %peer, %reason
            ),
            Event::LogPruned { detail } => {
                tracing::info!(target: "enlace::event", node, event = "log_pruned", %detail)
            }
            Event::LogRead { by, what } => {
                tracing::info!(target: "enlace::event", node, event = "log_read", %by, %what)
            }
        }
        if let Some(m) = &self.metrics {
            m.observe(&e);
        }
        match &self.log {
            Some(log) => {
                // No observers is normal.
                if self.tx.receiver_count() > 0 {
                    let _ = self.tx.send(e.clone());
                }
                if !matches!(e, Event::Dispatched { .. } | Event::Checkpoint { .. }) {
                    let about = message.map(|m| About::of(&e, m));
                    log.write(e, about);
                }
            }
            None => {
                let _ = self.tx.send(e);
            }
        }
    }
}

/// A value written into a record through its `Display`, without an allocation.
struct Shown<'a>(&'a dyn std::fmt::Display);

/// Addressees, written as a list of strings without an allocation each.
struct Addressees<'a>(&'a [crate::message::Addressee]);

/// A record as it is written: [`audit::Record`]'s fields in its order, borrowed from the
/// event and the message (written straight into the writer's batch by [`Out::write`]).
struct Out<'a> {
    seq: u64,
    prev: Option<&'a Hash>,
    at: SystemTime,
    node: &'a str,
    event: &'a str,
    actor: &'a str,
    id: Option<Shown<'a>>,
    originator: Option<Shown<'a>>,
    addressees: Option<Addressees<'a>>,
    payload_type: Option<&'a str>,
    precedence: Option<&'a str>,
    status: Option<&'a str>,
    bytes: Option<u64>,
    sha256: Option<&'a str>,
    refers_to: Option<String>,
    peer: Option<&'a str>,
    queue: Option<&'a str>,
    attempt: Option<u32>,
    code: Option<&'a str>,
    reason: Option<&'a str>,
    remote: Option<Shown<'a>>,
    certificate: Option<&'a str>,
    detail: Option<std::borrow::Cow<'a, str>>,
}

/// The message a record is about, as the log's writer gets it: the message itself until its
/// part of the record (see [`Message`]'s `audit`) has been written once, then only that part, so
/// the writer neither holds the message nor frees it.
pub(crate) enum About {
    Message(Arc<Message>),
    Known { id: MessageId, meta: Arc<[u8]> },
}

impl About {
    /// What an event of message `m` is about: the part already written when the event is about
    /// `m` itself (it may name another message, as a receipt's event names the receipt).
    fn of(e: &Event, m: &Arc<Message>) -> About {
        match m.audit.get() {
            Some(meta) if e.message_id() == Some(m.id) => About::Known {
                id: m.id,
                meta: meta.clone(),
            },
            _ => About::Message(m.clone()),
        }
    }
}

/// Where a record goes and what it continues.
pub(crate) struct Place<'a> {
    /// This node's name, and its identity (`<agency>/node/<name>`).
    pub node: &'a str,
    pub me: &'a str,
    /// The record's position, and the previous record's leaf hash (`None` for the first).
    pub seq: u64,
    pub prev: Option<&'a Hash>,
}

/// Writes the delivery-log record of an event (an [`audit::Record`] line, without its newline) to
/// `buf`: the event's fields, and the message's metadata when it is about one.
pub(crate) fn write_record(
    buf: &mut Vec<u8>,
    place: &Place<'_>,
    at: SystemTime,
    e: &Event,
    about: Option<&About>,
) {
    use std::borrow::Cow;
    let (m, known) = match about {
        Some(About::Message(m)) => (Some(&**m), None),
        Some(About::Known { id, meta }) => (None, Some((*id, &**meta))),
        None => (None, None),
    };
    let mut r = Out {
        seq: place.seq,
        prev: place.prev,
        at,
        node: place.node,
        event: "",
        actor: place.me,
        id: None,
        originator: m.map(|m| Shown(&m.originator)),
        addressees: m
            .filter(|m| !m.addressees.is_empty())
            .map(|m| Addressees(&m.addressees)),
        payload_type: m.map(|m| m.payload_type.as_str()),
        precedence: m.map(|m| m.precedence.as_str()),
        status: m.map(|m| m.status.as_str()),
        bytes: m.map(|m| m.envelope.len() as u64),
        sha256: None,
        refers_to: None,
        peer: None,
        queue: None,
        attempt: None,
        code: None,
        reason: None,
        remote: None,
        certificate: None,
        detail: None,
    };
    let event: &str;
    let mut actor: &str = place.me;
    match e {
        Event::Connected {
            remote,
            who,
            certificate,
        } => {
            r.remote = Some(Shown(remote));
            r.certificate = Some(certificate);
            (event, actor) = ("connected", who);
        }
        Event::ConnectionRefused {
            remote,
            who,
            certificate,
            reason,
        } => {
            r.remote = Some(Shown(remote));
            r.certificate = certificate.as_deref();
            r.reason = Some(reason);
            (event, actor) = ("connection_refused", who.as_deref().unwrap_or("-"));
        }
        Event::Disconnected {
            remote,
            who,
            reason,
        } => {
            r.remote = Some(Shown(remote));
            r.reason = Some(reason);
            (event, actor) = ("disconnected", who);
        }
        Event::Accepted {
            id: _,
            from,
            destinations,
            ..
        } => {
            r.detail = Some(Cow::Owned(format!("{destinations} destinations; on disk")));
            let peer = from.split('/').nth(1) == Some("node") && from != place.me;
            if peer {
                r.peer = from.rsplit('/').next();
                event = "received";
            } else {
                event = "accepted";
            }
            actor = from;
        }
        Event::Duplicate { id: _, from } => {
            (event, actor) = ("duplicate", from);
        }
        Event::Refused {
            id: _,
            from,
            code,
            reason,
        } => {
            r.code = Some(code.as_str_name());
            r.reason = Some(reason);
            (event, actor) = ("refused", from);
        }
        Event::Reloaded { what, detail } => {
            r.detail = Some(Cow::Owned(format!("{what}: {detail}")));
            event = "reloaded";
        }
        Event::ReloadRefused { what, reason } => {
            r.detail = Some(Cow::Borrowed(what));
            r.reason = Some(reason);
            event = "reload_refused";
        }
        Event::Forwarded { id: _, peer } => {
            r.peer = Some(peer);
            event = "forwarded";
        }
        Event::ForwardRefused {
            id: _,
            peer,
            code,
            reason,
        } => {
            r.peer = Some(peer);
            r.code = Some(code.as_str_name());
            r.reason = Some(reason);
            event = "forward_refused";
        }
        Event::Dispatched {
            id: _,
            queue,
            attempt,
        } => {
            r.queue = Some(queue);
            r.attempt = Some(*attempt);
            event = "dispatched";
        }
        Event::Returned {
            id: _,
            queue,
            reason,
        } => {
            r.queue = Some(queue);
            r.reason = Some(reason);
            event = "returned";
        }
        Event::Deferred {
            id: _,
            queue,
            until,
        } => {
            r.queue = Some(queue);
            r.detail = Some(Cow::Owned(format!("until {}", audit::timestamp(*until))));
            event = "deferred";
        }
        Event::Retrying {
            id: _,
            queue,
            attempts,
            at,
            reason,
        } => {
            r.queue = Some(queue);
            r.attempt = Some(*attempts);
            r.reason = Some(reason);
            r.detail = Some(Cow::Owned(format!(
                "next attempt {}",
                audit::timestamp(*at)
            )));
            event = "retrying";
        }
        Event::Purged {
            id: _,
            queue,
            reason,
        } => {
            r.queue = Some(queue);
            r.reason = Some(reason);
            event = "purged";
        }
        Event::Delivered { id: _, to, attempt } => {
            r.attempt = Some(*attempt);
            (event, actor) = ("delivered", to);
        }
        Event::Acknowledged { id: _, by } => {
            (event, actor) = ("acknowledged", by);
        }
        Event::DeadLettered {
            id: _,
            queue,
            reason,
        } => {
            r.queue = Some(queue);
            r.reason = Some(reason);
            event = "dead_lettered";
        }
        Event::Redriven { id: _, queue, by } => {
            r.queue = Some(queue);
            (event, actor) = ("redriven", by);
        }
        Event::Expired { id: _, queue } => {
            r.queue = Some(queue);
            event = "expired";
        }
        Event::Link {
            peer,
            state,
            detail,
        } => {
            r.peer = Some(peer);
            r.detail = Some(Cow::Owned(format!("{state}: {detail}")));
            event = "link";
        }
        Event::Checkpoint { size } => {
            r.detail = Some(Cow::Owned(format!("size {size}")));
            event = "checkpoint";
        }
        Event::Witnessed { peer, whose, size } => {
            r.peer = Some(peer);
            r.detail = Some(Cow::Owned(format!(
                "{whose} checkpoint of size {size} cosigned"
            )));
            event = "checkpoint_witnessed";
        }
        Event::WitnessRefused { peer, reason } => {
            r.peer = Some(peer);
            r.reason = Some(reason);
            event = "witness_refused";
        }
        Event::LogPruned { detail } => {
            r.detail = Some(Cow::Borrowed(detail));
            event = "pruned";
        }
        Event::LogRead { by, what } => {
            r.detail = Some(Cow::Borrowed(what));
            (event, actor) = ("log_read", by);
        }
    }
    r.event = event;
    r.actor = actor;
    let message_id = e
        .message_id()
        .or(m.map(|m| m.id))
        .or(known.map(|(id, _)| id));
    r.id = message_id.as_ref().map(|i| Shown(i));
    // The message's part is written once per message and kept with it (see `meta` below).
    // Only when that part is to be written.
    let fresh = m.filter(|m| message_id != Some(m.id) || m.audit.get().is_none());
    let digest = fresh.map(|m| hex(m.sha256()));
    r.sha256 = digest.as_deref();
    r.refers_to = fresh.and_then(|m| {
        crate::receipt::Receipt::from_message(m)
            .map(|x| x.message_id)
            .or(m.in_reply_to)
            .map(|id| id.to_string())
    });
    let meta = match known {
        Some((id, meta)) if message_id == Some(id) => Some(meta),
        _ => m.filter(|m| message_id == Some(m.id)).map(|m| {
            &**m.audit.get_or_init(|| {
                let mut b = Vec::new();
                r.write_meta(&mut b);
                b.into()
            })
        }),
    };
    r.write(buf, meta);
}

/// A JSON string, escaped by serde.
fn text(buf: &mut Vec<u8>, v: &str) {
    serde_json::to_writer(&mut *buf, v).expect("a string serializes");
}

/// Whether a string needs no escaping in JSON.
fn is_plain(v: &[u8]) -> bool {
    v.iter()
        .all(|b| b.is_ascii_graphic() && *b != b'"' && *b != b'\\')
}

/// A JSON string that rarely needs escaping, escaped only if it does.
fn plain(buf: &mut Vec<u8>, v: &str) {
    if is_plain(v.as_bytes()) {
        buf.push(b'"');
        buf.extend_from_slice(v.as_bytes());
        buf.push(b'"');
    } else {
        text(buf, v);
    }
}

/// A value shown through its `Display`: written in place, escaped only if it must be.
fn shown(buf: &mut Vec<u8>, v: &dyn std::fmt::Display) {
    use std::io::Write as _;
    let start = buf.len();
    buf.push(b'"');
    let _ = write!(buf, "{v}");
    if is_plain(&buf[start + 1..]) {
        buf.push(b'"');
    } else {
        let owned = String::from_utf8_lossy(&buf[start + 1..]).into_owned();
        buf.truncate(start);
        text(buf, &owned);
    }
}

/// An optional field, left out when absent.
fn opt(buf: &mut Vec<u8>, k: &str, v: Option<&str>, safe: bool) {
    if let Some(v) = v {
        buf.extend_from_slice(b",\"");
        buf.extend_from_slice(k.as_bytes());
        buf.extend_from_slice(b"\":");
        if safe { plain(buf, v) } else { text(buf, v) }
    }
}

impl Out<'_> {
    /// Writes the record as serde would (the same bytes as `serde_json::to_writer` of the
    /// [`audit::Record`], which the tests check), without escaping what cannot need it:
    /// numbers, hex, times, ids, names the node chose. Text from outside (identities,
    /// reasons, details) is escaped by serde. `meta`: the message's part (from `id` to
    /// `refers_to`) as [`Out::write_meta`] wrote it before, if the message has one.
    fn write(&self, buf: &mut Vec<u8>, meta: Option<&[u8]>) {
        use std::io::Write as _;
        buf.extend_from_slice(b"{\"seq\":");
        decimal(buf, self.seq);
        buf.extend_from_slice(b",\"prev\":\"");
        if let Some(p) = self.prev {
            hex_into(buf, p);
        }
        buf.extend_from_slice(b"\",\"time\":\"");
        record_time(buf, self.at);
        buf.push(b'"');
        buf.extend_from_slice(b",\"node\":");
        plain(buf, self.node);
        buf.extend_from_slice(b",\"event\":");
        plain(buf, self.event);
        buf.extend_from_slice(b",\"actor\":");
        text(buf, self.actor);
        match meta {
            Some(m) => buf.extend_from_slice(m),
            None => self.write_meta(buf),
        }
        opt(buf, "peer", self.peer, false);
        opt(buf, "queue", self.queue, false);
        if let Some(a) = self.attempt {
            let _ = write!(buf, ",\"attempt\":{a}");
        }
        opt(buf, "code", self.code, true);
        opt(buf, "reason", self.reason, false);
        if let Some(r) = &self.remote {
            buf.extend_from_slice(b",\"remote\":");
            shown(buf, r.0);
        }
        opt(buf, "certificate", self.certificate, true);
        opt(buf, "detail", self.detail.as_deref(), false);
        buf.push(b'}');
    }

    /// The fields from `id` to `refers_to`: the same for every record of one message.
    fn write_meta(&self, buf: &mut Vec<u8>) {
        use std::io::Write as _;
        if let Some(id) = &self.id {
            buf.extend_from_slice(b",\"id\":");
            shown(buf, id.0);
        }
        if let Some(o) = &self.originator {
            buf.extend_from_slice(b",\"originator\":");
            shown(buf, o.0);
        }
        if let Some(a) = &self.addressees {
            buf.extend_from_slice(b",\"addressees\":[");
            for (i, x) in a.0.iter().enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                shown(buf, x);
            }
            buf.push(b']');
        }
        opt(buf, "payload_type", self.payload_type, false);
        opt(buf, "precedence", self.precedence, true);
        opt(buf, "status", self.status, true);
        if let Some(b) = self.bytes {
            let _ = write!(buf, ",\"bytes\":{b}");
        }
        opt(buf, "sha256", self.sha256, true);
        opt(buf, "refers_to", self.refers_to.as_deref(), true);
    }
}

/// When a record was written, into `buf`: RFC 3339 to the microsecond, the date and time of day
/// formatted once a second (the writer's thread keeps the last one).
fn record_time(buf: &mut Vec<u8>, at: SystemTime) {
    use std::cell::RefCell;
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let d = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    SECOND.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != d.as_secs() {
            let full = audit::timestamp(at);
            // "YYYY-MM-DDTHH:MM:SS." and the rest.
            *c = (d.as_secs(), full[..20].to_owned());
        }
        buf.extend_from_slice(c.1.as_bytes());
    });
    let micros = d.subsec_micros();
    let mut digits = [b'0'; 6];
    let mut rest = micros;
    for slot in digits.iter_mut().rev() {
        *slot = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    buf.extend_from_slice(&digits);
    buf.push(b'Z');
}

/// An unsigned number in decimal, into `buf`.
fn decimal(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[at..]);
}

/// Bytes as lowercase hex, into `buf`.
fn hex_into(buf: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        buf.push(DIGITS[(b >> 4) as usize]);
        buf.push(DIGITS[(b & 15) as usize]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn message() -> Message {
        use prost::Message as _;
        let o = crate::message::Originator {
            agency: crate::identity::AgencyId::new("dea").unwrap(),
            node: "dea-1".into(),
            client: Some("duty-desk".into()),
        };
        let env = crate::draft::Draft::new(&crate::wire::pb::LiaisonMessage::default())
            .to("pgr")
            .to("afi/analysts")
            .finish(&o, UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        Message::parse(env.encode_to_vec().into(), None).unwrap()
    }

    /// The hand-written record is byte for byte what serde writes, and reads back as a
    /// `Record`, for events with and without a message and text that must be escaped.
    #[test]
    fn records_are_written_as_serde_would_write_them() {
        let m = message();
        let at = UNIX_EPOCH + Duration::from_micros(1_800_000_000_123_456);
        let events = [
            Event::Accepted {
                id: m.id,
                from: "dea/client/duty-desk".into(),
                precedence: m.precedence,
                destinations: 2,
            },
            Event::Refused {
                id: None,
                from: "dea/client/\"odd\" \u{e9}\\ name".into(),
                code: RefusalCode::PolicyDenied,
                reason: "denied by \"dea-1.policy.toml#default-deny\"\n\ttab \u{1F600}".into(),
            },
            Event::Connected {
                remote: "127.0.0.1:7400".parse().unwrap(),
                who: "pgr/node/pgr-1".into(),
                certificate: "ab".repeat(32),
            },
            Event::Retrying {
                id: m.id,
                queue: "outbox:pgr-1".into(),
                attempts: 3,
                at,
                reason: "did not acknowledge in time".into(),
            },
        ];
        let m = Arc::new(m);
        let prev = [0xa5; 32];
        for (i, e) in events.iter().enumerate() {
            for with in [None, Some(About::Message(m.clone()))] {
                let place = Place {
                    node: "dea-1",
                    me: "dea/node/dea-1",
                    seq: i as u64,
                    prev: (i > 0).then_some(&prev),
                };
                let mut fast = Vec::new();
                write_record(&mut fast, &place, at, e, with.as_ref());
                // Once the message's part was written, the writer gets only that part (for
                // events about the message itself), and writes the same bytes.
                if with.is_some() {
                    let known = About::of(e, &m);
                    assert_eq!(
                        matches!(known, About::Known { .. }),
                        e.message_id() == Some(m.id),
                        "event {i}"
                    );
                    let mut again = Vec::new();
                    write_record(&mut again, &place, at, e, Some(&known));
                    assert_eq!(
                        String::from_utf8_lossy(&again),
                        String::from_utf8_lossy(&fast),
                        "event {i}"
                    );
                }
                // The same record through serde.
                let mut slow = Vec::new();
                let mut probe = Vec::new();
                write_record(&mut probe, &place, at, e, with.as_ref());
                let parsed: crate::audit::Record = serde_json::from_slice(&probe).unwrap();
                serde_json::to_writer(&mut slow, &parsed).unwrap();
                assert_eq!(
                    String::from_utf8_lossy(&fast),
                    String::from_utf8_lossy(&slow),
                    "event {i}"
                );
                assert_eq!(parsed.seq, i as u64);
                let prev_hex = if i > 0 { hex(&prev) } else { String::new() };
                assert_eq!(parsed.prev, prev_hex);
                assert_eq!(parsed.time, audit::timestamp(at));
                if with.is_some() {
                    assert_eq!(parsed.addressees, vec!["pgr", "afi/analysts"]);
                    assert_eq!(parsed.sha256.as_ref().map(String::len), Some(64));
                }
            }
        }
    }
}
