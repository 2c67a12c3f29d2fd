//! The certificates of the originators whose signatures a node or client checks: verified once,
//! as rustls verifies a client certificate (chain to the federation root, validity, CRLs), and
//! cached by the SHA-256 a signature names.
//!
//! Every node that admits an envelope, and every client that receives one, checks the
//! originator's signature over the exact bytes; the signer's certificate chain comes from the
//! connection it arrived on (a client's own handshake at the origin node), or is asked of the
//! previous hop, which had to know it to admit the message. This module only verifies and
//! remembers chains; asking for them is the node's and the client's business. Sans-I/O: the time
//! is a parameter.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::identity::{self, PeerCert};

/// Why there is no verified signer for a signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub(crate) struct SignerError {
    /// The chain verified but for the revocation of a certificate in it: the signer was
    /// genuine, and is no longer trusted.
    pub revoked: bool,
    /// The envelope came without a chain and the signer is not (or no longer) cached: the
    /// sender may send it again with the chain.
    pub unknown: bool,
    pub reason: String,
}

impl SignerError {
    pub fn other(reason: impl Into<String>) -> SignerError {
        SignerError {
            revoked: false,
            unknown: false,
            reason: reason.into(),
        }
    }
}

/// The signers whose chain went out on one connection. The next hop caches every chain it
/// verified by its SHA-256 (see [`Signers`]), so a chain goes once per connection, with the
/// first copy a signer signed; a hop that no longer has it asks for it again (`CHAIN_NEEDED`,
/// and the sender calls [`SentChains::forget`]). Bounded: past [`SENT_CAPACITY`] signers it
/// starts over, so a connection never counts on more than that many chains being cached
/// (a client's cache only learns signers from its one connection and keeps [`CAPACITY`]).
#[derive(Debug, Default)]
pub(crate) struct SentChains(Mutex<HashSet<[u8; 32]>>);

/// Signers a connection remembers having sent the chain of.
pub(crate) const SENT_CAPACITY: usize = 1024;

impl SentChains {
    /// Whether the chain of the signer named by `sha256` must go with the next copy; it is then
    /// noted as sent.
    pub fn needs(&self, sha256: &[u8]) -> bool {
        let Ok(key) = <[u8; 32]>::try_from(sha256) else {
            return true;
        };
        let mut sent = self.0.lock().expect("sent chains lock poisoned");
        if sent.contains(&key) {
            return false;
        }
        if sent.len() >= SENT_CAPACITY {
            sent.clear();
        }
        sent.insert(key);
        true
    }

    /// The chain to send with a copy signed as `signature`: `chain` unless `sent` (the chains
    /// the stream carried already) has it, in which case none. Without `sent` (a copy on a
    /// stream of its own, a redelivery) the chain always goes.
    pub fn select<'a>(
        sent: Option<&SentChains>,
        signature: Option<&crate::wire::pb::Signature>,
        chain: &'a [bytes::Bytes],
    ) -> &'a [bytes::Bytes] {
        match (sent, signature) {
            (Some(sent), Some(s)) if !sent.needs(&s.signer_certificate_sha256) => &[],
            _ => chain,
        }
    }

    /// The next hop asked for this signer's chain: it goes again with the next copy.
    pub fn forget(&self, sha256: &[u8]) {
        if let Ok(key) = <[u8; 32]>::try_from(sha256) {
            self.0
                .lock()
                .expect("sent chains lock poisoned")
                .remove(&key);
        }
    }
}

impl From<SignerError> for String {
    fn from(e: SignerError) -> String {
        e.reason
    }
}

/// Signer chains a cache keeps; beyond it, the oldest is forgotten (it is fetched and verified
/// again if needed).
pub(crate) const CAPACITY: usize = 4096;

/// A signer whose chain verified: its identity and key, and the chain (to hand to the next hop).
#[derive(Debug)]
pub(crate) struct Signer {
    pub cert: PeerCert,
    pub chain: Vec<CertificateDer<'static>>,
}

impl Signer {
    /// The chain as the envelope carries it (`SignedEnvelope.signer_chain`).
    pub fn chain_bytes(&self) -> Arc<[bytes::Bytes]> {
        self.chain
            .iter()
            .map(|c| bytes::Bytes::copy_from_slice(c))
            .collect()
    }
}

