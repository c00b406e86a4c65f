//! A zero-knowledge proof that a verdict is what pot's sequential test computes from committed
//! scores (Halo2: the IPA version on the Pasta curves, no trusted setup).
//!
//! # The statement
//! "The verdict (SAME, DIFFERENT or UNDECIDED) after `n` queries is what the fixed-point
//! betting test ([`crate::stats::fixed`]) with parameters (α, γ, δ, B, n_min, n_max) decides on
//! the `n` grid scores committed to by `commitment`, and the same betting refutes a mean
//! clipped score at or below the published lower end and at or above the published upper end
//! (over the scores of complete cycles, as pot computes its confidence sequence)." The
//! scores, and the salt that hides them, stay private.
//!
//! Each published end is placed on the score grid on its own conservative side
//! ([`lower_null`], [`upper_null`]); refutation at a bound implies it at any looser bound
//! (each bet's factor is monotone in the null, and rounding down keeps the order), so pot's
//! own interval, found by bisection on a finer grid of candidates, is always provable.
//!
//! # What it does not prove
//! That the scores are what the models compute: that rests on the transcript (which a full
//! evidence bundle carries and `pot bundle verify` re-checks) and on trusting the auditor who
//! ran the models. The proof lets a third party check the decision arithmetic of a run whose
//! transcript stays private, against the commitment the auditor signed.
//!
//! The verifier rebuilds the circuit from the statement alone ([`Shape`]), so a proof for other
//! parameters, another verdict, another query count or another commitment fails.

pub mod circuit;

use halo2_proofs::pasta::{EqAffine, Fp};
use halo2_proofs::plonk::{create_proof, keygen_pk, keygen_vk, verify_proof, SingleVerifier};
use halo2_proofs::poly::commitment::Params;
use halo2_proofs::transcript::{Blake2bRead, Blake2bWrite, Challenge255};

pub use circuit::{commitment, Shape, VerdictCircuit, Witness};

use crate::challenge::ChallengeKey;
use crate::stats::{fixed, Decision, SequentialTest, TestParams};
use halo2_proofs::pasta::group::ff::{FromUniformBytes, PrimeField};

/// Why a proof could not be made or did not verify.
#[derive(Debug, thiserror::Error)]
pub enum ZkError {
    /// The statement is not one the test could have produced.
    #[error("the statement is not a verdict of pot's test: {0}")]
    Statement(String),
    /// The witness does not give the statement (another verdict or commitment).
    #[error("the scores do not give this statement: {0}")]
    Witness(String),
    /// Halo2 refused to prove.
    #[error("proving failed: {0}")]
    Prove(String),
    /// The proof does not verify.
    #[error("the proof does not verify against this statement ({0})")]
    Invalid(String),
}

/// The salt of a run's score commitment, from its run key.
pub fn salt_of(key: &ChallengeKey) -> Fp {
    Fp::from_uniform_bytes(&key.score_salt())
}

/// A field element as transcripts and statements write it: 64 hex digits of its canonical
/// little-endian bytes.
pub fn to_hex(v: Fp) -> String {
    hex::encode(v.to_repr())
}

/// A field element from [`to_hex`]'s form; `None` for anything else.
pub fn from_hex(text: &str) -> Option<Fp> {
    let bytes: [u8; 32] = hex::decode(text).ok()?.try_into().ok()?;
    Option::from(Fp::from_repr(bytes))
}

/// The start of a run's chain, `Poseidon(salt, TAG)`, which the transcript header records:
/// the salt is fixed before any score.
pub fn chain_start(key: &ChallengeKey) -> String {
    to_hex(commitment(salt_of(key), &[]))
}

/// The commitment to a test's scores on its grid, under the run key's salt.
pub fn commit_scores(key: &ChallengeKey, test: &SequentialTest) -> String {
    to_hex(commitment(salt_of(key), &test.grid_scores()))
}

