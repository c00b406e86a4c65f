//! Scores: one number per challenge saying how far the candidate is from the reference.
//!
//! The reference greedily continues the prompt by `K` tokens, keeping its next-token
//! distribution at each step; the candidate is teacher-forced on prompt + continuation:
//!
//! * **Same tokenizer** (equal tokenizer hashes): score = mean over the `K` continuation
//!   positions of `KL(p_ref ‖ p_cand)` in nats. 0 exactly when both compute the same
//!   distributions; same weights on other kernels give about 0.002 (llama.cpp's figure).
//! * **Different tokenizers**: the models cannot be compared token by token, so each model's
//!   bits per byte on the continuation *text* are measured and the score is
//!   `|bpb_ref − bpb_cand|`.
//! * **Endpoints** (`pot audit`): [`coarse_kl`] on what the endpoint reports, or
//!   [`text_mismatch_score`] when it reports text only.
//!
//! The statistics clip scores to `[0, B]` (see `stats`); this room reports them unclipped.
//! Scoring is split in two passes — [`reference_pass`] then [`candidate_pass`] — so that a run
//! can hold one model in memory at a time. Both passes take a group of challenges and run
//! them together: the reference generates for all of them in lockstep (one matrix product per
//! step for the whole group), the candidate scores all of them in one teacher-forced pass.

pub mod sampled;

use serde::{Deserialize, Serialize};

use crate::identity::Identity;
use crate::model::{argmax, Model, ModelError};

/// How a challenge was scored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScoreKind {
    /// Mean next-token KL(ref ‖ cand) over the continuation, nats.
    Kl,
    /// |difference of bits per byte| on the continuation text.
    BitsPerByte,
    /// Endpoint audits with log-probabilities: mean over positions of KL(ref ‖ endpoint) on
    /// the partition {the endpoint's reported tokens, everything else}.
    EndpointKl,
    /// Endpoint audits with text only: the share of the endpoint's greedy tokens that are not
    /// the reference's most likely token, teacher-forced on the endpoint's own text.
    TextMismatch,
    /// Endpoint audits with text only, sampled at a temperature above 0: the PIT of each of
    /// the endpoint's tokens under the reference's distribution at the requested settings
    /// ([`sampled`]); the score is their mean (1/2 for the reference), the decision the
    /// uniformity e-process's (`stats::uniformity`).
    SampledText,
}

/// What the reference pass leaves for the candidate pass.
pub struct ReferenceSide {
    /// Prompt text.
    pub prompt: String,
    /// Reference token ids of the prompt.
    pub prompt_ids: Vec<u32>,
    /// Greedy continuation ids (reference tokenizer).
    pub continuation_ids: Vec<u32>,
    /// Continuation text.
    pub continuation_text: String,
    /// KL scoring: log-probabilities of the reference at each continuation position.
    logprobs: Vec<Vec<f32>>,
    /// Text scoring: the reference's bits per byte on the continuation.
    bpb: Option<f64>,
}

impl ReferenceSide {
    /// A reference side from rows computed elsewhere (a trusted endpoint's report).
    pub fn from_rows(
        prompt: String,
        prompt_ids: Vec<u32>,
        continuation_ids: Vec<u32>,
        continuation_text: String,
        logprobs: Vec<Vec<f32>>,
    ) -> Self {
        Self {
            prompt,
            prompt_ids,
            continuation_ids,
            continuation_text,
            logprobs,
            bpb: None,
        }
    }

    /// The reference's log-probability rows at the continuation positions (KL scoring).
    pub fn reference_rows(&self) -> &[Vec<f32>] {
        &self.logprobs
    }
}

/// One challenge's score and the per-position detail that explains it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ChallengeScore {
    /// How it was scored.
    pub kind: ScoreKind,
    /// The score (unclipped).
    pub score: f64,
    /// KL per continuation position (KL scoring).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kl: Vec<f64>,
    /// Whether both models' most likely next token agree, per position (KL scoring).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top1_agree: Vec<bool>,
    /// Bits per byte of (reference, candidate) on the continuation (text scoring).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpb: Option<(f64, f64)>,
    /// Why a score is what it is, when that is not the usual computation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The PIT of each sampled outcome under the reference at the requested settings
    /// (sampled-text scoring).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pit: Vec<f64>,
    /// The surprise of each, in [−1, 1] ([`sampled::Placed::surprise`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub surprise: Vec<f64>,
}

