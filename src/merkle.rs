//! RFC 9162 Merkle trees over SHA-256: tree heads and inclusion proofs.
//!
//! Leaves hash as `SHA-256(0x00 || data)` and interior nodes as `SHA-256(0x01 || left || right)`,
//! so a leaf can never pass for an interior node. Used to sign a batch of envelopes with one
//! signature (see the `signature` module), and for the delivery log ([`crate::audit`]): a
//! [`Frontier`] grows the log's tree one record at a time, and consistency proofs
//! ([`consistency_proof`], [`verify_consistency`]) show that a later tree extends an earlier one.
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
    // One contiguous input: the hash is taken in one call rather than three buffered ones.
    let mut input = [0x01; 65];
    input[1..33].copy_from_slice(left);
    input[33..].copy_from_slice(right);
    let mut out = [0; 32];
    out.copy_from_slice(ring::digest::digest(&SHA256, &input).as_ref());
    out
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
/// whoever signs a root must sign the size with it, as the `signature` module does.
pub fn root_from_proof(leaf: &Hash, index: u64, size: u64, path: &[Hash]) -> Option<Hash> {
    match walk_proof(leaf, index, size, path, |_, _| false)? {
        Walk::Root(root) => Some(root),
        Walk::Stopped => None,
    }
}

/// How a walk up an inclusion proof ended (see [`walk_proof`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Walk {
    /// At the root the proof leads to.
    Root(Hash),
    /// At a node the caller already knew.
    Stopped,
}

/// Where a node computed by [`walk_proof`] sits in its tree: the same for every leaf below it,
/// and different for nodes at different places (an equal hash at another place, which equal
/// leaves make possible, is another node).
pub type Place = (u64, u64);

/// Walks an inclusion proof up from `leaf` as [`root_from_proof`] does, handing each node it
/// computes, with its [`Place`], to `known` (the leaf's parent first, the root last) and
/// stopping at the first one `known` says it has seen there: a node already shown to be at that
/// place in a signed tree vouches for every leaf below it, so the rest of the path need not be
/// hashed again. `None` if the proof cannot belong to such a tree (as far as the walk went).
pub fn walk_proof(
    leaf: &Hash,
    index: u64,
    size: u64,
    path: &[Hash],
    mut known: impl FnMut(&Hash, Place) -> bool,
) -> Option<Walk> {
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
        // The node's index among those of its level, and that level's last index: `sn`
        // shrinks with every level, so the pair names one node of the tree.
        if known(&r, (fn_, sn)) {
            return Some(Walk::Stopped);
        }
    }
    (sn == 0).then_some(Walk::Root(r))
}

/// The compact state of a growing tree: the roots of its maximal perfect subtrees, left to
/// right (one per set bit of the size). Enough to append and to compute the root, in
/// `O(log n)` space.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    nodes: Vec<Hash>,
}

impl Frontier {
    /// The empty tree.
    pub fn new() -> Frontier {
        Frontier::default()
    }

    /// A frontier as stored: `None` if `nodes` does not fit `size` (one per set bit).
    pub fn from_parts(size: u64, nodes: Vec<Hash>) -> Option<Frontier> {
        (nodes.len() == size.count_ones() as usize).then_some(Frontier { size, nodes })
    }

    /// How many leaves the tree has.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The subtree roots, left to right.
    pub fn nodes(&self) -> &[Hash] {
        &self.nodes
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let merges = self.size.trailing_ones();
        self.nodes.push(leaf);
        for _ in 0..merges {
            let right = self.nodes.pop().expect("a node per set bit");
            let left = self.nodes.pop().expect("a node per set bit");
            self.nodes.push(node_hash(&left, &right));
        }
        self.size += 1;
    }

    /// The root of the tree (RFC 9162 MTH); the hash of the empty string for the empty tree.
    pub fn root(&self) -> Hash {
        let mut nodes = self.nodes.iter().rev();
        let Some(last) = nodes.next() else {
            let mut h = [0u8; 32];
            h.copy_from_slice(ring::digest::digest(&SHA256, b"").as_ref());
            return h;
        };
        nodes.fold(*last, |r, left| node_hash(left, &r))
    }

    /// The subtrees the frontier holds, as `(first leaf, leaf count)`, left to right.
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let mut start = 0;
        (0..64).rev().filter_map(move |bit| {
            let len = 1u64 << bit;
            (self.size & len != 0).then(|| {
                let r = (start, len);
                start += len;
                r
            })
        })
    }
}

/// The consistency proof between the tree of the first `old` leaves and the tree of `new`
/// leaves (RFC 9162 section 2.1.4.1), with `mth(start, len)` giving the root of the subtree of
/// `len` leaves from `start`. Every subtree asked for lies within `[0, old)` as one of the old
/// tree's [`Frontier`] ranges, or within `[old, new)`. `None` unless `0 < old <= new`.
pub fn consistency_proof(
    old: u64,
    new: u64,
    mth: &mut dyn FnMut(u64, u64) -> Hash,
) -> Option<Vec<Hash>> {
    if old == 0 || old > new {
        return None;
    }
    let mut proof = Vec::new();
    subproof(old, 0, new, true, mth, &mut proof);
    Some(proof)
}

