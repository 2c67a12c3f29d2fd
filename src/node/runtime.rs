//! Starting, running and stopping a node.
//!
//! [`run`] is what `enlaced` calls: it loads the node's certificate, opens its store, rebuilds
//! its queues, binds its socket, starts the tasks (the acceptor, one link per peer, the expiry
//! sweeper, the receipts worker), and when the shutdown future completes (or the store fails)
//! refuses new work, drains for up to the grace period, and closes. [`start`] does the same in
//! the background for tests and the demo.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use quinn::Connection;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;

use super::audit;
use super::events::{Event, Events};
use super::ledger::{Ledger, Notice};
use super::links::{LinkStatus, Links};
use super::metrics::Metrics;
use super::state::Node;
use super::witness;
use super::{link, memory, receipts, rules, server, trust};
use crate::config::Config;
use crate::dispatch::RetryPolicy;
use crate::signers::Signers;
use crate::store::{Store, StoreError, StoreOptions};
use crate::tls::{self, TlsError};

/// Why a node could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Its certificate, key, trust bundle or CRLs could not be loaded, or its socket bound.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Its certificate does not name the node its config describes.
    #[error("the node's own certificate is unusable: {0}")]
    OwnCertificate(String),
    /// Its store cannot be opened: another process holds it, or it is damaged.
    #[error("the node's store cannot be opened: {0}")]
    Store(StoreError),
    /// It stopped because its store failed; a supervisor should restart it (the store is
    /// recovered from disk at start).
    #[error("stopped because storage failed: {0}")]
    StorageFailed(String),
    /// What it remembers for derived products (`<data_dir>/provenance.jsonl`) cannot be read
    /// or rewritten.
    #[error("provenance file: {0}")]
    Memory(String),
    /// The respond-by deadlines (`<data_dir>/deadlines.jsonl`) cannot be read or rewritten.
    #[error("respond-by deadlines: {0}")]
    Deadlines(String),
    /// The delivery log could not be opened (`<data_dir>/log`).
    #[error("delivery log: {0}")]
    Log(std::io::Error),
    /// The stateless-reset secret (`<data_dir>/reset.key`) cannot be read or created.
    #[error("reset key (<data_dir>/reset.key): {0}")]
    ResetKey(std::io::Error),
    /// The threads of its bulk runtime could not be started.
    #[error("cannot start the node's bulk runtime: {0}")]
    Runtime(std::io::Error),
    /// Its policy file (`node.policy`) does not load, or is another agency's.
    #[error("policy: {0}")]
    Policy(crate::agreement::PolicyError),
    /// The metrics endpoint's address, written in `metrics.listen`, cannot be bound. Choose
    /// another, or `listen = ""` to turn the endpoint off.
    #[error("cannot bind the metrics endpoint (metrics.listen) on TCP {addr}: {reason}")]
    MetricsBind {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's error.
        reason: String,
        /// Its kind (`AddrInUse` when another socket holds the address).
        kind: std::io::ErrorKind,
    },
}

