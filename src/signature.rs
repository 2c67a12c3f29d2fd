//! Originator signatures over the exact envelope bytes.
//!
//! The signed message is domain-separated and length-prefixed:
//! `"enlace/v1 envelope\0" || u64_be(len) || envelope_bytes`, so a signature over an envelope can
//! never be replayed as a signature over anything else. Only Ed25519 (through ring) is supported
//! today; the algorithm name travels in the signature so another can be added beside it.
//!
//! Analytical traffic is signed in batches: the originator signs
//! `"enlace/v1 envelope batch\0" || u64_be(tree_size) || root`, the root of an RFC 9162 Merkle
//! tree whose leaves are the exact envelope bytes ([`crate::merkle`]), and each envelope carries
//! its inclusion proof. Every envelope stays verifiable on its own, yet the originator pays one
//! signature per batch and a node that keeps a [`VerifiedRoots`] cache one verification per
//! batch: the rest is a few SHA-256 hashes per envelope.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;
use ring::signature::{self, Ed25519KeyPair};

use crate::merkle::{self, Hash};
use crate::wire::pb;

const CONTEXT: &[u8] = b"enlace/v1 envelope\0";
const BATCH_CONTEXT: &[u8] = b"enlace/v1 envelope batch\0";

/// Proof paths longer than this cannot come from a batch of at most 2^32 envelopes.
const MAX_PROOF_LEN: usize = 32;

fn signed_root(size: u64, root: &Hash) -> Vec<u8> {
    let mut m = Vec::with_capacity(BATCH_CONTEXT.len() + 8 + root.len());
    m.extend_from_slice(BATCH_CONTEXT);
    m.extend_from_slice(&size.to_be_bytes());
    m.extend_from_slice(root);
    m
}

/// The name of the one supported algorithm.
pub(crate) const ED25519: &str = "ed25519";

fn signed_bytes(envelope: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTEXT.len() + 8 + envelope.len());
    m.extend_from_slice(CONTEXT);
    m.extend_from_slice(&(envelope.len() as u64).to_be_bytes());
    m.extend_from_slice(envelope);
    m
}

/// Why a signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SignatureError {
    #[error("the envelope is not signed")]
    Missing,
    #[error("unsupported signature algorithm {0:?}")]
    Algorithm(String),
    #[error("the signature was made with a different certificate than the sender's")]
    WrongSigner,
    #[error("the signer's certificate has no Ed25519 key")]
    NoKey,
    #[error("the signature does not match the envelope bytes")]
    Mismatch,
    #[error("the batch proof is malformed or does not lead to the signed root")]
    BadProof,
    #[error("the private key is not an Ed25519 PKCS#8 key: {0}")]
    BadKey(String),
}

/// Signs envelopes with an originator's private key.
pub(crate) struct Signer {
    key: Ed25519KeyPair,
    cert_sha256: [u8; 32],
}

impl Signer {
    /// Loads an Ed25519 PKCS#8 key (DER) and the SHA-256 of the matching certificate.
    pub fn from_pkcs8(pkcs8: &[u8], cert_sha256: [u8; 32]) -> Result<Signer, SignatureError> {
        let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
            .map_err(|e| SignatureError::BadKey(e.to_string()))?;
        Ok(Signer { key, cert_sha256 })
    }

    /// The raw public key.
    pub fn public_key(&self) -> &[u8] {
        use ring::signature::KeyPair;
        self.key.public_key().as_ref()
    }

    /// Signs a signed note's message (see [`crate::note`]); never an envelope's bytes, which
    /// are signed domain-separated by [`Signer::sign`].
    pub fn sign_note(&self, message: &[u8]) -> [u8; 64] {
        let mut out = [0u8; 64];
        out.copy_from_slice(self.key.sign(message).as_ref());
        out
    }

    /// Signs the exact envelope bytes.
    pub fn sign(&self, envelope: &[u8]) -> pb::Signature {
        pb::Signature {
            algorithm: ED25519.to_owned(),
            signer_certificate_sha256: Bytes::copy_from_slice(&self.cert_sha256),
            signature: Bytes::copy_from_slice(self.key.sign(&signed_bytes(envelope)).as_ref()),
            batch: None,
        }
    }

