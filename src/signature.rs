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

use std::collections::{HashMap, VecDeque};
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

/// Batches whose signature has been verified, each with the tree nodes its envelopes' proofs
/// were shown to lead through, so a later envelope of the same batch costs its leaf hash and the
/// few hashes up to the first node already known, instead of a signature verification and its
/// whole path. Bounded: past [`VerifiedRoots::CAPACITY`] batches or [`VerifiedRoots::MAX_NODES`]
/// nodes the oldest batches are forgotten (which only costs a re-verification).
pub(crate) struct VerifiedRoots {
    inner: Mutex<Verified>,
}

impl Default for VerifiedRoots {
    fn default() -> VerifiedRoots {
        VerifiedRoots::bounded(VerifiedRoots::CAPACITY, VerifiedRoots::MAX_NODES)
    }
}

struct Verified {
    capacity: usize,
    max_nodes: usize,
    batches: HashMap<BatchKey, Batch>,
    /// Oldest first.
    order: VecDeque<BatchKey>,
    /// Nodes held by all batches.
    nodes: usize,
}

/// Signer certificate, signature and signed tree size: a batch's nodes only vouch for envelopes
/// that carry the very signature that was verified over its root and size.
type BatchKey = ([u8; 32], [u8; 64], u64);

/// A verified batch: the signed tree size and every interior node known to lie on a path to the
/// signed root (the root included), by its hash and place in the tree, with the step above it.
/// Leaves are not kept. A node vouches only at its own place, and only for the rest of a proof
/// that is the batch's own: the cache can confirm what a full verification would accept, never
/// more, so the answer never depends on what it holds (another envelope's proof, a proof with
/// a wrong, missing or extra entry past a known node all fail with the cache as without it).
struct Batch {
    nodes: HashMap<(Hash, merkle::Place), Up>,
}

/// The step above a known node: the sibling it is hashed with and the parent that makes, with
/// the parent's place; `None` at the root.
type Up = Option<(Hash, Hash, merkle::Place)>;

/// Nodes walked, bottom up, each with the step above it.
type Walked = Vec<((Hash, merkle::Place), Up)>;

/// Links each node `passed` (bottom up, the walk's nodes in order, `passed[j]` made with
/// `path[j]`) to the one above it: the next one passed, then `top` (a known node the walk
/// stopped at; `None` when the last one passed is the root).
fn linked(
    path: &[Hash],
    passed: &[(Hash, merkle::Place)],
    top: Option<(Hash, merkle::Place)>,
) -> Walked {
    passed
        .iter()
        .enumerate()
        .map(|(j, node)| {
            let above = passed.get(j + 1).copied().or(top);
            let up = above.map(|(parent, place)| (path[j + 1], parent, place));
            (*node, up)
        })
        .collect()
}

impl VerifiedRoots {
    pub const CAPACITY: usize = 4096;
    /// About 150 bytes each with the table's own: about 5 MiB at most.
    pub const MAX_NODES: usize = 1 << 15;
    /// Nodes one batch may hold, so that no signer's batch crowds out the others'.
    pub const MAX_BATCH_NODES: usize = 1 << 10;

