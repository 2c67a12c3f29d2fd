//! The state every task of a running node shares: its configuration and identity, its ledger,
//! its peer links, and whether it still takes new work.
//!
//! Shared state only, and no behaviour beyond reading it: what the node does is in the modules
//! that use it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use quinn::Connection;
use tokio::sync::mpsc;

use super::events::Events;
use super::ledger::Ledger;
use super::links::Links;
use crate::config::Config;
use crate::dispatch::RetryPolicy;
use crate::identity::PeerCert;
use crate::refusal::Refusal;
use crate::signature::VerifiedRoots;
use crate::signers::Signers;
use crate::tls::TlsMaterial;
use crate::validate::NodeContext;
use crate::wire::pb::RefusalCode;

/// State shared by every task of a running node.
pub(super) struct Node {
    pub config: Config,
    /// The node's own certificate identity.
    pub me: PeerCert,
    pub tls: TlsMaterial,
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
    pub shutting_down: AtomicBool,
}

impl Node {
    pub fn events(&self) -> &Events {
        self.ledger.events()
    }

    /// Why the node takes no new messages, if it does not.
    pub fn refusing_new_work(&self) -> Option<Refusal> {
        if let Some(reason) = self.ledger.failure() {
            return Some(Refusal::new(RefusalCode::ShuttingDown, reason));
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
            verified: &self.verified,
        }
    }

    /// How the node names itself as a sender (of its own SYSTEM messages).
    pub fn own_name(&self) -> String {
        format!("{}/node/{}", self.config.agency, self.config.name)
    }
}
