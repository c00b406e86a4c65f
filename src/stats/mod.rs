//! Anytime-valid sequential decisions on the mean challenge score.
//!
//! # What is tested
//! Each challenge `i` yields a score `S_i ≥ 0` (a divergence: 0 when the candidate computes
//! what the reference computes). pot tests the mean of the *clipped* score
//! `X_i = min(S_i, B)`, over the stratified challenge distribution (each of the five
//! families weighted equally), `μ = E[X]`:
//!
//! * **DIFFERENT** is declared by a test of `H_same: μ ≤ γ`. Its error — saying DIFFERENT
//!   when the candidate's mean divergence is at most γ — is at most α.
//! * **SAME** is declared by a test of `H_diff: μ ≥ δ` (δ ≥ γ). Its error — saying SAME when
//!   the candidate's mean divergence is δ or more — is at most α.
//! * **UNDECIDED** when neither test has rejected by the query budget `n_max`.
//!
//! Between γ and δ lies an indifference zone where either verdict is acceptable. Both
//! guarantees hold *uniformly over time*: however long the run, whenever it stops.
//!
//! # How: betting (test-by-betting, Waudby-Smith & Ramdas, JRSS-B 2023)
//! Scores are scaled to `x = X/B ∈ [0, 1]`. To refute `μ ≤ m` a gambler bets a fraction λ
//! on each challenge: wealth `W_t = Π (1 + λ (x_i − m))`. When `μ ≤ m` this wealth is a
//! non-negative supermartingale, so by Ville's inequality it ever reaches `1/α` with
//! probability at most α. pot bets with a mixture over a fixed grid of λ values
//! (`W = Σ_g w_g W_g` with fixed prior weights, no tuning, no look-ahead), and the mirror process
//! `Π (1 − λ (x_i − m))` refutes `μ ≥ m`.
//!
//! # Why decisions are taken at cycle ends
//! Challenges are stratified: each cycle of [`CYCLE`] consecutive challenges holds each family
//! once. Under the null only the *average* of the family means is bounded, not each one, so a
//! single factor can have expectation above 1. Over a whole cycle with a fixed λ, by
//! independence and the AM–GM inequality, `E Π_f (1 + λ(x_f − m)) = Π_f (1 + λ(μ_f − m))
//! ≤ (1 + λ(μ − m))^5 ≤ 1`. So the wealth *at cycle ends* is a supermartingale, and pot looks
//! (and may stop) only there. The simulation tests in this module check the error rates with
//! families of unequal means sitting exactly on the boundaries.
//!
//! # Why betting, not empirical Bernstein
//! An empirical-Bernstein sequence pays a range term `∝ B·log(1/α)/t` whatever the data: with
//! α = 0.01 it keeps SAME out of reach for dozens of queries even when every score is 0.
//! Betting adapts: with all-zero scores the SAME wealth grows by `1 + λ·δ/B` per challenge,
//! so with `B = 2δ` it reaches 1/α = 100 in 10 challenges. See `tests::*queries*`.
//!
//! This room is pure: no models, no I/O.

use serde::{Deserialize, Serialize};

/// Challenges per stratification cycle (the number of families).
pub const CYCLE: usize = crate::challenge::FAMILIES.len();

/// Betting fractions, as shares of the largest safe bet; a mixture over them.
const LAMBDA_SHARES: [f64; 12] = [
    0.95, 0.7, 0.5, 0.35, 0.25, 0.17, 0.12, 0.08, 0.05, 0.03, 0.02, 0.01,
];
/// Prior weight of the boldest bet; the others share the rest equally. Clear evidence (all
/// scores at 0, or all above the clip) is the common case in audits, and this weight lets it
/// decide within two cycles at α = 0.01; weaker evidence is served by the smaller bets.
const BOLD_WEIGHT: f64 = 0.5;

fn mixture_weight(g: usize) -> f64 {
    if g == 0 {
        BOLD_WEIGHT
    } else {
        (1.0 - BOLD_WEIGHT) / (LAMBDA_SHARES.len() - 1) as f64
    }
}

/// Parameters of a sequential test.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TestParams {
    /// Bound on each decision's error probability.
    pub alpha: f64,
    /// SAME margin: DIFFERENT means "mean clipped score above γ".
    pub gamma: f64,
    /// DIFFERENT margin: SAME means "mean clipped score below δ".
    pub delta: f64,
    /// Clip bound B: each score is clipped to `[0, B]`.
    pub clip: f64,
    /// Fewest challenges before a decision.
    pub n_min: usize,
    /// Budget: UNDECIDED after this many challenges.
    pub n_max: usize,
}

