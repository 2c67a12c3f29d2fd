//! Node configuration: TOML in, a validated [`Config`] out, or an error naming the key and reason.
//!
//! This is the one place where the config file is parsed; the rest of the node only sees
//! validated values. Relative paths are resolved against the config file's directory. Nothing here
//! opens sockets or reads certificates (the daemon does that, after validation).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::directory::{Agency, Directory};
use crate::identity::{AgencyId, is_name};
use crate::policy::{Reader, Readers};

mod metrics;

pub use metrics::DEFAULT_METRICS_LISTEN;
pub(crate) use metrics::MetricsConfig;

/// A configuration problem: which key, and why. Fix the key in the file and load it again.
///
/// ```
/// let err = enlace::config::Config::load("/nonexistent/enlaced.toml".as_ref()).unwrap_err();
/// assert_eq!(err.key, "(file)");
/// ```
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {reason}")]
pub struct ConfigError {
    /// The config file, as its path was given.
    pub file: String,
    /// The key at fault, e.g. `limits.max_hops` or `peers[0].address`; for a TOML syntax error,
    /// the table, key and line; `(file)` when the file could not be read.
    pub key: String,
    /// What is wrong with it, and often the accepted form or range.
    pub reason: String,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Plain text lines for people (`format = "human"`, the default).
    Human,
    /// One JSON object per line, for log collectors (`format = "json"`).
    Json,
}

/// A validated node configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's name, e.g. `dea-1`; must match its certificate.
    pub(crate) name: String,
    /// The agency this node serves; must match its certificate.
    pub(crate) agency: AgencyId,
    pub(crate) trust_domain: String,
    pub(crate) listen: SocketAddr,
    pub(crate) data_dir: PathBuf,
    pub(crate) tls: TlsPaths,
    pub(crate) limits: Limits,
    pub(crate) log_format: LogFormat,
    pub(crate) log_level: String,
    /// Peer nodes by node name.
    pub(crate) peers: BTreeMap<String, Peer>,
    /// Agency ids, display names, aliases and serving nodes (`[agencies.<id>]`).
    pub(crate) directory: Directory,
    /// Next-hop peer for agencies reached through a relay (`[routes]`), by agency id.
    pub(crate) routes: BTreeMap<AgencyId, String>,
    /// The unit of this agency that gets a reminder when an action copy for this agency has no
    /// business response by its `respond_by` (`node.escalation_unit`, e.g. its 24/7 desk); ""
    /// (the default) is the agency inbox.
    pub(crate) escalation_unit: String,
    /// Who may read which mailbox besides its owner (`[inbox] readers`, `[units.<name>]
    /// readers`; see [`crate::policy::may_read`]).
    pub(crate) readers: Readers,
    /// The policy file: exchange agreements and internal rules (`node.policy`; see
    /// [`crate::agreement`]). Without one the node allows no client traffic at all.
    pub(crate) policy: Option<PathBuf>,
    /// The delivery log's checkpoints, durability and retention (`[delivery_log]`).
    pub(crate) delivery_log: DeliveryLog,
    /// The size of the store's segment files (`[store] segment_bytes`, 64 MiB): each is
    /// reserved on disk whole when it is started, and deleted whole once nothing in it is live.
    pub(crate) store_segment_bytes: u64,
    /// The metrics and health endpoint (`[metrics]`).
    pub(crate) metrics: MetricsConfig,
}

/// How the node keeps its delivery log (`[delivery_log]`; see [`crate::audit`]).
#[derive(Debug, Clone)]
pub(crate) struct DeliveryLog {
    /// A checkpoint is signed after this many new records (`checkpoint_records`, 10000)...
    pub(crate) checkpoint_records: u64,
    /// ...or this long after the last one, if there are new records (`checkpoint_interval_ms`,
    /// 10 s).
    pub(crate) checkpoint_interval: Duration,
    /// Written records reach the disk (fdatasync) at most this long after they are written
    /// (`sync_interval_ms`, 100 ms), and always before a checkpoint covers them.
    pub(crate) sync_interval: Duration,
    /// Records older than this are pruned, whole files at a time and only behind a checkpoint
    /// (`retention_days`, 400).
    pub(crate) retention: Duration,
    /// A records file is closed and a new one started past this size (`segment_bytes`, 64 MiB).
    pub(crate) segment_bytes: u64,
}

impl Default for DeliveryLog {
    fn default() -> Self {
        DeliveryLog {
            checkpoint_records: 10_000,
            checkpoint_interval: Duration::from_secs(10),
            sync_interval: Duration::from_millis(100),
            retention: Duration::from_secs(400 * 86_400),
            segment_bytes: 64 << 20,
        }
    }
}

