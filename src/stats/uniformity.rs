//! An anytime-valid test that sampled outcomes follow the reference's distribution: the
//! e-process behind sampled audits (`score::sampled`), on each outcome's PIT `u_t` and its
//! surprise `s_t`.
//!
//! # What is tested
//! `H_same`: each `u_t` is uniform on [0, 1] given everything before it, and each `s_t` has
//! mean 0 given everything before it. Both hold when the endpoint samples every token from
//! the reference's distribution at the requested settings (the PITs are then independent
//! uniforms, and the surprise is centred on the reference's own expectation). **DIFFERENT** is declared when the
//! e-process reaches `1/α`; by Ville's inequality that happens under `H_same` with probability
//! at most α, however long the stream and whenever it is looked at. There is no SAME: a
//! stream that stays uniform-looking is evidence of nothing in particular, so at the budget
//! the verdict is UNDECIDED, with the e-value reported.
//!
//! # How
//! The e-process is a fixed-weight mixture of test martingales, each with expectation 1 per
//! step under `H_same`:
//!
//! * **Dyadic trees** of depth `d` = 1..[`DEPTHS`]: the interval is halved `d` times; at each
//!   node a Krichevsky–Trofimov estimate of how often values go left predicts the next one,
//!   and the martingale multiplies `2 · P̂(side taken)` at each of the `d` levels. Under
//!   uniformity each side has probability 1/2 whatever came before, so each factor has
//!   expectation 1. Shallow trees catch coarse tilts fast; deep ones, narrow bumps.
//! * **Mean bets** `Π (1 + λ (2u − 1))` for λ on a symmetric grid: `E[2u − 1] = 0` under
//!   uniformity, and `|λ| < 1` keeps every factor positive.
//! * **Surprise bets** `Π (1 + λ s)`, likewise: `s ∈ [−1, 1]` has mean 0 under `H_same`.
//!   The PIT sees *where* in the reference's ranking outcomes fall; the surprise sees how
//!   likely the reference finds them against how likely its own draws are, which separates a
//!   sibling model's samples several times faster (BENCHMARKS.md).
//!
//! Each component's prediction uses only values before the current one, so every component is
//! a non-negative martingale with initial value 1 under `H_same`; so is their mixture.

use serde::{Deserialize, Serialize};

/// Depths of the dyadic trees in the mixture.
pub const DEPTHS: usize = 6;

/// Bets on the mean: ±λ.
const LAMBDAS: [f64; 5] = [0.05, 0.1, 0.2, 0.4, 0.8];

/// Bets on the surprise: ±λ.
const SURPRISE_LAMBDAS: [f64; 5] = [0.1, 0.2, 0.4, 0.6, 0.9];

/// Shares of the mixture's prior weight on the trees and on the PIT's mean bets (the rest
/// on the surprise bets).
const TREE_WEIGHT: f64 = 1.0 / 3.0;
const MEAN_WEIGHT: f64 = 1.0 / 3.0;

/// The state of the e-process.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Uniformity {
    /// Left and right counts per tree node, heap-indexed (node 1 is the root; node `i`'s
    /// children are `2i` and `2i + 1`).
    counts: Vec<[u32; 2]>,
    /// Log of the product of factors at each level (a depth-`d` tree's log-wealth is the
    /// sum of the first `d`).
    level_log: Vec<f64>,
    /// Log-wealth of each mean bet, +λ then −λ.
    mean_log: Vec<f64>,
    /// Log-wealth of each surprise bet, +λ then −λ.
    #[serde(default)]
    surprise_log: Vec<f64>,
    /// Values seen.
    n: u64,
}

impl Uniformity {
    /// An e-process with no values yet (wealth 1).
    pub fn new() -> Self {
        Self {
            counts: vec![[0, 0]; 1 << DEPTHS],
            level_log: vec![0.0; DEPTHS],
            mean_log: vec![0.0; 2 * LAMBDAS.len()],
            surprise_log: vec![0.0; 2 * SURPRISE_LAMBDAS.len()],
            n: 0,
        }
    }

    /// Values seen.
    pub fn n(&self) -> u64 {
        self.n
    }

    /// Add one outcome: its PIT `u` (clamped to [0, 1]; NaN counts as 1, the far end) and
    /// its surprise `s` (clamped to [−1, 1]; NaN counts as −1).
    pub fn push_outcome(&mut self, u: f64, s: f64) {
        self.push(u);
        let s = if s.is_nan() { -1.0 } else { s.clamp(-1.0, 1.0) };
        for (i, l) in SURPRISE_LAMBDAS.iter().enumerate() {
            self.surprise_log[2 * i] += (1.0 + l * s).ln();
            self.surprise_log[2 * i + 1] += (1.0 - l * s).ln();
        }
    }

