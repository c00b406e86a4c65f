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
//! # In exact integer arithmetic
//! pot computes all of this in fixed point ([`fixed`]): scores on a grid of 2⁻²⁴ of B rounded
//! down, nulls moved to their conservative side by a few grid steps, each factor an exact
//! rational, wealth in 2⁻⁴⁰ units rounded down and capped, the threshold rounded up. Every
//! rounding lowers the wealth, so the guarantees above hold exactly, and a proof circuit can
//! re-compute the verdict step by step. There is no floating-point version of the decision.
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

pub mod detector;
pub mod fixed;
pub mod uniformity;

use serde::{Deserialize, Serialize};

/// Challenges per stratification cycle (the number of families).
pub const CYCLE: usize = crate::challenge::FAMILIES.len();

/// The betting fractions of the mixture's grid, as shares of the largest safe bet, boldest
/// first ([`fixed::SHARES`] as reals).
pub fn bet_shares() -> impl Iterator<Item = f64> {
    fixed::SHARES
        .iter()
        .map(|&p| p as f64 / fixed::SHARE_DEN as f64)
}

/// The mixture's prior weights: half on the boldest bet, the rest equally
/// ([`fixed::WEIGHTS`] as reals).
pub fn bet_weights() -> impl Iterator<Item = f64> {
    fixed::WEIGHTS
        .iter()
        .map(|&c| c as f64 / fixed::WEIGHT_DEN as f64)
}

/// The test's grid nulls: (DIFFERENT side refuting "μ ≤ γ", SAME side refuting "μ ≥ δ").
pub(crate) fn grid_nulls(p: &TestParams) -> Result<(u64, u64), ParamError> {
    let e = || {
        ParamError(format!(
            "the margins γ = {} and δ = {} must lie at least 3 steps of 2^-{} of the clip B = {} inside (0, B) for the test's fixed-point arithmetic",
            p.gamma, p.delta, fixed::SCORE_BITS, p.clip
        ))
    };
    let up = fixed::null_at_most(p.gamma / p.clip).ok_or_else(e)?;
    let down = fixed::null_at_least(p.delta / p.clip).ok_or_else(e)?;
    Ok((up, down))
}

/// Scores above this many nats count as this many in the served-precision estimate
/// ([`Status::estimate`]): wide enough to place every quantization rung, from the floor to
/// 2-bit copies and other models.
pub const ESTIMATE_CLIP: f64 = 1.0;

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
    /// Check `10⁻⁹ ≤ α < 1`, `0 < γ ≤ δ < B` (with room for the score grid), `n_min ≤ n_max`.
    pub fn validate(&self) -> Result<(), ParamError> {
        let e = |s: &str| Err(ParamError(s.to_string()));
        if !(self.alpha >= fixed::MIN_ALPHA && self.alpha < 1.0) {
            return e("--alpha must lie in [1e-9, 1)");
        }
        if !(self.gamma > 0.0 && self.gamma <= self.delta && self.delta < self.clip) {
            return e("margins must satisfy 0 < --gamma <= --delta < --clip");
        }
        if self.n_max == 0 || self.n_min > self.n_max {
            return e("--n-min must not exceed --n-max, and --n-max must be positive");
        }
        grid_nulls(self).map(|_| ())
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
    /// The DIFFERENT test: refuting μ ≤ γ.
    different: fixed::Side,
    /// The SAME test: refuting μ ≥ δ.
    same: fixed::Side,
    /// Where the mixtures cross 1/α.
    threshold: u128,
    /// Sampled-text runs: the uniformity e-process on the PITs, which alone decides.
    uniformity: Option<uniformity::Uniformity>,
    /// Greedy text runs whose scores carry the fit of the text to the reference sampled at
    /// [`crate::score::sampled::SAMPLED_FIT`]: DIFFERENT then also needs that fit refuted.
    sampled_fit: Option<uniformity::Uniformity>,
    decision: Option<Decision>,
}

/// A (1-α) confidence sequence on a mean clipped score.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct Interval {
    /// Scores count as at most this.
    pub clip: f64,
    /// Mean clipped score.
    pub mean: f64,
    /// Lower end.
    pub lower: f64,
    /// Upper end.
    pub upper: f64,
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

