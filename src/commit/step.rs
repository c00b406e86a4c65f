//! What a provider commits to at each generated token, and how a router compares it with its
//! own re-execution.
//!
//! **Scheme `v1`.** At step `i` (the distribution that chose output token `i`) the provider
//! records the [`TOP_K`] likeliest token ids with their log-probabilities, and the emitted
//! token with its own. Log-probabilities are stored as `u16` codes, `round(−logprob ·
//! SCALE)` with [`SCALE`] = 256 codes per nat (saturating at 65535, about −256 nats): fine
//! enough that rounding never hides a real difference, coarse enough to keep a step at 54
//! bytes. The leaf of step `i` is the byte string [`leaf`] (a domain tag, the job id, `i`, the
//! data), hashed by [`super::merkle`].
//!
//! **Why codes and a tolerance, not exact values.** Honest re-execution is not bit-exact: the
//! provider decodes one token at a time inside changing batches, the router teacher-forces the
//! whole output in one pass, and other shapes, thread counts and kernels round differently. A
//! scheme that demanded equality (hashes of raw logits) would reject honest providers; one that
//! compared only the emitted tokens would pass a cheaper model that agrees on easy tokens. So
//! [`check`] asks for every committed value to lie within a tolerance `tol` (nats) of the
//! recomputed one, and for no token left out of the committed top-k to beat its last member by
//! more than `tol`. `tol` is calibrated on honest runs (BENCHMARKS.md, `examples/commit_noise.rs`):
//! honest noise is orders of magnitude below it, and a different model misses it on almost
//! every step.

use serde::{Deserialize, Serialize};

/// Likeliest tokens committed per step.
pub const TOP_K: usize = 8;
/// Codes per nat.
pub const SCALE: f64 = 256.0;
/// Domain tag of a step leaf.
const LEAF_TAG: &[u8] = b"pot/step/v1\0";

/// One step's committed data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepData {
    /// The token emitted at this step.
    pub token: u32,
    /// Its code (`round(−logprob · SCALE)`).
    pub token_code: u16,
    /// The likeliest tokens and their codes, best first (ties: lower id first).
    pub top: Vec<(u32, u16)>,
}

/// The code of a log-probability.
pub fn code(logprob: f64) -> u16 {
    (-logprob * SCALE).round().clamp(0.0, u16::MAX as f64) as u16
}

/// The log-probability a code stands for.
pub fn decode(code: u16) -> f64 {
    -(code as f64) / SCALE
}

impl StepData {
    /// The data of a step from its raw logits row and the token emitted.
    pub fn from_logits(row: &[f32], token: u32) -> Self {
        // Two passes over the vocabulary: the top-k (whose first is the maximum), then the
        // log-sum-exp. This runs on the serving engine's thread at every committed token.
        let ids = top_ids(row, TOP_K);
        let lse = match ids.first() {
            Some(&i) => log_sum_exp(row, row[i]),
            None => 0.0,
        };
        let lp = |i: usize| row[i] as f64 - lse;
        let top = ids.into_iter().map(|i| (i as u32, code(lp(i)))).collect();
        Self {
            token,
            token_code: code(lp(token as usize)),
            top,
        }
    }

    /// Whether the data is well formed for a vocabulary of `vocab` tokens: `min(TOP_K, vocab)`
    /// distinct ids inside it, codes in order, the token inside it.
    pub fn well_formed(&self, vocab: usize) -> Result<(), String> {
        if self.top.len() != TOP_K.min(vocab) {
            return Err(format!(
                "{} top tokens, the scheme has {}",
                self.top.len(),
                TOP_K.min(vocab)
            ));
        }
        if self.token as usize >= vocab {
            return Err(format!("token {} is outside the vocabulary", self.token));
        }
        for (j, &(id, c)) in self.top.iter().enumerate() {
            if id as usize >= vocab {
                return Err(format!("top token {id} is outside the vocabulary"));
            }
            if self.top[..j].iter().any(|&(o, _)| o == id) {
                return Err(format!("top token {id} is listed twice"));
            }
            if j > 0 && c < self.top[j - 1].1 {
                return Err("top tokens are not in order of likelihood".into());
            }
        }
        Ok(())
    }

    /// Whether the emitted token is a greedy choice: as likely as the first of the top list,
    /// within `tol` nats.
    pub fn is_greedy(&self, tol: f64) -> bool {
        self.top
            .first()
            .is_some_and(|&(_, best)| decode(best) - decode(self.token_code) <= tol)
    }
}