/// Where the node's TLS material lives.
#[derive(Debug, Clone)]
pub(crate) struct TlsPaths {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) ca: PathBuf,
    /// The CRL files found in `crl_dir` when the config was loaded (the node scans the
    /// directory again when it reloads).
    pub(crate) crls: Vec<PathBuf>,
    /// `tls.crl_dir`: every `*.crl.pem` file in it is a CRL.
    pub(crate) crl_dir: Option<PathBuf>,
    /// What a CRL past its nextUpdate does (`tls.crl_expired`).
    pub(crate) crl_expired: CrlExpired,
}

/// What a CRL past its nextUpdate does (`tls.crl_expired`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CrlExpired {
    /// Certificates of its CA are refused until a fresh CRL is installed (the default).
    Refuse,
    /// Only a warning: for labs whose CRLs are not kept fresh.
    Warn,
}

/// The `*.crl.pem` files of `dir`, sorted.
pub(crate) fn scan_crls(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut crls: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".crl.pem"))
        .collect();
    crls.sort();
    Ok(crls)
}

/// Bounds on what the node accepts and holds.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// Largest frame accepted, in bytes, checked before decoding.
    pub(crate) max_frame_bytes: u64,
    /// Messages held per mailbox or peer outbox before senders get QUEUE_FULL.
    pub(crate) queue_capacity: usize,
    /// Message ids remembered (until their message expires) to tell a resubmission from a new
    /// message and an id conflict from a duplicate.
    pub(crate) dedup_ids: usize,
    /// Messages remembered for products derived from them (`limits.provenance_ids`).
    pub(crate) provenance_ids: usize,
    /// How long a connection has to send its `Hello`.
    pub(crate) handshake_timeout: Duration,
    /// How long a client has to acknowledge a delivery before it is offered again.
    pub(crate) ack_timeout: Duration,
    /// How long a reader has to acknowledge a time-sensitive copy before it goes to the unit's
    /// other readers (see `node::deliver`).
    pub(crate) alert_ack_timeout: Duration,
    /// How long shutdown waits for in-flight work before closing connections.
    pub(crate) shutdown_grace: Duration,
    /// Delivery attempts (each ending in an ack timeout or a failed stream) before a copy goes
    /// to the dead letters.
    pub(crate) max_delivery_attempts: u32,
    /// Most nodes a message may have passed (hop records) when it arrives here, whatever its
    /// own handling policy allows.
    pub(crate) max_hops: u32,
    /// Most addressees (agency and unit pairs) one envelope may name.
    pub(crate) max_addressees: usize,
    /// Connections one certificate may hold to this node at once.
    pub(crate) max_connections_per_certificate: usize,
    /// Streams a client connection may have open at once (peer nodes keep the transport's
    /// default).
    pub(crate) client_streams: u32,
    /// Bytes of frames being received or processed that one connection may hold; a frame's
    /// length is taken from it before its body is read.
    pub(crate) connection_frame_bytes: u64,
    /// The same, for all connections of the node together.
    pub(crate) node_frame_bytes: u64,
    /// Longest time from a frame's first byte to its last (waiting for frame budget not
    /// counted); a slower frame is refused and its stream stopped.
    pub(crate) frame_deadline: Duration,
    /// Malformed, oversized, truncated or late frames after which a connection is closed.
    pub(crate) max_bad_frames: u32,
    /// Refusals per connection logged at once; beyond it, refusals are logged at
    /// `refusal_log_per_second` and the rest counted.
    pub(crate) refusal_log_burst: u32,
    /// See `refusal_log_burst`.
    pub(crate) refusal_log_per_second: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_frame_bytes: 1024 * 1024,
            queue_capacity: 100_000,
            // Half of what a table of 2^19 buckets holds (7/8 of them): a table churned at its
            // bound (an id forgotten for each one remembered) clears its tombstones in place
            // while it is at most half full, and doubles otherwise. 262,144 ids settled in
            // tables of 2^20 buckets, twice the memory (for the ids, and for who may answer).
            dedup_ids: 229_376,
            provenance_ids: 65_536,
            handshake_timeout: Duration::from_secs(5),
            ack_timeout: Duration::from_secs(30),
            alert_ack_timeout: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(5),
            max_delivery_attempts: 10,
            max_hops: 8,
            max_addressees: 64,
            max_connections_per_certificate: 16,
            client_streams: 32,
            connection_frame_bytes: 16 * 1024 * 1024,
            node_frame_bytes: 256 * 1024 * 1024,
            frame_deadline: Duration::from_secs(10),
            max_bad_frames: 16,
            refusal_log_burst: 20,
            refusal_log_per_second: 5,
        }
    }
}

