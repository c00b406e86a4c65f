//! pot's betting test in exact integer arithmetic: what every pot decision is computed with,
//! and what a proof of the verdict re-computes constraint by constraint.
//!
//! # The arithmetic
//! * **Scores** are quantized to a grid of [`Q`] = 2²⁴ steps of the clip bound, rounded down:
//!   `q = ⌊Q · min(S, B)/B⌋` ([`quantize`]; NaN counts as `B`). The quantized mean is at most
//!   the true clipped mean and at least it less one step.
//! * **Null means** on the grid are rounded to the conservative side ([`null_at_most`],
//!   [`null_at_least`]): the DIFFERENT side refutes `μ ≤ M/Q` with `M ≥ γ/B · Q`; the SAME
//!   side refutes `μ ≥ M/Q` with `M ≤ δ/B · Q − 1` (one step lower, for the rounded-down
//!   scores), and each keeps one more step against the rounding of the floating division
//!   that places them.
//! * **Bets** are the grid's shares `s = P/100` of the largest safe bet ([`SHARES`]). On the
//!   DIFFERENT side the factor of one challenge is exactly the rational
//!   `1 + s(x − m)/m = (100M + P(q − M)) / (100M)`; the SAME side is the same on mirrored scores
//!   (`Q − q`, `Q − M`).
//! * **Wealth** is a fixed-point integer `w`, the wealth times 2⁴⁰ ([`WEALTH_BITS`]), updated
//!   `w ← min(⌊w · num / den⌋, CAP)`: rounded down, and capped at [`CAP`] (wealth 2⁴⁴).
//! * **The mixture** weighs the boldest bet 11/22 and each other 1/22 ([`WEIGHTS`]), and
//!   crosses `1/α` when `Σ c_g w_g ≥ T`, `T = ⌈22 · 2⁴⁰/α⌉` with a relative margin of 10⁻¹²
//!   against the floating division ([`threshold`]).
//!
//! # Why the guarantee holds exactly
//! Each rounding only lowers the wealth: `⌊w f⌋ ≤ w f`, and `min(·, CAP)` is concave, so by
//! induction over a cycle the capped, rounded wealth is at most `min(CAP, w Π f)`, whose
//! expectation under the null is at most `min(CAP, w) = w` (the cycle argument of the parent
//! module: the quantized scores' mean is on the null's side of `M/Q`). So the integer wealth
//! at cycle ends is a non-negative supermartingale under each null, and Ville's inequality
//! bounds each decision's error by α, with no approximation left to argue about. The
//! simulations in `stats::tests` check it on the boundaries.
//!
//! # How it relates to the real-valued test
//! It is the real-valued test of the parent module's design (the same bets, weights, cycles
//! and stopping rule) with every quantity rounded toward the null. Scores move by at most 2⁻²⁴
//! of B, margins by at most 3 steps, and wealth loses at most 2⁻⁴⁰ per step, so verdicts and
//! queries to decision are those of the real-valued test except at exact ties with the
//! threshold (none on pot's recorded runs: BENCHMARKS.md, "fixed point").
//!
//! The integers stay small: `w ≤ 2⁸⁴`, `num < 2³²`, so `w · num < 2¹¹⁶` fits a `u128`, and
//! in a circuit over a 255-bit field nothing wraps.

/// Bits of the score grid.
pub const SCORE_BITS: u32 = 24;
/// Steps of the score grid: a quantized score lies in `0..=Q`.
pub const Q: u64 = 1 << SCORE_BITS;
/// Fractional bits of the wealth.
pub const WEALTH_BITS: u32 = 40;
/// Wealth 1.
pub const ONE: u128 = 1 << WEALTH_BITS;
/// The wealth cap: 2⁴⁴, far above any threshold pot accepts (α ≥ [`MIN_ALPHA`]).
pub const CAP: u128 = 1 << 84;
/// The bets, in hundredths of the largest safe bet, boldest first.
pub const SHARES: [u64; 12] = [95, 70, 50, 35, 25, 17, 12, 8, 5, 3, 2, 1];
/// Denominator of [`SHARES`].
pub const SHARE_DEN: u64 = 100;
/// The mixture's prior weights, in [`WEIGHT_DEN`]ths: half on the boldest bet, the rest
/// shared equally.
pub const WEIGHTS: [u64; 12] = [11, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1];
/// Denominator of [`WEIGHTS`].
pub const WEIGHT_DEN: u64 = 22;
/// The smallest α the arithmetic supports (its threshold stays far below the cap).
pub const MIN_ALPHA: f64 = 1e-9;