/// Verified signer chains by the SHA-256 of their leaf. Clones share the cache.
#[derive(Clone)]
pub(crate) struct Signers {
    trust_domain: String,
    cache: Arc<Mutex<Cache>>,
}

struct Cache {
    verifier: Arc<dyn ClientCertVerifier>,
    by_hash: HashMap<[u8; 32], Arc<Signer>>,
    order: VecDeque<[u8; 32]>,
}

impl Signers {
    /// A cache verifying chains with `verifier` (the federation's roots and CRLs) for identities
    /// of `trust_domain`.
    pub fn new(verifier: Arc<dyn ClientCertVerifier>, trust_domain: &str) -> Signers {
        Signers {
            trust_domain: trust_domain.to_owned(),
            cache: Arc::new(Mutex::new(Cache {
                verifier,
                by_hash: HashMap::new(),
                order: VecDeque::new(),
            })),
        }
    }

    /// The verified signer whose leaf certificate has this SHA-256, if known.
    pub fn get(&self, sha256: &[u8]) -> Option<Arc<Signer>> {
        let key: [u8; 32] = sha256.try_into().ok()?;
        self.lock().by_hash.get(&key).cloned()
    }

    /// Verifies `chain` (leaf first) at `now` and remembers it.
    ///
    /// # Errors
    /// Why the chain is not a signer's: empty, not chaining to the federation root, expired,
    /// revoked, or without an identity of this federation.
    pub fn verify(
        &self,
        chain: Vec<CertificateDer<'static>>,
        now: SystemTime,
    ) -> Result<Arc<Signer>, SignerError> {
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or_else(|| SignerError::other("an empty certificate chain"))?;
        let now = UnixTime::since_unix_epoch(
            now.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
        );
        let verifier = self.lock().verifier.clone();
        verifier
            .verify_client_cert(leaf, intermediates, now)
            .map_err(|e| SignerError {
                unknown: false,
                revoked: matches!(
                    e,
                    rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)
                ),
                reason: format!("the signer's certificate is not valid: {e}"),
            })?;
        let cert = identity::from_certificate(leaf, &self.trust_domain)
            .map_err(|e| SignerError::other(format!("the signer's certificate: {e}")))?;
        Ok(self.remember(Signer { cert, chain }))
    }

    /// The signer a signature names: remembered by its SHA-256, or verified now from `chain`
    /// (the chain an envelope carries, leaf first), which must be that signer's.
    ///
    /// # Errors
    /// Why there is no verified signer: no signature, or a chain that is missing, invalid, or
    /// another certificate's.
    pub fn signer_for(
        &self,
        signature: Option<&crate::wire::pb::Signature>,
        chain: &[bytes::Bytes],
        now: SystemTime,
    ) -> Result<Arc<Signer>, SignerError> {
        let hash = &signature
            .ok_or_else(|| SignerError::other("the envelope is not signed"))?
            .signer_certificate_sha256;
        if let Some(s) = self.get(hash) {
            if !chain.is_empty() {
                // Sent again: the sender counts on it being kept a while longer.
                self.touch(&s.cert.sha256);
            }
            return Ok(s);
        }
        if chain.is_empty() {
            return Err(SignerError {
                revoked: false,
                unknown: true,
                reason: "the signer's certificate chain is missing (send it again with the \
                         chain)"
                    .into(),
            });
        }
        let chain = chain
            .iter()
            .map(|c| CertificateDer::from(c.to_vec()))
            .collect();
        let s = self.verify(chain, now)?;
        if s.cert.sha256.as_slice() != hash.as_ref() {
            return Err(SignerError::other(
                "the certificate chain is not the signer's",
            ));
        }
        Ok(s)
    }

    /// Remembers a chain that was verified already (a connection's own, by its handshake).
    pub fn trusted(&self, cert: PeerCert, chain: Vec<CertificateDer<'static>>) -> Arc<Signer> {
        self.remember(Signer { cert, chain })
    }

    /// Verifies with `verifier` from now on (new CRLs, a new trust bundle) and forgets every
    /// chain, so each is verified again on its next use.
    pub fn reload(&self, verifier: Arc<dyn ClientCertVerifier>) {
        let mut c = self.lock();
        c.verifier = verifier;
        c.by_hash.clear();
        c.order.clear();
    }

    fn remember(&self, s: Signer) -> Arc<Signer> {
        let s = Arc::new(s);
        let mut c = self.lock();
        if c.by_hash.insert(s.cert.sha256, s.clone()).is_none() {
            c.order.push_back(s.cert.sha256);
            if c.order.len() > CAPACITY
                && let Some(old) = c.order.pop_front()
            {
                c.by_hash.remove(&old);
            }
        }
        s
    }

    /// Moves a cached signer to the back of the eviction order.
    fn touch(&self, sha256: &[u8; 32]) {
        let mut c = self.lock();
        if let Some(at) = c.order.iter().position(|h| h == sha256) {
            c.order.remove(at);
            c.order.push_back(*sha256);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        // Only this module's short critical sections hold the lock.
        self.cache.lock().expect("signer cache lock poisoned")
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::tls::TlsMaterial;

    fn material(stem: &str) -> TlsMaterial {
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs/test");
        let crls = ["crl/root.crl.pem", "crl/dea.crl.pem", "crl/pgr.crl.pem"]
            .iter()
            .map(|c| base.join(c))
            .collect::<Vec<_>>();
        TlsMaterial::load(
            &base.join(format!("{stem}.pem")),
            &base.join(format!("{stem}.key.pem")),
            &base.join("ca/root.pem"),
            &crls,
        )
        .unwrap()
    }

    #[test]
    fn chains_are_verified_like_client_certificates_and_cached_by_hash() {
        let node = material("nodes/dea/dea-1");
        let signers = Signers::new(node.signer_verifier().unwrap(), "enlace.test");
        let now = SystemTime::now();
        let desk = material("clients/dea/duty-desk");
        let s = signers.verify(desk.chain.clone(), now).unwrap();
        assert_eq!(s.cert.identity.name, "duty-desk");
        assert!(signers.get(&desk.leaf_sha256()).is_some());
        // Node certificates sign their own SYSTEM messages: they verify too.
        let pgr = material("nodes/pgr/pgr-1");
        assert!(signers.verify(pgr.chain.clone(), now).is_ok());
        // Revoked, expired, another federation's, or no chain at all: refused, not cached.
        for stem in [
            "clients/dea/revoked",
            "clients/dea/expired",
            "rogue/clients/dea/duty-desk",
        ] {
            let m = material(stem);
            let e = signers.verify(m.chain.clone(), now).unwrap_err();
            assert!(e.reason.contains("not valid"), "{stem}: {e}");
            // Only a revocation is reported as one.
            assert_eq!(e.revoked, stem == "clients/dea/revoked", "{stem}: {e}");
            assert!(signers.get(&m.leaf_sha256()).is_none());
        }
        assert!(signers.verify(Vec::new(), now).is_err());
        signers.reload(node.signer_verifier().unwrap());
        assert!(signers.get(&desk.leaf_sha256()).is_none());
    }

    #[test]
    fn a_chain_goes_once_per_connection_until_asked_for_again() {
        let sent = SentChains::default();
        assert!(sent.needs(&[1; 32]));
        assert!(!sent.needs(&[1; 32]));
        assert!(sent.needs(&[2; 32]));
        sent.forget(&[1; 32]);
        assert!(sent.needs(&[1; 32]));
        // Not a SHA-256: always sent.
        assert!(sent.needs(&[1; 3]));
        assert!(sent.needs(&[1; 3]));
        // What goes with a copy: the chain once per stream, always on a stream of its own.
        let sig = crate::wire::pb::Signature {
            signer_certificate_sha256: bytes::Bytes::from_static(&[7; 32]),
            ..Default::default()
        };
        let chain = [bytes::Bytes::from_static(b"chain")];
        assert_eq!(SentChains::select(Some(&sent), Some(&sig), &chain).len(), 1);
        assert!(SentChains::select(Some(&sent), Some(&sig), &chain).is_empty());
        assert_eq!(SentChains::select(None, Some(&sig), &chain).len(), 1);
        assert_eq!(SentChains::select(Some(&sent), None, &chain).len(), 1);
        // Bounded: it starts over.
        for i in 0..SENT_CAPACITY as u32 {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_be_bytes());
            k[31] = 9;
            sent.needs(&k);
        }
        assert!(sent.needs(&[2; 32]));
    }
}