/// Parameters that make no valid test.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid test parameters: {0}")]
pub struct ParamError(pub String);

impl TestParams {
    /// Check `0 < α < 1`, `0 < γ ≤ δ < B`, `n_min ≤ n_max`.
    pub fn validate(&self) -> Result<(), ParamError> {
        let e = |s: &str| Err(ParamError(s.to_string()));
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return e("--alpha must lie strictly between 0 and 1");
        }
        if !(self.gamma > 0.0 && self.gamma <= self.delta && self.delta < self.clip) {
            return e("margins must satisfy 0 < --gamma <= --delta < --clip");
        }
        if self.n_max == 0 || self.n_min > self.n_max {
            return e("--n-min must not exceed --n-max, and --n-max must be positive");
        }
        Ok(())
    }
}

/// The verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Decision {
    /// Mean divergence below δ, with error ≤ α.
    Same,
    /// Mean divergence above γ, with error ≤ α.
    Different,
    /// The budget ran out first.
    Undecided,
}

impl Decision {
    /// Upper-case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Decision::Same => "SAME",
            Decision::Different => "DIFFERENT",
            Decision::Undecided => "UNDECIDED",
        }
    }
}

/// The state of a sequential test after some challenges.
#[derive(Clone, Debug)]
pub struct SequentialTest {
    params: TestParams,
    scores: Vec<f64>,
    /// log-wealth of each λ in the DIFFERENT test (refuting μ ≤ γ).
    log_w_diff: Vec<f64>,
    /// log-wealth of each λ in the SAME test (refuting μ ≥ δ).
    log_w_same: Vec<f64>,
    decision: Option<Decision>,
}

/// What the test says after one more challenge.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// Challenges seen.
    pub n: usize,
    /// Mean clipped score.
    pub mean: f64,
    /// Lower end of the (1-α) confidence sequence on the mean clipped score, from complete
    /// cycles (0 before the first cycle ends).
    pub lower: f64,
    /// Upper end, likewise (B before the first cycle ends).
    pub upper: f64,
    /// log10 of the DIFFERENT test's wealth (decides at log10(1/α)).
    pub log10_wealth_different: f64,
    /// log10 of the SAME test's wealth.
    pub log10_wealth_same: f64,
    /// The verdict once reached.
    pub decision: Option<Decision>,
}

/// log of the prior-weighted mean of `exp(v)`: the mixture's log-wealth.
fn log_mean_exp(v: &[f64]) -> f64 {
    let m = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + v
        .iter()
        .enumerate()
        .map(|(g, x)| mixture_weight(g) * (x - m).exp())
        .sum::<f64>()
        .ln()
}

/// log of the mixture wealth against `μ ≤ m` (`up = true`) or `μ ≥ m` (`up = false`) over the
/// scaled scores `xs`.
fn log_wealth(xs: &[f64], m: f64, up: bool) -> f64 {
    let cap = if up { 1.0 / m } else { 1.0 / (1.0 - m) };
    let per: Vec<f64> = LAMBDA_SHARES
        .iter()
        .map(|s| {
            let l = s * cap;
            xs.iter()
                .map(|x| {
                    let d = if up { x - m } else { m - x };
                    (1.0 + l * d).ln()
                })
                .sum()
        })
        .collect();
    log_mean_exp(&per)
}

impl SequentialTest {
    /// A test with no challenges yet.
    pub fn new(params: TestParams) -> Result<Self, ParamError> {
        params.validate()?;
        Ok(Self {
            params,
            scores: Vec::new(),
            log_w_diff: vec![0.0; LAMBDA_SHARES.len()],
            log_w_same: vec![0.0; LAMBDA_SHARES.len()],
            decision: None,
        })
    }

    /// Parameters.
    pub fn params(&self) -> &TestParams {
        &self.params
    }

    /// The verdict, once reached.
    pub fn decision(&self) -> Option<Decision> {
        self.decision
    }

    /// Challenges seen.
    pub fn n(&self) -> usize {
        self.scores.len()
    }

    fn scaled(&self, s: f64) -> f64 {
        let s = if s.is_nan() { self.params.clip } else { s };
        s.clamp(0.0, self.params.clip) / self.params.clip
    }

