//! Checkpoints of the delivery log, and witnessing: the node signs its log's head every
//! `delivery_log.checkpoint_records` records or `checkpoint_interval_ms` (when there is
//! anything new), offers it to every peer whose link is up, with the consistency proof from
//! the last checkpoint that peer cosigned, and keeps the cosignatures. As a witness, a node
//! cosigns a peer's checkpoint only if it is signed by that peer's key, names that peer's log,
//! and extends the last one it cosigned for it; anything else is refused and logged loudly
//! ([`Event::WitnessRefused`]), and the last good checkpoint stays what it compares with.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use tokio::sync::watch;

use super::conn::Conn;
use super::events::Event;
use super::state::Node;
use crate::audit::{CheckpointEntry, KeyEntry, Witnessed, hex, timestamp};
use crate::merkle::{self, Hash};
use crate::note::{self, Checkpoint, Note, VerifierKey};
use crate::refusal::Refusal;
use crate::session;
use crate::wire::pb::{self, RefusalCode, frame::Body};

/// Largest checkpoint note a witness reads.
const MAX_NOTE_BYTES: usize = 4096;
/// Most hashes in a consistency proof a witness reads.
const MAX_PROOF_HASHES: usize = 128;

/// How long a peer has to answer a checkpoint.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Signs checkpoints when due, until the node stops.
pub(super) async fn run(node: Arc<Node>) {
    let Some(log) = node.events().log().cloned() else {
        return;
    };
    let mut tick = tokio::time::interval(node.config.delivery_log.checkpoint_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // One offering task per peer, each offering the latest checkpoint when it is free: a
    // witness sees this node's checkpoints in the order they were signed (one that overtook
    // an older one, slow to prove, would make the older look like a rollback), and a slow
    // peer is offered only the newest. Dropped, with this task, when the node stops.
    let mut offering = tokio::task::JoinSet::new();
    let latest: Vec<watch::Sender<Option<Signed>>> = node
        .config
        .peers
        .keys()
        .map(|peer| {
            let (tx, rx) = watch::channel(None);
            offering.spawn(offer_latest(node.clone(), peer.clone(), rx));
            tx
        })
        .collect();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = log.due.notified() => {}
        }
        if let Some(signed) = checkpoint(&node).await {
            for tx in &latest {
                tx.send_replace(Some(signed.clone()));
            }
        }
    }
}

/// Offers `peer` each latest checkpoint in turn, skipping those superseded while it waited.
async fn offer_latest(node: Arc<Node>, peer: String, mut latest: watch::Receiver<Option<Signed>>) {
    while latest.changed().await.is_ok() {
        let signed = latest.borrow_and_update().clone();
        if let Some(signed) = signed {
            offer(node.clone(), peer.clone(), signed).await;
        }
    }
}

/// A checkpoint just signed: its note and its tree.
#[derive(Clone)]
pub(super) struct Signed {
    note: String,
    checkpoint: Checkpoint,
}

/// Signs a checkpoint of everything written so far, unless the last one covers it.
pub(super) async fn checkpoint(node: &Arc<Node>) -> Option<Signed> {
    let log = node.events().log()?.clone();
    let head = match log.head().await {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(node = %node.config.name, error = %e, "delivery log: no checkpoint");
            return None;
        }
    };
    let last = log.state.lock().expect("log state").last.clone();
    if head.size() == 0 || last.as_ref().is_some_and(|l| l.size == head.size()) {
        return None;
    }
    let own = node.own();
    let name = node.own_name();
    let key = VerifierKey {
        name: name.clone(),
        public: own.signer.public_key().to_vec(),
    };
    log.key(KeyEntry {
        key: key.encode(),
        certificate: B64.encode(&own.chain[0]),
        since: timestamp(SystemTime::now()),
    });
    let cp = Checkpoint {
        origin: log.origin().to_owned(),
        size: head.size(),
        root: head.root(),
    };
    let text = cp.text();
    let n = Note {
        signatures: vec![note::sign(&text, &name, &own.signer)],
        text,
    };
    let entry = CheckpointEntry::Checkpoint {
        note: n.to_text(),
        frontier: head.nodes().iter().map(|h| hex(h)).collect(),
    };
    if let Err(e) = log.checkpoint(entry, head).await {
        tracing::error!(node = %node.config.name, error = %e, "delivery log: checkpoint not written");
        return None;
    }
    log.state.lock().expect("log state").last = Some(cp.clone());
    node.events().record(Event::Checkpoint { size: cp.size });
    if let Some(m) = node.events().metrics() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        m.set_log(cp.size, now.as_secs() as i64);
    }
    Some(Signed {
        note: n.to_text(),
        checkpoint: cp,
    })
}