impl ChallengeScore {
    /// The score this record's per-position detail implies, recomputed the way it was
    /// computed: the mean KL for KL kinds, the bits-per-byte gap for text scoring, the share
    /// of disagreements for text-mismatch scoring. A record with no detail can only hold
    /// [`UNSCORABLE`] or, for an endpoint that stopped where the reference would have, 0.
    /// `Err` says why the record is inconsistent with itself.
    pub fn recompute(&self) -> Result<f64, String> {
        let finite_or_unscorable = |v: f64| if v.is_finite() { v } else { UNSCORABLE };
        match self.kind {
            ScoreKind::Kl | ScoreKind::EndpointKl if !self.kl.is_empty() => {
                if !self.top1_agree.is_empty() && self.top1_agree.len() != self.kl.len() {
                    return Err(format!(
                        "{} KL values but {} top-1 flags",
                        self.kl.len(),
                        self.top1_agree.len()
                    ));
                }
                Ok(finite_or_unscorable(mean(&self.kl)))
            }
            ScoreKind::BitsPerByte => match self.bpb {
                Some((r, c)) => Ok(finite_or_unscorable((r - c).abs())),
                None => Err("a bits-per-byte score without its bits per byte".into()),
            },
            ScoreKind::TextMismatch if !self.top1_agree.is_empty() => {
                let misses = self.top1_agree.iter().filter(|a| !**a).count();
                Ok(misses as f64 / self.top1_agree.len() as f64)
            }
            ScoreKind::SampledText if !self.pit.is_empty() => {
                if self.pit.iter().any(|u| !(0.0..=1.0).contains(u)) {
                    return Err("a PIT outside [0, 1]".into());
                }
                if !self.surprise.is_empty() && self.surprise.len() != self.pit.len()
                    || self.surprise.iter().any(|s| !(-1.0..=1.0).contains(s))
                {
                    return Err("surprises that are not one in [-1, 1] per PIT".into());
                }
                Ok(sampled::mean_or_half(&self.pit))
            }
            ScoreKind::Kl => Err("a KL score without its per-position KL".into()),
            ScoreKind::EndpointKl | ScoreKind::TextMismatch | ScoreKind::SampledText => {
                match (&self.note, self.score) {
                    (None, _) => Err("a score with no detail and no note saying why".into()),
                    (Some(_), s) if s == UNSCORABLE || s == 0.0 => Ok(s),
                    (Some(_), s) => Err(format!(
                        "a score of {s} with no detail (only {UNSCORABLE} or 0 can stand without)"
                    )),
                }
            }
        }
    }
}

/// The score of a challenge the endpoint answered with nothing the reference can check (tokens
/// the reference does not have, no tokens at all, numbers that give no finite score): it cannot
/// be the claimed model there. Far above every clip bound.
pub const UNSCORABLE: f64 = 1e6;

/// What an endpoint reported at one output position: its token, that token's
/// log-probability, and its most likely alternatives (ids in the reference vocabulary, `None`
/// where the endpoint's token has no counterpart there).
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointPosition {
    /// The token at this position.
    pub token: Option<u32>,
    /// Its log-probability.
    pub logprob: f64,
    /// Alternatives and their log-probabilities.
    pub top: Vec<(Option<u32>, f64)>,
}

