//! The node's live connections: who holds each (its verified certificate chain), so that a cap
//! on connections per certificate holds and a certificate revoked while connected loses its
//! connections.
//!
//! A connection is registered once it is authorized and stays registered while it is served;
//! its [`Registered`] handle unregisters it when dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use quinn::Connection;
use rustls_pki_types::CertificateDer;

use crate::identity::PeerCert;
use crate::refusal::Refusal;
use crate::wire::pb::RefusalCode;

/// One live connection.
pub(super) struct Live {
    pub who: PeerCert,
    /// Its verified chain, leaf first, to check again when the CRLs change.
    pub chain: Vec<CertificateDer<'static>>,
    pub conn: Connection,
    pub closing: Arc<Closing>,
}

/// Whether and why the node is closing a connection, shared by its registration, its
/// [`Conn`](super::conn::Conn) and whoever closes it, so that the connection's end is logged
/// with the node's reason (quinn only says "closed" for a close of our own).
#[derive(Debug, Default)]
pub(super) struct Closing {
    /// Set when its certificate was revoked: its requests are refused until it is closed.
    revoked: AtomicBool,
    reason: OnceLock<String>,
}

impl Closing {
    /// Whether the connection's certificate was revoked while it was connected.
    pub fn revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    /// Closes `conn` with `code` and `reason` (the first reason given is the one kept).
    pub fn close(&self, conn: &Connection, code: u32, reason: String) {
        let _ = self.reason.set(reason);
        let reason = self.reason.get().map_or("", String::as_str);
        conn.close(code.into(), reason.as_bytes());
    }

    /// Why the node closed the connection, if it did.
    pub fn reason(&self) -> Option<&str> {
        self.reason.get().map(String::as_str)
    }
}

/// A live connection whose certificate no longer verifies, for its caller to close.
pub(super) struct Revoked {
    pub who: PeerCert,
    pub conn: Connection,
    pub closing: Arc<Closing>,
    /// Why its certificate no longer verifies.
    pub reason: String,
}

/// Every live connection, by registration number.
pub(super) struct Registry {
    per_certificate: usize,
    next: AtomicU64,
    live: Mutex<HashMap<u64, Live>>,
}

/// A registration, removed when dropped.
pub(super) struct Registered {
    registry: Arc<Registry>,
    id: u64,
    /// Shared with the registry's entry.
    pub closing: Arc<Closing>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

impl Registry {
    /// A registry allowing `per_certificate` connections for one certificate at once.
    pub fn new(per_certificate: usize) -> Arc<Registry> {
        Arc::new(Registry {
            per_certificate,
            next: AtomicU64::new(0),
            live: Mutex::default(),
        })
    }

    /// Registers an authorized connection.
    ///
    /// # Errors
    /// `LIMIT` when the certificate already holds as many connections as allowed.
    pub fn register(
        self: &Arc<Registry>,
        who: &PeerCert,
        chain: &[CertificateDer<'static>],
        conn: &Connection,
    ) -> Result<Registered, Refusal> {
        let mut live = self.lock();
        let held = live.values().filter(|l| l.who.sha256 == who.sha256).count();
        if held >= self.per_certificate {
            return Err(Refusal::new(
                RefusalCode::Limit,
                format!(
                    "{} already holds {held} connections to this node, the most one \
                     certificate may (limits.max_connections_per_certificate); close one first",
                    who.identity
                ),
            ));
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let closing = Arc::new(Closing::default());
        live.insert(
            id,
            Live {
                who: who.clone(),
                chain: chain.to_vec(),
                conn: conn.clone(),
                closing: closing.clone(),
            },
        );
        Ok(Registered {
            registry: self.clone(),
            id,
            closing,
        })
    }

    /// Marks revoked every live connection whose chain `still_valid` rejects, and returns them
    /// (each with the reason), for the caller to close once their requests in flight are
    /// answered.
    pub fn revoke_where(&self, still_valid: impl Fn(&Live) -> Result<(), String>) -> Vec<Revoked> {
        let live = self.lock();
        live.values()
            .filter(|l| !l.closing.revoked())
            .filter_map(|l| {
                still_valid(l).err().map(|reason| {
                    l.closing.revoked.store(true, Ordering::Release);
                    Revoked {
                        who: l.who.clone(),
                        conn: l.conn.clone(),
                        closing: l.closing.clone(),
                        reason,
                    }
                })
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Live>> {
        // Only this module's short critical sections hold the lock.
        self.live.lock().expect("registry lock poisoned")
    }
}