/// A peer node: where it is and who it must prove to be.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub(crate) node: String,
    pub(crate) agency: AgencyId,
    pub(crate) address: SocketAddr,
    /// TLS server name to expect in the peer's certificate.
    pub(crate) server_name: String,
    /// Agencies whose traffic goes to this peer (its own agency at least).
    pub(crate) serves: Vec<AgencyId>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node: RawNode,
    tls: RawTls,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    delivery_log: RawDeliveryLog,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    peers: Vec<RawPeer>,
    #[serde(default)]
    agencies: BTreeMap<String, RawAgency>,
    #[serde(default)]
    routes: BTreeMap<String, String>,
    #[serde(default)]
    inbox: RawMailbox,
    #[serde(default)]
    units: BTreeMap<String, RawMailbox>,
    metrics: Option<metrics::RawMetrics>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMailbox {
    #[serde(default)]
    readers: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgency {
    display: Option<String>,
    #[serde(default)]
    aliases: Vec<String>,
    served_by: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: String,
    agency: String,
    trust_domain: String,
    listen: String,
    data_dir: PathBuf,
    escalation_unit: Option<String>,
    policy: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    #[serde(default)]
    crl_dir: Option<PathBuf>,
    crl_expired: Option<CrlExpired>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_frame_bytes: Option<u64>,
    queue_capacity: Option<usize>,
    dedup_ids: Option<usize>,
    provenance_ids: Option<usize>,
    handshake_timeout_ms: Option<u64>,
    ack_timeout_ms: Option<u64>,
    alert_ack_timeout_ms: Option<u64>,
    shutdown_grace_ms: Option<u64>,
    max_delivery_attempts: Option<u32>,
    max_hops: Option<u32>,
    max_addressees: Option<usize>,
    max_connections_per_certificate: Option<usize>,
    client_streams: Option<u32>,
    connection_frame_bytes: Option<u64>,
    node_frame_bytes: Option<u64>,
    frame_deadline_ms: Option<u64>,
    max_bad_frames: Option<u32>,
    refusal_log_burst: Option<u32>,
    refusal_log_per_second: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<LogFormat>,
    level: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    segment_bytes: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDeliveryLog {
    checkpoint_records: Option<u64>,
    checkpoint_interval_ms: Option<u64>,
    sync_interval_ms: Option<u64>,
    retention_days: Option<u64>,
    segment_bytes: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    node: String,
    agency: String,
    address: String,
    server_name: Option<String>,
    #[serde(default)]
    serves: Vec<String>,
}

/// Largest accepted `limits.max_hops`.
const MAX_HOPS_LIMIT: u32 = 64;

/// Smallest and largest accepted `limits.max_frame_bytes`.
const FRAME_LIMIT_RANGE: (u64, u64) = (4 * 1024, 64 * 1024 * 1024);

impl Config {
    /// The node's name, e.g. `dea-1`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The agency the node serves.
    pub fn agency(&self) -> &AgencyId {
        &self.agency
    }

    /// The address it listens on.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// Where its metrics and health endpoint listens (`[metrics] listen`); `None` when it is
    /// off.
    pub fn metrics_listen(&self) -> Option<SocketAddr> {
        self.metrics.listen
    }

    /// How it logs (`[log] format`).
    pub fn log_format(&self) -> LogFormat {
        self.log_format
    }

    /// The agencies this node knows of: its own, its peers', and the directory's.
    pub fn known_agencies(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .directory
            .ids()
            .map(str::to_owned)
            .chain(self.peers.values().map(|p| p.agency.to_string()))
            .chain(std::iter::once(self.agency.to_string()))
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// Its log level (`[log] level`), as a tracing filter.
    pub fn log_level(&self) -> &str {
        &self.log_level
    }

    /// Reads and validates a config file (TOML; `deploy/` has annotated examples).
    ///
    /// ```no_run
    /// let config = enlace::config::Config::load("/etc/enlace/enlaced.toml".as_ref())?;
    /// println!("node {} of agency {}", config.name(), config.agency());
    /// # Ok::<(), enlace::config::ConfigError>(())
    /// ```
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, the key and the reason.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            key: "(file)".into(),
            reason: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, base).map_err(|(key, reason)| ConfigError {
            file: path.display().to_string(),
            key,
            reason,
        })
    }

    /// Parses config text; relative paths are resolved against `base`.
    /// Errors are `(key, reason)`.
    pub(crate) fn parse(text: &str, base: &Path) -> Result<Config, (String, String)> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let reason = e.message().to_owned();
            let key = e
                .span()
                .map(|s| describe_location(text, s.start))
                .unwrap_or_else(|| "(document)".into());
            (key, reason)
        })?;
        let err = |key: &str, reason: String| (key.to_owned(), reason);
        let name_check = |key: &str, v: &str| {
            if is_name(v) {
                Ok(v.to_owned())
            } else {
                Err(err(
                    key,
                    format!("{v:?} is not a valid name (lowercase letters, digits, '-')"),
                ))
            }
        };
        let agency = |key: &str, v: &str| AgencyId::new(v).map_err(|e| err(key, e.to_string()));
        let addr = |key: &str, v: &str| {
            v.parse::<SocketAddr>().map_err(|e| {
                err(
                    key,
                    format!("{v:?} is not an address like 127.0.0.1:7400 ({e})"),
                )
            })
        };
        let path = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };

        let name = name_check("node.name", &raw.node.name)?;
        let own_agency = agency("node.agency", &raw.node.agency)?;
        if raw.node.trust_domain.is_empty() || raw.node.trust_domain.contains('/') {
            return Err(err(
                "node.trust_domain",
                "must be a domain name such as enlace.example".into(),
            ));
        }
        let listen = addr("node.listen", &raw.node.listen)?;
        let escalation_unit = match raw.node.escalation_unit {
            None => String::new(),
            Some(u) if crate::identity::is_name(&u) => u,
            Some(u) => {
                return Err(err(
                    "node.escalation_unit",
                    format!("{u:?} is not a unit name (1 to 63 lowercase letters, digits and '-')"),
                ));
            }
        };

        let mut limits = Limits::default();
        if let Some(v) = raw.limits.max_frame_bytes {
            if !(FRAME_LIMIT_RANGE.0..=FRAME_LIMIT_RANGE.1).contains(&v) {
                return Err(err(
                    "limits.max_frame_bytes",
                    format!(
                        "{v} is outside {}..={}",
                        FRAME_LIMIT_RANGE.0, FRAME_LIMIT_RANGE.1
                    ),
                ));
            }
            limits.max_frame_bytes = v;
        }
        if let Some(v) = raw.limits.queue_capacity {
            if v == 0 {
                return Err(err("limits.queue_capacity", "must be at least 1".into()));
            }
            limits.queue_capacity = v;
        }
        if let Some(v) = raw.limits.dedup_ids {
            if v == 0 {
                return Err(err("limits.dedup_ids", "must be at least 1".into()));
            }
            limits.dedup_ids = v;
        }
        if let Some(v) = raw.limits.provenance_ids {
            if v == 0 {
                return Err(err("limits.provenance_ids", "must be at least 1".into()));
            }
            limits.provenance_ids = v;
        }
        let ms = |key: &str, v: Option<u64>, default: Duration| match v {
            Some(0) => Err(err(key, "must be greater than 0".into())),
            Some(v) => Ok(Duration::from_millis(v)),
            None => Ok(default),
        };
        limits.handshake_timeout = ms(
            "limits.handshake_timeout_ms",
            raw.limits.handshake_timeout_ms,
            limits.handshake_timeout,
        )?;
        limits.ack_timeout = ms(
            "limits.ack_timeout_ms",
            raw.limits.ack_timeout_ms,
            limits.ack_timeout,
        )?;
        limits.alert_ack_timeout = ms(
            "limits.alert_ack_timeout_ms",
            raw.limits.alert_ack_timeout_ms,
            limits.alert_ack_timeout,
        )?;
        limits.shutdown_grace = ms(
            "limits.shutdown_grace_ms",
            raw.limits.shutdown_grace_ms,
            limits.shutdown_grace,
        )?;

        match raw.limits.max_delivery_attempts {
            Some(0) => {
                return Err(err(
                    "limits.max_delivery_attempts",
                    "must be at least 1".into(),
                ));
            }
            Some(n) => limits.max_delivery_attempts = n,
            None => {}
        }

        match raw.limits.max_hops {
            Some(n) if !(1..=MAX_HOPS_LIMIT).contains(&n) => {
                return Err(err(
                    "limits.max_hops",
                    format!("{n} is outside 1..={MAX_HOPS_LIMIT}"),
                ));
            }
            Some(n) => limits.max_hops = n,
            None => {}
        }

        limits.frame_deadline = ms(
            "limits.frame_deadline_ms",
            raw.limits.frame_deadline_ms,
            limits.frame_deadline,
        )?;
        fn at_least<T: PartialOrd + Copy + std::fmt::Display>(
            key: &str,
            v: Option<T>,
            min: T,
            into: &mut T,
        ) -> Result<(), (String, String)> {
            match v {
                Some(v) if v < min => Err((key.to_owned(), format!("{v} is less than {min}"))),
                Some(v) => {
                    *into = v;
                    Ok(())
                }
                None => Ok(()),
            }
        }
        let l = &raw.limits;
        at_least(
            "limits.max_addressees",
            l.max_addressees,
            1,
            &mut limits.max_addressees,
        )?;
        at_least(
            "limits.max_connections_per_certificate",
            l.max_connections_per_certificate,
            1,
            &mut limits.max_connections_per_certificate,
        )?;
        at_least(
            "limits.client_streams",
            l.client_streams,
            2,
            &mut limits.client_streams,
        )?;
        at_least(
            "limits.connection_frame_bytes",
            l.connection_frame_bytes,
            limits.max_frame_bytes + crate::wire::FRAME_SLACK,
            &mut limits.connection_frame_bytes,
        )?;
        at_least(
            "limits.node_frame_bytes",
            l.node_frame_bytes,
            limits.connection_frame_bytes,
            &mut limits.node_frame_bytes,
        )?;
        at_least(
            "limits.max_bad_frames",
            l.max_bad_frames,
            1,
            &mut limits.max_bad_frames,
        )?;
        at_least(
            "limits.refusal_log_burst",
            l.refusal_log_burst,
            1,
            &mut limits.refusal_log_burst,
        )?;
        at_least(
            "limits.refusal_log_per_second",
            l.refusal_log_per_second,
            1,
            &mut limits.refusal_log_per_second,
        )?;

        let crl_dir = raw.tls.crl_dir.map(&path);
        let crls = match &crl_dir {
            None => Vec::new(),
            Some(dir) => scan_crls(dir).map_err(|e| err("tls.crl_dir", e))?,
        };

        let mut peers = BTreeMap::new();
        let mut served: BTreeMap<AgencyId, String> = BTreeMap::new();
        for (i, p) in raw.peers.into_iter().enumerate() {
            let key = |field: &str| format!("peers[{i}].{field}");
            let node = name_check(&key("node"), &p.node)?;
            if node == name {
                return Err(err(&key("node"), "a node cannot be its own peer".into()));
            }
            let peer_agency = agency(&key("agency"), &p.agency)?;
            let serves = vec![peer_agency.clone()];
            for s in &p.serves {
                let a = agency(&key("serves"), s)?;
                if a != peer_agency {
                    return Err(err(
                        &key("serves"),
                        format!(
                            "{a}: a peer serves only its own agency; send another agency's traffic \
                             through it with a [routes] entry"
                        ),
                    ));
                }
            }
            for a in &serves {
                if *a == own_agency {
                    return Err(err(
                        &key("serves"),
                        format!("agency {a} is served by this node"),
                    ));
                }
                if let Some(other) = served.insert(a.clone(), node.clone()) {
                    return Err(err(
                        &key("serves"),
                        format!("agency {a} is already served by peer {other}"),
                    ));
                }
            }
            let peer = Peer {
                address: addr(&key("address"), &p.address)?,
                server_name: p
                    .server_name
                    .unwrap_or_else(|| format!("{node}.{}.{}", p.agency, raw.node.trust_domain)),
                agency: peer_agency,
                serves,
                node: node.clone(),
            };
            if peers.insert(node.clone(), peer).is_some() {
                return Err(err(&key("node"), format!("peer {node} is listed twice")));
            }
        }

        let directory = directory(raw.agencies, &name, &own_agency, &peers)?;
        let mut routes = BTreeMap::new();
        for (to, via) in raw.routes {
            let key = format!("routes.{to}");
            let id = directory
                .resolve(&to)
                .ok_or_else(|| err(&key, format!("{to:?} is not an agency id or alias")))?;
            if id == own_agency {
                return Err(err(&key, format!("agency {id} is served by this node")));
            }
            if !peers.contains_key(&via) {
                return Err(err(
                    &key,
                    format!("{via:?} is not a peer of this node (a route names the next-hop peer)"),
                ));
            }
            if routes.insert(id.clone(), via).is_some() {
                return Err(err(&key, format!("agency {id} has more than one route")));
            }
        }

        let readers = readers(raw.inbox, raw.units)?;
        let delivery_log = delivery_log(&raw.delivery_log).map_err(|(k, r)| err(&k, r))?;
        let store_segment_bytes = match raw.store.segment_bytes {
            None => 64 << 20,
            Some(v) if (64 << 10..=1 << 40).contains(&v) => v,
            Some(v) => {
                let reason = format!("{v} is out of range: it must be between 65536 and 2^40");
                return Err(err("store.segment_bytes", reason));
            }
        };
        let metrics = metrics::metrics(raw.metrics)?;

        Ok(Config {
            directory,
            routes,
            escalation_unit,
            readers,
            metrics,
            name,
            agency: own_agency,
            trust_domain: raw.node.trust_domain,
            listen,
            data_dir: path(raw.node.data_dir),
            policy: raw.node.policy.map(path),
            tls: TlsPaths {
                cert: path(raw.tls.cert),
                key: path(raw.tls.key),
                ca: path(raw.tls.ca),
                crls,
                crl_dir,
                crl_expired: raw.tls.crl_expired.unwrap_or(CrlExpired::Refuse),
            },
            limits,
            delivery_log,
            store_segment_bytes,
            log_format: raw.log.format.unwrap_or(LogFormat::Human),
            log_level: raw.log.level.unwrap_or_else(|| "info".into()),
            peers,
        })
    }

    /// The peer that serves `agency` itself, if any.
    pub(crate) fn peer_for(&self, agency: &AgencyId) -> Option<&Peer> {
        self.peers.values().find(|p| p.serves.contains(agency))
    }

    /// The peer to send `agency`'s traffic to: its `[routes]` entry, else the peer that serves
    /// it. The peer is a relay when it does not serve the agency itself.
    pub(crate) fn next_hop(&self, agency: &AgencyId) -> Option<&Peer> {
        match self.routes.get(agency) {
            Some(via) => self.peers.get(via),
            None => self.peer_for(agency),
        }
    }
}

