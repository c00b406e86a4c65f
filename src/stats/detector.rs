//! Watching an endpoint over time (`pot monitor`): a sequential change detector on the same
//! clipped scores as the test, that raises an alert when the endpoint stops serving the
//! reference, however long it served it first.
//!
//! # What is controlled
//! Before a change the endpoint serves the reference: `H_same`, each cycle's mean clipped score
//! (over its five families) is at most γ, as in the DIFFERENT test. A run of the [`Test`]
//! bets on all scores since the start: after a long honest stretch its wealth has fallen far,
//! and a swap late in the watch would take as long to show as the honest stretch lasted. The
//! detector bets instead from every possible change time at once, the Shiryaev–Roberts
//! e-detector (Shin, Ramdas & Rinaldo, "E-detectors", 2024): with `e_c` the betting factor
//! of cycle `c` (the product over its challenges of `1 + λ (x − m)`, `x = X/B`, `m = γ/B`),
//!
//! `R_c = e_c · (R_{c−1} + 1)`,  `R_0 = 0`,
//!
//! that is `Σ_{k ≤ c} Π_{j=k..c} e_j`, the total wealth of gamblers who each started at one
//! cycle with one unit. Under `H_same`, `E[e_c | past] ≤ 1` at cycle ends (the AM–GM argument of
//! the test, see the parent module), so `R_c − c` is a supermartingale and, by optional
//! stopping, the alert time `τ = min{c : R_c ≥ A}` has **`E[τ] ≥ A` cycles**: the average run
//! length to a false alert is at least `A` cycles (`--arl`). A fixed-weight mixture over the
//! test's grid of bets keeps that property (it is linear in `R`).
//!
//! There is no bound on the probability of *ever* raising a false alert over an unbounded
//! watch, and no method can give one without its delay growing with the watch; the average
//! run length is the guarantee change detection offers. After a swap to a model whose scores
//! clip at B, the boldest bet multiplies `R` by about 10^3 per cycle, so the alert comes within
//! about `log10(A) / 3 + 1` cycles (simulated in `tests`).
//!
//! This room is pure: the state serializes, and the monitor keeps it between restarts.

use serde::{Deserialize, Serialize};

use super::{bet_shares, bet_weights};

/// `ln R` of a detector that has not bet yet (`R = 0`), kept finite for serialization.
const LOG_ZERO: f64 = -1e300;

/// The state of a change detector.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Detector {
    /// SAME margin γ (nats per token).
    pub gamma: f64,
    /// Clip bound B.
    pub clip: f64,
    /// Alert threshold A: the average run length to a false alert, in cycles.
    pub arl: f64,
    /// `ln R` of each bet of the grid, at the last cycle end.
    log_r: Vec<f64>,
    /// Scaled scores of the cycle in progress.
    pending: Vec<f64>,
    /// Cycles completed.
    pub cycles: u64,
}

impl Detector {
    /// A detector of mean clipped scores above `gamma` (scores clipped at `clip`), alerting at
    /// an average run length of `arl` cycles.
    pub fn new(gamma: f64, clip: f64, arl: f64) -> Result<Self, super::ParamError> {
        if !(gamma > 0.0 && gamma < clip && clip.is_finite()) {
            return Err(super::ParamError(
                "the monitor needs 0 < γ < B (check --margins)".into(),
            ));
        }
        if !(arl > 1.0 && arl.is_finite()) {
            return Err(super::ParamError(
                "--arl must be a number of cycles above 1".into(),
            ));
        }
        Ok(Self {
            gamma,
            clip,
            arl,
            log_r: vec![LOG_ZERO; bet_shares().count()],
            pending: Vec::with_capacity(super::CYCLE),
            cycles: 0,
        })
    }

    /// Take one challenge's score (in challenge order: a cycle is [`super::CYCLE`] of them).
    /// At a cycle's end the statistic is updated; it returns whether it now alerts.
    pub fn push(&mut self, score: f64) -> bool {
        let x = if score.is_nan() {
            1.0
        } else {
            score.clamp(0.0, self.clip) / self.clip
        };
        self.pending.push(x);
        if self.pending.len() < super::CYCLE {
            return false;
        }
        let m = self.gamma / self.clip;
        let cap = 1.0 / m;
        for (lr, s) in self.log_r.iter_mut().zip(bet_shares()) {
            let log_e: f64 = self
                .pending
                .iter()
                .map(|x| (1.0 + s * cap * (x - m)).ln())
                .sum();
            // ln(e · (R + 1)) = ln e + ln(1 + exp(ln R)).
            *lr = log_e + softplus(*lr);
        }
        self.pending.clear();
        self.cycles += 1;
        self.alerts()
    }