/// `KL(p ‖ q)` between the reference row `p` and the endpoint's distribution `q`, both
/// coarsened to the partition {each token the endpoint reported, everything else}. By the
/// data-processing inequality this is at most the full KL, and it is 0 when both
/// distributions agree; it needs nothing the endpoint did not report.
///
/// A reference that is itself an endpoint knows only its own top tokens: the others are NaN
/// in its row, and a token the endpoint reported but the reference did not joins "everything
/// else" on both sides, so the partition is {tokens both reported, everything else} and the
/// same two properties hold.
pub fn coarse_kl(p_row: &[f32], pos: &EndpointPosition) -> f64 {
    let mut seen: Vec<u32> = Vec::with_capacity(pos.top.len() + 1);
    let mut total = 0.0;
    let mut p_in = 0.0;
    let mut q_in = 0.0;
    let reported = pos
        .token
        .map(|t| (Some(t), pos.logprob))
        .into_iter()
        .chain(pos.top.iter().copied());
    for (id, lq) in reported {
        let Some(id) = id else { continue };
        if seen.contains(&id) || id as usize >= p_row.len() || p_row[id as usize].is_nan() {
            continue;
        }
        seen.push(id);
        let lp = p_row[id as usize] as f64;
        let p = lp.exp();
        p_in += p;
        q_in += lq.exp();
        if p > 0.0 {
            total += p * (lp - lq);
        }
    }
    let p_rest = (1.0 - p_in).max(0.0);
    let q_rest = (1.0 - q_in).max(1e-10);
    if p_rest > 0.0 {
        total += p_rest * (p_rest / q_rest).ln();
    }
    total.max(0.0)
}

/// Endpoint KL scoring of one challenge: reference rows and the endpoint's positions, aligned.
pub fn endpoint_kl_score(ref_rows: &[Vec<f32>], positions: &[EndpointPosition]) -> ChallengeScore {
    // Positions where the reference has no row (empty: a trusted endpoint's continuation
    // left the endpoint's path before them) are not scored.
    let known = || {
        ref_rows
            .iter()
            .zip(positions)
            .filter(|(p, _)| !p.is_empty())
    };
    let kl: Vec<f64> = known().map(|(p, e)| coarse_kl(p, e)).collect();
    let top1_agree = known()
        .map(|(p, e)| {
            let best = e
                .top
                .iter()
                .copied()
                .chain(e.token.map(|t| (Some(t), e.logprob)))
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .and_then(|(t, _)| t);
            best == Some(argmax(p))
        })
        .collect();
    ChallengeScore {
        kind: ScoreKind::EndpointKl,
        score: mean(&kl),
        kl,
        top1_agree,
        bpb: None,
        note: None,
        pit: Vec::new(),
        surprise: Vec::new(),
    }
}

/// Positions of a text answer that a penalty could explain: the reference's first choice
/// had already appeared (in the prompt or the answer so far).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RepeatPositions {
    /// Such positions.
    pub positions: u64,
    /// Those where the endpoint's token was not the reference's first choice.
    pub misses: u64,
}

