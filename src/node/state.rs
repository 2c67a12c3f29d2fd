//! The state every task of a running node shares: its configuration and identity, its ledger,
//! its peer links, and whether it still takes new work.
//!
//! Shared state only, and no behaviour beyond reading it: what the node does is in the modules
//! that use it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use quinn::Connection;
use tokio::sync::mpsc;

use super::events::Events;
use super::ledger::Ledger;
use super::links::Links;
use super::registry::Registry;
use super::trust::Own;
use crate::config::Config;
use crate::dispatch::RetryPolicy;
use crate::refusal::Refusal;
use crate::signature::VerifiedRoots;
use crate::signers::Signers;
use crate::validate::NodeContext;
use crate::wire::pb::RefusalCode;

/// State shared by every task of a running node.
pub(super) struct Node {
    pub config: Config,
    /// The node's own TLS material, identity and signing key (see `trust`).
    own: RwLock<Arc<Own>>,
    /// Every copy the node holds, and every change of its fate.
    pub ledger: Ledger,
    /// The state and counters of every peer link.
    pub links: Arc<Links>,
    /// Hands a peer's authorized connection to that peer's link task, by peer node name.
    pub link_inbox: HashMap<String, mpsc::Sender<Connection>>,
    /// Batch signatures already verified (see `signature`).
    pub verified: VerifiedRoots,
    /// Originators' certificate chains, verified, by SHA-256 (see `signers`).
    pub signers: Signers,
    /// Redelivery policy (`limits.max_delivery_attempts`).
    pub retry: RetryPolicy,
    /// Every live authorized connection (see `registry`).
    pub registry: Arc<Registry>,
    /// Bytes of frames all connections together may hold (`limits.node_frame_bytes`).
    pub frame_budget: Arc<tokio::sync::Semaphore>,
    /// Who may respond to the messages this node's clients sent (see `respond::Responders`).
    pub responders: std::sync::Mutex<crate::respond::Responders>,
    /// What the node remembers of its agency's messages, for derived products (see
    /// `provenance`).
    pub provenance: std::sync::Mutex<crate::provenance::Provenance>,
    /// Held while the provenance file is written (see `memory`).
    pub provenance_file: std::sync::Mutex<()>,
    /// Exchange agreements and internal rules in force (see `rules`).
    policy: super::rules::Shared,
    /// The connection each peer link uses now (see `link`), for requests other than
    /// forwarding: witnessing checkpoints, traces.
    peer_conns: std::sync::Mutex<HashMap<String, Connection>>,
    /// When a peer's trace last read the delivery log; held while one does (see `logview`).
    pub peer_traces: tokio::sync::Mutex<std::time::Instant>,
    pub shutting_down: AtomicBool,
    /// Where pipelined streams' frames are worked on (see `bulk`).
    pub bulk: super::bulk::Bulk,
}

impl Node {
    /// A node over this state; `own` is its TLS material as loaded at start.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        own: Own,
        policy: crate::agreement::Policy,
        memory: crate::provenance::Provenance,
        ledger: Ledger,
        links: Arc<Links>,
        link_inbox: HashMap<String, mpsc::Sender<Connection>>,
        signers: Signers,
        retry: RetryPolicy,
        bulk: super::bulk::Bulk,
    ) -> Node {
        Node {
            registry: Registry::new(config.limits.max_connections_per_certificate),
            frame_budget: Arc::new(tokio::sync::Semaphore::new(
                config.limits.node_frame_bytes as usize,
            )),
            own: RwLock::new(Arc::new(own)),
            policy: RwLock::new(Arc::new(policy)),
            provenance: std::sync::Mutex::new(memory),
            provenance_file: std::sync::Mutex::new(()),
            responders: std::sync::Mutex::new(crate::respond::Responders::new(
                config.limits.dedup_ids,
            )),
            config,
            ledger,
            links,
            link_inbox,
            verified: VerifiedRoots::default(),
            signers,
            retry,
            peer_conns: std::sync::Mutex::new(HashMap::new()),
            peer_traces: tokio::sync::Mutex::new(
                std::time::Instant::now()
                    .checked_sub(super::logview::PEER_TRACE_EVERY)
                    .unwrap_or_else(std::time::Instant::now),
            ),
            shutting_down: AtomicBool::new(false),
            bulk,
        }
    }

    /// The node's TLS material, identity and signing key in force.
    pub fn own(&self) -> Arc<Own> {
        self.own.read().expect("own material lock poisoned").clone()
    }

    /// Puts reloaded material in force.
    pub fn set_own(&self, own: Own) {
        *self.own.write().expect("own material lock poisoned") = Arc::new(own);
    }

    /// The connection the link to `peer` uses, if it is up.
    pub fn peer_conn(&self, peer: &str) -> Option<Connection> {
        let conns = self
            .peer_conns
            .lock()
            .expect("peer connections lock poisoned");
        conns
            .get(peer)
            .filter(|c| c.close_reason().is_none())
            .cloned()
    }

    /// Records the connection the link to `peer` now uses.
    pub fn set_peer_conn(&self, peer: &str, conn: Connection) {
        let mut conns = self
            .peer_conns
            .lock()
            .expect("peer connections lock poisoned");
        conns.insert(peer.to_owned(), conn);
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<crate::agreement::Policy> {
        self.policy.read().expect("policy lock poisoned").clone()
    }

    /// Puts a reloaded policy in force.
    pub fn set_policy(&self, policy: crate::agreement::Policy) {
        *self.policy.write().expect("policy lock poisoned") = Arc::new(policy);
    }

    pub fn events(&self) -> &Events {
        self.ledger.events()
    }

    /// Why the node takes no new messages, if it does not.
    pub fn refusing_new_work(&self) -> Option<Refusal> {
        if let Some(reason) = self.ledger.failure() {
            return Some(Refusal::new(RefusalCode::StoreFailed, reason));
        }
        self.shutting_down
            .load(Ordering::Acquire)
            .then(|| Refusal::new(RefusalCode::ShuttingDown, "the node is shutting down"))
    }

    /// What admission needs to know about this node.
    pub fn admission(&self) -> NodeContext<'_> {
        NodeContext {
            node: &self.config.name,
            max_hops: self.config.limits.max_hops,
            max_addressees: self.config.limits.max_addressees,
            verified: &self.verified,
        }
    }

    /// How the node names itself as a sender (of its own SYSTEM messages).
    pub fn own_name(&self) -> String {
        format!("{}/node/{}", self.config.agency, self.config.name)
    }
}