    /// Add one PIT alone (its surprise unknown: the surprise bets stand still).
    pub fn push(&mut self, u: f64) {
        if self.counts.is_empty() {
            *self = Self::new();
        }
        let u = if u.is_nan() { 1.0 } else { u.clamp(0.0, 1.0) };
        let (mut node, mut lo, mut hi) = (1usize, 0.0f64, 1.0f64);
        for level in 0..DEPTHS {
            let mid = 0.5 * (lo + hi);
            let side = usize::from(u >= mid);
            let c = self.counts[node];
            let p = (c[side] as f64 + 0.5) / (c[0] as f64 + c[1] as f64 + 1.0);
            self.level_log[level] += (2.0 * p).ln();
            self.counts[node][side] += 1;
            if side == 0 {
                hi = mid;
            } else {
                lo = mid;
            }
            node = 2 * node + side;
        }
        let g = 2.0 * u - 1.0;
        for (i, l) in LAMBDAS.iter().enumerate() {
            self.mean_log[2 * i] += (1.0 + l * g).ln();
            self.mean_log[2 * i + 1] += (1.0 - l * g).ln();
        }
        self.n += 1;
    }

    /// The log of the e-value (the mixture's wealth).
    pub fn log_e(&self) -> f64 {
        if self.counts.is_empty() {
            return 0.0;
        }
        let mut terms = Vec::with_capacity(DEPTHS + self.mean_log.len());
        let mut depth_log = 0.0;
        let wt = (TREE_WEIGHT / DEPTHS as f64).ln();
        for l in &self.level_log {
            depth_log += l;
            terms.push(wt + depth_log);
        }
        let wm = (MEAN_WEIGHT / self.mean_log.len() as f64).ln();
        terms.extend(self.mean_log.iter().map(|l| wm + l));
        let ws = ((1.0 - TREE_WEIGHT - MEAN_WEIGHT) / self.surprise_log.len() as f64).ln();
        terms.extend(self.surprise_log.iter().map(|l| ws + l));
        let top = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        top + terms.iter().map(|t| (t - top).exp()).sum::<f64>().ln()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (SplitMix64) for simulations.
    struct Rng(u64);
    impl Rng {
        fn uniform(&mut self) -> f64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// Under `H_same` the e-process crosses 1/α in at most α of the streams, however long
    /// they run (2,000 streams of 2,000 outcomes: the boundary α = 0.05 allows 100, and the
    /// binomial's 3σ is 30 more). Surprises are centred and skewed, as a peaked reference's
    /// are: −0.6 a quarter of the time, 0.2 otherwise.
    #[test]
    fn streams_under_the_null_rarely_cross() {
        let alpha: f64 = 0.05;
        let mut crossed = 0;
        for s in 0..2_000u64 {
            let mut rng = Rng(s * 7919 + 1);
            let mut e = Uniformity::new();
            for _ in 0..2_000 {
                let surprise = if rng.uniform() < 0.25 { -0.6 } else { 0.2 };
                e.push_outcome(rng.uniform(), surprise);
                if e.log_e() >= (1.0 / alpha).ln() {
                    crossed += 1;
                    break;
                }
            }
        }
        eprintln!("{crossed} of 2000 streams crossed at α = {alpha}");
        assert!(crossed <= 130, "{crossed} of 2000 crossed at α = {alpha}");
    }

    /// A tilt (values pushed up: u^0.8, a model that picks what the reference ranks lower)
    /// and a narrow bump are caught.
    #[test]
    fn tilted_and_bumpy_streams_are_caught() {
        let threshold = 100f64.ln();
        let steps_to_cross = |f: &dyn Fn(f64, f64) -> f64, seed: u64| {
            let mut rng = Rng(seed);
            let mut e = Uniformity::new();
            for i in 1..=20_000 {
                let (a, b) = (rng.uniform(), rng.uniform());
                e.push(f(a, b));
                if e.log_e() >= threshold {
                    return i;
                }
            }
            usize::MAX
        };
        let tilt = |a: f64, _| a.powf(0.8);
        // A tenth of the values piled in [0.95, 1] (truncation cut 5 % of the mass).
        let bump = |a: f64, b: f64| if b < 0.1 { 0.95 + 0.05 * a } else { a };
        for seed in 1..=5 {
            let t = steps_to_cross(&tilt, seed);
            assert!(t < 1_500, "tilt crossed after {t}");
            let b = steps_to_cross(&bump, seed);
            assert!(b < 3_000, "bump crossed after {b}");
        }
    }

    #[test]
    fn the_e_value_starts_at_one() {
        assert!(Uniformity::new().log_e().abs() < 1e-12);
        assert_eq!(Uniformity::default().log_e(), 0.0);
    }
}
