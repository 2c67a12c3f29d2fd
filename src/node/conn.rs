//! An authorized connection as the node knows it: who is on the other end (from its verified
//! certificate), and which mailboxes it reads.
//!
//! State only; serving the connection's streams is `streams`, delivering its mailboxes
//! `deliver`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use quinn::Connection;
use rustls_pki_types::CertificateDer;
use tokio::sync::watch;

use crate::address::Mailbox;
use crate::identity::{PeerCert, Role};

/// An authorized connection and what it does at this node.
pub(super) struct Conn {
    pub conn: Connection,
    /// Who is on the other end, from its verified certificate.
    pub who: PeerCert,
    /// `who`, printed once (`agency/role/name`).
    pub name: String,
    /// Its verified certificate chain (leaf first), as envelopes carry a signer's chain.
    pub chain: Arc<[Bytes]>,
    /// Mailboxes this connection reads, each with the stop signal of its delivery loop.
    subscriptions: Mutex<HashMap<Mailbox, watch::Sender<bool>>>,
}

impl Conn {
    pub fn new(conn: Connection, who: PeerCert, chain: &[CertificateDer<'_>]) -> Arc<Conn> {
        Arc::new(Conn {
            chain: chain.iter().map(|c| Bytes::copy_from_slice(c)).collect(),
            name: who.identity.to_string(),
            conn,
            who,
            subscriptions: Mutex::default(),
        })
    }

    /// Whether the other end is a peer node.
    pub fn is_peer(&self) -> bool {
        self.who.identity.role == Role::Node
    }

    /// Records that this connection reads `mailbox`, with the stop signal of its delivery loop;
    /// false if it already does.
    pub fn start_reading(&self, mailbox: &Mailbox, stop: watch::Sender<bool>) -> bool {
        let mut subs = self.subscriptions();
        if subs.contains_key(mailbox) {
            return false;
        }
        subs.insert(mailbox.clone(), stop);
        true
    }

    /// Stops the delivery loop of `mailbox` on this connection, if there is one.
    pub fn stop_reading(&self, mailbox: &Mailbox) {
        if let Some(stop) = self.subscriptions().remove(mailbox) {
            let _ = stop.send(true);
        }
    }

    fn subscriptions(&self) -> std::sync::MutexGuard<'_, HashMap<Mailbox, watch::Sender<bool>>> {
        self.subscriptions
            .lock()
            .expect("subscriptions lock poisoned")
    }
}
