//! RFC 9162 Merkle trees over SHA-256: tree heads and inclusion proofs.
//!
//! Leaves hash as `SHA-256(0x00 || data)` and interior nodes as `SHA-256(0x01 || left || right)`,
//! so a leaf can never pass for an interior node. Used to sign a batch of envelopes with one
//! signature (see [`crate::signature`]); the same shape serves a tamper-evident log later.
//! Sans-I/O.

use ring::digest::{Context, SHA256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// The hash of a leaf holding `data`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[0x00]);
    ctx.update(data);
    finish(ctx)
}

/// The hash of an interior node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[0x01]);
    ctx.update(left);
    ctx.update(right);
    finish(ctx)
}

fn finish(ctx: Context) -> Hash {
    let mut h = [0u8; 32];
    h.copy_from_slice(ctx.finish().as_ref());
    h
}

/// The largest power of two smaller than `n` (`n >= 2`).
fn split(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// The root of the tree over `leaves` (leaf hashes), and the inclusion proof of every leaf.
/// `None` for an empty batch.
pub fn tree(leaves: &[Hash]) -> Option<(Hash, Vec<Vec<Hash>>)> {
    if leaves.is_empty() {
        return None;
    }
    let mut proofs = vec![Vec::new(); leaves.len()];
    let root = build(leaves, &mut proofs);
    Some((root, proofs))
}

/// Hashes `leaves` into a root, appending to each leaf's proof the siblings it meets on the way.
fn build(leaves: &[Hash], proofs: &mut [Vec<Hash>]) -> Hash {
    if leaves.len() == 1 {
        return leaves[0];
    }
    let k = split(leaves.len());
    let (lp, rp) = proofs.split_at_mut(k);
    let left = build(&leaves[..k], lp);
    let right = build(&leaves[k..], rp);
    for p in lp {
        p.push(right);
    }
    for p in rp {
        p.push(left);
    }
    node_hash(&left, &right)
}

/// The root an inclusion proof leads to from `leaf` at `index` in a tree of `size` leaves
/// (RFC 9162 section 2.1.3.2), or `None` if the proof cannot belong to such a tree.
///
/// A proof does not always pin the size (the left edge of a tree of 3 also fits a tree of 4):
/// whoever signs a root must sign the size with it, as [`crate::signature`] does.
pub fn root_from_proof(leaf: &Hash, index: u64, size: u64, path: &[Hash]) -> Option<Hash> {
    if index >= size {
        return None;
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in path {
        if sn == 0 {
            return None;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    (sn == 0).then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    /// The tree hash exactly as RFC 9162 defines it, recursively over the leaves.
    fn mth(l: &[Hash]) -> Hash {
        match l.len() {
            1 => l[0],
            n => {
                let k = split(n);
                node_hash(&mth(&l[..k]), &mth(&l[k..]))
            }
        }
    }

    #[test]
    fn every_proof_leads_to_the_root_for_every_size() {
        for n in 1..=70 {
            let l = leaves(n);
            let (root, proofs) = tree(&l).unwrap();
            assert_eq!(root, mth(&l), "size {n}");
            for (i, p) in proofs.iter().enumerate() {
                assert_eq!(root_from_proof(&l[i], i as u64, n as u64, p), Some(root));
                // The same proof does not fit another position or another size.
                if n > 1 {
                    let j = (i + 1) % n;
                    assert_ne!(root_from_proof(&l[i], j as u64, n as u64, p), Some(root));
                    assert_ne!(root_from_proof(&l[j], i as u64, n as u64, p), Some(root));
                }
            }
        }
    }

    #[test]
    fn known_answer() {
        // RFC 6962's empty-string leaf: SHA-256(0x00).
        let h = leaf_hash(b"");
        assert_eq!(
            h[..4],
            [0x6e, 0x34, 0x0b, 0x9c],
            "leaf hash must be SHA-256 of 0x00"
        );
    }

    #[test]
    fn malformed_proofs_are_refused() {
        let l = leaves(5);
        let (_, proofs) = tree(&l).unwrap();
        assert_eq!(root_from_proof(&l[0], 5, 5, &proofs[0]), None);
        let mut long = proofs[0].clone();
        long.push([0; 32]);
        assert_eq!(root_from_proof(&l[0], 0, 5, &long), None);
        assert_eq!(root_from_proof(&l[0], 0, 5, &proofs[0][..1]), None);
    }
}