    /// `log10` of the mixture statistic `Σ w_g R_g` (alerts at `log10 A`).
    pub fn log10_statistic(&self) -> f64 {
        log_sum_weighted_exp(
            bet_weights()
                .zip(self.log_r.iter().copied())
                .collect::<Vec<_>>()
                .into_iter(),
        ) / std::f64::consts::LN_10
    }

    /// Whether the statistic has reached the threshold.
    pub fn alerts(&self) -> bool {
        self.log10_statistic() >= self.arl.log10()
    }
}

/// `ln Σ w_i e^{v_i}` over the terms with positive weight.
fn log_sum_weighted_exp(terms: impl Iterator<Item = (f64, f64)> + Clone) -> f64 {
    let m = terms
        .clone()
        .filter(|(w, _)| *w > 0.0)
        .map(|(_, v)| v)
        .fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + terms
        .filter(|(w, _)| *w > 0.0)
        .map(|(w, v)| w * (v - m).exp())
        .sum::<f64>()
        .ln()
}

/// `ln(1 + e^v)`, stable for large `v`.
fn softplus(v: f64) -> f64 {
    if v > 30.0 {
        v + (-v).exp().ln_1p()
    } else {
        v.exp().ln_1p()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny deterministic generator (xorshift), so the simulations need no crate.
    struct Rng(u64);
    impl Rng {
        fn uniform(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// Cycles until the first alert (at most `cap`), scores from `draw(cycle, family)`.
    fn run_length(d: &mut Detector, cap: u64, mut draw: impl FnMut(u64, usize) -> f64) -> u64 {
        for c in 0..cap {
            for f in 0..super::super::CYCLE {
                if d.push(draw(c, f)) {
                    return c + 1;
                }
            }
        }
        cap
    }

    /// Under the least favourable null (each score is 0 or B, cycle means exactly γ, the
    /// families unequal), the average run length to a false alert is at least A.
    #[test]
    fn the_average_run_length_to_a_false_alert_is_at_least_the_threshold() {
        let (gamma, clip, arl) = (0.004, 0.016, 20.0);
        let m = gamma / clip;
        // Family means around m, averaging m.
        let means = [m - 0.15, m + 0.15, m - 0.05, m + 0.05, m];
        let mut rng = Rng(0x9e3779b97f4a7c15);
        let runs = 400;
        let mut total = 0u64;
        for _ in 0..runs {
            let mut d = Detector::new(gamma, clip, arl).unwrap();
            total += run_length(&mut d, 100_000, |_, f| {
                if rng.uniform() < means[f] {
                    clip
                } else {
                    0.0
                }
            });
        }
        let mean = total as f64 / runs as f64;
        eprintln!("mean run length under the least favourable null: {mean:.1} cycles (A = {arl})");
        assert!(mean >= arl, "mean run length {mean} cycles < A = {arl}");
    }

    /// After a long honest stretch, a swap to scores at the clip is caught within a few
    /// cycles, however long the stretch was; a swap to scores just above γ is caught too.
    #[test]
    fn a_swap_after_a_long_honest_stretch_is_caught_quickly() {
        let (gamma, clip, arl) = (0.004, 0.016, 1e4);
        let mut rng = Rng(42);
        for honest in [10u64, 1000] {
            let mut d = Detector::new(gamma, clip, arl).unwrap();
            let at = run_length(&mut d, honest + 100, |c, _| {
                if c < honest {
                    0.001 * rng.uniform()
                } else {
                    clip * (0.8 + 0.2 * rng.uniform())
                }
            });
            assert!(at > honest, "no alert before the swap");
            assert!(at <= honest + 3, "caught in {} cycles", at - honest);
        }
        // Scores at 2γ on average: slower, still caught.
        let mut d = Detector::new(gamma, clip, arl).unwrap();
        let at = run_length(&mut d, 2000, |c, _| {
            if c < 50 {
                0.0
            } else if rng.uniform() < 2.0 * gamma / clip {
                clip
            } else {
                0.0
            }
        });
        assert!(at > 50 && at < 500, "caught at cycle {at}");
    }

    #[test]
    fn the_state_survives_a_round_trip() {
        let mut d = Detector::new(0.004, 0.016, 100.0).unwrap();
        for s in [0.0, 0.001, 0.02, 0.0, 0.003, 0.01, 0.0] {
            d.push(s);
        }
        let back: Detector = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
        assert_eq!(back, d);
        assert!(Detector::new(0.004, 0.016, 1.0).is_err());
        assert!(Detector::new(0.02, 0.016, 100.0).is_err());
    }
}