impl SequentialTest {
    /// A test with no challenges yet.
    pub fn new(params: TestParams) -> Result<Self, ParamError> {
        params.validate()?;
        let (up, down) = grid_nulls(&params)?;
        Ok(Self {
            params,
            scores: Vec::new(),
            different: fixed::Side::new(fixed::Null::AtMost, up),
            same: fixed::Side::new(fixed::Null::AtLeast, down),
            threshold: fixed::threshold(params.alpha),
            uniformity: None,
            sampled_fit: None,
            decision: None,
        })
    }

    /// The test of a run scored as `kind`: the betting test on the mean score, or, for
    /// sampled text, the uniformity e-process on the PITs ([`uniformity`]), which declares
    /// DIFFERENT at `1/α` and never SAME (the mean-score sequence is still reported).
    pub fn for_kind(params: TestParams, kind: crate::score::ScoreKind) -> Result<Self, ParamError> {
        let mut t = Self::new(params)?;
        if kind == crate::score::ScoreKind::SampledText {
            t.uniformity = Some(uniformity::Uniformity::new());
        }
        Ok(t)
    }

    /// The uniformity e-process, in sampled-text runs.
    pub fn uniformity(&self) -> Option<&uniformity::Uniformity> {
        self.uniformity.as_ref()
    }

