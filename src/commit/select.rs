//! Which steps of a job get audited: a VRF of the router over the signed receipt.
//!
//! The router evaluates schnorrkel's VRF (sr25519, Ristretto DLEQ proofs) under its key on the
//! receipt's digest ([`super::receipt::Receipt::digest`], which covers the Merkle root, the
//! nonce and the node key). The VRF output seeds a SHA-256 counter stream that draws `count`
//! distinct step indices without replacement (a partial Fisher–Yates shuffle with rejection
//! sampling, so every subset is equally likely). Hence:
//! * the provider cannot know the audited steps before it signs the root (the output depends
//!   on the root, and only the router's secret key computes it);
//! * the router cannot pick steps of its liking: the output is unique for its key and the
//!   receipt, and anyone holding the router's public key re-derives the indices from the proof
//!   ([`Selection::verify`]).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::keys::{RouterKey, RouterPublic};
use super::merkle::Hash;
use super::wire::Bytes;
use super::CommitError;

const CONTEXT: &[u8] = b"pot/audit-select/v1";
const STREAM_TAG: &[u8] = b"pot/audit-steps/v1";

/// A router's choice of steps, with its proof.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection {
    /// The router's public VRF key.
    pub router: Bytes<32>,
    /// The VRF pre-output.
    pub output: Bytes<32>,
    /// The VRF proof.
    pub proof: Bytes<64>,
    /// How many steps were asked for (fewer when the job has fewer).
    pub count: u32,
}

fn transcript(receipt_digest: &Hash) -> merlin::Transcript {
    schnorrkel::signing_context(CONTEXT).bytes(receipt_digest)
}

impl Selection {
    /// The router picks `count` of a job's `steps` steps.
    pub fn make(
        key: &RouterKey,
        receipt_digest: &Hash,
        steps: u32,
        count: u32,
    ) -> (Self, Vec<u32>) {
        let (inout, proof, _) = key.0.vrf_sign(transcript(receipt_digest));
        let seed: [u8; 32] = inout.make_bytes(STREAM_TAG);
        let sel = Self {
            router: Bytes(key.public().to_bytes()),
            output: Bytes(inout.to_preout().to_bytes()),
            proof: Bytes(proof.to_bytes()),
            count,
        };
        (sel, draw(&seed, steps, count))
    }

    /// Check the proof for this receipt and return the chosen steps.
    pub fn verify(&self, receipt_digest: &Hash, steps: u32) -> Result<Vec<u32>, CommitError> {
        let public = RouterPublic::from_bytes(&self.router.0)?;
        let bad =
            || CommitError::Malformed("the audit selection's VRF proof does not verify".into());
        let preout = schnorrkel::vrf::VRFPreOut::from_bytes(&self.output.0).map_err(|_| bad())?;
        let proof = schnorrkel::vrf::VRFProof::from_bytes(&self.proof.0).map_err(|_| bad())?;
        let (inout, _) = public
            .0
            .vrf_verify(transcript(receipt_digest), &preout, &proof)
            .map_err(|_| bad())?;
        let seed: [u8; 32] = inout.make_bytes(STREAM_TAG);
        Ok(draw(&seed, steps, self.count))
    }
}

/// `count` distinct indices below `n` (all of them when `count >= n`), ascending.
pub fn draw(seed: &[u8; 32], n: u32, count: u32) -> Vec<u32> {
    let m = count.min(n) as usize;
    let mut counter = 0u64;
    let mut next = || {
        counter += 1;
        let h = Sha256::new()
            .chain_update(seed)
            .chain_update(counter.to_be_bytes())
            .finalize();
        u64::from_be_bytes(h[..8].try_into().expect("8 bytes"))
    };
    // Uniform below `bound` by rejection.
    let mut below = |bound: u64| loop {
        let zone = u64::MAX - u64::MAX % bound;
        let x = next();
        if x < zone {
            return x % bound;
        }
    };
    // Partial Fisher–Yates over a sparse permutation.
    let mut swapped: std::collections::HashMap<u32, u32> = std::collections::HashMap::new();
    let mut out = Vec::with_capacity(m);
    for i in 0..m as u32 {
        let j = i + below((n - i) as u64) as u32;
        let vj = *swapped.get(&j).unwrap_or(&j);
        let vi = *swapped.get(&i).unwrap_or(&i);
        swapped.insert(j, vi);
        out.push(vj);
    }
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_choice_verifies_and_is_bound_to_receipt_key_and_output() {
        let k = RouterKey::generate();
        let d = [3u8; 32];
        let (sel, steps) = Selection::make(&k, &d, 100, 8);
        assert_eq!(steps.len(), 8);
        assert_eq!(sel.verify(&d, 100).unwrap(), steps);
        // Deterministic: the same key and receipt choose the same steps.
        assert_eq!(Selection::make(&k, &d, 100, 8).1, steps);
        // Another receipt, another proof, another output, another key: refused.
        assert!(sel.verify(&[4u8; 32], 100).is_err());
        let mut p = sel.clone();
        p.proof.0[3] ^= 1;
        assert!(p.verify(&d, 100).is_err());
        let mut o = sel.clone();
        o.output = Selection::make(&k, &[5u8; 32], 100, 8).0.output;
        assert!(o.verify(&d, 100).is_err());
        let mut r = sel.clone();
        r.router = Bytes(RouterKey::generate().public().to_bytes());
        assert!(r.verify(&d, 100).is_err());
    }

    #[test]
    fn draws_are_distinct_in_range_and_uniform() {
        assert_eq!(draw(&[0; 32], 5, 9), vec![0, 1, 2, 3, 4]);
        assert!(draw(&[0; 32], 0, 3).is_empty());
        let mut hits = [0u32; 10];
        for s in 0..20_000u32 {
            let mut seed = [0u8; 32];
            seed[..4].copy_from_slice(&s.to_be_bytes());
            let d = draw(&seed, 10, 3);
            assert_eq!(d.len(), 3);
            assert!(d.windows(2).all(|w| w[0] < w[1]) && d[2] < 10);
            for i in d {
                hits[i as usize] += 1;
            }
        }
        // Each index is drawn with probability 3/10: 6000 of 20000, sd about 65.
        for h in hits {
            assert!((5700..6300).contains(&h), "{hits:?}");
        }
    }
}
