//! The node daemon's runtime: state shared by connection handlers, delivery loops and peer links.
//!
//! Thin async glue. Decisions are made by the sans-I/O core (`policy`, `validate`, `route`,
//! `lanes`); this module owns the sockets, the tasks and shutdown. Every copy a node holds is in
//! its [`crate::store`]; the queues ([`queue::Queue`]) are the in-memory index over it.

mod deliver;
pub mod events;
mod lifecycle;
mod link;
pub mod links;
mod operator;
mod queue;
mod receipts;
mod recovery;
mod server;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::task::JoinSet;

use crate::config::Config;
use crate::identity::{self, PeerCert};
use crate::lanes::{Entry, RetryPolicy};
use crate::signature::Signer;
use crate::store::{Store, StoreError, StoreOptions};
use crate::tls::{self, TlsError, TlsMaterial};
use crate::validate::Refusal;
use crate::wire::pb::RefusalCode;
pub use events::Event;
use events::Events;
use links::Links;
pub use links::{LinkState, LinkStatus};
use queue::{Item, Queue};
pub use server::FRAME_SLACK;

/// Why a node could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("the node's own certificate is unusable: {0}")]
    OwnCertificate(String),
    #[error("the node's store cannot be opened: {0}")]
    Store(StoreError),
    #[error("stopped because storage failed: {0}")]
    StorageFailed(String),
}

/// Mailboxes (agency inbox plus units) a node keeps; units are created on first use, so this
/// bounds what addressees and subscribers can make a node allocate.
pub const MAX_MAILBOXES: usize = 1024;

/// State shared by every task of a running node.
pub(crate) struct Node {
    config: Config,
    me: PeerCert,
    tls: TlsMaterial,
    events: Events,
    /// Mailboxes of this node's agency, by unit ("" is the agency inbox). Created on first use.
    mailboxes: Mutex<HashMap<String, Arc<Queue>>>,
    /// One outbox per peer node, by node name; fixed at start.
    outboxes: HashMap<String, Arc<Queue>>,
    /// Hands a peer's authorized connection to that peer's link task.
    link_inbox: HashMap<String, tokio::sync::mpsc::Sender<link::Input>>,
    /// The receiving ends of `link_inbox`, taken by the link tasks when they start.
    link_rx: Mutex<HashMap<String, tokio::sync::mpsc::Receiver<link::Input>>>,
    /// The state and counters of every peer link.
    links: Arc<Links>,
    shutting_down: AtomicBool,
    /// Every copy the node holds, on disk.
    store: Store,
    /// Dead letters whose queue no longer exists (see `recovery`).
    orphans: std::sync::OnceLock<Arc<Queue>>,
    /// Set once the store has failed, with the reason given to every sender from then on.
    storage_failed: std::sync::OnceLock<String>,
    /// Woken when the store fails: the node then stops, so that a supervisor restarts it and the
    /// store is recovered from disk.
    fatal: tokio::sync::Notify,
    /// Signs the node's own reports (non-delivery).
    signer: Signer,
    /// Batch signatures already verified (see `signature`).
    verified: crate::signature::VerifiedRoots,
    retry: RetryPolicy,
    /// Respond-by deadlines of action copies held for this agency (see `receipts`).
    deadlines: Mutex<crate::respond::Deadlines<receipts::Awaited>>,
}

impl Node {
    /// The mailbox of a unit, created on first use; `None` when creating it would exceed
    /// [`MAX_MAILBOXES`].
    fn mailbox(&self, unit: &str) -> Option<Arc<Queue>> {
        let mut m = self.mailboxes.lock().expect("mailbox map lock poisoned");
        if m.len() >= MAX_MAILBOXES && !m.contains_key(unit) {
            return None;
        }
        let q = m
            .entry(unit.to_owned())
            .or_insert_with(|| {
                let destination = if unit.is_empty() {
                    self.config.agency.to_string()
                } else {
                    format!("{}/{unit}", self.config.agency)
                };
                Queue::new(
                    format!("mailbox:{destination}"),
                    destination,
                    self.config.limits.queue_capacity,
                )
            })
            .clone();
        Some(q)
    }