    fn bounded(capacity: usize, max_nodes: usize) -> VerifiedRoots {
        VerifiedRoots {
            inner: Mutex::new(Verified {
                capacity,
                max_nodes,
                batches: HashMap::new(),
                order: VecDeque::new(),
                nodes: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Verified> {
        self.inner.lock().expect("verified roots lock")
    }
}

impl Verified {
    /// `Some(Ok)` if `leaf`'s proof leads to a node of the verified batch `key` (of `size` leaves)
    /// and from there is the batch's own proof to its root (remembering the nodes it passed);
    /// `Some(Err)` if the proof is malformed; `None` when only a full verification can say.
    fn vouches(
        &mut self,
        key: &BatchKey,
        size: u64,
        leaf: &Hash,
        index: u64,
        path: &[Hash],
    ) -> Option<Result<(), SignatureError>> {
        let batch = self.batches.get(key)?;
        let mut passed = Vec::new();
        let mut stop = None;
        let walked = merkle::walk_proof(leaf, index, size, path, |node, place| {
            let known = batch.nodes.contains_key(&(*node, place));
            if known {
                stop = Some((*node, place));
            } else {
                passed.push((*node, place));
            }
            known
        });
        match walked {
            Some(merkle::Walk::Stopped) => {
                let top = stop.expect("the walk stopped at a known node");
                // The known node was made with the path's entry number `passed.len()`: the
                // entries after it must be the batch's own steps, ending at its root.
                let mut at = top;
                for entry in &path[passed.len() + 1..] {
                    match batch.nodes.get(&at) {
                        Some(Some((sibling, parent, place))) if sibling == entry => {
                            at = (*parent, *place);
                        }
                        _ => return None,
                    }
                }
                if !matches!(batch.nodes.get(&at), Some(None)) {
                    return None;
                }
                let nodes = linked(path, &passed, Some(top));
                self.add(key, nodes);
                Some(Ok(()))
            }
            // The same prefix of the same proof: a full verification fails the same way.
            None => Some(Err(SignatureError::BadProof)),
            // Another root under a signature verified over a different one: only a full
            // verification can say (and it fails unless the signature is forged).
            Some(merkle::Walk::Root(_)) => None,
        }
    }

    /// Adds `nodes` (bottom up) to the batch `key` (made if it is not known), forgetting the
    /// oldest other batches while over the bounds. Nodes that do not fit are not kept, the
    /// lowest first: a node helps only below the nodes above it.
    fn add(&mut self, key: &BatchKey, nodes: Walked) {
        if !self.batches.contains_key(key) {
            self.batches.insert(
                *key,
                Batch {
                    nodes: HashMap::new(),
                },
            );
            self.order.push_back(*key);
        }
        // Only new nodes count (two threads may have walked the same path at once).
        let known = &self.batches[key].nodes;
        let mut nodes = nodes;
        nodes.retain(|(node, _)| !known.contains_key(node));
        let wanted = nodes
            .len()
            .min(VerifiedRoots::MAX_BATCH_NODES.saturating_sub(known.len()));
        while (self.nodes + wanted > self.max_nodes || self.order.len() > self.capacity)
            && self.order.front().is_some_and(|k| k != key)
        {
            let old = self.order.pop_front().expect("checked");
            if let Some(b) = self.batches.remove(&old) {
                self.nodes -= b.nodes.len();
            }
        }
        let room = wanted.min(self.max_nodes.saturating_sub(self.nodes));
        let batch = self.batches.get_mut(key).expect("inserted above");
        for (node, up) in nodes.into_iter().rev().take(room) {
            if batch.nodes.insert(node, up).is_none() {
                self.nodes += 1;
            }
        }
    }
}

/// Verifies that `sig` is a signature over `envelope` (alone, or as a member of a signed batch)
/// by the holder of the certificate with the given SHA-256 and Ed25519 public key. With `cache`,
/// a batch verified before is not verified again: the envelope's proof is hashed up to the first
/// node of it already known, and its remaining entries compared with that node's known steps.
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
    let mut proof = [[0u8; 32]; MAX_PROOF_LEN];
    if batch.path.len() > MAX_PROOF_LEN {
        return Err(SignatureError::BadProof);
    }
    for (slot, h) in proof.iter_mut().zip(&batch.path) {
        *slot = Hash::try_from(h.as_ref()).map_err(|_| SignatureError::BadProof)?;
    }
    let path = &proof[..batch.path.len()];
    let sig_bytes =
        <[u8; 64]>::try_from(sig.signature.as_ref()).map_err(|_| SignatureError::Mismatch)?;
    let batch_key = (*cert_sha256, sig_bytes, batch.tree_size);
    let leaf = merkle::leaf_hash(envelope);
    if let Some(c) = cache
        && let Some(answer) =
            c.lock()
                .vouches(&batch_key, batch.tree_size, &leaf, batch.leaf_index, path)
    {
        return answer;
    }
    // Not known, or not confirmed: the whole path, then the signature over the root it leads
    // to.
    let mut passed = Vec::with_capacity(path.len());
    let walked = merkle::walk_proof(
        &leaf,
        batch.leaf_index,
        batch.tree_size,
        path,
        |node, place| {
            passed.push((*node, place));
            false
        },
    );
    let Some(merkle::Walk::Root(root)) = walked else {
        return Err(SignatureError::BadProof);
    };
    check(&signed_root(batch.tree_size, &root))?;
    if let Some(c) = cache {
        c.lock().add(&batch_key, linked(path, &passed, None));
    }
    Ok(())
}

/// `sig` with its batch proof spoiled three ways (for tests and the fuzz targets): entry `n`
/// (modulo the path's length) changed, the last entry cut, an entry added at the end.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn tampered_proofs(sig: &pb::Signature, n: usize) -> Vec<pb::Signature> {
    let Some(batch) = &sig.batch else {
        return Vec::new();
    };
    let with_path = |path: Vec<Bytes>| {
        let mut s = sig.clone();
        s.batch.as_mut().expect("a batch").path = path;
        s
    };
    let mut out = Vec::new();
    if !batch.path.is_empty() {
        let mut changed = batch.path.clone();
        let k = n % changed.len();
        let mut entry = changed[k].to_vec();
        entry[n % 32] ^= 1;
        changed[k] = entry.into();
        out.push(with_path(changed));
        out.push(with_path(batch.path[..batch.path.len() - 1].to_vec()));
    }
    let mut longer = batch.path.clone();
    longer.push(Bytes::from_static(&[7; 32]));
    out.push(with_path(longer));
    out
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
    fn a_known_batch_vouches_only_for_its_own_signature_and_tree() {
        let s = signer();
        let pk = s.public_key().to_vec();
        let batch = |tag: u8| -> (Vec<Vec<u8>>, Vec<pb::Signature>) {
            let envs: Vec<Vec<u8>> = (0..9u8).map(|i| vec![tag, i, 7]).collect();
            let refs: Vec<&[u8]> = envs.iter().map(Vec::as_slice).collect();
            let sigs = s.sign_batch(&refs);
            (envs, sigs)
        };
        let (a, a_sigs) = batch(1);
        let (b, b_sigs) = batch(2);
        let cache = VerifiedRoots::default();
        let v = |env: &[u8], sig: &pb::Signature| {
            verify(env, Some(sig), &[9; 32], Some(&pk), Some(&cache))
        };
        // Every envelope of A, in an order that meets known nodes at every level.
        for i in [4, 0, 8, 1, 2, 3, 5, 7, 6] {
            assert_eq!(v(&a[i], &a_sigs[i]), Ok(()), "envelope {i}");
        }
        assert_eq!(v(&a[3], &a_sigs[3]), Ok(()), "again");
        // A's envelopes under B's signature, or with B's proofs, are not vouched for.
        let mut swapped = b_sigs[0].clone();
        swapped.batch = a_sigs[0].batch.clone();
        assert_eq!(v(&a[0], &swapped), Err(SignatureError::Mismatch));
        assert!(v(&b[1], &a_sigs[1]).is_err());
        // A stranger's envelope with A's signature and a proof that ends in a known node of A
        // but starts from its own leaf: the walk meets no known node, and the root it reaches
        // is not the signed one.
        assert!(v(b"stranger", &a_sigs[2]).is_err());
        // The signed size is part of the batch: the same proof under another size is not vouched.
        let mut resized = a_sigs[0].clone();
        resized.batch.as_mut().unwrap().tree_size = 10;
        assert!(v(&a[0], &resized).is_err());
        // A malformed proof is refused even for a known batch.
        let mut cut = a_sigs[5].clone();
        cut.batch.as_mut().unwrap().leaf_index = 9;
        assert_eq!(v(&a[5], &cut), Err(SignatureError::BadProof));
        // B verifies as itself.
        for (env, sig) in b.iter().zip(&b_sigs) {
            assert_eq!(v(env, sig), Ok(()));
        }
    }

    /// Found by the `batch_proof` fuzz target: with equal envelopes in a batch, another
    /// envelope's proof can lead from a leaf to a node equal to a known one, at another place.
    #[test]
    fn a_known_node_vouches_only_at_its_own_place() {
        let s = signer();
        let pk = s.public_key().to_vec();
        let envs: [&[u8]; 6] = [b"e", b" ", b"x", b"e", b",", b" "];
        let sigs = s.sign_batch(&envs);
        let cache = VerifiedRoots::default();
        for (env, sig) in envs.iter().zip(&sigs) {
            assert_eq!(
                verify(env, Some(sig), &[9; 32], Some(&pk), Some(&cache)),
                Ok(())
            );
        }
        // "e" (3) with the proof of "," (4), whose sibling is " " (5): the walk's first node
        // equals the known node over "e" (0) and " " (1), at another place.
        for cache in [Some(&cache), None] {
            assert!(verify(envs[3], Some(&sigs[4]), &[9; 32], Some(&pk), cache).is_err());
        }
    }

    /// Found in review: past the first known node, the rest of a proof must still be the
    /// batch's own, or the answer would depend on the cache.
    #[test]
    fn past_a_known_node_the_rest_of_the_proof_must_still_hold() {
        let s = signer();
        let pk = s.public_key().to_vec();
        let envs: Vec<Vec<u8>> = (0..13u8).map(|i| vec![i; 3]).collect();
        let refs: Vec<&[u8]> = envs.iter().map(Vec::as_slice).collect();
        let sigs = s.sign_batch(&refs);
        let cache = VerifiedRoots::default();
        for (env, sig) in envs.iter().zip(&sigs) {
            assert_eq!(
                verify(env, Some(sig), &[9; 32], Some(&pk), Some(&cache)),
                Ok(())
            );
        }
        for (i, (env, sig)) in envs.iter().zip(&sigs).enumerate() {
            for n in 0..8 {
                for t in tampered_proofs(sig, n) {
                    let cached = verify(env, Some(&t), &[9; 32], Some(&pk), Some(&cache));
                    let alone = verify(env, Some(&t), &[9; 32], Some(&pk), None);
                    assert_eq!(cached, alone, "envelope {i}, tampering {n}");
                    assert!(alone.is_err(), "envelope {i}, tampering {n}");
                }
            }
            // Only the first entry, the one that makes a known node: the rest is missing.
            let mut short = sig.clone();
            short.batch.as_mut().unwrap().path.truncate(1);
            assert!(verify(env, Some(&short), &[9; 32], Some(&pk), Some(&cache)).is_err());
            // And the whole proof still verifies.
            assert_eq!(
                verify(env, Some(sig), &[9; 32], Some(&pk), Some(&cache)),
                Ok(())
            );
        }
    }

    #[test]
    fn the_cache_of_verified_batches_stays_within_its_bounds() {
        let s = signer();
        let pk = s.public_key().to_vec();
        let (capacity, max_nodes) = (64, 200);
        let cache = VerifiedRoots::bounded(capacity, max_nodes);
        let v = |env: &[u8], sig: &pb::Signature| {
            verify(env, Some(sig), &[9; 32], Some(&pk), Some(&cache))
        };
        let batch = |n: u32, size: u32| -> (Vec<[u8; 8]>, Vec<pb::Signature>) {
            let envs: Vec<[u8; 8]> = (0..size)
                .map(|i| (u64::from(n) << 32 | u64::from(i)).to_be_bytes())
                .collect();
            let refs: Vec<&[u8]> = envs.iter().map(|e| e.as_slice()).collect();
            let sigs = s.sign_batch(&refs);
            (envs, sigs)
        };
        let held = |c: &VerifiedRoots| {
            let v = c.lock();
            let sum: usize = v.batches.values().map(|b| b.nodes.len()).sum();
            assert_eq!(sum, v.nodes);
            assert_eq!(v.order.len(), v.batches.len());
            (v.batches.len(), v.nodes)
        };
        // More batches than it keeps: the oldest go.
        for n in 0..capacity as u32 + 10 {
            let (envs, sigs) = batch(n, 2);
            for (env, sig) in envs.iter().zip(&sigs) {
                assert_eq!(v(env, sig), Ok(()));
            }
        }
        // The root is each batch's one interior node.
        assert_eq!(held(&cache), (capacity, capacity));
        // Batches of 8 (7 interior nodes each): bounded by nodes before batches.
        for n in 1000..1040 {
            let (envs, sigs) = batch(n, 8);
            for (env, sig) in envs.iter().zip(&sigs) {
                assert_eq!(v(env, sig), Ok(()));
            }
        }
        let (batches, nodes) = held(&cache);
        assert!(nodes <= max_nodes && nodes > max_nodes - 7, "{nodes} nodes");
        assert!(batches < capacity, "{batches} batches");
        // One batch larger than the node bound keeps what fits and still verifies.
        let (envs, sigs) = batch(2000, 300);
        for (env, sig) in envs.iter().zip(&sigs) {
            assert_eq!(v(env, sig), Ok(()));
        }
        assert_eq!(held(&cache), (1, max_nodes));
        // And what it no longer holds is verified again, not refused.
        let (envs, sigs) = batch(3, 2);
        assert_eq!(v(&envs[1], &sigs[1]), Ok(()));
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