/// Checks `[delivery_log]`, each value within its bounds.
fn delivery_log(raw: &RawDeliveryLog) -> Result<DeliveryLog, (String, String)> {
    let d = DeliveryLog::default();
    let within = |key: &str, v: Option<u64>, default: u64, lo: u64, hi: u64| match v {
        None => Ok(default),
        Some(v) if (lo..=hi).contains(&v) => Ok(v),
        Some(v) => Err((
            format!("delivery_log.{key}"),
            format!("{v} is out of range: it must be between {lo} and {hi}"),
        )),
    };
    let ms = |d: Duration| d.as_millis() as u64;
    Ok(DeliveryLog {
        checkpoint_records: within(
            "checkpoint_records",
            raw.checkpoint_records,
            d.checkpoint_records,
            1,
            10_000_000,
        )?,
        checkpoint_interval: Duration::from_millis(within(
            "checkpoint_interval_ms",
            raw.checkpoint_interval_ms,
            ms(d.checkpoint_interval),
            100,
            86_400_000,
        )?),
        sync_interval: Duration::from_millis(within(
            "sync_interval_ms",
            raw.sync_interval_ms,
            ms(d.sync_interval),
            1,
            10_000,
        )?),
        retention: Duration::from_secs(
            86_400 * within("retention_days", raw.retention_days, 400, 1, 36_500)?,
        ),
        segment_bytes: within(
            "segment_bytes",
            raw.segment_bytes,
            d.segment_bytes,
            4096,
            1 << 40,
        )?,
    })
}