/// Text scoring of one challenge: `rows[j]` is the reference's distribution before
/// `tokens[j]`; when the endpoint said it stopped on an end token, one more row follows the
/// last token and should put an end token first (`stop_ids`).
///
/// Only positions whose reference first choice has not yet appeared in `context` (the
/// prompt's tokens) or the answer so far are scored. Repetition, presence and frequency
/// penalties (and llama.cpp's DRY) only lower tokens already seen, so at the scored positions
/// a greedy endpoint that applies any of them picks what the reference picks: a server
/// default the client could not turn off never becomes a mismatch. The other positions are
/// counted apart ([`RepeatPositions`]) for the decoding check.
pub fn text_mismatch_score(
    rows: &[Vec<f32>],
    tokens: &[u32],
    stop_ids: Option<&[u32]>,
    context: &[u32],
) -> (ChallengeScore, RepeatPositions) {
    let mut seen: std::collections::HashSet<u32> = context.iter().copied().collect();
    let mut repeats = RepeatPositions::default();
    // Every position judged, and whether a penalty could explain it.
    let mut judged: Vec<(bool, bool)> = Vec::with_capacity(tokens.len() + 1);
    let mut judge =
        |r: &Vec<f32>, ok: &dyn Fn(u32) -> bool, seen: &std::collections::HashSet<u32>| {
            // Rows the reference does not have (empty) are not scored.
            if !r.is_empty() {
                let first = argmax(r);
                judged.push((ok(first), seen.contains(&first)));
            }
        };
    for (r, &t) in rows.iter().zip(tokens) {
        judge(r, &|first| first == t, &seen);
        seen.insert(t);
    }
    if let (Some(stops), Some(r)) = (stop_ids, rows.get(tokens.len())) {
        judge(r, &|first| stops.contains(&first), &seen);
    }
    // An answer whose every position is a repeat one is scored whole: a challenge with
    // tokens is never left without evidence.
    let all_repeats = judged.iter().all(|(_, repeat)| *repeat);
    let mut agree = Vec::with_capacity(judged.len());
    for (ok, repeat) in judged {
        if repeat && !all_repeats {
            repeats.positions += 1;
            repeats.misses += u64::from(!ok);
        } else {
            agree.push(ok);
        }
    }
    let misses = agree.iter().filter(|a| !**a).count();
    let score = ChallengeScore {
        kind: ScoreKind::TextMismatch,
        score: if agree.is_empty() {
            0.0
        } else {
            misses as f64 / agree.len() as f64
        },
        kl: Vec::new(),
        top1_agree: agree,
        bpb: None,
        note: None,
        pit: Vec::new(),
        surprise: Vec::new(),
    };
    (score, repeats)
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Whether two models can be compared token by token: the same vocabulary (so the
/// candidate, fed the reference's token ids, reads the same text) and the same output rows.
/// Tokenizers that split text differently over one vocabulary still compare token by token:
/// the candidate never tokenizes anything in a KL score.
pub fn kind_for(reference: &Identity, candidate: &Identity) -> ScoreKind {
    let same_vocabulary = reference.tokenizer_hash == candidate.tokenizer_hash
        || (!reference.vocab_hash.is_empty() && reference.vocab_hash == candidate.vocab_hash);
    if same_vocabulary && reference.vocab_size == candidate.vocab_size {
        ScoreKind::Kl
    } else {
        ScoreKind::BitsPerByte
    }
}

/// A position's `k` most likely tokens (ties to the lower id), with their logits and
/// log-probabilities and the row's log-sum-exp: what `pot logits` reports.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TopTokens {
    /// Token ids, most likely first.
    pub top_ids: Vec<u32>,
    /// Their logits.
    pub top_logits: Vec<f32>,
    /// Their log-probabilities.
    pub top_logprobs: Vec<f64>,
    /// `ln Σ e^logit` over the row.
    pub logsumexp: f64,
}

/// The `k` most likely tokens of a row of logits.
pub fn top_tokens(row: &[f32], k: usize) -> TopTokens {
    let lse = log_sum_exp(row);
    let mut idx: Vec<u32> = (0..row.len() as u32).collect();
    idx.sort_by(|a, b| row[*b as usize].total_cmp(&row[*a as usize]));
    idx.truncate(k);
    TopTokens {
        top_logits: idx.iter().map(|&i| row[i as usize]).collect(),
        top_logprobs: idx.iter().map(|&i| row[i as usize] as f64 - lse).collect(),
        top_ids: idx,
        logsumexp: lse,
    }
}

/// `ln Σ e^v` over a row of logits, exactly (f64, shifted by the row's maximum): the one
/// log-sum-exp that turns logits into log-probabilities wherever pot reports them (`pot
/// logits`, a served token's logprob). The per-step commitments use their own vectorized one
/// (`commit::step`), whose error is bounded against this.
pub fn log_sum_exp(row: &[f32]) -> f64 {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln()
}

/// `KL(p ‖ q)` from two rows of log-probabilities.
pub fn kl(logp: &[f32], logq: &[f32]) -> f64 {
    logp.iter()
        .zip(logq)
        .map(|(&lp, &lq)| {
            let p = (lp as f64).exp();
            if p == 0.0 {
                0.0
            } else {
                p * (lp as f64 - lq as f64)
            }
        })
        .sum::<f64>()
        .max(0.0)
}

/// Bits per byte of `model` on `continuation` after `prompt`, scored on the model's own
/// tokenization of the whole text. Tokens from the first one that differs from the prompt's
/// own tokenization onward count (a token may straddle the boundary by a few bytes).
fn bits_per_byte(model: &Model, prompt: &str, continuation: &str) -> Result<f64, ModelError> {
    let full_text = format!("{prompt}{continuation}");
    let full = model.tokenizer.encode(&full_text)?;
    let head = model.tokenizer.encode(prompt)?;
    let lcp = full.iter().zip(&head).take_while(|(a, b)| a == b).count();
    // The first token has no prediction; start at 1 at least.
    let start = lcp.clamp(1, full.len().saturating_sub(1).max(1));
    if full.len() <= start {
        return Ok(0.0);
    }
    let lp = model.logprobs(&full, start - 1)?;
    let nll: f64 = (start..full.len())
        .map(|i| -(lp[i - start][full[i] as usize] as f64))
        .sum();
    let bytes = model.tokenizer.decode(&full[start..])?.len().max(1);
    Ok(nll / std::f64::consts::LN_2 / bytes as f64)
}

/// The reference's half of a group of challenges: each prompt continued greedily by up to
/// `k` tokens (all prompts walked together, see [`Model::continue_batch`]), with what scoring
/// needs from the reference.
pub fn reference_pass(
    reference: &Model,
    prompts: &[String],
    k: usize,
    kind: ScoreKind,
) -> Result<Vec<ReferenceSide>, ModelError> {
    let ids = prompts
        .iter()
        .map(|p| reference.tokenizer.encode(p))
        .collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    // Text scoring needs only the continuations; KL scoring needs the reference's rows.
    let conts = reference.continue_batch(&refs, k, true, kind == ScoreKind::Kl)?;
    prompts
        .iter()
        .zip(ids)
        .zip(conts)
        .map(|((prompt, prompt_ids), c)| {
            let continuation_text = reference.tokenizer.decode(&c.tokens)?;
            let (logprobs, bpb) = match kind {
                ScoreKind::Kl => (c.logprobs, None),
                ScoreKind::BitsPerByte => (
                    Vec::new(),
                    Some(bits_per_byte(reference, prompt, &continuation_text)?),
                ),
                // Endpoint kinds score elsewhere (audit); keep the rows.
                ScoreKind::EndpointKl | ScoreKind::TextMismatch | ScoreKind::SampledText => {
                    (c.logprobs, None)
                }
            };
            Ok(ReferenceSide {
                prompt: prompt.clone(),
                prompt_ids,
                continuation_ids: c.tokens,
                continuation_text,
                logprobs,
                bpb,
            })
        })
        .collect()
}

/// The candidate's rows of log-probabilities at each KL side's continuation positions, by
/// teacher forcing: each prompt + continuation (less its last token, which predicts nothing
/// scored), all sequences in one pass. Row `j` of side `i` is the candidate's distribution of
/// `sides[i].continuation_ids[j]`.
pub fn candidate_rows(
    candidate: &Model,
    sides: &[&ReferenceSide],
) -> Result<Vec<Vec<Vec<f32>>>, ModelError> {
    if sides.is_empty() {
        return Ok(Vec::new());
    }
    let seqs: Vec<Vec<u32>> = sides
        .iter()
        .map(|r| {
            let keep = r.continuation_ids.len().saturating_sub(1);
            r.prompt_ids
                .iter()
                .chain(&r.continuation_ids[..keep])
                .copied()
                .collect()
        })
        .collect();
    let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    let from: Vec<usize> = sides.iter().map(|r| r.prompt_ids.len() - 1).collect();
    candidate.logprobs_batch(&refs, &from)
}

/// The candidate's half: teacher-force the candidate on the reference's continuations (the
/// whole group in one pass) and score each challenge against the reference side.
pub fn candidate_pass(
    candidate: &Model,
    sides: &[ReferenceSide],
) -> Result<Vec<ChallengeScore>, ModelError> {
    let kl_sides: Vec<&ReferenceSide> = sides.iter().filter(|r| r.bpb.is_none()).collect();
    let mut replayed = candidate_rows(candidate, &kl_sides)?.into_iter();
    sides
        .iter()
        .map(|r| match r.bpb {
            None => {
                let lq = replayed.next().expect("one row set per KL side");
                Ok(kl_score(&r.logprobs, &lq))
            }
            Some(bpb_ref) => {
                let bpb_cand = bits_per_byte(candidate, &r.prompt, &r.continuation_text)?;
                Ok(ChallengeScore {
                    kind: ScoreKind::BitsPerByte,
                    score: (bpb_ref - bpb_cand).abs(),
                    kl: Vec::new(),
                    top1_agree: Vec::new(),
                    bpb: Some((bpb_ref, bpb_cand)),
                    note: None,
                    pit: Vec::new(),
                    surprise: Vec::new(),
                })
            }
        })
        .collect()
}

/// What an endpoint running the candidate would report at one position of an echo request:
/// the sent token's log-probability and the `top` most likely alternatives (ties to the lower
/// id). Scoring this with [`coarse_kl`] gives the endpoint methods' view of a candidate
/// without serving it (`pot calibrate`).
pub fn endpoint_view(row: &[f32], token: u32, top: usize) -> EndpointPosition {
    let mut idx: Vec<u32> = (0..row.len() as u32).collect();
    let top = top.min(idx.len());
    let by_logprob =
        |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
    if top > 0 && top < idx.len() {
        idx.select_nth_unstable_by(top - 1, by_logprob);
    }
    idx.truncate(top);
    idx.sort_by(by_logprob);
    EndpointPosition {
        token: Some(token),
        logprob: row
            .get(token as usize)
            .map_or(f64::NEG_INFINITY, |l| *l as f64),
        top: idx
            .iter()
            .map(|&i| (Some(i), row[i as usize] as f64))
            .collect(),
    }
}

/// KL scoring of one challenge from both models' rows of log-probabilities.
pub fn kl_score(lp: &[Vec<f32>], lq: &[Vec<f32>]) -> ChallengeScore {
    let kl: Vec<f64> = lp.iter().zip(lq).map(|(p, q)| kl(p, q)).collect();
    let top1_agree = lp
        .iter()
        .zip(lq)
        .map(|(p, q)| argmax(p) == argmax(q))
        .collect();
    ChallengeScore {
        kind: ScoreKind::Kl,
        score: mean(&kl),
        kl,
        top1_agree,
        bpb: None,
        note: None,
        pit: Vec::new(),
        surprise: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_softmax(x: &[f32]) -> Vec<f32> {
        let m = x.iter().cloned().fold(f32::MIN, f32::max);
        let s: f32 = x.iter().map(|v| (v - m).exp()).sum();
        x.iter().map(|v| v - m - s.ln()).collect()
    }

    #[test]
    fn kl_of_identical_rows_is_zero() {
        let p = log_softmax(&[1.0, 2.0, 3.0]);
        assert_eq!(kl(&p, &p), 0.0);
    }

    #[test]
    fn kl_matches_a_hand_computation() {
        let p = [0.5f32.ln(), 0.5f32.ln()];
        let q = [0.25f32.ln(), 0.75f32.ln()];
        let want = 0.5 * (0.5f64 / 0.25).ln() + 0.5 * (0.5f64 / 0.75).ln();
        assert!((kl(&p, &q) - want).abs() < 1e-6);
    }

    #[test]
    fn coarse_kl_is_zero_when_the_endpoint_agrees_and_below_the_full_kl() {
        let p = log_softmax(&[2.0, 1.0, 0.5, -1.0, 0.0]);
        let report = |q: &[f32], n: usize| {
            let mut idx: Vec<usize> = (0..q.len()).collect();
            idx.sort_by(|a, b| q[*b].total_cmp(&q[*a]));
            EndpointPosition {
                token: Some(idx[0] as u32),
                logprob: q[idx[0]] as f64,
                top: idx[..n]
                    .iter()
                    .map(|&i| (Some(i as u32), q[i] as f64))
                    .collect(),
            }
        };
        for n in 0..=5 {
            assert!(coarse_kl(&p, &report(&p, n)) < 1e-6, "n = {n}");
        }
        let q = log_softmax(&[0.0, 2.0, 0.5, -1.0, 1.0]);
        let full = kl(&p, &q);
        let mut last = 0.0;
        for n in 0..=5 {
            let c = coarse_kl(&p, &report(&q, n));
            assert!(c <= full + 1e-6 && c >= 0.0, "n = {n}: {c} vs {full}");
            assert!(c + 1e-6 >= last, "finer partitions see more");
            last = c;
        }
        assert!(
            (last - full).abs() < 1e-5,
            "the whole vocabulary reported gives the full KL"
        );
    }

    #[test]
    fn a_reference_that_knows_only_its_top_tokens_compares_on_tokens_both_reported() {
        // The reference reports its top 3 of 6 (the rest NaN); the endpoint its top 3.
        let p = log_softmax(&[2.0, 1.5, 1.0, 0.2, 0.1, -1.0]);
        let known = |row: &[f32], n: usize| {
            let mut idx: Vec<usize> = (0..row.len()).collect();
            idx.sort_by(|a, b| row[*b].total_cmp(&row[*a]));
            let mut out = vec![f32::NAN; row.len()];
            for &i in &idx[..n] {
                out[i] = row[i];
            }
            (out, idx)
        };
        let (p_top, _) = known(&p, 3);
        let report = |q: &[f32]| {
            let (_, idx) = known(q, 3);
            EndpointPosition {
                token: Some(idx[0] as u32),
                logprob: q[idx[0]] as f64,
                top: idx[..3]
                    .iter()
                    .map(|&i| (Some(i as u32), q[i] as f64))
                    .collect(),
            }
        };
        assert!(coarse_kl(&p_top, &report(&p)) < 1e-6, "same distribution");
        // Another distribution whose top 3 overlap the reference's in two tokens: the third
        // joins "everything else" on both sides, and the result is the KL on {0, 1, rest}.
        let q = log_softmax(&[1.0, 2.0, -1.0, 1.5, 0.1, 0.0]);
        let c = coarse_kl(&p_top, &report(&q));
        let (p0, p1) = (p[0].exp() as f64, p[1].exp() as f64);
        let (q0, q1) = (q[0].exp() as f64, q[1].exp() as f64);
        let (pr, qr) = (1.0 - p0 - p1, 1.0 - q0 - q1);
        let want = p0 * (p0 / q0).ln() + p1 * (p1 / q1).ln() + pr * (pr / qr).ln();
        assert!((c - want).abs() < 1e-5, "{c} vs {want}");
        assert!(c <= kl(&p, &q) + 1e-9);
        assert_eq!(argmax(&p_top), 0, "unknown entries never win");
        // A position the reference has no row for is not scored.
        let s = endpoint_kl_score(&[p_top.clone(), Vec::new()], &[report(&q), report(&p)]);
        assert_eq!(s.kl.len(), 1);
        assert!((s.score - want).abs() < 1e-5);
    }

    #[test]
    fn text_mismatch_counts_tokens_that_are_not_the_reference_argmax() {
        let rows = vec![
            log_softmax(&[3.0, 0.0, 0.0]),
            log_softmax(&[0.0, 3.0, 0.0]),
            log_softmax(&[0.0, 0.0, 3.0]),
        ];
        let (s, rep) = text_mismatch_score(&rows, &[0, 2], Some(&[2]), &[]);
        assert_eq!(s.top1_agree, vec![true, false]);
        assert!((s.score - 1.0 / 2.0).abs() < 1e-12);
        // The stop row's first choice (2) had appeared: a repeat position, not scored.
        assert_eq!(
            rep,
            RepeatPositions {
                positions: 1,
                misses: 0
            }
        );
        assert_eq!(text_mismatch_score(&rows, &[0, 1], None, &[]).0.score, 0.0);
    }

    /// A penalty demotes only tokens already seen: where the reference's first choice had
    /// appeared (in the prompt or the answer), the endpoint's other pick is counted apart and
    /// never scored.
    #[test]
    fn text_mismatch_leaves_repeat_positions_to_the_decoding_check() {
        let rows = vec![
            log_softmax(&[3.0, 0.0, 0.0, 0.0]),
            log_softmax(&[0.0, 3.0, 0.0, 0.0]),
            log_softmax(&[3.0, 0.0, 0.0, 0.0]),
        ];
        // Prompt holds token 1; the endpoint writes 0, 2, 3 (penalizing 1, then 0).
        let (s, rep) = text_mismatch_score(&rows, &[0, 2, 3], None, &[1]);
        assert_eq!(s.top1_agree, vec![true]);
        assert_eq!(s.score, 0.0);
        assert_eq!(
            rep,
            RepeatPositions {
                positions: 2,
                misses: 2
            }
        );
    }

    #[test]
    fn kl_is_asymmetric_and_positive() {
        let p = log_softmax(&[3.0, 0.0, 0.0]);
        let q = log_softmax(&[0.0, 0.0, 3.0]);
        assert!(kl(&p, &q) > 1.0);
        let r = log_softmax(&[1.0, 0.9, 0.0]);
        assert!((kl(&p, &r) - kl(&r, &p)).abs() > 1e-3);
    }
}