fn subproof(
    m: u64,
    start: u64,
    n: u64,
    complete: bool,
    mth: &mut dyn FnMut(u64, u64) -> Hash,
    out: &mut Vec<Hash>,
) {
    if m == n {
        if !complete {
            out.push(mth(start, n));
        }
        return;
    }
    let k = split(n as usize) as u64;
    if m <= k {
        subproof(m, start, k, complete, mth, out);
        out.push(mth(start + k, n - k));
    } else {
        subproof(m - k, start + k, n - k, false, mth, out);
        out.push(mth(start, k));
    }
}

/// Whether `proof` shows that the tree of `new` leaves with root `new_root` extends the tree
/// of `old` leaves with root `old_root` (RFC 9162 section 2.1.4.2). A tree of no leaves is
/// extended by every tree.
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old > new {
        return false;
    }
    if old == 0 {
        return proof.is_empty();
    }
    if old == new {
        return proof.is_empty() && old_root == new_root;
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let (mut fn_, mut sn) = (old - 1, new - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && fr == *old_root && sr == *new_root
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

    #[test]
    fn the_frontier_gives_the_root_of_every_size() {
        let l = leaves(70);
        let mut f = Frontier::new();
        for n in 1..=70 {
            f.push(l[n - 1]);
            assert_eq!(f.root(), mth(&l[..n]), "size {n}");
            assert_eq!(f.nodes().len(), n.count_ones() as usize);
            let ranges: Vec<_> = f.ranges().collect();
            for ((start, len), node) in ranges.iter().zip(f.nodes()) {
                assert_eq!(*node, mth(&l[*start as usize..(*start + *len) as usize]));
            }
            let back = Frontier::from_parts(f.size(), f.nodes().to_vec()).unwrap();
            assert_eq!(back, f);
        }
        assert!(Frontier::from_parts(3, vec![[0; 32]]).is_none());
    }

    #[test]
    fn consistency_proofs_verify_and_catch_a_rewritten_history() {
        let l = leaves(40);
        for new in 1..=40u64 {
            for old in 1..=new {
                // Only frontier ranges of the old tree, or ranges past it, are asked for.
                let mut old_f = Frontier::new();
                l[..old as usize].iter().for_each(|h| old_f.push(*h));
                let allowed: Vec<_> = old_f.ranges().collect();
                let mut mth_of = |start: u64, len: u64| {
                    assert!(
                        start >= old || allowed.contains(&(start, len)),
                        "asked for ({start}, {len}) with old {old}"
                    );
                    mth(&l[start as usize..(start + len) as usize])
                };
                let proof = consistency_proof(old, new, &mut mth_of).unwrap();
                let (r1, r2) = (mth(&l[..old as usize]), mth(&l[..new as usize]));
                assert!(
                    verify_consistency(old, new, &r1, &r2, &proof),
                    "{old}->{new}"
                );
                // A different old history is not consistent with the new tree.
                let mut other = l[..old as usize].to_vec();
                other[0] = leaf_hash(b"rewritten");
                let forged = mth(&other);
                assert!(!verify_consistency(old, new, &forged, &r2, &proof));
                if old < new {
                    assert!(!verify_consistency(old, new, &r1, &forged, &proof));
                    assert!(!verify_consistency(new, old, &r2, &r1, &proof));
                    let mut bad = proof.clone();
                    bad.push([7; 32]);
                    assert!(!verify_consistency(old, new, &r1, &r2, &bad));
                }
            }
        }
        assert!(consistency_proof(0, 3, &mut |_, _| [0; 32]).is_none());
        assert!(consistency_proof(4, 3, &mut |_, _| [0; 32]).is_none());
    }

    /// Every leaf's walk reaches a node at the same place, and no two nodes share a place.
    #[test]
    fn a_node_has_one_place_whichever_leaf_walks_to_it() {
        for n in 1..=40usize {
            let l = leaves(n);
            let (root, proofs) = tree(&l).unwrap();
            let mut place_of: std::collections::HashMap<Hash, Place> = Default::default();
            let mut node_at: std::collections::HashMap<Place, Hash> = Default::default();
            for (i, p) in proofs.iter().enumerate() {
                let walked = walk_proof(&l[i], i as u64, n as u64, p, |node, place| {
                    assert_eq!(*place_of.entry(*node).or_insert(place), place, "size {n}");
                    assert_eq!(*node_at.entry(place).or_insert(*node), *node, "size {n}");
                    false
                });
                let expected = if n == 1 {
                    Walk::Root(l[0])
                } else {
                    Walk::Root(root)
                };
                assert_eq!(walked, Some(expected), "size {n} leaf {i}");
            }
            // n leaves, n - 1 interior nodes.
            assert_eq!(place_of.len(), n - 1, "size {n}");
        }
    }
}