/// The public statement of a verdict proof.
#[derive(Clone, Debug, PartialEq)]
pub struct Statement {
    /// The test's parameters.
    pub params: TestParams,
    /// The verdict.
    pub decision: Decision,
    /// Queries to the verdict.
    pub queries: usize,
    /// The published lower end of the (1-α) confidence sequence on the mean clipped score
    /// (0 when it says nothing).
    pub lower: f64,
    /// Its upper end (the clip B when it says nothing).
    pub upper: f64,
    /// The Poseidon commitment to the grid scores.
    pub commitment: Fp,
}

/// The grid null whose refutation proves the mean clipped score above `lower`: the smallest
/// `g` with `g/Q · B ≥ lower` (refuting "μ_q ≤ g/Q" on scores rounded down proves
/// `μ > g/Q · B`). `None` for a lower end at or below 0, which says nothing.
pub fn lower_null(lower: f64, clip: f64) -> Result<Option<u64>, String> {
    if !(lower.is_finite() && clip.is_finite() && clip > 0.0) {
        return Err(format!("lower end {lower} with clip {clip}"));
    }
    if lower <= 0.0 {
        return Ok(None);
    }
    let at = |g: u64| (g as f64 / fixed::Q as f64) * clip >= lower;
    let mut g = ((lower / clip) * fixed::Q as f64).ceil().max(1.0) as u64;
    while g > 1 && at(g - 1) {
        g -= 1;
    }
    while !at(g) && g < fixed::Q {
        g += 1;
    }
    if g >= fixed::Q || !at(g) {
        return Err(format!(
            "lower end {lower} is not below the clip {clip}: no test refutes it"
        ));
    }
    Ok(Some(g))
}

/// The grid null whose refutation proves the mean clipped score below `upper`: the largest
/// `g` with `(g + 1)/Q · B ≤ upper` (refuting "μ_q ≥ g/Q" on scores rounded down, by at most
/// one step, proves `μ < (g + 1)/Q · B`). `None` for an upper end at or above the clip.
pub fn upper_null(upper: f64, clip: f64) -> Result<Option<u64>, String> {
    if !(upper.is_finite() && clip.is_finite() && clip > 0.0) {
        return Err(format!("upper end {upper} with clip {clip}"));
    }
    if upper >= clip {
        return Ok(None);
    }
    let at = |g: u64| ((g + 1) as f64 / fixed::Q as f64) * clip <= upper;
    let mut g = ((upper / clip) * fixed::Q as f64).floor().max(0.0) as u64;
    while g + 1 < fixed::Q && at(g + 1) {
        g += 1;
    }
    while g > 0 && !at(g) {
        g -= 1;
    }
    if g == 0 || !at(g) {
        return Err(format!(
            "upper end {upper} is not above a grid step of the clip {clip}: no test refutes it"
        ));
    }
    Ok(Some(g))
}

impl Statement {
    /// The circuit's shape, after checking that the statement could come from the test
    /// (parameters valid, a verdict at a cycle end from `n_min`, or UNDECIDED at `n_max`).
    pub fn shape(&self) -> Result<Shape, ZkError> {
        let p = &self.params;
        p.validate()
            .map_err(|e| ZkError::Statement(e.to_string()))?;
        let n = self.queries;
        match self.decision {
            Decision::Undecided if n != p.n_max => {
                return Err(ZkError::Statement(format!(
                    "UNDECIDED after {n} queries, where the budget is {}",
                    p.n_max
                )))
            }
            Decision::Same | Decision::Different
                if !(n.is_multiple_of(crate::stats::CYCLE) && n >= p.n_min && n <= p.n_max) =>
            {
                return Err(ZkError::Statement(format!(
                    "a verdict after {n} queries: the test decides only at cycle ends from n_min = {}",
                    p.n_min
                )))
            }
            _ => {}
        }
        let (m_different, m_same) =
            crate::stats::grid_nulls(p).map_err(|e| ZkError::Statement(e.to_string()))?;
        let lower = lower_null(self.lower, p.clip).map_err(ZkError::Statement)?;
        let upper = upper_null(self.upper, p.clip).map_err(ZkError::Statement)?;
        if n < crate::stats::CYCLE && (lower.is_some() || upper.is_some()) {
            return Err(ZkError::Statement(format!(
                "bounds ({}, {}) after {n} queries: the confidence sequence starts after a complete cycle of {}",
                self.lower,
                self.upper,
                crate::stats::CYCLE
            )));
        }
        Ok(Shape {
            n,
            n_min: p.n_min,
            decision: self.decision,
            m_different,
            m_same,
            threshold: fixed::threshold(p.alpha),
            lower,
            upper,
        })
    }
}