/// `ln Σ e^v` over `row`, whose maximum is `m`: e^(v − m) in f32 by [`exp_nonpositive`] in
/// eight lanes the compiler vectorizes, each block's sum added in f64. Blocks of 8 values all
/// below `m − 30` are skipped (together they weigh under `len · e^−30`, 2e-8 of the sum for a
/// 150k vocabulary). Its error (about 1e-6 nats) is far below a code (1/256 nat).
fn log_sum_exp(row: &[f32], m: f32) -> f64 {
    let floor = m - 30.0;
    let mut total = 0.0f64;
    for block in row.chunks(1024) {
        let mut acc = [0.0f32; 8];
        let lanes = block.chunks_exact(8);
        let rest = lanes.remainder();
        for c in lanes {
            if c.iter().fold(false, |any, &v| any | (v >= floor)) {
                for j in 0..8 {
                    acc[j] += exp_nonpositive(c[j] - m);
                }
            }
        }
        for &v in rest {
            acc[0] += exp_nonpositive(v - m);
        }
        total += acc.iter().map(|&a| a as f64).sum::<f64>();
    }
    m as f64 + total.ln()
}

/// `e^x` for `x ≤ 0` (0 below −87), relative error under 1e-6, branch-free so that loops of
/// it vectorize (the standard library's `expf` is a call per value). Cody–Waite reduction
/// `x = n·ln 2 + r`, `|r| ≤ ln 2 / 2`, then a degree-6 Taylor polynomial for `e^r` and the
/// exponent bits for `2^n`.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer
    let x = if x < -87.0 { -87.0 } else { x };
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    // n as an integer, from t's low mantissa bits (two's complement).
    let n_int = t.to_bits().wrapping_sub(ROUND.to_bits());
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(n_int.wrapping_add(127) << 23)
}

/// The leaf bytes of step `index` of job `job`.
pub fn leaf(job: &[u8; 16], index: u32, d: &StepData) -> Vec<u8> {
    let mut b = Vec::with_capacity(LEAF_TAG.len() + 16 + 11 + 6 * d.top.len());
    b.extend_from_slice(LEAF_TAG);
    b.extend_from_slice(job);
    b.extend_from_slice(&index.to_be_bytes());
    b.extend_from_slice(&d.token.to_be_bytes());
    b.extend_from_slice(&d.token_code.to_be_bytes());
    b.push(d.top.len() as u8);
    for &(id, c) in &d.top {
        b.extend_from_slice(&id.to_be_bytes());
        b.extend_from_slice(&c.to_be_bytes());
    }
    b
}

/// Indices of the `n` largest values, largest first (ties: lower index first).
pub fn top_ids(row: &[f32], n: usize) -> Vec<usize> {
    let n = n.min(row.len());
    if n == 0 {
        return Vec::new();
    }
    // One pass keeping the best `n` in order: a vocabulary row is 50k-250k values and `n` is
    // small, so this beats sorting indices. Blocks of 8 are skipped with one vectorized test
    // when none of them can enter (NaN, too, goes through to the exact
    // `total_cmp` order).
    let mut best: Vec<usize> = Vec::with_capacity(n + 1);
    let mut threshold = f32::NEG_INFINITY;
    let consider = |best: &mut Vec<usize>, threshold: &mut f32, i: usize| {
        let v = row[i];
        if best.len() == n && v.total_cmp(&row[best[n - 1]]).is_le() {
            return; // ties keep the lower id, which came first
        }
        let at = best.partition_point(|&b| row[b].total_cmp(&v).is_ge());
        best.insert(at, i);
        best.truncate(n);
        if best.len() == n {
            *threshold = row[best[n - 1]];
        }
    };
    let blocks = row.len() / 8;
    for b in 0..blocks {
        let c = &row[b * 8..b * 8 + 8];
        let t = threshold;
        if best.len() < n || c.iter().fold(false, |any, &v| any | (v >= t) | v.is_nan()) {
            for i in b * 8..b * 8 + 8 {
                consider(&mut best, &mut threshold, i);
            }
        }
    }
    for i in blocks * 8..row.len() {
        consider(&mut best, &mut threshold, i);
    }
    best
}