    #[cfg(test)]
    /// Encodes an envelope and signs its exact bytes: the signed form a client or node sends.
    pub fn seal(&self, env: &pb::Envelope) -> pb::SignedEnvelope {
        let bytes = Bytes::from(prost::Message::encode_to_vec(env));
        pb::SignedEnvelope {
            signature: Some(self.sign(&bytes)),
            envelope: bytes,
            hops: Vec::new(),
            route_to: Vec::new(),
            signer_chain: Vec::new(),
        }
    }

    /// Signs a batch of envelopes with one signature over their Merkle root; returns one
    /// signature (with its inclusion proof) per envelope, in order. A batch of one gets a plain
    /// [`Signer::sign`] signature.
    pub fn sign_batch(&self, envelopes: &[&[u8]]) -> Vec<pb::Signature> {
        if let [one] = envelopes {
            return vec![self.sign(one)];
        }
        let leaves: Vec<Hash> = envelopes.iter().map(|e| merkle::leaf_hash(e)).collect();
        let Some((root, proofs)) = merkle::tree(&leaves) else {
            return Vec::new();
        };
        let size = envelopes.len() as u64;
        let sig = Bytes::copy_from_slice(self.key.sign(&signed_root(size, &root)).as_ref());
        let cert = Bytes::copy_from_slice(&self.cert_sha256);
        proofs
            .into_iter()
            .enumerate()
            .map(|(i, path)| pb::Signature {
                algorithm: ED25519.to_owned(),
                signer_certificate_sha256: cert.clone(),
                signature: sig.clone(),
                batch: Some(pb::BatchProof {
                    leaf_index: i as u64,
                    tree_size: size,
                    path: path.iter().map(|h| Bytes::copy_from_slice(h)).collect(),
                }),
            })
            .collect()
    }
}

/// Batch roots whose signature has been verified, so later envelopes of the same batch cost a
/// few hashes instead of a signature verification. Bounded: past [`VerifiedRoots::CAPACITY`]
/// the oldest entry is forgotten (which only costs a re-verification).
#[derive(Default)]
pub(crate) struct VerifiedRoots {
    inner: Mutex<(HashSet<RootKey>, VecDeque<RootKey>)>,
}

/// Signer certificate, signature, tree size and root: a cached entry only matches the very
/// signature that was verified over that root.
type RootKey = ([u8; 32], [u8; 64], u64, Hash);

impl VerifiedRoots {
    pub const CAPACITY: usize = 4096;

    fn contains(&self, key: &RootKey) -> bool {
        self.inner
            .lock()
            .expect("verified roots lock")
            .0
            .contains(key)
    }

    fn insert(&self, key: RootKey) {
        let mut guard = self.inner.lock().expect("verified roots lock");
        let (set, order) = &mut *guard;
        if set.insert(key) {
            order.push_back(key);
            if order.len() > Self::CAPACITY
                && let Some(old) = order.pop_front()
            {
                set.remove(&old);
            }
        }
    }
}