    /// Where copies whose queue no longer exists are kept as dead letters, for an operator.
    fn orphans(&self) -> Arc<Queue> {
        self.orphans
            .get_or_init(|| Queue::new("orphans".into(), "-".into(), 1))
            .clone()
    }

    /// Every queue: mailboxes, then outboxes.
    fn queues(&self) -> Vec<Arc<Queue>> {
        let mut all: Vec<_> = self
            .mailboxes
            .lock()
            .expect("mailbox map lock poisoned")
            .values()
            .cloned()
            .collect();
        all.extend(self.outboxes.values().cloned());
        all.extend(self.orphans.get().cloned());
        all
    }

    /// Why the node takes no new messages, if it does not.
    fn refusing_new_work(&self) -> Option<Refusal> {
        if let Some(reason) = self.storage_failed.get() {
            return Some(Refusal::new(RefusalCode::ShuttingDown, reason.clone()));
        }
        self.shutting_down
            .load(Ordering::Acquire)
            .then(|| Refusal::new(RefusalCode::ShuttingDown, "the node is shutting down"))
    }

    /// True when nothing waits in any queue, receipts units aside: receipts wait there, durable,
    /// until their originator reads them, which shutting down cannot hurry.
    fn drained(&self) -> bool {
        let mailboxes_empty = self
            .mailboxes
            .lock()
            .expect("mailbox map lock poisoned")
            .iter()
            .all(|(unit, q)| crate::receipt::is_receipts_unit(unit) || q.is_empty());
        mailboxes_empty && self.outboxes.values().all(|q| q.is_empty())
    }

    fn sweep(self: &Arc<Self>, now: SystemTime) {
        for q in self.queues() {
            let expired = q.sweep(now);
            if !expired.is_empty() {
                self.expired(&q, expired);
            }
        }
        self.overdue(now);
    }
}

