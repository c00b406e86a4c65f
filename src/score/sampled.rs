//! Sampled decoding: the distribution a model samples from at stated settings, and the
//! randomized probability integral transform (PIT) of a sampled token under it.
//!
//! If an endpoint samples each token from the reference's distribution at the requested
//! settings, the PIT of its tokens (each under the reference's distribution given everything
//! before it, with an independent uniform to spread each token's probability mass) is a
//! sequence of independent uniforms on [0, 1] (Rosenblatt 1952; Brockwell 2007 for the
//! discrete, randomized form). Any other model, or any other decoding (a repetition penalty,
//! another temperature, truncation the client did not ask for), bends that distribution.
//! `stats::uniformity` tests it. This is the rank-based uniformity test's idea (ICLR 2026):
//! tokens are ordered by the reference's probability, most likely first, so a model that
//! picks what the reference ranks lower pushes the PIT up, and one sharper than the
//! reference pushes it down.
//!
//! The distribution at the settings follows the convention of OpenAI, vLLM and Hugging Face:
//! temperature first, then top-k, then top-p (the smallest set of most likely tokens whose
//! mass reaches `top_p`). llama.cpp truncates before it applies the temperature: the two
//! agree when `temperature` is 1 or `top_p` is 1 and `top_k` is off, and differ otherwise.
//!
//! The end of an answer is one outcome, **stop**: the text shows that the endpoint stopped
//! on an end token, not on which one, so the reference's end tokens are merged into one
//! category with their summed probability.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Decoding settings an audit asks for.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    /// Temperature; 0 is greedy.
    pub temperature: f64,
    /// Nucleus: the smallest set of most likely tokens with at least this mass (1: off).
    pub top_p: f64,
    /// Only the `top_k` most likely tokens (0: off).
    #[serde(default)]
    pub top_k: usize,
}

impl Default for Sampling {
    fn default() -> Self {
        Self::GREEDY
    }
}

impl Sampling {
    /// Greedy decoding.
    pub const GREEDY: Sampling = Sampling {
        temperature: 0.0,
        top_p: 1.0,
        top_k: 0,
    };

    /// Whether this asks for sampling (temperature above 0).
    pub fn sampled(&self) -> bool {
        self.temperature > 0.0
    }

    /// Settings a server can be asked for: temperature in [0, 2], top_p in (0, 1].
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=2.0).contains(&self.temperature) {
            return Err(format!(
                "--temperature must lie in [0, 2], got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("--top-p must lie in (0, 1], got {}", self.top_p));
        }
        if !self.sampled() && (self.top_p < 1.0 || self.top_k > 0) {
            return Err("--top-p and --top-k shape sampling: pass --temperature above 0 with them (at temperature 0 the audit is greedy)".into());
        }
        Ok(())
    }

    /// In words: "greedy" or "temperature 1, top_p 0.95, top_k 40".
    pub fn describe(&self) -> String {
        if !self.sampled() {
            return "greedy (temperature 0)".into();
        }
        let mut s = format!("temperature {}", self.temperature);
        if self.top_p < 1.0 {
            s.push_str(&format!(", top_p {}", self.top_p));
        }
        if self.top_k > 0 {
            s.push_str(&format!(", top_k {}", self.top_k));
        }
        s
    }
}

/// What was sampled at one position: a token, or the end of the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// This token.
    Token(u32),
    /// One of the end tokens.
    Stop,
}

/// The sampling a greedy text answer is also checked against: OpenAI's and vLLM's defaults
/// (temperature 1, top_p 1), what a server that ignores `temperature: 0` would do.
pub const SAMPLED_FIT: Sampling = Sampling {
    temperature: 1.0,
    top_p: 1.0,
    top_k: 0,
};

/// Nats at which a sampled outcome's surprise is clipped ([`Placed::surprise`]).
pub const SURPRISE_CLIP: f64 = 10.0;