/// A node started in this process (tests, the demo): its address, events and a stop handle.
///
/// ```no_run
/// # async fn example(config: enlace::config::Config) -> Result<(), enlace::NodeError> {
/// let node = enlace::node::start(config).await?;
/// println!("listening on {}", node.addr);
/// let mut events = node.events();
/// # let _ = &mut events;
/// node.stop().await;
/// # Ok(()) }
/// ```
pub struct RunningNode {
    /// The address the node listens on.
    pub addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    events: Events,
    links: Arc<Links>,
    reload: Arc<Notify>,
    /// The node-wide budget of bytes in frames being received or processed.
    frame_budget: (Arc<tokio::sync::Semaphore>, u64),
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningNode {
    /// Observes the node's events from now on (a slow observer misses some; the log record is
    /// always written).
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Where its metrics and health endpoint listens (`http://<addr>/metrics`, `/healthz`,
    /// `/readyz`); `None` when it is off, or when the default address was taken.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Every peer link's state and counters, by peer name.
    pub fn links(&self) -> Vec<LinkStatus> {
        self.links.snapshot()
    }

    /// Bytes of frames being received or processed right now, all connections together: what
    /// `limits.node_frame_bytes` bounds (each frame's declared length is taken from the budget
    /// before its body is read).
    pub fn frame_bytes_held(&self) -> u64 {
        let (budget, total) = &self.frame_budget;
        total.saturating_sub(budget.available_permits() as u64)
    }

    /// Events handed to the delivery log's writer that it has not written yet: how far the log
    /// lags behind the node's work (0 without a log).
    pub fn log_pending(&self) -> u64 {
        self.events.log().map_or(0, |l| l.pending())
    }

    /// Reloads the node's TLS material (CRLs, certificate and key), as SIGHUP does; the outcome
    /// is an [`Event::Reloaded`] (or an error in the log, the old material staying in force).
    pub fn reload(&self) {
        self.reload.notify_one();
    }

    /// Prunes the delivery log as the node would at `now` (it does so at start and daily, with
    /// the real time): whole records files older than `delivery_log.retention_days`, and only
    /// behind the last checkpoint. Says what it removed (also a `pruned` record in the log).
    ///
    /// # Errors
    /// The log's files could not be written.
    pub async fn prune_log(&self, now: SystemTime) -> std::io::Result<Option<String>> {
        match self.events.log() {
            Some(log) => log.prune(now).await,
            None => Ok(None),
        }
    }

    /// Stops the node gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// Starts a node in the background.
///
/// # Errors
/// As [`run`], for what fails before the node serves.
pub async fn start(config: Config) -> Result<RunningNode, NodeError> {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let bound = bind(config).await?;
    let addr = bound
        .endpoint
        .local_addr()
        .map_err(|e| NodeError::Tls(TlsError::Verifier(e.to_string())))?;
    let metrics_addr = bound.metrics.as_ref().and_then(|l| l.local_addr().ok());
    let events = bound.node.events().clone();
    let links = bound.node.links.clone();
    let reload = bound.reload.clone();
    let frame_budget = (
        bound.node.frame_budget.clone(),
        bound.node.config.limits.node_frame_bytes,
    );
    let task = tokio::spawn(serve(bound, async {
        let _ = rx.await;
    }));
    Ok(RunningNode {
        addr,
        metrics_addr,
        events,
        links,
        reload,
        frame_budget,
        stop: Some(tx),
        task,
    })
}

/// Runs a node until `shutdown` completes, then drains and closes.
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let config = enlace::config::Config::load("/etc/enlace/enlaced.toml".as_ref())?;
/// enlace::node::run(config, async {
///     let _ = tokio::signal::ctrl_c().await;
/// })
/// .await?;
/// # Ok(()) }
/// ```
///
/// # Errors
/// [`NodeError::Tls`], [`NodeError::OwnCertificate`] and [`NodeError::Store`] when it cannot
/// start; [`NodeError::StorageFailed`] when it stopped because its store failed.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), NodeError> {
    let bound = bind(config).await?;
    let ledger = bound.node.ledger.clone();
    serve(bound, shutdown).await;
    match ledger.failure() {
        Some(reason) => Err(NodeError::StorageFailed(reason.to_owned())),
        None => Ok(()),
    }
}

/// Loads the node's TLS material and checks its certificate against the config, without binding
/// anything (`enlaced --check-config`). Returns what an operator should know: no CRLs (so
/// revocation is not checked), CRLs past their nextUpdate, certificates expiring within 30 days.
///
/// # Errors
/// [`NodeError::Tls`] for unreadable material, [`NodeError::OwnCertificate`] for a certificate
/// of another node or a key that does not match it.
pub fn check(config: &Config) -> Result<Vec<String>, NodeError> {
    let own = trust::load(config)?;
    let policy = rules::load(config)?;
    let mut warnings = trust::warnings(config, &own.tls, SystemTime::now());
    warnings.extend(rules::warnings(config, &policy));
    warnings.extend(config.metrics.warning());
    Ok(warnings)
}

/// A node ready to serve: its state, its socket, and what its tasks start from.
struct Bound {
    node: Arc<Node>,
    endpoint: quinn::Endpoint,
    /// The receiving end of each peer's link inbox, by peer name.
    link_rx: HashMap<String, mpsc::Receiver<Connection>>,
    notices: mpsc::Receiver<Notice>,
    /// The respond-by deadlines kept across restarts, replayed.
    deadlines: (
        super::deadlines::Journal,
        crate::respond::Deadlines<super::deadlines::Awaited>,
    ),
    reload: Arc<Notify>,
    /// The metrics endpoint's listener, when it is on.
    metrics: Option<tokio::net::TcpListener>,
}

/// The node's stateless-reset secret, `<data_dir>/reset.key` (32 random bytes, owner-only),
/// created at first start and kept: see [`tls::endpoint`]. Anyone holding it could reset the
/// node's connections, so it is as private as the data directory.
fn reset_key(data_dir: &std::path::Path) -> std::io::Result<[u8; 32]> {
    let path = data_dir.join("reset.key");
    match std::fs::read(&path) {
        Ok(bytes) => {
            return <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
                std::io::Error::other(format!(
                    "{} holds {} bytes, not 32: remove it to make a new one",
                    path.display(),
                    bytes.len()
                ))
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(data_dir)?;
    let mut key = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
        .map_err(|_| std::io::Error::other("no randomness for the reset key"))?;
    // Replaced whole: never a short key.
    super::files::replace(&path, &key, super::files::OWNER_ONLY)?;
    Ok(key)
}

/// Checks the config's TLS material, opens the store, rebuilds the queues and binds the socket.
async fn bind(config: Config) -> Result<Bound, NodeError> {
    let own = trust::load(&config)?;
    let policy = rules::load(&config)?;
    let warnings = trust::warnings(&config, &own.tls, SystemTime::now())
        .into_iter()
        .chain(rules::warnings(&config, &policy))
        .chain(config.metrics.warning());
    for w in warnings {
        tracing::warn!(node = %config.name, "{w}");
    }
    let server = tls::quic_server_config(own.tls.server_config()?)?;
    let reset_key = reset_key(&config.data_dir).map_err(NodeError::ResetKey)?;
    let endpoint = tls::endpoint(config.listen, Some(server), Some(&reset_key))?;
    let metrics_listener = bind_metrics(&config)?;
    let metrics = Arc::new(Metrics::new(
        &config.name,
        &config.agency,
        config.peers.keys().cloned(),
    ));

    let opening = std::time::Instant::now();
    let log = audit::Log::open(
        &config.data_dir.join("log"),
        &config.name,
        config.agency.as_str(),
        config.delivery_log.clone(),
    )
    .map_err(NodeError::Log)?;
    let log_open = opening.elapsed();
    let events = Events::with_log(&config.name, log).with_metrics(metrics.clone());
    let mut link_inbox = HashMap::new();
    let mut link_rx = HashMap::new();
    for name in config.peers.keys() {
        let (tx, rx) = mpsc::channel(link::INBOX_CAPACITY);
        link_inbox.insert(name.clone(), tx);
        link_rx.insert(name.clone(), rx);
    }
    let links = Arc::new(Links::new(events.clone(), config.peers.keys().cloned()));
    let retry = RetryPolicy {
        max_attempts: config.limits.max_delivery_attempts,
        ..RetryPolicy::default()
    };
    let store_options = StoreOptions {
        observer: Some(metrics.store_observer()),
        segment_bytes: config.store_segment_bytes,
        ..StoreOptions::default()
    };
    // What the node remembers for derived products is read back (and rewritten compacted) on a
    // thread of its own while the store opens: neither needs the other.
    let ((store, store_open), (memory, memory_open)) = std::thread::scope(|s| {
        let memory = s.spawn(|| {
            let started = std::time::Instant::now();
            (memory::open(&config), started.elapsed())
        });
        let started = std::time::Instant::now();
        let store = Store::open(&config.data_dir.join("store"), store_options);
        let store = (store, started.elapsed());
        let memory = memory
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (store, memory)
    });
    let (store, recovered) = match store {
        Ok(opened) => opened,
        Err(e) => {
            if let Err(m) = &memory {
                tracing::error!(node = %config.name, error = %m,
                    "what the node remembers for derived products could not be read either");
            }
            return Err(NodeError::Store(e));
        }
    };
    let memory = memory?;
    let (ledger, notices) = Ledger::new(
        &config.name,
        &config.agency,
        config.peers.keys().cloned(),
        config.limits.queue_capacity,
        config.limits.dedup_ids,
        store,
        events,
    );
    let opening = std::time::Instant::now();
    ledger.recover(recovered).await;
    tracing::info!(
        node = %config.name,
        log_ms = log_open.as_millis() as u64,
        store_ms = store_open.as_millis() as u64,
        memory_ms = memory_open.as_millis() as u64,
        queues_ms = opening.elapsed().as_millis() as u64,
        "opened the delivery log, the store and the queues"
    );
    let deadlines = super::deadlines::Journal::open(&config, receipts::MAX_DEADLINES)?;
    let signers = Signers::new(own.tls.signer_verifier()?, &config.trust_domain);
    signers.trusted(own.me.clone(), own.tls.chain.clone());
    let bulk = super::bulk::Bulk::start(&config.name).map_err(NodeError::Runtime)?;
    let node = Arc::new(Node::new(
        config, own, policy, memory, ledger, links, link_inbox, signers, retry, bulk,
    ));
    Ok(Bound {
        node,
        endpoint,
        link_rx,
        notices,
        deadlines,
        reload: Arc::new(Notify::new()),
        metrics: metrics_listener,
    })
}

/// Binds the metrics endpoint's TCP listener, when it is on. The default address, when taken
/// (another node on the same host), is given up with a warning; an address the config names
/// must be bound.
fn bind_metrics(config: &Config) -> Result<Option<tokio::net::TcpListener>, NodeError> {
    let Some(addr) = config.metrics.listen else {
        return Ok(None);
    };
    let bound = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .and_then(tokio::net::TcpListener::from_std);
    match bound {
        Ok(listener) => Ok(Some(listener)),
        Err(e) if !config.metrics.explicit => {
            tracing::warn!(
                node = %config.name, %addr, error = %e,
                "metrics endpoint off: its default address is taken (set metrics.listen)"
            );
            Ok(None)
        }
        Err(e) => Err(NodeError::MetricsBind {
            addr,
            reason: e.to_string(),
            kind: e.kind(),
        }),
    }
}

async fn serve(bound: Bound, shutdown: impl Future<Output = ()>) {
    let Bound {
        node,
        endpoint,
        mut link_rx,
        notices,
        deadlines,
        reload,
        metrics,
    } = bound;
    tracing::info!(
        node = %node.config.name,
        agency = %node.config.agency,
        addr = %endpoint.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        peers = node.config.peers.len(),
        "node listening"
    );
    let mut tasks = JoinSet::new();
    for peer in node.config.peers.values() {
        if let Some(rx) = link_rx.remove(&peer.node) {
            let endpoint = endpoint.clone();
            tasks.spawn(link::run(node.clone(), endpoint, peer.clone(), rx));
        }
    }
    tasks.spawn(receipts::run(node.clone(), notices, deadlines));
    tasks.spawn(trust::watch(node.clone(), endpoint.clone(), reload));
    tasks.spawn(memory::run(node.clone()));
    tasks.spawn(witness::run(node.clone()));
    let pruner = node.clone();
    tasks.spawn(async move {
        // At start, then daily: records past retention go, behind a checkpoint.
        let mut tick = tokio::time::interval(Duration::from_secs(86_400));
        loop {
            tick.tick().await;
            if let Some(log) = pruner.events().log()
                && let Err(e) = log.prune(SystemTime::now()).await
            {
                tracing::error!(node = %pruner.config.name, error = %e, "delivery log: pruning failed");
            }
        }
    });
    let sweeper = node.clone();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            sweeper.ledger.sweep(SystemTime::now());
        }
    });
    let acceptor = tokio::spawn(server::accept(node.clone(), endpoint.clone()));
    if let Some(listener) = metrics {
        tracing::info!(
            node = %node.config.name,
            addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            "metrics endpoint listening (/metrics, /healthz, /readyz)"
        );
        tasks.spawn(super::metrics::endpoint::serve(node.clone(), listener));
    }
    tokio::select! {
        _ = shutdown => {}
        _ = node.ledger.fatal() => {}
    }

    tracing::info!(node = %node.config.name, "shutting down: refusing new work, draining");
    node.shutting_down.store(true, Ordering::Release);
    acceptor.abort();
    let deadline = tokio::time::Instant::now() + node.config.limits.shutdown_grace;
    while !node.ledger.drained() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !node.ledger.drained() {
        tracing::warn!(node = %node.config.name, "grace period over with messages still queued");
    }
    tasks.abort_all();
    endpoint.close(0u32.into(), b"node shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    // Acknowledgements recorded in the background reach the disk, so a restart does not offer
    // acknowledged copies again.
    let _ = tokio::time::timeout(Duration::from_secs(1), node.ledger.flush()).await;
    memory::flush(&node, &mut 0).await;
    if let Err(e) = node.ledger.close().await {
        tracing::error!(node = %node.config.name, error = %e, "store closed with an error");
    }
    // The last records get a checkpoint, and the log reaches the disk.
    witness::checkpoint(&node).await;
    if let Some(log) = node.events().log().cloned() {
        let _ = tokio::task::spawn_blocking(move || log.close()).await;
    }
    tracing::info!(node = %node.config.name, "stopped");
}
