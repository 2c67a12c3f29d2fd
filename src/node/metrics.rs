//! The node's metrics: counters fed by the event hook, latency histograms fed by the ledger,
//! store timings fed by the store's writer thread, and gauges computed when scraped (queues,
//! peer links, certificate and CRL expiry), written in the Prometheus text format (0.0.4) by
//! the `prometheus-client` crate.
//!
//! Cheap on the hot path: every event or ledger hook is a few atomic or uncontended lock
//! operations on metric handles created at start (by precedence, by source, by peer); only a
//! refusal code never seen before allocates its series once. Queue depths are not counted as
//! copies move: they are read from the ledger's queues when the endpoint is scraped.
//!
//! It does no I/O and decides nothing: the endpoint that serves [`Metrics::render`], and
//! answers the health checks, is [`endpoint`].

pub(super) mod endpoint;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::events::{Event, Events};
use super::links::{LinkState, LinkStatus};
use crate::identity::AgencyId;
use crate::lanes::Depth;
use crate::message::{Message, Precedence};
use crate::store::{CommitObserver, StoreStats};
use crate::wire::pb::RefusalCode;

/// The content type of what [`Metrics::render`] writes.
pub(crate) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Bounds of the latency histograms, in seconds: from a millisecond (an alert through one
/// node) to a day (a bulk copy waiting for a peer that was down).
const LATENCY_BUCKETS: [f64; 20] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0, 3600.0, 14_400.0, 86_400.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    precedence: &'static str,
    /// `client`, `peer` or `node` (this node's own receipts and reports).
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    precedence: &'static str,
    stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LaneLabels {
    queue: String,
    precedence: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LinkLabels {
    peer: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubjectLabels {
    subject: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IssuerLabels {
    issuer: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;
type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// One queue, as the ledger's queues read when scraped.
#[derive(Debug)]
pub(super) struct QueueReading {
    /// Its name, e.g. `outbox:pgr-1`.
    pub name: String,
    /// Each lane, most urgent first.
    pub lanes: [Depth; 5],
    pub dead_letters: usize,
}

/// What the gauges show, gathered by the endpoint when it is scraped.
#[derive(Debug)]
pub(super) struct Reading {
    pub queues: Vec<QueueReading>,
    pub links: Vec<LinkStatus>,
    /// Subject and notAfter of each certificate of the node's own chain.
    pub certificates: Vec<(String, SystemTime)>,
    /// Issuer and nextUpdate of each CRL in force.
    pub crls: Vec<(String, SystemTime)>,
    pub store: StoreStats,
    /// Events the delivery log's writer has not written yet.
    pub log_pending: u64,
    pub now: SystemTime,
}

/// The metrics of one node; shared (`Arc`) by the event hook, the ledger, the store's writer
/// and the endpoint.
pub(crate) struct Metrics {
    /// Every metric, with the `node` label; locked while scraped, so that two scrapes never
    /// interleave their gauge updates.
    registry: Mutex<Registry>,
    /// This node as a sender (`<agency>/node/<name>`), to tell its own messages from a peer's.
    own: String,
    /// By precedence (as [`Precedence::ALL`]), then source: client, peer, node.
    accepted: [[Counter; 3]; 5],
    delivered: Counter,
    acknowledged: Counter,
    duplicates: Counter,
    expired: Counter,
    purged: Counter,
    retried: Counter,
    dead_lettered: Counter,
    redriven: Counter,
    /// By peer: peers are fixed at start. `forwarded_to` serves a peer missing from it.
    forwarded: HashMap<String, Counter>,
    forwarded_to: Family<PeerLabels, Counter>,
    refused: Family<CodeLabels, Counter>,
    forward_refused: Family<CodeLabels, Counter>,
    /// Accepted, refused.
    connections: [Counter; 2],
    /// By precedence, then stage: delivered, acknowledged.
    end_to_end: [[Histogram; 2]; 5],
    /// By precedence, then outcome: delivered, forwarded.
    residence: [[Histogram; 2]; 5],
    store_fsync: Histogram,
    store_batch: Histogram,
    queue_depth: Family<LaneLabels, Gauge>,
    queue_oldest: Family<LaneLabels, FloatGauge>,
    dead_letters: Family<QueueLabels, Gauge>,
    link_up: Family<LinkLabels, Gauge>,
    certificate_not_after: Family<SubjectLabels, Gauge>,
    crl_next_update: Family<IssuerLabels, Gauge>,
    store_bytes: Gauge,
    store_segments: Gauge,
    store_live: Gauge,
    store_dead: Gauge,
    log_records: Gauge,
    log_pending: Gauge,
    log_checkpoint: Gauge,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").field("own", &self.own).finish()
    }
}

const SOURCES: [&str; 3] = ["client", "peer", "node"];

fn slot(p: Precedence) -> usize {
    match p {
        Precedence::Flash => 0,
        Precedence::Immediate => 1,
        Precedence::Priority => 2,
        Precedence::Routine => 3,
        Precedence::Bulk => 4,
    }
}

/// A refusal code as the protocol documents it, e.g. `QUEUE_FULL`.
fn code_name(code: RefusalCode) -> &'static str {
    let name = code.as_str_name();
    name.strip_prefix("REFUSAL_CODE_").unwrap_or(name)
}

fn latency() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Seconds from `from` to `to`; 0 when the clocks disagree and `to` is earlier.
fn seconds(from: SystemTime, to: SystemTime) -> f64 {
    to.duration_since(from)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

/// Unix time in whole seconds, for timestamp gauges.
fn unix(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

impl Metrics {
    /// The metrics of node `node` of `agency`, with a forwarding counter for each of `peers`.
    pub(crate) fn new(
        node: &str,
        agency: &AgencyId,
        peers: impl Iterator<Item = String>,
    ) -> Metrics {
        let labels = [("node".into(), node.to_owned().into())];
        let mut r = Registry::with_prefix_and_labels("enlace", labels.into_iter());

        let accepted_family = Family::<SourceLabels, Counter>::default();
        r.register(
            "messages_accepted",
            "Messages this node took responsibility for (durable and queued), by precedence and \
             by who handed them over: a client, a peer node, or this node (its receipts)",
            accepted_family.clone(),
        );
        let accepted = Precedence::ALL.map(|p| {
            SOURCES.map(|source| {
                accepted_family.get_or_create_owned(&SourceLabels {
                    precedence: p.as_str(),
                    source,
                })
            })
        });
        let mut counter = |name: &str, help: &str| {
            let c = Counter::default();
            r.register(name, help, c.clone());
            c
        };
        let delivered = counter(
            "messages_delivered",
            "Copies handed to a client (each attempt)",
        );
        let acknowledged = counter("messages_acknowledged", "Copies a client acknowledged");
        let duplicates = counter(
            "messages_duplicates",
            "Messages handed over again after this node had taken them (answered Accepted, not \
             queued again)",
        );
        let expired = counter(
            "messages_expired",
            "Copies that expired while waiting in a queue",
        );
        let purged = counter(
            "messages_purged",
            "Copies removed undelivered: past their originator's retention period, or stored \
             copies that no longer decode",
        );
        let retried = counter(
            "messages_retried",
            "Failed delivery attempts that will be tried again",
        );
        let dead_lettered = counter(
            "messages_dead_lettered",
            "Copies moved to their queue's dead letters",
        );
        let redriven = counter(
            "messages_redriven",
            "Dead letters an operator put back in their queue",
        );

        let forwarded_to = Family::<PeerLabels, Counter>::default();
        r.register(
            "messages_forwarded",
            "Copies a peer node accepted from this node, by peer",
            forwarded_to.clone(),
        );
        let forwarded = peers
            .map(|peer| {
                let c = forwarded_to.get_or_create_owned(&PeerLabels { peer: peer.clone() });
                (peer, c)
            })
            .collect();
        let refused = Family::<CodeLabels, Counter>::default();
        r.register(
            "messages_refused",
            "Submissions this node refused, by refusal code",
            refused.clone(),
        );
        let forward_refused = Family::<CodeLabels, Counter>::default();
        r.register(
            "messages_forward_refused",
            "Forwarded copies a peer node refused for good, by the peer's refusal code",
            forward_refused.clone(),
        );
        let connections_family = Family::<OutcomeLabels, Counter>::default();
        r.register(
            "connections",
            "Connections authorized (outcome accepted) or refused before authorization",
            connections_family.clone(),
        );
        let connections = ["accepted", "refused"]
            .map(|outcome| connections_family.get_or_create_owned(&OutcomeLabels { outcome }));

        let end_to_end_family: Histograms<StageLabels> = Family::new_with_constructor(latency);
        r.register(
            "end_to_end_latency_seconds",
            "Time from a message's creation (its created_at) to a copy's delivery to a client \
             (stage delivered) or its acknowledgement (stage acknowledged), by precedence",
            end_to_end_family.clone(),
        );
        let end_to_end = Precedence::ALL.map(|p| {
            ["delivered", "acknowledged"].map(|stage| {
                end_to_end_family.get_or_create_owned(&StageLabels {
                    precedence: p.as_str(),
                    stage,
                })
            })
        });
        let residence_family: Histograms<StageLabels> = Family::new_with_constructor(latency);
        r.register(
            "residence_seconds",
            "Time from this node taking a copy to delivering it to a client (stage delivered) \
             or a peer node accepting it (stage forwarded), by precedence",
            residence_family.clone(),
        );
        let residence = Precedence::ALL.map(|p| {
            ["delivered", "forwarded"].map(|stage| {
                residence_family.get_or_create_owned(&StageLabels {
                    precedence: p.as_str(),
                    stage,
                })
            })
        });
        let store_fsync = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        r.register(
            "store_fsync_seconds",
            "Time each fdatasync of the store's log took",
            store_fsync.clone(),
        );
        let store_batch = Histogram::new(exponential_buckets(1.0, 2.0, 13));
        r.register(
            "store_commit_batch_size",
            "Commit requests that shared one fdatasync (group commit)",
            store_batch.clone(),
        );

        let queue_depth = Family::<LaneLabels, Gauge>::default();
        r.register(
            "queue_depth",
            "Copies waiting in a queue (mailbox:<agency>[/<unit>], outbox:<peer>), by \
             precedence, parked retries included and copies in flight not",
            queue_depth.clone(),
        );
        let queue_oldest = Family::<LaneLabels, FloatGauge>::default();
        r.register(
            "queue_oldest_age_seconds",
            "Age of the oldest copy waiting in a queue's lane since this node took it (0 when \
             the lane is empty)",
            queue_oldest.clone(),
        );
        let dead_letters = Family::<QueueLabels, Gauge>::default();
        r.register(
            "queue_dead_letters",
            "Dead letters a queue holds, waiting for an operator",
            dead_letters.clone(),
        );
        let link_up = Family::<LinkLabels, Gauge>::default();
        r.register(
            "peer_link_up",
            "1 when the link to a peer node is up, else 0; the state label says where it is \
             (connecting, up, down, backoff)",
            link_up.clone(),
        );
        let certificate_not_after = Family::<SubjectLabels, Gauge>::default();
        r.register(
            "certificate_not_after_timestamp_seconds",
            "When each certificate of the node's own chain expires (notAfter), in Unix time",
            certificate_not_after.clone(),
        );
        let crl_next_update = Family::<IssuerLabels, Gauge>::default();
        r.register(
            "crl_next_update_timestamp_seconds",
            "When each CRL in force is due to be replaced (nextUpdate), in Unix time, by issuer",
            crl_next_update.clone(),
        );
        let mut gauge = |name: &str, help: &str| {
            let g = Gauge::default();
            r.register(name, help, g.clone());
            g
        };
        let store_bytes = gauge("store_bytes", "Bytes of the store's segment files");
        let store_segments = gauge("store_segments", "Segment files of the store");
        let store_live = gauge(
            "store_live_records",
            "Copies live in the store, dead letters included",
        );
        let store_dead = gauge("store_dead_records", "Dead letters in the store");
        // Set by the delivery log (see `Metrics::set_log`); 0 until it reports.
        let log_records = gauge(
            "log_records",
            "Records in the node's tamper-evident delivery log",
        );
        let log_pending = gauge(
            "log_pending_records",
            "Events handed to the delivery log's writer and not written yet (its lag)",
        );
        let log_checkpoint = gauge(
            "log_last_checkpoint_timestamp_seconds",
            "When the delivery log's last signed checkpoint was made, in Unix time (0: none yet)",
        );

        Metrics {
            registry: Mutex::new(r),
            own: format!("{agency}/node/{node}"),
            accepted,
            delivered,
            acknowledged,
            duplicates,
            expired,
            purged,
            retried,
            dead_lettered,
            redriven,
            forwarded,
            forwarded_to,
            refused,
            forward_refused,
            connections,
            end_to_end,
            residence,
            store_fsync,
            store_batch,
            queue_depth,
            queue_oldest,
            dead_letters,
            link_up,
            certificate_not_after,
            crl_next_update,
            store_bytes,
            store_segments,
            store_live,
            store_dead,
            log_records,
            log_pending,
            log_checkpoint,
        }
    }

    /// Counts an event (called by [`Events::record`] for every event).
    pub(super) fn observe(&self, e: &Event) {
        match e {
            Event::Connected { .. } => {
                self.connections[0].inc();
            }
            Event::ConnectionRefused { .. } => {
                self.connections[1].inc();
            }
            Event::Accepted {
                from, precedence, ..
            } => {
                let source = if *from == self.own {
                    2
                } else if from.split('/').nth(1) == Some("node") {
                    1
                } else {
                    0
                };
                self.accepted[slot(*precedence)][source].inc();
            }
            Event::Duplicate { .. } => {
                self.duplicates.inc();
            }
            Event::Refused { code, .. } => {
                let code = code_name(*code);
                self.refused.get_or_create(&CodeLabels { code }).inc();
            }
            Event::Forwarded { peer, .. } => match self.forwarded.get(peer) {
                Some(c) => {
                    c.inc();
                }
                None => {
                    let peer = peer.clone();
                    self.forwarded_to.get_or_create(&PeerLabels { peer }).inc();
                }
            },
            Event::ForwardRefused { code, .. } => {
                let code = code_name(*code);
                self.forward_refused
                    .get_or_create(&CodeLabels { code })
                    .inc();
            }
            Event::Delivered { .. } => {
                self.delivered.inc();
            }
            Event::Acknowledged { .. } => {
                self.acknowledged.inc();
            }
            Event::Retrying { .. } => {
                self.retried.inc();
            }
            Event::DeadLettered { .. } => {
                self.dead_lettered.inc();
            }
            Event::Redriven { .. } => {
                self.redriven.inc();
            }
            Event::Expired { .. } => {
                self.expired.inc();
            }
            Event::Purged { .. } => {
                self.purged.inc();
            }
            Event::Disconnected { .. }
            | Event::Reloaded { .. }
            | Event::ReloadRefused { .. }
            | Event::Dispatched { .. }
            | Event::Returned { .. }
            | Event::Deferred { .. }
            | Event::Checkpoint { .. }
            | Event::Witnessed { .. }
            | Event::WitnessRefused { .. }
            | Event::LogPruned { .. }
            | Event::LogRead { .. }
            | Event::Link { .. } => {}
        }
    }

    /// A copy of `message`, taken by this node at `taken`, was handed to a client at `at` (the
    /// ledger's **delivered**).
    pub(super) fn delivered(&self, message: &Message, taken: SystemTime, at: SystemTime) {
        let p = slot(message.precedence());
        self.end_to_end[p][0].observe(seconds(message.created_at(), at));
        self.residence[p][0].observe(seconds(taken, at));
    }

    /// A copy of `message`, taken by this node at `taken`, was finished at `at`: acknowledged
    /// by a client, or accepted by a peer node when `forwarded` (the ledger's settlement).
    pub(super) fn finished(
        &self,
        message: &Message,
        taken: SystemTime,
        forwarded: bool,
        at: SystemTime,
    ) {
        let p = slot(message.precedence());
        if forwarded {
            self.residence[p][1].observe(seconds(taken, at));
        } else {
            self.end_to_end[p][1].observe(seconds(message.created_at(), at));
        }
    }

    /// The store's observer: fdatasync time and group-commit batch size, from its writer
    /// thread (one uncontended lock each; compaction-only writes count no batch).
    pub(crate) fn store_observer(self: &Arc<Metrics>) -> CommitObserver {
        let m = self.clone();
        CommitObserver(Arc::new(move |requests, took| {
            m.store_fsync.observe(took.as_secs_f64());
            if requests > 0 {
                m.store_batch.observe(requests as f64);
            }
        }))
    }

    /// **For the delivery log** (`enlace_log_records`,
    /// `enlace_log_last_checkpoint_timestamp_seconds`): the records it holds and when its last
    /// checkpoint was made (Unix seconds, 0 for none). Call it whenever either changes.
    pub(crate) fn set_log(&self, records: u64, last_checkpoint_unix: i64) {
        self.log_records
            .set(i64::try_from(records).unwrap_or(i64::MAX));
        self.log_checkpoint.set(last_checkpoint_unix);
    }

    /// Sets the gauges from `reading` and writes every metric in the Prometheus text format.
    pub(super) fn render(&self, reading: Reading) -> String {
        let registry = self
            .registry
            .lock()
            .expect("metrics registry lock poisoned");
        // Queues and links come and go: series of the last scrape that are gone must go too.
        self.queue_depth.clear();
        self.queue_oldest.clear();
        self.dead_letters.clear();
        self.link_up.clear();
        self.certificate_not_after.clear();
        self.crl_next_update.clear();
        for q in reading.queues {
            for lane in q.lanes {
                let labels = LaneLabels {
                    queue: q.name.clone(),
                    precedence: lane.precedence.as_str(),
                };
                let count = i64::try_from(lane.count).unwrap_or(i64::MAX);
                self.queue_depth.get_or_create(&labels).set(count);
                let age = lane.oldest.map_or(0.0, |t| seconds(t, reading.now));
                self.queue_oldest.get_or_create(&labels).set(age);
            }
            let dead = i64::try_from(q.dead_letters).unwrap_or(i64::MAX);
            let labels = QueueLabels { queue: q.name };
            self.dead_letters.get_or_create(&labels).set(dead);
        }
        for l in reading.links {
            let labels = LinkLabels {
                peer: l.peer,
                state: l.state.as_str(),
            };
            let up = i64::from(l.state == LinkState::Up);
            self.link_up.get_or_create(&labels).set(up);
        }
        for (subject, not_after) in reading.certificates {
            let labels = SubjectLabels { subject };
            let g = self.certificate_not_after.get_or_create(&labels);
            g.set(unix(not_after));
        }
        for (issuer, next_update) in reading.crls {
            let labels = IssuerLabels { issuer };
            let g = self.crl_next_update.get_or_create(&labels);
            g.set(unix(next_update));
        }
        let s = &reading.store;
        let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.store_bytes.set(int(s.bytes_on_disk));
        self.store_segments.set(int(s.segments as u64));
        self.store_live.set(int(s.live_records as u64));
        self.store_dead.set(int(s.dead_records as u64));
        self.log_pending.set(int(reading.log_pending));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        out
    }
}

impl Events {
    /// Counts every event recorded from now on in `metrics`.
    pub(crate) fn with_metrics(mut self, metrics: Arc<Metrics>) -> Events {
        self.metrics = Some(metrics);
        self
    }

    /// The node's metrics, when it keeps them (not in the ledger's unit tests).
    pub(crate) fn metrics(&self) -> Option<&Metrics> {
        self.metrics.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Metrics {
        let dea = AgencyId::new("dea").unwrap();
        Metrics::new("dea-1", &dea, ["pgr-1".to_owned()].into_iter())
    }

    fn message(precedence: Precedence, created: SystemTime) -> Message {
        use prost::Message as _;
        let o = crate::message::Originator {
            agency: AgencyId::new("dea").unwrap(),
            node: "dea-1".into(),
            client: Some("duty-desk".into()),
        };
        let env = crate::draft::Draft::new(&crate::wire::pb::LiaisonMessage::default())
            .to("pgr")
            .precedence(precedence)
            .expires_in(Duration::from_secs(3600))
            .finish(&o, created);
        Message::parse(env.encode_to_vec().into(), None).unwrap()
    }

    fn empty(now: SystemTime) -> Reading {
        Reading {
            queues: Vec::new(),
            links: Vec::new(),
            certificates: Vec::new(),
            crls: Vec::new(),
            store: StoreStats::default(),
            log_pending: 0,
            now,
        }
    }

    #[test]
    fn events_move_their_counters() {
        let m = metrics();
        let id = crate::message::MessageId::new_v7(SystemTime::now());
        let accepted = |from: &str, precedence| Event::Accepted {
            id,
            from: from.into(),
            precedence,
            destinations: 1,
        };
        m.observe(&accepted("dea/client/duty-desk", Precedence::Flash));
        m.observe(&accepted("pgr/node/pgr-1", Precedence::Flash));
        m.observe(&accepted("dea/node/dea-1", Precedence::Routine));
        m.observe(&Event::Refused {
            id: None,
            from: "dea/client/duty-desk".into(),
            code: RefusalCode::PolicyDenied,
            reason: "no".into(),
        });
        m.observe(&Event::Forwarded {
            id,
            peer: "pgr-1".into(),
        });
        m.observe(&Event::Forwarded {
            id,
            peer: "afi-1".into(),
        });
        let text = m.render(empty(SystemTime::now()));
        for line in [
            r#"enlace_messages_accepted_total{node="dea-1",precedence="FLASH",source="client"} 1"#,
            r#"enlace_messages_accepted_total{node="dea-1",precedence="FLASH",source="peer"} 1"#,
            r#"enlace_messages_accepted_total{node="dea-1",precedence="ROUTINE",source="node"} 1"#,
            r#"enlace_messages_accepted_total{node="dea-1",precedence="BULK",source="client"} 0"#,
            r#"enlace_messages_refused_total{node="dea-1",code="POLICY_DENIED"} 1"#,
            r#"enlace_messages_forwarded_total{node="dea-1",peer="pgr-1"} 1"#,
            r#"enlace_messages_forwarded_total{node="dea-1",peer="afi-1"} 1"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }

    #[test]
    fn gauges_show_the_last_reading_only() {
        let m = metrics();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let mut lanes = Precedence::ALL.map(|precedence| Depth {
            precedence,
            count: 0,
            oldest: None,
        });
        lanes[0] = Depth {
            precedence: Precedence::Flash,
            count: 3,
            oldest: Some(now - Duration::from_secs(90)),
        };
        let mut reading = empty(now);
        reading.queues.push(QueueReading {
            name: "outbox:pgr-1".into(),
            lanes,
            dead_letters: 2,
        });
        reading.crls.push(("CN=DEA CA".into(), now));
        let text = m.render(reading);
        for line in [
            r#"enlace_queue_depth{node="dea-1",queue="outbox:pgr-1",precedence="FLASH"} 3"#,
            r#"enlace_queue_oldest_age_seconds{node="dea-1",queue="outbox:pgr-1",precedence="FLASH"} 90.0"#,
            r#"enlace_queue_depth{node="dea-1",queue="outbox:pgr-1",precedence="BULK"} 0"#,
            r#"enlace_queue_dead_letters{node="dea-1",queue="outbox:pgr-1"} 2"#,
            r#"enlace_crl_next_update_timestamp_seconds{node="dea-1",issuer="CN=DEA CA"} 1000"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        let text = m.render(empty(now));
        assert!(!text.contains("outbox:pgr-1"), "{text}");
    }

    #[test]
    fn latencies_are_observed_by_precedence() {
        let m = metrics();
        let created = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let message = message(Precedence::Immediate, created);
        m.delivered(&message, created, created + Duration::from_millis(30));
        m.finished(&message, created, false, created + Duration::from_secs(2));
        m.finished(&message, created, true, created + Duration::from_secs(2));
        let text = m.render(empty(created));
        for line in [
            r#"enlace_end_to_end_latency_seconds_count{node="dea-1",precedence="IMMEDIATE",stage="delivered"} 1"#,
            r#"enlace_end_to_end_latency_seconds_bucket{node="dea-1",precedence="IMMEDIATE",stage="delivered",le="0.05"} 1"#,
            r#"enlace_end_to_end_latency_seconds_count{node="dea-1",precedence="IMMEDIATE",stage="acknowledged"} 1"#,
            r#"enlace_residence_seconds_count{node="dea-1",precedence="IMMEDIATE",stage="forwarded"} 1"#,
            r#"enlace_residence_seconds_count{node="dea-1",precedence="FLASH",stage="forwarded"} 0"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }
}
