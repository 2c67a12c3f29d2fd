//! An authorized connection as the node knows it: who is on the other end (from its verified
//! certificate), and which mailboxes it reads.
//!
//! State only; serving the connection's streams is `streams`, delivering its mailboxes
//! `deliver`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use quinn::Connection;
use rustls_pki_types::CertificateDer;
use tokio::sync::{Semaphore, watch};

use super::registry::Closing;
use crate::address::Mailbox;
use crate::config::Limits;
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
    /// Bytes of frames this connection may hold at once (`limits.connection_frame_bytes`).
    pub frame_budget: Arc<Semaphore>,
    /// Bad frames so far.
    bad_frames: AtomicU32,
    /// How many refusals it may still have logged now, and which were not.
    refusal_log: Mutex<RefusalLog>,
    /// Whether its certificate was revoked (it is closed once its requests in flight are
    /// answered, and gets no new ones), and why the node closed it.
    pub closing: Arc<Closing>,
}

/// A token bucket for logging a connection's refusals.
struct RefusalLog {
    tokens: f64,
    at: Instant,
    suppressed: u64,
}

impl Conn {
    pub fn new(
        conn: Connection,
        who: PeerCert,
        chain: &[CertificateDer<'_>],
        limits: &Limits,
        closing: Arc<Closing>,
    ) -> Arc<Conn> {
        Arc::new(Conn {
            chain: chain.iter().map(|c| Bytes::copy_from_slice(c)).collect(),
            name: who.identity.to_string(),
            conn,
            who,
            subscriptions: Mutex::default(),
            frame_budget: Arc::new(Semaphore::new(limits.connection_frame_bytes as usize)),
            bad_frames: AtomicU32::new(0),
            refusal_log: Mutex::new(RefusalLog {
                tokens: f64::from(limits.refusal_log_burst),
                at: Instant::now(),
                suppressed: 0,
            }),
            closing,
        })
    }

    /// Counts a bad frame; true once there have been `max` of them.
    pub fn bad_frame(&self, max: u32) -> bool {
        self.bad_frames.fetch_add(1, Ordering::Relaxed) + 1 >= max
    }

    /// Whether a refusal may be logged now: `Some(n)` with the number of refusals not logged
    /// since the last one that was, `None` when this one is not (it is counted). A connection
    /// logs `refusal_log_burst` refusals at once, then `refusal_log_per_second`.
    pub fn may_log_refusal(&self, limits: &Limits, now: Instant) -> Option<u64> {
        let mut log = self.refusal_log.lock().expect("refusal log lock poisoned");
        let burst = f64::from(limits.refusal_log_burst);
        let refill = now.saturating_duration_since(log.at).as_secs_f64()
            * f64::from(limits.refusal_log_per_second);
        log.tokens = (log.tokens + refill).min(burst);
        log.at = now;
        if log.tokens >= 1.0 {
            log.tokens -= 1.0;
            Some(std::mem::take(&mut log.suppressed))
        } else {
            log.suppressed += 1;
            None
        }
    }

    /// What to log of a refusal of this connection's, within its log rate
    /// ([`Conn::may_log_refusal`]): `reason`, with how many were not logged since the last one
    /// that was; `None` when this one is not logged (it is counted).
    pub fn refusal_to_log(&self, limits: &Limits, reason: &str) -> Option<String> {
        match self.may_log_refusal(limits, Instant::now())? {
            0 => Some(reason.to_owned()),
            n => Some(format!(
                "{reason} ({n} earlier refusals of this connection not logged)"
            )),
        }
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