/// Builds the mailbox grants from `[inbox]` and `[units.<name>]`.
fn readers(
    inbox: RawMailbox,
    units: BTreeMap<String, RawMailbox>,
) -> Result<Readers, (String, String)> {
    let list = |key: &str, raw: Vec<String>| {
        raw.iter()
            .map(|r| Reader::parse(r).map_err(|e| (key.to_owned(), e)))
            .collect::<Result<Vec<_>, _>>()
    };
    let mut out = Readers {
        inbox: list("inbox.readers", inbox.readers)?,
        units: BTreeMap::new(),
    };
    for (unit, m) in units {
        let key = format!("units.{unit}");
        let mailbox =
            crate::address::Mailbox::unit(&unit).map_err(|e| (key.clone(), e.to_string()))?;
        if crate::receipt::is_receipts_mailbox(&mailbox) {
            return Err((
                key,
                "receipts units are read by their own client only and cannot be granted".into(),
            ));
        }
        let readers = list(&format!("{key}.readers"), m.readers)?;
        out.units.insert(unit, readers);
    }
    Ok(out)
}

/// Builds the agency directory from `[agencies.<id>]`, checking every name and serving node.
fn directory(
    raw: BTreeMap<String, RawAgency>,
    own_name: &str,
    own_agency: &AgencyId,
    peers: &BTreeMap<String, Peer>,
) -> Result<Directory, (String, String)> {
    let mut agencies = Vec::new();
    let mut keys = Vec::new();
    for (id, a) in raw {
        let key = format!("agencies.{id}");
        let agency = AgencyId::new(&id).map_err(|e| (key.clone(), e.to_string()))?;
        if let Some(node) = &a.served_by {
            let bad = |reason: String| (format!("{key}.served_by"), reason);
            if !is_name(node) {
                return Err(bad(format!("{node:?} is not a valid node name")));
            }
            if node == own_name && agency != *own_agency {
                return Err(bad(format!(
                    "this node serves agency {own_agency}, not {agency}"
                )));
            }
            if let Some(p) = peers.get(node)
                && p.agency != agency
            {
                return Err(bad(format!(
                    "peer {node} is a node of agency {}, not {agency}",
                    p.agency
                )));
            }
        }
        agencies.push(Agency {
            display: a.display.unwrap_or_else(|| id.to_uppercase()),
            aliases: a.aliases,
            served_by: a.served_by,
            id: agency,
        });
        keys.push(key);
    }
    Directory::build(agencies).map_err(|(i, e)| (format!("{}.aliases", keys[i]), e.to_string()))
}