/// SHA-256 of the public parameters `Params::<EqAffine>::new(k)` as `Params::write` writes
/// them, for the sizes pot's circuits take (runs of up to 200 challenges, both bounds
/// proven, fit `k = 18`).
/// Computed once with `cargo run --release --example verdict_proof -- --pins`.
const PINNED: &[(u32, &str)] = &[
    (
        13,
        "76ebe6b75b5281cb1dcc2eb04888968573758672b521522f62abedf6366bb876",
    ),
    (
        14,
        "1cb278fe4d9cf5325e5cbc710d863c0deca3e961e1b8f6c8736890c43345c461",
    ),
    (
        15,
        "e1fb29749c7bd0870768044d5329b4e293cb2d44dae24db2554605427b19d0dd",
    ),
    (
        16,
        "174780f80c577d968d10bc3f0a8f819e55a96b9e882ffe73c15d55e9f94053e2",
    ),
    (
        17,
        "7c65b8e3d12f2c1054f07c2721da8670d97f0f14c846df6bcf4d390dd62cbceb",
    ),
    (
        18,
        "50645fa7a51508a3fe9e34b5b34ee31bfe6a19891364b682d801b3ca265afe33",
    ),
];

/// Where the parameters are kept between runs: `$POT_ZK_PARAMS`, else `~/.cache/pot/halo2`.
fn params_dir() -> Option<std::path::PathBuf> {
    std::env::var_os("POT_ZK_PARAMS")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache/pot/halo2"))
        })
}

/// The public parameters for `2^k` rows: deterministic (hashed to the curve from a fixed
/// string), so prover and verifier make the same ones and nobody holds a trapdoor. Making
/// them takes seconds to minutes (hashing `2^k` points to the curve), so they are kept in
/// [`params_dir`] and read back only when their SHA-256 is the one pinned here; otherwise
/// they are made afresh.
pub fn setup(k: u32) -> Params<EqAffine> {
    use sha2::{Digest, Sha256};
    let pin = PINNED.iter().find(|(kk, _)| *kk == k).map(|(_, h)| *h);
    let path = params_dir().map(|d| d.join(format!("params-{k}.bin")));
    if let (Some(pin), Some(path)) = (pin, &path) {
        if let Ok(bytes) = std::fs::read(path) {
            if hex::encode(Sha256::digest(&bytes)) == pin {
                if let Ok(p) = Params::read(&mut &bytes[..]) {
                    return p;
                }
            }
        }
    }
    let params = Params::new(k);
    if let (Some(_), Some(path)) = (pin, &path) {
        let mut bytes = Vec::new();
        if params.write(&mut bytes).is_ok() {
            // Best effort: a cache that cannot be written is made again next time.
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            let _ = std::fs::create_dir_all(path.parent().unwrap_or(std::path::Path::new(".")))
                .and_then(|_| std::fs::write(&tmp, &bytes))
                .and_then(|_| std::fs::rename(&tmp, path));
            let _ = std::fs::remove_file(&tmp);
        }
    }
    params
}

/// SHA-256 of the parameters for `2^k` rows, made afresh (to pin them).
pub fn params_digest(k: u32) -> String {
    use sha2::{Digest, Sha256};
    let mut bytes = Vec::new();
    Params::<EqAffine>::new(k)
        .write(&mut bytes)
        .expect("writing to memory");
    hex::encode(Sha256::digest(&bytes))
}

