//! A Merkle tree over a list of byte strings, as RFC 9162 (Certificate Transparency 2.0,
//! §2.1) defines it, with SHA-256 and domain-separated hashes:
//!
//! * leaf  = SHA-256(0x00 ‖ TAG ‖ data)
//! * node  = SHA-256(0x01 ‖ TAG ‖ left ‖ right)
//! * the root of n > 1 leaves splits them at k, the largest power of two below n; the root of
//!   no leaves is SHA-256(TAG) (nothing else hashes to it).
//!
//! The prefixes keep a leaf from passing for a node (second-preimage attacks on the tree), and
//! the tag keeps pot's trees apart from every other use of SHA-256. An inclusion proof is the
//! RFC's audit path, checked by its verification algorithm (§2.1.3.2).

use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// Domain tag of pot's transcript trees.
const TAG: &[u8] = b"pot/merkle/v1";

/// The hash of a leaf's data.
pub fn leaf_hash(data: &[u8]) -> Hash {
    Sha256::new()
        .chain_update([0u8])
        .chain_update(TAG)
        .chain_update(data)
        .finalize()
        .into()
}

/// The hash of an inner node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    Sha256::new()
        .chain_update([1u8])
        .chain_update(TAG)
        .chain_update(left)
        .chain_update(right)
        .finalize()
        .into()
}

/// The largest power of two strictly below `n` (n ≥ 2).
fn split(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// The root over leaf hashes.
fn root_of(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => Sha256::digest(TAG).into(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root_of(&leaves[..k]), &root_of(&leaves[k..]))
        }
    }
}

/// The audit path of leaf `m` among `leaves` (RFC 9162 §2.1.3.1), nearest sibling first.
fn path_of(m: usize, leaves: &[Hash]) -> Vec<Hash> {
    let n = leaves.len();
    if n <= 1 {
        return Vec::new();
    }
    let k = split(n);
    if m < k {
        let mut p = path_of(m, &leaves[..k]);
        p.push(root_of(&leaves[k..]));
        p
    } else {
        let mut p = path_of(m - k, &leaves[k..]);
        p.push(root_of(&leaves[..k]));
        p
    }
}

/// A tree built over a list of leaves.
#[derive(Clone, Debug)]
pub struct Tree {
    leaves: Vec<Hash>,
    root: Hash,
}

/// Proof that a leaf sits at an index of a tree of a given size.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Inclusion {
    /// Leaf index.
    pub index: u64,
    /// Number of leaves in the tree.
    pub size: u64,
    /// Sibling hashes from the leaf up.
    #[serde(with = "hex_hashes")]
    pub path: Vec<Hash>,
}

impl Tree {
    /// The tree over `items` (each hashed as a leaf).
    pub fn new<I, T>(items: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        let leaves: Vec<Hash> = items.into_iter().map(|d| leaf_hash(d.as_ref())).collect();
        let root = root_of(&leaves);
        Self { leaves, root }
    }

    /// The root.
    pub fn root(&self) -> Hash {
        self.root
    }

    /// Number of leaves.
    pub fn len(&self) -> usize {
        self.leaves.len()
    }

    /// Whether there are no leaves.
    pub fn is_empty(&self) -> bool {
        self.leaves.is_empty()
    }

    /// The inclusion proof of leaf `index` (`None` past the end).
    pub fn prove(&self, index: usize) -> Option<Inclusion> {
        (index < self.leaves.len()).then(|| Inclusion {
            index: index as u64,
            size: self.leaves.len() as u64,
            path: path_of(index, &self.leaves),
        })
    }
}

/// Whether `data` is leaf `proof.index` of a tree of `proof.size` leaves with root `root`
/// (RFC 9162 §2.1.3.2). As in Certificate Transparency, a root does not commit to its size
/// (a proof for leaf 0 of 3 also passes as leaf 0 of 4): the size must come from signed data,
/// next to the root, never from the prover's proof alone.
pub fn verify(root: &Hash, data: &[u8], proof: &Inclusion) -> bool {
    if proof.index >= proof.size {
        return false;
    }
    let (mut fnode, mut snode) = (proof.index, proof.size - 1);
    let mut r = leaf_hash(data);
    for p in &proof.path {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && &r == root
}

mod hex_hashes {
    use super::Hash;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[Hash], s: S) -> Result<S::Ok, S::Error> {
        v.iter().map(hex::encode).collect::<Vec<_>>().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Hash>, D::Error> {
        let v = Vec::<String>::deserialize(d)?;
        v.iter()
            .map(|h| {
                let b = hex::decode(h).map_err(serde::de::Error::custom)?;
                b.try_into()
                    .map_err(|_| serde::de::Error::custom("a hash is 32 bytes"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("step {i}").into_bytes()).collect()
    }

    #[test]
    fn every_leaf_of_every_size_proves_and_nothing_else_does() {
        for n in 1..=33 {
            let data = items(n);
            let t = Tree::new(&data);
            for (i, d) in data.iter().enumerate() {
                let p = t.prove(i).unwrap();
                assert!(verify(&t.root(), d, &p), "n = {n}, leaf {i}");
                // Other data, another index, another size, a changed sibling: all refused.
                assert!(!verify(&t.root(), b"forged", &p));
                let other = Inclusion {
                    index: (p.index + 1) % p.size,
                    ..p.clone()
                };
                if n > 1 {
                    assert!(!verify(&t.root(), d, &other), "n = {n}, leaf {i}");
                }
                for j in 0..p.path.len() {
                    let mut bad = p.clone();
                    bad.path[j][0] ^= 1;
                    assert!(!verify(&t.root(), d, &bad));
                }
                let mut short = p.clone();
                short.path.pop();
                if !p.path.is_empty() {
                    assert!(!verify(&t.root(), d, &short));
                }
            }
            assert!(t.prove(n).is_none());
        }
    }

    #[test]
    fn roots_follow_rfc_9162_shape_and_differ_on_any_change() {
        let d = items(3);
        let l: Vec<Hash> = d.iter().map(|x| leaf_hash(x)).collect();
        // Three leaves split 2 + 1.
        let want = node_hash(&node_hash(&l[0], &l[1]), &l[2]);
        assert_eq!(Tree::new(&d).root(), want);
        let mut e = d.clone();
        e[2].push(b'!');
        assert_ne!(Tree::new(&e).root(), want);
        // Order matters; a leaf is not a node (the prefixes differ).
        let swapped = vec![d[1].clone(), d[0].clone(), d[2].clone()];
        assert_ne!(Tree::new(&swapped).root(), want);
        let mut as_leaf = Vec::new();
        as_leaf.extend_from_slice(&l[0]);
        as_leaf.extend_from_slice(&l[1]);
        assert_ne!(leaf_hash(&as_leaf), node_hash(&l[0], &l[1]));
        assert_eq!(
            Tree::new(Vec::<Vec<u8>>::new()).root(),
            <[u8; 32]>::from(Sha256::digest(TAG))
        );
    }

    #[test]
    fn a_root_does_not_commit_to_its_size_so_the_size_must_be_signed() {
        // Leaf 0 of 3 ([l0 l1] [l2]) has the path of leaf 0 of 4 with l2 in the place of the
        // right subtree: the root alone cannot tell the sizes apart.
        let t = Tree::new(items(3));
        let p = t.prove(0).unwrap();
        let four = Inclusion { size: 4, ..p };
        assert!(verify(&t.root(), b"step 0", &four));
    }

    #[test]
    fn proofs_round_trip_through_json() {
        let t = Tree::new(items(5));
        let p = t.prove(3).unwrap();
        let back: Inclusion = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }
}