/// Verifies that `sig` is a signature over `envelope` (alone, or as a member of a signed batch)
/// by the holder of the certificate with the given SHA-256 and Ed25519 public key. With `cache`,
/// a batch root verified before is not verified again.
pub(crate) fn verify(
    envelope: &[u8],
    sig: Option<&pb::Signature>,
    cert_sha256: &[u8; 32],
    public_key: Option<&[u8]>,
    cache: Option<&VerifiedRoots>,
) -> Result<(), SignatureError> {
    let sig = sig.ok_or(SignatureError::Missing)?;
    if sig.algorithm != ED25519 {
        return Err(SignatureError::Algorithm(sig.algorithm.clone()));
    }
    if sig.signer_certificate_sha256.as_ref() != cert_sha256 {
        return Err(SignatureError::WrongSigner);
    }
    let key = public_key.ok_or(SignatureError::NoKey)?;
    let check = |message: &[u8]| {
        signature::UnparsedPublicKey::new(&signature::ED25519, key)
            .verify(message, &sig.signature)
            .map_err(|_| SignatureError::Mismatch)
    };
    let Some(batch) = &sig.batch else {
        return check(&signed_bytes(envelope));
    };
    if batch.path.len() > MAX_PROOF_LEN {
        return Err(SignatureError::BadProof);
    }
    let path = batch
        .path
        .iter()
        .map(|h| Hash::try_from(h.as_ref()).map_err(|_| SignatureError::BadProof))
        .collect::<Result<Vec<Hash>, _>>()?;
    let leaf = merkle::leaf_hash(envelope);
    let root = merkle::root_from_proof(&leaf, batch.leaf_index, batch.tree_size, &path)
        .ok_or(SignatureError::BadProof)?;
    let sig_bytes =
        <[u8; 64]>::try_from(sig.signature.as_ref()).map_err(|_| SignatureError::Mismatch)?;
    let key_id = (*cert_sha256, sig_bytes, batch.tree_size, root);
    if cache.is_some_and(|c| c.contains(&key_id)) {
        return Ok(());
    }
    check(&signed_root(batch.tree_size, &root))?;
    if let Some(c) = cache {
        c.insert(key_id);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        Signer::from_pkcs8(pkcs8.as_ref(), [9; 32]).unwrap()
    }

    #[test]
    fn sign_and_verify() {
        let s = signer();
        let sig = s.sign(b"envelope");
        let pk = s.public_key().to_vec();
        let v = |env: &[u8], sig: Option<&pb::Signature>, cert: [u8; 32]| {
            verify(env, sig, &cert, Some(&pk), None)
        };
        assert_eq!(v(b"envelope", Some(&sig), [9; 32]), Ok(()));
        assert_eq!(
            v(b"envelopf", Some(&sig), [9; 32]),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            v(b"envelope", Some(&sig), [8; 32]),
            Err(SignatureError::WrongSigner)
        );
        assert_eq!(v(b"envelope", None, [9; 32]), Err(SignatureError::Missing));
    }

    #[test]
    fn batch_signatures_verify_each_envelope_alone() {
        let s = signer();
        let pk = s.public_key().to_vec();
        let envs: Vec<Vec<u8>> = (0..7u8).map(|i| vec![i; 40 + i as usize]).collect();
        let refs: Vec<&[u8]> = envs.iter().map(Vec::as_slice).collect();
        let sigs = s.sign_batch(&refs);
        assert_eq!(sigs.len(), envs.len());
        let cache = VerifiedRoots::default();
        for (env, sig) in envs.iter().zip(&sigs) {
            assert_eq!(verify(env, Some(sig), &[9; 32], Some(&pk), None), Ok(()));
            assert_eq!(
                verify(env, Some(sig), &[9; 32], Some(&pk), Some(&cache)),
                Ok(())
            );
        }
        // Another envelope's proof, a tampered envelope, a stretched tree: refused.
        assert!(verify(&envs[0], Some(&sigs[1]), &[9; 32], Some(&pk), Some(&cache)).is_err());
        let mut tampered = envs[2].clone();
        tampered[0] ^= 1;
        assert!(verify(&tampered, Some(&sigs[2]), &[9; 32], Some(&pk), Some(&cache)).is_err());
        let mut stretched = sigs[3].clone();
        stretched.batch.as_mut().unwrap().tree_size += 1;
        assert!(
            verify(
                &envs[3],
                Some(&stretched),
                &[9; 32],
                Some(&pk),
                Some(&cache)
            )
            .is_err()
        );
        // A forged signature over a genuine root is refused, even with the root cached.
        let mut forged = sigs[4].clone();
        let mut bytes = forged.signature.to_vec();
        bytes[0] ^= 1;
        forged.signature = bytes.into();
        assert_eq!(
            verify(&envs[4], Some(&forged), &[9; 32], Some(&pk), Some(&cache)),
            Err(SignatureError::Mismatch)
        );
        // A batch signature never passes as a single-envelope one, nor the reverse.
        let mut bare = sigs[5].clone();
        bare.batch = None;
        assert_eq!(
            verify(&envs[5], Some(&bare), &[9; 32], Some(&pk), None),
            Err(SignatureError::Mismatch)
        );
        // A batch of one is a plain signature.
        let one = s.sign_batch(&[b"alone"]);
        assert!(one[0].batch.is_none());
        assert_eq!(
            verify(b"alone", Some(&one[0]), &[9; 32], Some(&pk), None),
            Ok(())
        );
    }
}