/// How a committed step disagrees with a re-execution.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Mismatch {
    /// The token whose value disagrees.
    pub token: u32,
    /// What the provider committed (nats; for an omitted token, the last committed value).
    pub committed: f64,
    /// What the router computed (nats).
    pub recomputed: f64,
    /// Which rule failed.
    pub rule: Rule,
}

/// The rules of [`check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// A committed value is off by more than the tolerance.
    Value,
    /// A token outside the committed top list beats its last member by more than the tolerance.
    Omitted,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.rule {
            Rule::Value => write!(
                f,
                "token {}: committed log-probability {:.4}, re-executed {:.4}",
                self.token, self.committed, self.recomputed
            ),
            Rule::Omitted => write!(
                f,
                "token {} (re-executed {:.4}) is missing from the committed top list, whose last value is {:.4}",
                self.token, self.recomputed, self.committed
            ),
        }
    }
}

/// Compare committed data with the re-executed log-probability row `lp` of the same step:
/// the largest disagreement (in nats) and the first rule broken by more than `tol`, if any.
pub fn check(d: &StepData, lp: &[f32], tol: f64) -> (f64, Option<Mismatch>) {
    let mut worst = 0.0f64;
    let mut first: Option<Mismatch> = None;
    let saturated = |c: u16| c == u16::MAX;
    for &(id, c) in d
        .top
        .iter()
        .chain(std::iter::once(&(d.token, d.token_code)))
    {
        let r = lp.get(id as usize).map_or(f64::NEG_INFINITY, |&v| v as f64);
        let v = decode(c);
        // A saturated code only says "at most this".
        let off = if saturated(c) {
            (r - v).max(0.0)
        } else {
            (r - v).abs()
        };
        worst = worst.max(off);
        if off > tol && first.is_none() {
            first = Some(Mismatch {
                token: id,
                committed: v,
                recomputed: r,
                rule: Rule::Value,
            });
        }
    }
    if let Some(&(_, last)) = d.top.last() {
        let last = decode(last);
        for i in top_ids(lp, d.top.len() + 1) {
            if d.top.iter().any(|&(id, _)| id as usize == i) {
                continue;
            }
            let over = lp[i] as f64 - last;
            worst = worst.max(over);
            if over > tol && first.is_none() {
                first = Some(Mismatch {
                    token: i as u32,
                    committed: last,
                    recomputed: lp[i] as f64,
                    rule: Rule::Omitted,
                });
            }
        }
    }
    (worst, first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_softmax(row: &[f32]) -> Vec<f32> {
        let lse = crate::score::log_sum_exp(row);
        row.iter().map(|&v| (v as f64 - lse) as f32).collect()
    }

    fn row(n: usize, seed: u64) -> Vec<f32> {
        use rand::{Rng, SeedableRng};
        let mut r = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| r.gen_range(-8.0f32..8.0)).collect()
    }

    #[test]
    fn honest_data_passes_and_survives_small_noise() {
        let raw = row(1000, 1);
        let d = StepData::from_logits(&raw, 7);
        d.well_formed(1000).unwrap();
        let lp = log_softmax(&raw);
        let (worst, bad) = check(&d, &lp, 0.01);
        assert!(bad.is_none());
        assert!(worst <= 0.5 / SCALE + 1e-6, "rounding only: {worst}");
        // Noise of 1e-3 nats on every logit stays inside a 0.01 tolerance.
        let noisy: Vec<f32> = raw
            .iter()
            .enumerate()
            .map(|(i, v)| v + if i % 2 == 0 { 1e-3 } else { -1e-3 })
            .collect();
        assert!(check(&d, &log_softmax(&noisy), 0.01).1.is_none());
    }

    #[test]
    fn a_changed_value_or_an_omitted_token_is_caught() {
        let raw = row(1000, 2);
        let lp = log_softmax(&raw);
        let d = StepData::from_logits(&raw, 3);
        let mut v = d.clone();
        v.top[2].1 += 20; // 0.078 nats
        assert_eq!(check(&v, &lp, 0.05).1.unwrap().rule, Rule::Value);
        // Drop the best token, shift the rest up, and add the ninth: the best is omitted.
        let ids = top_ids(&raw, TOP_K + 1);
        let mut o = d.clone();
        o.top = ids[1..]
            .iter()
            .map(|&i| (i as u32, code(lp[i] as f64)))
            .collect();
        let m = check(&o, &lp, 0.05).1.unwrap();
        assert_eq!((m.rule, m.token), (Rule::Omitted, ids[0] as u32));
        // A wrong emitted-token value too.
        let mut t = d.clone();
        t.token_code = t.token_code.saturating_sub(100);
        assert_eq!(check(&t, &lp, 0.05).1.unwrap().token, 3);
    }

    #[test]
    fn a_different_distribution_fails() {
        let a = row(1000, 3);
        let b = row(1000, 4);
        let d = StepData::from_logits(&a, 0);
        assert!(check(&d, &log_softmax(&b), 0.05).1.is_some());
    }

    #[test]
    fn top_ids_match_a_full_sort_and_step_data_matches_f64() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for len in [1usize, 5, 9, 100, 5000] {
            for _ in 0..20 {
                // Few distinct values: many ties.
                let row: Vec<f32> = (0..len)
                    .map(|_| rng.gen_range(0..12) as f32 * 0.5)
                    .collect();
                let mut all: Vec<usize> = (0..len).collect();
                all.sort_by(|a, b| row[*b].total_cmp(&row[*a]).then(a.cmp(b)));
                for n in [1, 8, 9] {
                    assert_eq!(top_ids(&row, n), all[..n.min(len)].to_vec(), "{len} {n}");
                }
                // Codes from f32 exponentials equal those from an f64 log-softmax, up to a
                // rounding boundary (one code).
                let lp = log_softmax(&row);
                let d = StepData::from_logits(&row, 0);
                for &(id, c) in &d.top {
                    assert!((c as i32 - code(lp[id as usize] as f64) as i32).abs() <= 1);
                }
            }
        }
    }

    #[test]
    fn the_fast_exponential_is_accurate() {
        let mut worst = 0.0f64;
        for i in 0..=200_000 {
            let x = -87.0 * i as f64 / 200_000.0;
            let (got, want) = (exp_nonpositive(x as f32) as f64, (x as f32 as f64).exp());
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 1e-6, "relative error {worst}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(-200.0), exp_nonpositive(-87.0));
        let row: Vec<f32> = (0..151_936)
            .map(|i| ((i * 7919) % 1000) as f32 * 0.03 - 12.0)
            .collect();
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exact = crate::score::log_sum_exp(&row);
        assert!((log_sum_exp(&row, m) - exact).abs() < 1e-5);
    }

    #[test]
    fn codes_round_and_saturate() {
        assert_eq!(code(0.0), 0);
        assert_eq!(code(-1.0), 256);
        assert_eq!(code(-1000.0), u16::MAX);
        assert_eq!(code(0.5), 0);
        assert!((decode(code(-2.3)) + 2.3).abs() <= 0.5 / SCALE);
        // A saturated code passes any lower re-executed value.
        let d = StepData {
            token: 0,
            token_code: u16::MAX,
            top: vec![(1, 0)],
        };
        let mut lp = vec![-300.0f32, 0.0];
        assert!(check(&d, &lp, 0.01).1.is_none());
        lp[0] = -10.0;
        assert!(check(&d, &lp, 0.01).1.is_some());
    }

    #[test]
    fn malformed_data_is_named() {
        let d = StepData::from_logits(&row(100, 5), 1);
        let mut short = d.clone();
        short.top.pop();
        assert!(short.well_formed(100).is_err());
        let mut dup = d.clone();
        dup.top[1].0 = dup.top[0].0;
        assert!(dup.well_formed(100).unwrap_err().contains("twice"));
        let mut order = d.clone();
        order.top.swap(0, 3);
        assert!(order.well_formed(100).is_err());
        assert!(d.well_formed(50).is_err() || d.top.iter().all(|&(i, _)| i < 50));
        let mut far = d.clone();
        far.token = 100;
        assert!(far.well_formed(100).is_err());
    }

    #[test]
    fn leaves_bind_job_index_and_every_field() {
        let d = StepData::from_logits(&row(100, 6), 2);
        let base = leaf(&[1; 16], 4, &d);
        assert_ne!(base, leaf(&[2; 16], 4, &d));
        assert_ne!(base, leaf(&[1; 16], 5, &d));
        let mut e = d.clone();
        e.top[7].1 ^= 1;
        assert_ne!(base, leaf(&[1; 16], 4, &e));
        assert_eq!(base.len(), LEAF_TAG.len() + 16 + 4 + 4 + 2 + 1 + 6 * TOP_K);
    }
}