/// A node started in this process (tests, the demo): its address, events and a stop handle.
pub struct RunningNode {
    pub addr: SocketAddr,
    events: Events,
    links: Arc<Links>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningNode {
    /// Observes the node's lifecycle events from now on.
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Every peer link's state and counters, by peer name.
    pub fn links(&self) -> Vec<LinkStatus> {
        self.links.snapshot()
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
pub async fn start(config: Config) -> Result<RunningNode, NodeError> {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (node, endpoint) = bind(config)?;
    let addr = endpoint
        .local_addr()
        .map_err(|e| NodeError::Tls(TlsError::Verifier(e.to_string())))?;
    let events = node.events.clone();
    let links = node.links.clone();
    let task = tokio::spawn(serve(node, endpoint, async {
        let _ = rx.await;
    }));
    Ok(RunningNode {
        addr,
        events,
        links,
        stop: Some(tx),
        task,
    })
}

/// Runs a node until `shutdown` completes, then drains and closes.
///
/// # Errors
/// [`NodeError::StorageFailed`] when the node stopped because its store failed (a supervisor
/// should restart it: the store is recovered from disk at start).
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), NodeError> {
    let (node, endpoint) = bind(config)?;
    serve(node.clone(), endpoint, shutdown).await;
    match node.storage_failed.get() {
        Some(reason) => Err(NodeError::StorageFailed(reason.clone())),
        None => Ok(()),
    }
}

/// Loads the node's TLS material and checks its certificate against the config, without binding
/// anything (`enlaced --check-config`).
pub fn check(config: &Config) -> Result<(TlsMaterial, PeerCert), NodeError> {
    let tls = TlsMaterial::load(
        &config.tls.cert,
        &config.tls.key,
        &config.tls.ca,
        &config.tls.crls,
    )?;
    let me = identity::from_certificate(&tls.chain[0], &config.trust_domain)
        .map_err(|e| NodeError::OwnCertificate(e.to_string()))?;
    if me.identity.role != identity::Role::Node
        || me.identity.agency != config.agency
        || me.identity.name != config.name
    {
        return Err(NodeError::OwnCertificate(format!(
            "certificate is {} but the config says node {}/{}",
            me.identity, config.agency, config.name
        )));
    }
    // Building the server config also checks that the key matches the certificate.
    tls.server_config()?;
    Ok((tls, me))
}

/// Checks the config's TLS material and binds the node's socket.
fn bind(config: Config) -> Result<(Arc<Node>, quinn::Endpoint), NodeError> {
    let (tls, me) = check(&config)?;
    let server = tls::quic_server_config(tls.server_config()?)?;
    let endpoint = tls::endpoint(config.listen, Some(server))?;
    let events = Events::new(&config.name);
    let outboxes = config
        .peers
        .keys()
        .map(|name| {
            let q = Queue::new(
                format!("outbox:{name}"),
                name.clone(),
                config.limits.queue_capacity,
            );
            (name.clone(), q)
        })
        .collect();
    let mut link_inbox = HashMap::new();
    let mut link_rx = HashMap::new();
    for name in config.peers.keys() {
        let (tx, rx) = tokio::sync::mpsc::channel(link::INBOX_CAPACITY);
        link_inbox.insert(name.clone(), tx);
        link_rx.insert(name.clone(), rx);
    }
    let links = Arc::new(Links::new(events.clone(), config.peers.keys().cloned()));
    let signer = Signer::from_pkcs8(tls.key_der(), tls.leaf_sha256())
        .map_err(|e| NodeError::OwnCertificate(e.to_string()))?;
    let retry = RetryPolicy {
        max_attempts: config.limits.max_delivery_attempts,
        ..RetryPolicy::default()
    };
    let (store, recovered) = Store::open(&config.data_dir.join("store"), StoreOptions::default())
        .map_err(NodeError::Store)?;
    let node = Arc::new(Node {
        store,
        orphans: std::sync::OnceLock::new(),
        storage_failed: std::sync::OnceLock::new(),
        fatal: tokio::sync::Notify::new(),
        signer,
        verified: Default::default(),
        retry,
        deadlines: Mutex::new(crate::respond::Deadlines::new(receipts::MAX_DEADLINES)),
        link_inbox,
        link_rx: Mutex::new(link_rx),
        links,
        config,
        me,
        tls,
        events,
        mailboxes: Mutex::new(HashMap::new()),
        outboxes,
        shutting_down: AtomicBool::new(false),
    });
    node.recover(recovered);
    Ok((node, endpoint))
}

async fn serve(node: Arc<Node>, endpoint: quinn::Endpoint, shutdown: impl Future<Output = ()>) {
    tracing::info!(
        node = %node.config.name,
        agency = %node.config.agency,
        addr = %endpoint.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        peers = node.config.peers.len(),
        "node listening"
    );
    let mut tasks = JoinSet::new();
    for peer in node.config.peers.values() {
        let rx = node
            .link_rx
            .lock()
            .expect("link inbox lock poisoned")
            .remove(&peer.node);
        // Each peer's receiver is taken once, here, at start.
        if let (Some(rx), Some(tx)) = (rx, node.link_inbox.get(&peer.node)) {
            tasks.spawn(link::run(
                node.clone(),
                endpoint.clone(),
                peer.clone(),
                tx.clone(),
                rx,
            ));
        }
    }
    let sweeper = node.clone();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            sweeper.sweep(SystemTime::now());
        }
    });
    let acceptor = tokio::spawn(server::accept(node.clone(), endpoint.clone()));
    tokio::select! {
        _ = shutdown => {}
        _ = node.fatal.notified() => {}
    }

    tracing::info!(node = %node.config.name, "shutting down: refusing new work, draining");
    node.shutting_down.store(true, Ordering::Release);
    acceptor.abort();
    let deadline = tokio::time::Instant::now() + node.config.limits.shutdown_grace;
    while !node.drained() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !node.drained() {
        tracing::warn!(node = %node.config.name, "grace period over with messages still queued");
    }
    tasks.abort_all();
    endpoint.close(0u32.into(), b"node shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    if let Err(e) = node.store.clone().close().await {
        tracing::error!(node = %node.config.name, error = %e, "store closed with an error");
    }
    tracing::info!(node = %node.config.name, "stopped");
}

/// Queues one copy of a message for a consumer.
fn entry(
    item: Item,
    precedence: crate::message::Precedence,
    expires_at: SystemTime,
) -> Entry<Item> {
    Entry {
        precedence,
        expires_at,
        item,
    }
}