    /// Add one challenge: its score, and in sampled-text runs its PITs and surprises (an
    /// unscorable challenge there counts as one outcome at the far end: PIT 1, surprise −1).
    /// In greedy text runs, PITs and surprises are the text's fit to the reference sampled at
    /// [`crate::score::sampled::SAMPLED_FIT`]: from the first challenge that carries them,
    /// DIFFERENT also needs their e-process to refute that fit (a server that samples
    /// although temperature 0 was asked is not another model). Requiring a second test to
    /// reject as well only removes DIFFERENT verdicts, so its error stays at most α.
    /// After a verdict, only the score is kept. The verdict once reached.
    pub fn push_score(&mut self, s: &crate::score::ChallengeScore) -> Option<Decision> {
        // The e-processes stop where the verdict was reached: the e-value reported is the
        // one that decided (challenges of the same group still come in after it).
        if self.decision.is_some() {
            return self.push(s.score);
        }
        if s.kind == crate::score::ScoreKind::TextMismatch && !s.pit.is_empty() {
            let f = self
                .sampled_fit
                .get_or_insert_with(uniformity::Uniformity::new);
            for (&x, &v) in s.pit.iter().zip(&s.surprise) {
                f.push_outcome(x, v);
            }
        }
        if let Some(u) = self.uniformity.as_mut() {
            if s.pit.is_empty() && s.score >= crate::score::UNSCORABLE {
                u.push_outcome(1.0, -1.0);
            }
            for (i, &x) in s.pit.iter().enumerate() {
                match s.surprise.get(i) {
                    Some(&v) => u.push_outcome(x, v),
                    None => u.push(x),
                }
            }
        }
        self.push(s.score)
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

    /// The scores seen, unclipped.
    pub fn scores(&self) -> &[f64] {
        &self.scores
    }

    /// A score as the test counts it (NaN is maximal divergence), clipped to `[0, clip]`.
    fn clipped(s: f64, clip: f64) -> f64 {
        let s = if s.is_nan() { clip } else { s };
        s.clamp(0.0, clip)
    }

    /// The scores seen, on the test's grid ([`fixed::quantize`] at the clip bound).
    pub fn grid_scores(&self) -> Vec<u64> {
        self.scores
            .iter()
            .map(|s| fixed::quantize(*s, self.params.clip))
            .collect()
    }

    /// Add one challenge's score (NaN counts as the clip bound: maximal divergence) and
    /// return the verdict once reached. After a decision, further scores change nothing.
    pub fn push(&mut self, score: f64) -> Option<Decision> {
        let p = self.params;
        let q = fixed::quantize(score, p.clip);
        self.scores.push(score);
        let n = self.scores.len();
        let cycle_end = n.is_multiple_of(CYCLE);
        self.different.push(q);
        self.same.push(q);
        if let Some(u) = &self.uniformity {
            if self.decision.is_none() && n >= p.n_min && u.log_e() >= (1.0 / p.alpha).ln() {
                self.decision = Some(Decision::Different);
            }
        } else if self.decision.is_none() && cycle_end && n >= p.n_min {
            let wd = self.different.mixture();
            let ws = self.same.mixture();
            // Both can cross only when μ lies between γ and δ, where either verdict is right;
            // the larger wealth (stronger evidence) wins.
            let refuted = self
                .sampled_fit
                .as_ref()
                .is_none_or(|f| f.log_e() >= (1.0 / p.alpha).ln());
            if wd >= self.threshold && wd >= ws && refuted {
                self.decision = Some(Decision::Different);
            } else if ws >= self.threshold {
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
        let ci = self.interval(self.params.clip);
        let ln10 = std::f64::consts::LN_10;
        Status {
            n: self.scores.len(),
            mean: ci.mean,
            lower: ci.lower,
            upper: ci.upper,
            log10_wealth_different: match &self.uniformity {
                Some(u) => u.log_e() / ln10,
                None => self.different.log_wealth() / ln10,
            },
            log10_wealth_same: match &self.uniformity {
                Some(_) => 0.0,
                None => self.same.log_wealth() / ln10,
            },
            decision: self.decision,
        }
    }

    /// The (1-α) betting confidence sequence on the mean clipped score, over complete cycles:
    /// the smallest and largest `m` on a grid that neither test rejects.
    pub fn confidence_sequence(&self) -> (f64, f64) {
        let ci = self.interval(self.params.clip);
        (ci.lower, ci.upper)
    }

    /// The (1-α) confidence sequence on the mean of the scores clipped at `clip` (any clip:
    /// the decision's B, or [`ESTIMATE_CLIP`] to place the candidate on a ladder), by the
    /// same betting as the decision, over complete cycles. The grid of candidate means is
    /// geometric from `clip`·10⁻⁵ (a relative step of 1.2 %), so small means are resolved
    /// as finely as large ones.
    pub fn interval(&self, clip: f64) -> Interval {
        let n = self.scores.len();
        let mean = if n == 0 {
            0.0
        } else {
            self.scores
                .iter()
                .map(|s| Self::clipped(*s, clip))
                .sum::<f64>()
                / n as f64
        };
        let full = n / CYCLE * CYCLE;
        if full == 0 {
            return Interval {
                clip,
                mean,
                lower: 0.0,
                upper: clip,
            };
        }
        let qs: Vec<u64> = self.scores[..full]
            .iter()
            .map(|s| fixed::quantize(*s, clip))
            .collect();
        let alpha = self.params.alpha;
        // Candidate means on a geometric grid, m_i = LOW^(1 - i/GRID) for i in 1..GRID, from
        // just above 0 to just below 1 (and mirrored, 1 - m_i, for the upper end).
        const GRID: usize = 1000;
        const LOW: f64 = 1e-5;
        let m_at = |i: usize| LOW.powf(1.0 - i as f64 / GRID as f64);
        // The largest i in 1..GRID with refuted(m_at(j)) for every j ≤ i (0 when m_at(1) is
        // not refuted), by bisection: refutation of "μ ≤ m" only weakens as m grows (each
        // bet's factor falls with the grid null, and rounding down keeps that order), and
        // likewise for "μ ≥ 1 − m".
        let last_refuted = |refuted: &dyn Fn(f64) -> bool| -> usize {
            let (mut lo, mut hi) = (0usize, GRID); // refuted at lo (or lo = 0), not at hi
            while hi - lo > 1 {
                let mid = (lo + hi) / 2;
                if refuted(m_at(mid)) {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            lo
        };
        // Each candidate is placed on the score grid on its conservative side, as the
        // decision's margins are.
        let i = last_refuted(&|m| {
            fixed::null_at_most(m)
                .is_some_and(|g| fixed::refutes(fixed::Null::AtMost, g, &qs, alpha))
        });
        let j = last_refuted(&|g| {
            fixed::null_at_least(1.0 - g)
                .is_some_and(|n| fixed::refutes(fixed::Null::AtLeast, n, &qs, alpha))
        });
        // "μ ≤ m_i" and "μ ≥ 1 − m_j" are refuted: the mean lies between (a valid statement at
        // the grid point itself, so the grid costs width, never coverage).
        let lower = if i == 0 { 0.0 } else { m_at(i) };
        let upper = if j == 0 { 1.0 } else { 1.0 - m_at(j) };
        Interval {
            clip,
            mean,
            lower: (lower * clip).min(mean),
            upper: (upper * clip).max(mean),
        }
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
mod tests;