/// Where a sampled outcome falls in the reference's distribution at the settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Placed {
    /// The randomized PIT, in [0, 1].
    pub pit: f64,
    /// The outcome's surprise against what the reference expects: `(c(x) − E_q[c]) / C`
    /// with `c = max(ln q, −C)`, `C` = [`SURPRISE_CLIP`], in [−1, 1]; its mean is 0 exactly
    /// when outcomes are drawn from `q`. Negative: the outcome is less likely, by the
    /// reference, than its draws are (another model wanders where the reference would not).
    pub surprise: f64,
}

/// The randomized PIT of `outcome` under the distribution the log-probability row `row`
/// gives at `settings` (`settings.sampled()` must hold), with `stop_ids` merged into one
/// outcome and `v` ∈ [0, 1) spreading the outcome's own probability. `None` when the row
/// cannot give one (empty, or holding unknown entries). An outcome the settings make
/// impossible (cut by top-k or top-p, or not in the vocabulary) is 1: as far from the
/// reference as an outcome goes.
pub fn pit(
    row: &[f32],
    outcome: Outcome,
    stop_ids: &[u32],
    settings: &Sampling,
    v: f64,
) -> Option<f64> {
    place(row, outcome, stop_ids, settings, v).map(|p| p.pit)
}

/// The PIT ([`pit`]) and the surprise of `outcome`; an impossible outcome has PIT 1 and
/// surprise −1.
pub fn place(
    row: &[f32],
    outcome: Outcome,
    stop_ids: &[u32],
    settings: &Sampling,
    v: f64,
) -> Option<Placed> {
    if row.is_empty() || row.iter().any(|x| x.is_nan()) || !settings.sampled() {
        return None;
    }
    let t = settings.temperature;
    // Tempered probabilities, unnormalized, relative to the largest.
    let top = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut p: Vec<f64> = row.iter().map(|&x| ((x as f64 - top) / t).exp()).collect();
    let truncates = settings.top_k > 0 || settings.top_p < 1.0;
    if truncates {
        // Most likely first, ties by id.
        let mut order: Vec<u32> = (0..p.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| {
            p[b as usize]
                .total_cmp(&p[a as usize])
                .then_with(|| a.cmp(&b))
        });
        let k = if settings.top_k > 0 {
            settings.top_k.min(order.len())
        } else {
            order.len()
        };
        let mass: f64 = order[..k].iter().map(|&i| p[i as usize]).sum();
        let mut keep = k;
        if settings.top_p < 1.0 {
            let mut cum = 0.0;
            keep = 0;
            for &i in &order[..k] {
                cum += p[i as usize] / mass;
                keep += 1;
                if cum >= settings.top_p {
                    break;
                }
            }
        }
        for &i in &order[keep..] {
            p[i as usize] = 0.0;
        }
    }
    let total: f64 = p.iter().sum();
    let is_stop = |i: usize| stop_ids.contains(&(i as u32));
    let stop_mass: f64 = stop_ids
        .iter()
        .filter_map(|&s| p.get(s as usize))
        .sum::<f64>();
    // The outcome's mass, and an id to break ties (the stop outcome's is its first end token).
    let stop_id = stop_ids.iter().copied().min().unwrap_or(u32::MAX);
    let (mass, id) = match outcome {
        Outcome::Stop => (stop_mass, stop_id),
        Outcome::Token(x) if is_stop(x as usize) => (stop_mass, stop_id),
        Outcome::Token(x) => (p.get(x as usize).copied().unwrap_or(0.0), x),
    };
    if mass <= 0.0 || total <= 0.0 {
        return Some(Placed {
            pit: 1.0,
            surprise: -1.0,
        });
    }
    // The mass of the outcomes ranked before this one: more likely, or as likely with a
    // smaller id.
    let before = |m: f64, i: u32| m > mass || (m == mass && i < id);
    let mut above: f64 = p
        .iter()
        .enumerate()
        .filter(|&(i, &m)| m > 0.0 && !is_stop(i) && before(m, i as u32))
        .map(|(_, &m)| m)
        .sum();
    if !matches!(outcome, Outcome::Stop)
        && !matches!(outcome, Outcome::Token(x) if is_stop(x as usize))
        && stop_mass > 0.0
        && before(stop_mass, stop_id)
    {
        above += stop_mass;
    }
    // The clipped log-probability's mean over outcomes (end tokens as one).
    let c = |m: f64| (m / total).ln().max(-SURPRISE_CLIP);
    let mut expected: f64 = p
        .iter()
        .enumerate()
        .filter(|&(i, &m)| m > 0.0 && !is_stop(i))
        .map(|(_, &m)| m / total * c(m))
        .sum();
    if stop_mass > 0.0 {
        expected += stop_mass / total * c(stop_mass);
    }
    Some(Placed {
        pit: ((above + v * mass) / total).clamp(0.0, 1.0),
        surprise: ((c(mass) - expected) / SURPRISE_CLIP).clamp(-1.0, 1.0),
    })
}