/// Names the TOML table and key around a byte offset, for error messages.
pub(crate) fn describe_location(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line_no = before.matches('\n').count() + 1;
    let table = before
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .unwrap_or("(top level)");
    let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
    let key = line.split('=').next().unwrap_or("").trim();
    if key.is_empty() || key.starts_with('[') {
        format!("{table} (line {line_no})")
    } else {
        format!("{table} {key} (line {line_no})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) const GOOD: &str = r#"
[node]
name = "dea-1"
agency = "dea"
trust_domain = "enlace.test"
listen = "127.0.0.1:7401"
data_dir = "data"

[tls]
cert = "dea-1.pem"
key = "dea-1.key.pem"
ca = "root.pem"

[[peers]]
node = "pgr-1"
agency = "pgr"
address = "127.0.0.1:7402"
"#;

    #[test]
    fn parses_and_resolves_paths() {
        let c = Config::parse(GOOD, Path::new("/etc/enlace")).unwrap();
        assert_eq!(c.name, "dea-1");
        assert_eq!(c.data_dir, PathBuf::from("/etc/enlace/data"));
        let p = &c.peers["pgr-1"];
        assert_eq!(p.server_name, "pgr-1.pgr.enlace.test");
        assert_eq!(
            c.peer_for(&AgencyId::new("pgr").unwrap()).unwrap().node,
            "pgr-1"
        );
        assert_eq!(c.limits.max_frame_bytes, 1024 * 1024);
    }

    fn error_of(text: &str) -> (String, String) {
        Config::parse(text, Path::new("/")).unwrap_err()
    }

    #[test]
    fn errors_name_the_key() {
        let (key, reason) = error_of(&GOOD.replace("127.0.0.1:7401", "localhost"));
        assert_eq!(key, "node.listen");
        assert!(reason.contains("not an address"), "{reason}");

        let (key, _) = error_of(&GOOD.replace("name = \"dea-1\"", "name = \"DEA 1\""));
        assert_eq!(key, "node.name");

        let (key, _) = error_of(&GOOD.replace("agency = \"pgr\"", "agency = \"dea\""));
        assert_eq!(key, "peers[0].serves");

        let bad_unit = GOOD.replace(
            "data_dir = \"data\"",
            "data_dir = \"data\"\nescalation_unit = \"24/7\"",
        );
        let (key, reason) = error_of(&bad_unit);
        assert_eq!(key, "node.escalation_unit");
        assert!(reason.contains("not a unit name"), "{reason}");
        let unit = GOOD.replace(
            "data_dir = \"data\"",
            "data_dir = \"data\"\nescalation_unit = \"24x7-desk\"",
        );
        let c = Config::parse(&unit, Path::new("/")).unwrap();
        assert_eq!(c.escalation_unit, "24x7-desk");

        let (key, reason) = error_of(&GOOD.replace("[tls]", "[tls]\nbogus = 1"));
        assert!(key.contains("[tls]"), "{key}");
        assert!(reason.contains("unknown field"), "{reason}");

        let (key, reason) = error_of(&format!("{GOOD}\n[limits]\nmax_frame_bytes = 10\n"));
        assert_eq!(key, "limits.max_frame_bytes");
        assert!(reason.contains("outside"), "{reason}");

        let (key, _) = error_of(&format!("{GOOD}\n[limits]\nmax_hops = 0\n"));
        assert_eq!(key, "limits.max_hops");
    }

    #[test]
    fn deploy_examples_parse() {
        for node in ["dea-1", "pgr-1", "afi-1", "cenapi-1"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("deploy/{node}.toml"));
            let text = std::fs::read_to_string(&path).unwrap();
            // The CRL directory must exist when a config is parsed; it does not here.
            let text: String = text
                .lines()
                .filter(|l| !l.starts_with("crl_dir"))
                .map(|l| format!("{l}\n"))
                .collect();
            let c = Config::parse(&text, Path::new("/etc/enlace"))
                .unwrap_or_else(|e| panic!("{node}: {e:?}"));
            assert_eq!(c.name, node);
            // The policy it names is the annotated example beside it (checked in `agreement`).
            assert_eq!(
                c.policy,
                Some(PathBuf::from(format!("/etc/enlace/{node}.policy.toml")))
            );
            assert!(path.with_file_name(format!("{node}.policy.toml")).is_file());
            assert_eq!(c.directory.resolve("CMI").unwrap().as_str(), "afi");
            // The examples document every limit with its default value.
            assert_eq!(
                format!("{:?}", c.limits),
                format!("{:?}", Limits::default()),
                "{node}"
            );
            assert_eq!(c.readers.inbox, vec![Reader::AnyClient], "{node}");
            assert_eq!(c.tls.crl_expired, CrlExpired::Refuse, "{node}");
            // And the metrics endpoint with its default address.
            assert_eq!(c.metrics.listen, Some(DEFAULT_METRICS_LISTEN), "{node}");
        }
    }

    const FEDERATION: &str = r#"
[[peers]]
node = "cenapi-1"
agency = "cenapi"
address = "127.0.0.1:7404"

[agencies.afi]
display = "CMI"
aliases = ["PFM", "cmi"]
served_by = "afi-1"

[agencies.pgr]
display = "FGR"
aliases = ["fgr"]
served_by = "pgr-1"

[routes]
PFM = "cenapi-1"
"#;

    #[test]
    fn directory_and_routes() {
        let c = Config::parse(&format!("{GOOD}{FEDERATION}"), Path::new("/")).unwrap();
        let afi = c.directory.resolve("CMI").unwrap();
        assert_eq!(afi.as_str(), "afi");
        assert_eq!(c.directory.display(&afi), "CMI");
        assert_eq!(c.routes[&afi], "cenapi-1");
        let via = c.next_hop(&afi).unwrap();
        assert_eq!(
            (via.node.as_str(), via.agency.as_str()),
            ("cenapi-1", "cenapi")
        );
        let pgr = c.directory.resolve("fgr").unwrap();
        assert_eq!(c.next_hop(&pgr).unwrap().node, "pgr-1");
        assert!(c.next_hop(&AgencyId::new("fbi").unwrap()).is_none());
    }

    #[test]
    fn directory_and_route_errors_name_the_key() {
        let text = format!("{GOOD}{FEDERATION}");
        let (key, reason) = error_of(&text.replace("aliases = [\"fgr\"]", "aliases = [\"Cmi\"]"));
        assert_eq!(key, "agencies.pgr.aliases");
        assert!(reason.contains("agency afi"), "{reason}");

        let (key, reason) = error_of(&text.replace("aliases = [\"fgr\"]", "aliases = [\"afi\"]"));
        assert_eq!(key, "agencies.pgr.aliases");
        assert!(reason.contains("afi"), "{reason}");

        let (key, reason) =
            error_of(&text.replace("served_by = \"pgr-1\"", "served_by = \"cenapi-1\""));
        assert_eq!(key, "agencies.pgr.served_by");
        assert!(reason.contains("agency cenapi"), "{reason}");

        let (key, _) = error_of(&text.replace("PFM = \"cenapi-1\"", "PFM = \"afi-9\""));
        assert_eq!(key, "routes.PFM");
        let (key, _) = error_of(&text.replace("PFM = \"cenapi-1\"", "dea = \"cenapi-1\""));
        assert_eq!(key, "routes.dea");
        let (key, reason) = error_of(&format!("{text}cmi = \"pgr-1\"\n"));
        assert_eq!(key, "routes.cmi");
        assert!(reason.contains("more than one route"), "{reason}");
        let (key, reason) =
            error_of(&text.replace("display = \"CMI\"", "display = \"CMI\"\ncolour = 1"));
        assert!(key.contains("agencies.afi"), "{key}");
        assert!(reason.contains("unknown field"), "{reason}");
    }

    #[test]
    fn mailbox_grants_are_checked() {
        let c = Config::parse(
            &format!(
                "{GOOD}\n[inbox]\nreaders = [\"role:client\"]\n\n[units.24x7-desk]\nreaders = \
                 [\"duty-desk\", \"analyst\"]\n"
            ),
            Path::new("/etc/enlace"),
        )
        .unwrap();
        assert_eq!(c.readers.inbox, vec![Reader::AnyClient]);
        assert_eq!(c.readers.units["24x7-desk"].len(), 2);
        assert!(Config::parse(GOOD, Path::new("/")).unwrap().readers == Readers::default());

        let (key, reason) = error_of(&format!("{GOOD}\n[units.Desk]\nreaders = []\n"));
        assert_eq!(key, "units.Desk");
        assert!(reason.contains("not a unit name"), "{reason}");
        let (key, reason) = error_of(&format!("{GOOD}\n[units.receipts-x]\nreaders = []\n"));
        assert_eq!(key, "units.receipts-x");
        assert!(reason.contains("cannot be granted"), "{reason}");
        let (key, reason) = error_of(&format!("{GOOD}\n[inbox]\nreaders = [\"role:operator\"]\n"));
        assert_eq!(key, "inbox.readers");
        assert!(reason.contains("role:client"), "{reason}");
    }
}