    /// Add one challenge's score (NaN counts as the clip bound: maximal divergence) and
    /// return the verdict once reached. After a decision, further scores change nothing.
    pub fn push(&mut self, score: f64) -> Option<Decision> {
        let p = self.params;
        let x = self.scaled(score);
        self.scores.push(score);
        let (mg, md) = (p.gamma / p.clip, p.delta / p.clip);
        for (w, s) in self.log_w_diff.iter_mut().zip(LAMBDA_SHARES) {
            *w += (1.0 + s / mg * (x - mg)).ln();
        }
        for (w, s) in self.log_w_same.iter_mut().zip(LAMBDA_SHARES) {
            *w += (1.0 + s / (1.0 - md) * (md - x)).ln();
        }
        let n = self.scores.len();
        if self.decision.is_none() && n % CYCLE == 0 && n >= p.n_min {
            let threshold = (1.0 / p.alpha).ln();
            let wd = log_mean_exp(&self.log_w_diff);
            let ws = log_mean_exp(&self.log_w_same);
            // Both can cross only when μ lies between γ and δ, where either verdict is right;
            // the larger wealth (stronger evidence) wins.
            if wd >= threshold && wd >= ws {
                self.decision = Some(Decision::Different);
            } else if ws >= threshold {
                self.decision = Some(Decision::Same);
            }
        }
        if self.decision.is_none() && n >= p.n_max {
            self.decision = Some(Decision::Undecided);
        }
        self.decision
    }

    /// The current state.
    pub fn status(&self) -> Status {
        let p = self.params;
        let n = self.scores.len();
        let mean = if n == 0 {
            0.0
        } else {
            self.scores.iter().map(|s| self.scaled(*s)).sum::<f64>() / n as f64 * p.clip
        };
        let (lower, upper) = self.confidence_sequence();
        let ln10 = std::f64::consts::LN_10;
        Status {
            n,
            mean,
            lower,
            upper,
            log10_wealth_different: log_mean_exp(&self.log_w_diff) / ln10,
            log10_wealth_same: log_mean_exp(&self.log_w_same) / ln10,
            decision: self.decision,
        }
    }

    /// The (1-α) betting confidence sequence on the mean clipped score, over complete cycles:
    /// the smallest and largest `m` on a grid that neither test rejects.
    pub fn confidence_sequence(&self) -> (f64, f64) {
        let p = self.params;
        let full = self.scores.len() / CYCLE * CYCLE;
        if full == 0 {
            return (0.0, p.clip);
        }
        let xs: Vec<f64> = self.scores[..full]
            .iter()
            .map(|s| self.scaled(*s))
            .collect();
        let threshold = (1.0 / p.alpha).ln();
        const GRID: usize = 400;
        let ms = (1..GRID).map(|i| i as f64 / GRID as f64);
        let kept: Vec<f64> = ms
            .filter(|&m| {
                log_wealth(&xs, m, true) < threshold && log_wealth(&xs, m, false) < threshold
            })
            .collect();
        // A point below the grid's first step: the bound is 0 (or B) itself.
        let lower = if log_wealth(&xs, 1.0 / GRID as f64, true) < threshold {
            0.0
        } else {
            kept.first().copied().unwrap_or(0.0)
        };
        let upper = if log_wealth(&xs, 1.0 - 1.0 / GRID as f64, false) < threshold {
            1.0
        } else {
            kept.last().copied().unwrap_or(1.0)
        };
        (lower * p.clip, upper * p.clip)
    }
}