/// The uniform that spreads a position's probability mass: fixed by the prompt (secret until
/// the transcript is shown) and the position, so a transcript's PITs can be recomputed.
pub fn jitter(prompt: &str, position: usize) -> f64 {
    let mut h = Sha256::new();
    h.update(b"pot/pit/1\0");
    h.update((prompt.len() as u64).to_le_bytes());
    h.update(prompt.as_bytes());
    h.update((position as u64).to_le_bytes());
    let d = h.finalize();
    let x = u64::from_le_bytes(d[..8].try_into().expect("8 bytes"));
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// Sampling-audit scoring of one challenge: the PIT of each of the endpoint's tokens
/// (`rows[j]` is the reference's distribution before `tokens[j]`), and of its stop when it
/// said it stopped on an end token (one more row then follows the last token). The score is
/// the mean PIT (1/2 when the endpoint samples the reference); the decision is the
/// uniformity test's, on the PITs themselves.
pub fn sampled_text_score(
    rows: &[Vec<f32>],
    tokens: &[u32],
    stopped: bool,
    stop_ids: &[u32],
    settings: &Sampling,
    prompt: &str,
) -> super::ChallengeScore {
    let mut placed: Vec<Placed> = Vec::with_capacity(tokens.len() + 1);
    for (j, (r, &t)) in rows.iter().zip(tokens).enumerate() {
        placed.extend(place(
            r,
            Outcome::Token(t),
            stop_ids,
            settings,
            jitter(prompt, j),
        ));
    }
    if stopped {
        if let Some(r) = rows.get(tokens.len()) {
            let j = tokens.len();
            placed.extend(place(
                r,
                Outcome::Stop,
                stop_ids,
                settings,
                jitter(prompt, j),
            ));
        }
    }
    let pits: Vec<f64> = placed.iter().map(|p| p.pit).collect();
    super::ChallengeScore {
        kind: super::ScoreKind::SampledText,
        score: mean_or_half(&pits),
        kl: Vec::new(),
        top1_agree: Vec::new(),
        bpb: None,
        note: None,
        pit: pits,
        surprise: placed.iter().map(|p| p.surprise).collect(),
    }
}

/// The mean of PITs (1/2, the null's mean, when there are none).
pub fn mean_or_half(pits: &[f64]) -> f64 {
    if pits.is_empty() {
        0.5
    } else {
        pits.iter().sum::<f64>() / pits.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logsoftmax(p: &[f64]) -> Vec<f32> {
        p.iter().map(|x| x.ln() as f32).collect()
    }

    const T1: Sampling = Sampling {
        temperature: 1.0,
        top_p: 1.0,
        top_k: 0,
    };

    #[test]
    fn pit_orders_by_probability_and_spreads_each_mass() {
        let row = logsoftmax(&[0.1, 0.6, 0.3]);
        // Order: 1 (0.6), 2 (0.3), 0 (0.1).
        let u = |t, v| pit(&row, Outcome::Token(t), &[], &T1, v).unwrap();
        assert!((u(1, 0.0) - 0.0).abs() < 1e-6 && (u(1, 1.0) - 0.6).abs() < 1e-6);
        assert!((u(2, 0.5) - 0.75).abs() < 1e-6);
        assert!((u(0, 0.5) - 0.95).abs() < 1e-6);
    }

    #[test]
    fn stop_tokens_are_one_outcome_and_truncation_cuts() {
        let row = logsoftmax(&[0.2, 0.15, 0.15, 0.5]);
        // Stop = {1, 2}: mass 0.3, ranked between 3 (0.5) and 0 (0.2).
        let u = pit(&row, Outcome::Stop, &[1, 2], &T1, 0.5).unwrap();
        assert!((u - 0.65).abs() < 1e-6, "{u}");
        let u0 = pit(&row, Outcome::Token(0), &[1, 2], &T1, 0.0).unwrap();
        assert!((u0 - 0.8).abs() < 1e-6, "{u0}");
        // top_p 0.6 keeps 3 and 0 (0.5, then 0.7 ≥ 0.6): 1 and 2 are impossible.
        let nucleus = Sampling { top_p: 0.6, ..T1 };
        assert_eq!(pit(&row, Outcome::Token(1), &[], &nucleus, 0.3), Some(1.0));
        let u3 = pit(&row, Outcome::Token(3), &[], &nucleus, 1.0).unwrap();
        assert!((u3 - 0.5 / 0.7).abs() < 1e-6, "{u3}");
        // top_k 1 keeps token 3 alone.
        let k1 = Sampling { top_k: 1, ..T1 };
        assert_eq!(pit(&row, Outcome::Token(3), &[], &k1, 0.25), Some(0.25));
        assert_eq!(pit(&row, Outcome::Token(0), &[], &k1, 0.25), Some(1.0));
        // No PIT from unknown entries, or at temperature 0.
        let mut partial = row.clone();
        partial[0] = f32::NAN;
        assert_eq!(pit(&partial, Outcome::Token(3), &[], &T1, 0.5), None);
        assert_eq!(
            pit(&row, Outcome::Token(3), &[], &Sampling::GREEDY, 0.5),
            None
        );
    }

    #[test]
    fn temperature_sharpens_before_truncation() {
        // At T = 0.5 the probabilities 0.6/0.3/0.1 become 36/9/1 (of 46).
        let row = logsoftmax(&[0.1, 0.6, 0.3]);
        let half = Sampling {
            temperature: 0.5,
            ..T1
        };
        let u = pit(&row, Outcome::Token(1), &[], &half, 1.0).unwrap();
        assert!((u - 36.0 / 46.0).abs() < 1e-6, "{u}");
    }

    /// Tokens sampled from the row's own distribution give uniform PITs: the mean of many
    /// is 1/2 and each decile holds a tenth of them.
    #[test]
    fn pits_of_samples_from_the_reference_are_uniform() {
        let row = logsoftmax(&[0.5, 0.2, 0.1, 0.1, 0.05, 0.05]);
        let probs: Vec<f64> = row.iter().map(|&x| (x as f64).exp()).collect();
        let settings = Sampling {
            temperature: 1.0,
            top_p: 0.9,
            top_k: 5,
        };
        // The distribution at the settings: top-5 then nucleus 0.9 keeps 0.5, 0.2, 0.1, 0.1.
        let kept = [0usize, 1, 2, 3];
        let mass: f64 = kept.iter().map(|&i| probs[i]).sum();
        let n = 40_000;
        let mut bins = [0usize; 10];
        let mut sum = 0.0;
        let mut surprise = 0.0;
        for i in 0..n {
            let r = jitter("draw", i);
            let mut acc = 0.0;
            let mut pick = kept[kept.len() - 1];
            for &k in &kept {
                acc += probs[k] / mass;
                if r < acc {
                    pick = k;
                    break;
                }
            }
            let placed = place(
                &row,
                Outcome::Token(pick as u32),
                &[],
                &settings,
                jitter("spread", i),
            )
            .unwrap();
            let u = placed.pit;
            surprise += placed.surprise;
            sum += u;
            bins[((u * 10.0) as usize).min(9)] += 1;
        }
        assert!((sum / n as f64 - 0.5).abs() < 0.01, "{}", sum / n as f64);
        assert!(
            (surprise / n as f64).abs() < 0.003,
            "{}",
            surprise / n as f64
        );
        for b in bins {
            assert!((b as f64 / n as f64 - 0.1).abs() < 0.01, "{bins:?}");
        }
    }
}