/// Prove a statement from its witness.
pub fn prove(statement: &Statement, witness: &Witness) -> Result<Vec<u8>, ZkError> {
    let shape = statement.shape()?;
    if witness.qs.len() != shape.n {
        return Err(ZkError::Witness(format!(
            "{} scores for {} queries",
            witness.qs.len(),
            shape.n
        )));
    }
    if let Some(q) = witness.qs.iter().find(|q| **q > fixed::Q) {
        return Err(ZkError::Witness(format!(
            "grid score {q} above {}",
            fixed::Q
        )));
    }
    if commitment(witness.salt, &witness.qs) != statement.commitment {
        return Err(ZkError::Witness("another commitment".into()));
    }
    let (d, n) = replay(&statement.params, &witness.qs);
    if (d, n) != (statement.decision, statement.queries) {
        return Err(ZkError::Witness(format!(
            "the test gives {} after {n}",
            d.as_str()
        )));
    }
    let cycles = &witness.qs[..shape.full()];
    let alpha = statement.params.alpha;
    if let Some(m) = shape.lower {
        if !fixed::refutes(fixed::Null::AtMost, m, cycles, alpha) {
            return Err(ZkError::Witness(format!(
                "the scores do not refute a mean at or below the lower end {}",
                statement.lower
            )));
        }
    }
    if let Some(m) = shape.upper {
        if !fixed::refutes(fixed::Null::AtLeast, m, cycles, alpha) {
            return Err(ZkError::Witness(format!(
                "the scores do not refute a mean at or above the upper end {}",
                statement.upper
            )));
        }
    }
    let params = setup(shape.k());
    let empty = VerdictCircuit {
        shape: shape.clone(),
        witness: None,
    };
    let vk = keygen_vk(&params, &empty).map_err(|e| ZkError::Prove(e.to_string()))?;
    let pk = keygen_pk(&params, vk, &empty).map_err(|e| ZkError::Prove(e.to_string()))?;
    let circuit = VerdictCircuit {
        shape,
        witness: Some(witness.clone()),
    };
    let mut transcript = Blake2bWrite::<_, EqAffine, Challenge255<_>>::init(vec![]);
    let instance = [statement.commitment];
    create_proof(
        &params,
        &pk,
        &[circuit],
        &[&[&instance]],
        rand_core10::UnwrapErr(rand10::rngs::SysRng),
        &mut transcript,
    )
    .map_err(|e| ZkError::Prove(e.to_string()))?;
    Ok(transcript.finalize())
}

/// Verify a proof of a statement.
pub fn verify(statement: &Statement, proof: &[u8]) -> Result<(), ZkError> {
    let shape = statement.shape()?;
    let params = setup(shape.k());
    let empty = VerdictCircuit {
        shape,
        witness: None,
    };
    let vk = keygen_vk(&params, &empty).map_err(|e| ZkError::Invalid(e.to_string()))?;
    let mut transcript = Blake2bRead::<_, EqAffine, Challenge255<_>>::init(proof);
    let instance = [statement.commitment];
    verify_proof(
        &params,
        &vk,
        SingleVerifier::new(&params),
        &[&[&instance]],
        &mut transcript,
    )
    .map_err(|e| ZkError::Invalid(format!("{e:?}")))
}