/// Offers a checkpoint to `peer` to cosign, if its link is up.
async fn offer(node: Arc<Node>, peer: String, signed: Signed) {
    let Some(conn) = node.peer_conn(&peer) else {
        return;
    };
    let Some(log) = node.events().log().cloned() else {
        return;
    };
    let size = signed.checkpoint.size;
    let mut old = log
        .state
        .lock()
        .expect("log state")
        .cosigned
        .get(&peer)
        .copied()
        .unwrap_or(0);
    for _ in 0..2 {
        let proof = if old > 0 && old < size {
            match log.proof(old, size).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(node = %node.config.name, %peer, error = %e,
                        "delivery log: no consistency proof for the peer");
                    Vec::new()
                }
            }
        } else {
            Vec::new()
        };
        let req = pb::LogCheckpoint {
            note: signed.note.clone(),
            old_size: old,
            proof: proof
                .iter()
                .map(|h| bytes::Bytes::copy_from_slice(h))
                .collect(),
        };
        let answer = tokio::time::timeout(
            ANSWER_TIMEOUT,
            session::request(&conn, Body::LogCheckpoint(req)),
        )
        .await;
        match answer {
            Ok(Ok(Body::LogCosigned(c))) => {
                let Some(key) = peer_key(&conn, &node.config.trust_domain) else {
                    return;
                };
                let with = format!("{}\n{}\n", signed.checkpoint.text(), c.cosignature);
                if Note::parse(&with)
                    .ok()
                    .and_then(|n| n.cosigned_by(&key.0))
                    .is_none()
                {
                    node.events().record(Event::WitnessRefused {
                        peer,
                        reason: "its cosignature does not verify with its certificate's key".into(),
                    });
                    return;
                }
                log.key(KeyEntry {
                    key: key.0.encode(),
                    certificate: B64.encode(&key.1),
                    since: timestamp(SystemTime::now()),
                });
                let entry = CheckpointEntry::Cosignature {
                    size,
                    witness: peer.clone(),
                    line: c.cosignature,
                };
                if log.cosigned(entry).await.is_ok() {
                    log.state
                        .lock()
                        .expect("log state")
                        .cosigned
                        .insert(peer.clone(), size);
                    node.events().record(Event::Witnessed {
                        peer,
                        whose: "own",
                        size,
                    });
                }
                return;
            }
            Ok(Ok(Body::LogProofNeeded(p))) => old = p.old_size,
            Ok(Ok(other)) => {
                tracing::warn!(node = %node.config.name, %peer, answer = ?other,
                    "delivery log: unexpected answer to a checkpoint");
                return;
            }
            Ok(Err(crate::SubmitError::Refused { reason, .. })) => {
                node.events().record(Event::WitnessRefused {
                    peer: peer.clone(),
                    reason: format!(
                        "{peer} refused this node's checkpoint of size {size}: {reason}"
                    ),
                });
                return;
            }
            // The link went down or is slow: the next checkpoint is offered again.
            Ok(Err(_)) | Err(_) => return,
        }
    }
}

/// The note key and certificate of the peer on `conn`, from its verified certificate.
fn peer_key(conn: &quinn::Connection, trust_domain: &str) -> Option<(VerifierKey, Vec<u8>)> {
    let chain = conn
        .peer_identity()?
        .downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
        .ok()?;
    let leaf = chain.first()?;
    let cert = crate::identity::from_certificate(leaf, trust_domain).ok()?;
    Some((
        VerifierKey {
            name: cert.identity.to_string(),
            public: cert.ed25519_public_key?,
        },
        leaf.to_vec(),
    ))
}