/// A score on the grid: `⌊Q · min(S, B)/B⌋`, NaN counting as `B`.
pub fn quantize(score: f64, clip: f64) -> u64 {
    let s = if score.is_nan() { clip } else { score };
    let x = (s.clamp(0.0, clip) / clip).clamp(0.0, 1.0);
    ((x * Q as f64).floor() as u64).min(Q)
}

/// The grid null of a test refuting "μ ≤ m" (`m` a share of the clip bound): the first grid
/// point strictly above `m · Q` (at least `m`, whatever the floating rounding). `None` when
/// that is not below `Q` (such a null is never refuted).
pub fn null_at_most(m: f64) -> Option<u64> {
    let v = (m * Q as f64).floor();
    (v >= 0.0 && v + 1.0 < Q as f64).then(|| v as u64 + 1)
}

/// The grid null of a test refuting "μ ≥ m": two steps below `⌊m · Q⌋`, so at most
/// `m · Q − 1` (the scores are rounded down by up to one step). `None` when that is below 1.
pub fn null_at_least(m: f64) -> Option<u64> {
    let v = (m * Q as f64).floor();
    (v >= 3.0 && v <= Q as f64).then(|| v as u64 - 2)
}

/// The crossing point of the mixture `Σ c_g w_g` for level α: `⌈22 · 2⁴⁰/α⌉`, raised by a
/// relative 10⁻¹² so that no floating rounding lowers it.
pub fn threshold(alpha: f64) -> u128 {
    let v = (WEIGHT_DEN as f64) * (ONE as f64) / alpha;
    (v * (1.0 + 1e-12)).ceil() as u128
}

/// Which null a side refutes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Null {
    /// "μ ≤ M/Q" (the DIFFERENT side, and a confidence sequence's lower end).
    AtMost,
    /// "μ ≥ M/Q" (the SAME side, and the upper end).
    AtLeast,
}

/// The factor's numerator and denominator for grid score `q` against grid null `m` with
/// share `p`, oriented so the side gains when the score lies past the null.
pub fn factor(null: Null, m: u64, q: u64, p: u64) -> (u128, u128) {
    let (x, m) = match null {
        Null::AtMost => (q, m),
        Null::AtLeast => (Q - q.min(Q), Q - m),
    };
    let (x, m, p, h) = (x as u128, m as u128, p as u128, SHARE_DEN as u128);
    // 100m + p(x − m) = (100 − p)m + px ≥ 0 since p ≤ 100.
    ((h - p) * m + p * x, h * m)
}

/// The wealth after one challenge: `min(⌊w · num/den⌋, CAP)`.
pub fn step(w: u128, (num, den): (u128, u128)) -> u128 {
    (w * num / den).min(CAP)
}

/// One side of the test: the fixed-point wealth of each bet against one grid null.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Side {
    null: Null,
    m: u64,
    wealth: [u128; 12],
}

impl Side {
    /// A side with every bet's wealth at 1.
    pub fn new(null: Null, m: u64) -> Self {
        Self {
            null,
            m,
            wealth: [ONE; 12],
        }
    }

    /// The grid null.
    pub fn null(&self) -> (Null, u64) {
        (self.null, self.m)
    }

    /// Bet on one grid score.
    pub fn push(&mut self, q: u64) {
        for (w, p) in self.wealth.iter_mut().zip(SHARES) {
            *w = step(*w, factor(self.null, self.m, q, p));
        }
    }

    /// Each bet's wealth, times 2⁴⁰.
    pub fn wealth(&self) -> &[u128; 12] {
        &self.wealth
    }

    /// The mixture `Σ c_g w_g` (22 · 2⁴⁰ times the mixture wealth).
    pub fn mixture(&self) -> u128 {
        self.wealth
            .iter()
            .zip(WEIGHTS)
            .map(|(w, c)| w * c as u128)
            .sum()
    }