/// The fixed-point test on grid scores: its decision and the queries it took (UNDECIDED at
/// the budget). The same arithmetic as [`crate::stats::SequentialTest`], on grid scores.
pub fn replay(p: &TestParams, qs: &[u64]) -> (Decision, usize) {
    let Ok((up, down)) = crate::stats::grid_nulls(p) else {
        return (Decision::Undecided, 0);
    };
    let t = fixed::threshold(p.alpha);
    let mut d = fixed::Side::new(fixed::Null::AtMost, up);
    let mut s = fixed::Side::new(fixed::Null::AtLeast, down);
    for (i, &q) in qs.iter().enumerate() {
        d.push(q);
        s.push(q);
        let n = i + 1;
        if n.is_multiple_of(crate::stats::CYCLE) && n >= p.n_min {
            let (wd, ws) = (d.mixture(), s.mixture());
            if wd >= t && wd >= ws {
                return (Decision::Different, n);
            } else if ws >= t {
                return (Decision::Same, n);
            }
        }
        if n >= p.n_max {
            return (Decision::Undecided, n);
        }
    }
    (Decision::Undecided, qs.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use halo2_proofs::dev::MockProver;

    fn params() -> TestParams {
        TestParams {
            alpha: 0.05,
            gamma: 0.05,
            delta: 0.1,
            clip: 0.2,
            n_min: 5,
            n_max: 50,
        }
    }

    /// The bounds pot publishes for grid scores (exact as floats at 0 and Q).
    fn bounds(p: &TestParams, qs: &[u64]) -> (f64, f64) {
        let mut t = SequentialTest::new(*p).unwrap();
        for &q in qs {
            t.push(q as f64 / fixed::Q as f64 * p.clip);
        }
        let s = t.status();
        (s.lower, s.upper)
    }

    fn statement_of(p: TestParams, qs: &[u64], salt: Fp) -> (Statement, Witness) {
        let (decision, n) = replay(&p, qs);
        let qs = qs[..n].to_vec();
        let (lower, upper) = bounds(&p, &qs);
        (
            Statement {
                params: p,
                decision,
                queries: n,
                lower,
                upper,
                commitment: commitment(salt, &qs),
            },
            Witness { salt, qs },
        )
    }

    fn mock(st: &Statement, w: &Witness) -> Result<(), Vec<halo2_proofs::dev::VerifyFailure>> {
        let shape = st.shape().unwrap();
        let k = shape.k();
        let c = VerdictCircuit {
            shape,
            witness: Some(w.clone()),
        };
        MockProver::run(k, &c, vec![vec![st.commitment]])
            .unwrap()
            .verify()
    }

    #[test]
    fn the_circuit_accepts_each_verdict_and_refuses_another() {
        let p = params();
        let salt = Fp::from(12345);
        // SAME: all zeros decide at 10.
        let (st, w) = statement_of(p, &[0; 50], salt);
        assert_eq!((st.decision, st.queries), (Decision::Same, 10));
        assert_eq!(mock(&st, &w), Ok(()));
        // DIFFERENT: scores at the clip decide at 5.
        let (st2, w2) = statement_of(p, &[fixed::Q; 50], salt);
        assert_eq!((st2.decision, st2.queries), (Decision::Different, 5));
        assert_eq!(mock(&st2, &w2), Ok(()));
        // Both bounds are proven where pot publishes them: SAME's upper end, DIFFERENT's lower.
        let (s1, s2) = (st.shape().unwrap(), st2.shape().unwrap());
        assert!(s1.lower.is_none() && s1.upper.is_some(), "{s1:?}");
        assert!(s2.lower.is_some() && s2.upper.is_none(), "{s2:?}");
        // A tighter bound than the scores support fails, on either end.
        let tight = Statement {
            upper: st.upper / 2.0,
            ..st.clone()
        };
        assert!(mock(&tight, &w).is_err());
        assert!(matches!(prove(&tight, &w), Err(ZkError::Witness(_))));
        let tight = Statement {
            lower: (st2.lower + p.clip) / 2.0,
            ..st2.clone()
        };
        assert!(mock(&tight, &w2).is_err());
        // A looser one is implied, and proven.
        let loose = Statement {
            upper: (st.upper + p.clip) / 2.0,
            ..st.clone()
        };
        assert_eq!(mock(&loose, &w), Ok(()));
        // The SAME witness under a DIFFERENT shape fails.
        let lie = Statement {
            decision: Decision::Different,
            ..st.clone()
        };
        assert!(mock(&lie, &w).is_err());
        // Another commitment fails.
        let other = Statement {
            commitment: commitment(Fp::from(1), &w.qs),
            ..st.clone()
        };
        assert!(mock(&other, &w).is_err());
    }

    #[test]
    fn a_real_proof_verifies_and_a_tampered_one_does_not() {
        let p = params();
        let (st, w) = statement_of(p, &[0; 50], Fp::from(7));
        let proof = prove(&st, &w).unwrap();
        verify(&st, &proof).unwrap();
        let mut bad = proof.clone();
        bad[100] ^= 1;
        assert!(verify(&st, &bad).is_err());
        let lie = Statement {
            decision: Decision::Different,
            ..st.clone()
        };
        assert!(verify(&lie, &proof).is_err());
        let other_bound = Statement {
            upper: st.upper * 0.999,
            ..st.clone()
        };
        assert!(verify(&other_bound, &proof).is_err());
    }

    #[test]
    fn published_bounds_are_placed_on_their_conservative_side() {
        let q = fixed::Q as f64;
        for clip in [0.2, 1.0, 0.02, 3.7] {
            for x in [1e-7, 1e-5, 0.013, 0.25, 0.5, 0.987_654, 1.0 - 1e-6] {
                let v = x * clip;
                let g = lower_null(v, clip).unwrap().unwrap();
                assert!((g as f64 / q) * clip >= v, "{clip} {x}");
                assert!(((g - 1) as f64 / q) * clip < v || g == 1, "{clip} {x}");
                if x < 1e-6 {
                    // Below two grid steps no upper end is refutable.
                    assert!(upper_null(v, clip).is_err());
                    continue;
                }
                let h = upper_null(v, clip).unwrap().unwrap();
                assert!(((h + 1) as f64 / q) * clip <= v, "{clip} {x}");
                assert!(((h + 2) as f64 / q) * clip > v, "{clip} {x}");
            }
            assert_eq!(lower_null(0.0, clip), Ok(None));
            assert_eq!(upper_null(clip, clip), Ok(None));
            assert!(lower_null(clip, clip).is_err());
            assert!(upper_null(0.0, clip).is_err());
            assert!(lower_null(f64::NAN, clip).is_err());
        }
    }

    #[test]
    fn every_interval_pot_publishes_is_provable() {
        // pot's own interval (bisection on a finer grid of candidate means) against the
        // refutation the circuit checks, on random streams of every shape.
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(20);
        let mut proven = 0;
        for trial in 0..60 {
            let p = TestParams {
                n_max: 10 + 5 * (trial % 7),
                ..params()
            };
            let mean = rng.gen::<f64>();
            let qs: Vec<u64> = (0..p.n_max)
                .map(|_| fixed::quantize(rng.gen::<f64>() * 2.0 * mean * p.clip, p.clip))
                .collect();
            let (decision, n) = replay(&p, &qs);
            let qs = &qs[..n];
            let mut t = SequentialTest::new(p).unwrap();
            for &q in qs {
                // A score whose quantization is q exactly (its grid point's centre).
                t.push((q as f64 + 0.5).min(fixed::Q as f64) / fixed::Q as f64 * p.clip);
            }
            assert_eq!(t.grid_scores(), qs.to_vec());
            let s = t.status();
            let st = Statement {
                params: p,
                decision,
                queries: n,
                lower: s.lower,
                upper: s.upper,
                commitment: Fp::zero(),
            };
            let shape = st.shape().unwrap();
            let full = &qs[..shape.full()];
            if let Some(m) = shape.lower {
                assert!(fixed::refutes(fixed::Null::AtMost, m, full, p.alpha));
                proven += 1;
            }
            if let Some(m) = shape.upper {
                assert!(fixed::refutes(fixed::Null::AtLeast, m, full, p.alpha));
                proven += 1;
            }
        }
        assert!(proven > 60, "{proven} bounds");
    }
}