/// Run a whole stream of scores through a test: the decision and the number of challenges
/// it took (the budget when UNDECIDED).
pub fn run_stream(params: TestParams, scores: impl IntoIterator<Item = f64>) -> (Decision, usize) {
    let mut t = SequentialTest::new(params).expect("valid parameters");
    for s in scores {
        if let Some(d) = t.push(s) {
            return (d, t.n());
        }
    }
    (Decision::Undecided, t.n())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn params(alpha: f64) -> TestParams {
        TestParams {
            alpha,
            gamma: 0.05,
            delta: 0.1,
            clip: 0.2,
            n_min: CYCLE,
            n_max: 200,
        }
    }

    /// A stratified stream: challenge `i` comes from family `i % 5` (the order within a cycle
    /// does not matter to the test), whose scores are `B·Bernoulli(p_f)`: the most variable
    /// scores with that mean, the hardest case for a bounded-mean test.
    fn stream(rng: &mut impl Rng, family_means: [f64; CYCLE], clip: f64, n: usize) -> Vec<f64> {
        (0..n)
            .map(|i| {
                if rng.gen::<f64>() < family_means[i % CYCLE] {
                    clip
                } else {
                    0.0
                }
            })
            .collect()
    }

    fn error_rate(
        p: TestParams,
        family_means: [f64; CYCLE],
        wrong: Decision,
        streams: usize,
    ) -> f64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut errors = 0;
        for _ in 0..streams {
            let s = stream(&mut rng, family_means, p.clip, p.n_max);
            if run_stream(p, s).0 == wrong {
                errors += 1;
            }
        }
        errors as f64 / streams as f64
    }

    #[test]
    fn wrong_different_rate_is_at_most_alpha_at_the_same_boundary() {
        // Mean exactly γ/B = 0.25, spread unevenly across families.
        for alpha in [0.05, 0.01] {
            let p = params(alpha);
            for means in [
                [0.25; 5],
                [0.05, 0.1, 0.25, 0.35, 0.5],
                [0.0, 0.0, 0.0, 0.25, 1.0],
            ] {
                let rate = error_rate(p, means, Decision::Different, 10_000);
                eprintln!("alpha {alpha} means {means:?}: wrong DIFFERENT {rate}");
                assert!(rate <= alpha, "alpha {alpha} means {means:?}: {rate}");
            }
        }
    }

    #[test]
    fn wrong_same_rate_is_at_most_alpha_at_the_different_boundary() {
        // Mean exactly δ/B = 0.5.
        for alpha in [0.05, 0.01] {
            let p = params(alpha);
            for means in [
                [0.5; 5],
                [0.1, 0.3, 0.5, 0.7, 0.9],
                [0.0, 0.0, 0.5, 1.0, 1.0],
            ] {
                let rate = error_rate(p, means, Decision::Same, 10_000);
                eprintln!("alpha {alpha} means {means:?}: wrong SAME {rate}");
                assert!(rate <= alpha, "alpha {alpha} means {means:?}: {rate}");
            }
        }
    }

    #[test]
    fn identical_outputs_decide_same_in_ten_queries() {
        let (d, n) = run_stream(params(0.01), std::iter::repeat(0.0));
        assert_eq!((d, n), (Decision::Same, 10));
    }

    #[test]
    fn clearly_different_outputs_decide_different_in_five_queries() {
        let (d, n) = run_stream(params(0.01), std::iter::repeat(0.7));
        assert_eq!((d, n), (Decision::Different, 5));
    }

    #[test]
    fn decisions_wait_for_cycle_ends_and_n_min() {
        let mut p = params(0.01);
        p.n_min = 15;
        let (d, n) = run_stream(p, std::iter::repeat(1.0));
        assert_eq!((d, n), (Decision::Different, 15));
    }

    #[test]
    fn budget_exhaustion_is_undecided() {
        // Mean in the indifference zone with noise: neither test can win in 20 queries.
        let mut p = params(0.01);
        p.n_max = 20;
        let s = (0..).map(|i| if i % 2 == 0 { 0.0 } else { 0.15 });
        assert_eq!(run_stream(p, s), (Decision::Undecided, 20));
    }

    #[test]
    fn confidence_sequence_covers_and_shrinks() {
        let mut t = SequentialTest::new(params(0.01)).unwrap();
        let mut widths = vec![];
        for i in 0..100 {
            t.push(if i % 4 == 0 { 0.2 } else { 0.0 });
            let st = t.status();
            if (i + 1) % 25 == 0 {
                assert!(st.lower <= 0.05 && 0.05 <= st.upper, "{st:?}");
                widths.push(st.upper - st.lower);
            }
        }
        assert!(widths.windows(2).all(|w| w[1] <= w[0]), "{widths:?}");
    }

    #[test]
    fn nan_scores_count_as_maximal_divergence() {
        let (d, _) = run_stream(params(0.01), std::iter::repeat(f64::NAN));
        assert_eq!(d, Decision::Different);
    }

    #[test]
    fn bad_parameters_are_refused() {
        let mut p = params(0.01);
        p.delta = 0.01;
        assert!(SequentialTest::new(p).is_err());
        let mut p = params(0.01);
        p.alpha = 1.5;
        assert!(SequentialTest::new(p).is_err());
        let mut p = params(0.01);
        p.clip = 0.1;
        assert!(SequentialTest::new(p).is_err());
    }
}