/// Answers a peer's `LogCheckpoint` as its witness.
pub(super) async fn cosign(
    node: &Arc<Node>,
    conn: &Conn,
    req: pb::LogCheckpoint,
) -> Result<Body, Refusal> {
    let peer = conn.who.identity.name.clone();
    let log = node
        .events()
        .log()
        .cloned()
        .ok_or_else(|| Refusal::invalid("this node keeps no delivery log"))?;
    // Logged loudly, but within the connection's refusal log rate: a peer cannot flood the
    // log with checkpoints it knows will be refused.
    let refuse = |reason: String| {
        if let Some(logged) = conn.refusal_to_log(&node.config.limits, &reason) {
            node.events().record(Event::WitnessRefused {
                peer: peer.clone(),
                reason: logged,
            });
        }
        Refusal::new(RefusalCode::Invalid, reason)
    };
    // Bounded before any work: a checkpoint note is a few lines and a signature or two, and a
    // consistency proof has at most two hashes per level of a 64-bit tree.
    if req.note.len() > MAX_NOTE_BYTES || req.proof.len() > MAX_PROOF_HASHES {
        return Err(refuse(format!(
            "oversized checkpoint: a note of {} bytes (at most {MAX_NOTE_BYTES}) with a proof of \
             {} hashes (at most {MAX_PROOF_HASHES})",
            req.note.len(),
            req.proof.len()
        )));
    }
    let note = Note::parse(&req.note).map_err(|e| refuse(e.to_string()))?;
    let cp = Checkpoint::parse(&note.text).map_err(|e| refuse(e.to_string()))?;
    let origin = format!("enlace/{}/{}", conn.who.identity.agency, peer);
    if cp.origin != origin {
        return Err(refuse(format!(
            "the checkpoint is of log {:?}, not of {origin}, the sender's",
            cp.origin
        )));
    }
    let key = VerifierKey {
        name: conn.name.clone(),
        public: conn.who.ed25519_public_key.clone().unwrap_or_default(),
    };
    if !note.verified_by(&key) {
        return Err(refuse(format!(
            "forged checkpoint of size {}: its signature does not verify with {}'s certificate",
            cp.size, conn.name
        )));
    }
    let _one_at_a_time = log.witnessing.lock().await;
    let before = log.witnessed.lock().expect("witnessed").get(&peer).cloned();
    if let Some(prev) = &before {
        if cp.size < prev.size {
            return Err(refuse(format!(
                "rollback: a checkpoint of size {} after one of size {} (its log lost records)",
                cp.size, prev.size
            )));
        }
        if cp.size == prev.size {
            if cp.root != prev.root {
                return Err(refuse(format!(
                    "two different logs of size {}: its history was rewritten",
                    cp.size
                )));
            }
        } else if req.old_size != prev.size {
            return Ok(Body::LogProofNeeded(pb::LogProofNeeded {
                old_size: prev.size,
            }));
        } else {
            let proof: Option<Vec<Hash>> = req
                .proof
                .iter()
                .map(|p| <Hash>::try_from(p.as_ref()).ok())
                .collect();
            let ok = proof.is_some_and(|p| {
                merkle::verify_consistency(prev.size, cp.size, &prev.root, &cp.root, &p)
            });
            if !ok {
                return Err(refuse(format!(
                    "inconsistent checkpoint: size {} does not extend the checkpoint of size {} \
                     this node cosigned before (its history was rewritten)",
                    cp.size, prev.size
                )));
            }
        }
    }
    let own = node.own();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let line = note::cosign(&note.text, &node.own_name(), &own.signer, now).line();
    if before.as_ref() != Some(&cp) {
        log.witnessed(Witnessed {
            peer: peer.clone(),
            checkpoint: note.text.clone(),
        });
        log.witnessed
            .lock()
            .expect("witnessed")
            .insert(peer.clone(), cp.clone());
    }
    node.events().record(Event::Witnessed {
        peer,
        whose: "peer",
        size: cp.size,
    });
    Ok(Body::LogCosigned(pb::LogCosigned {
        cosignature: line.trim_end().to_owned(),
    }))
}