    /// log of the mixture wealth (the floor of the arithmetic, 2⁻⁴⁰/22, when every bet is
    /// spent).
    pub fn log_wealth(&self) -> f64 {
        let s = self.mixture().max(1) as f64;
        s.ln() - ((WEIGHT_DEN as f64) * ONE as f64).ln()
    }
}

/// Whether a whole stream of grid scores refutes the null at level α (the mixture at the
/// end at or above the threshold).
pub fn refutes(null: Null, m: u64, qs: &[u64], alpha: f64) -> bool {
    let mut side = Side::new(null, m);
    for &q in qs {
        side.push(q);
    }
    side.mixture() >= threshold(alpha)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantization_rounds_down_and_saturates() {
        assert_eq!(quantize(0.0, 0.2), 0);
        assert_eq!(quantize(-1.0, 0.2), 0);
        assert_eq!(quantize(0.2, 0.2), Q);
        assert_eq!(quantize(5.0, 0.2), Q);
        assert_eq!(quantize(f64::NAN, 0.2), Q);
        assert_eq!(quantize(0.1, 0.2), Q / 2);
        let q = quantize(0.0123, 0.2);
        assert!((q as f64) <= 0.0123 / 0.2 * Q as f64);
        assert!((q as f64 + 1.0) > 0.0123 / 0.2 * Q as f64);
    }

    #[test]
    fn nulls_sit_on_the_conservative_side() {
        for m in [1e-5, 0.05 / 0.2, 0.25, 0.1 / 0.2, 0.5, 0.9886] {
            let up = null_at_most(m).unwrap();
            assert!(up as f64 >= m * Q as f64, "{m}");
            assert!((up as f64) < m * Q as f64 + 2.0, "{m}");
            let down = null_at_least(m).unwrap();
            assert!((down as f64) <= m * Q as f64 - 1.0, "{m}");
            assert!(down as f64 > m * Q as f64 - 4.0, "{m}");
        }
        assert_eq!(null_at_most(1.0), None);
        assert_eq!(null_at_least(1e-9), None);
    }

    #[test]
    fn factors_are_the_real_factors_exactly() {
        // 1 + s(x − m)/m at x = 0.75, m = 0.25, s = 0.5: 1 + 0.5 · 2 = 2.
        let (n, d) = factor(Null::AtMost, Q / 4, 3 * Q / 4, 50);
        assert_eq!(n, 2 * d);
        // 1 + s(m − x)/(1 − m) at x = 0, m = 0.5, s = 0.95: 1.95.
        let (n, d) = factor(Null::AtLeast, Q / 2, 0, 95);
        assert_eq!(100 * n, 195 * d);
        // A score of 0 against "μ ≤ m" keeps 1 − s.
        let (n, d) = factor(Null::AtMost, 1000, 0, 95);
        assert_eq!(20 * n, d);
    }

    #[test]
    fn wealth_rounds_down_and_stops_at_the_cap() {
        let mut s = Side::new(Null::AtMost, Q / 4);
        for _ in 0..200 {
            s.push(Q);
        }
        assert_eq!(s.wealth()[0], CAP);
        assert!(s.mixture() >= threshold(MIN_ALPHA));
        let mut s = Side::new(Null::AtMost, Q / 4);
        for _ in 0..200 {
            s.push(0);
        }
        assert_eq!(s.wealth()[0], 0, "the boldest bet is spent");
        assert!(s.wealth()[11] > 0 && s.wealth()[11] < ONE);
        // Real-valued wealth of the smallest bet after 200 zeros: (1 − 0.01)^200.
        let real = 0.99f64.powi(200) * ONE as f64;
        let w = s.wealth()[11] as f64;
        assert!(w <= real && w > real * (1.0 - 1e-9), "{w} {real}");
    }

    #[test]
    fn the_threshold_is_at_least_the_level() {
        for a in [0.05, 0.01, 0.001, MIN_ALPHA] {
            let t = threshold(a) as f64;
            assert!(t >= 22.0 * ONE as f64 / a, "{a}");
            assert!(t <= 22.0 * ONE as f64 / a * (1.0 + 1e-11), "{a}");
            assert!(
                11 * CAP > threshold(a),
                "the boldest bet alone can cross at {a}"
            );
        }
    }
}
