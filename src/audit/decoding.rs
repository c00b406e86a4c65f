//! What the answers say about how the endpoint decoded and what it read, apart from which
//! model it runs: reported beside the verdict, never folded into it.
//!
//! * **Greedy check** (methods whose answers carry the endpoint's own log-probabilities of
//!   its alternatives): at temperature 0 the endpoint must pick, at every step, a token at
//!   least as likely as every alternative it reports. A step where it picked one less likely
//!   by more than [`GREEDY_SLACK`] nats, by its own numbers, is decoding other than asked: a
//!   repetition penalty, a temperature floor, sampling. That is "decoding differs from
//!   requested", and the verdict stands: the scores compare distributions, which a decoding
//!   rule does not change.
//! * **Penalty pattern** (text answers at temperature 0): text scoring leaves out positions
//!   where the reference's first choice had already appeared (a penalty can only lower
//!   tokens already seen, so only there can it change a greedy pick); how often the endpoint
//!   departs there, against elsewhere, shows a penalty's pattern.
//! * **Sampled tokens** (the logprobs method at a temperature above 0): their PITs and
//!   surprises under the reference at the requested settings, by the e-process of
//!   `stats::uniformity`: "decoding differs" at an e-value of [`SAMPLED_E`].
//! * **Prompt accounting**: the endpoint's `usage.prompt_tokens` against the reference
//!   tokenizer's count of what was sent (the chat template rendered, for chat). A surplus on
//!   every answer means the endpoint read more than was sent (an injected system prompt,
//!   another template); a deficit, a truncated prompt or another tokenizer.

use serde::{Deserialize, Serialize};

use crate::score::sampled::Sampling;
use crate::score::EndpointPosition;
use crate::stats::uniformity::Uniformity;

/// Fewest departures at repeat positions, and their rate against the rest, before text
/// answers are said to show a penalty's pattern (the verdict does not depend on it, since
/// repeat positions are never scored).
pub const PENALTY_MISSES: u64 = 3;
/// See [`PENALTY_MISSES`].
pub const PENALTY_RATIO: f64 = 3.0;
/// The level of the one-sided Fisher exact test behind the penalty finding. Null: a departure
/// from the reference's first choice is as likely where that token had already appeared as
/// elsewhere (an endpoint that decodes as asked departs only at near-ties of its arithmetic,
/// which do not care whether a token appeared). Given the departures' total, their count at
/// repeat positions is then hypergeometric, and an honest endpoint is said to show the
/// pattern with probability at most this.
pub const PENALTY_LEVEL: f64 = 0.01;

/// The e-value at which sampled tokens are said not to follow the requested settings (a
/// false finding has probability at most 1/this, by Ville's inequality).
pub const SAMPLED_E: f64 = 1000.0;

/// Nats by which a picked token may trail the best alternative reported before the step
/// counts as not greedy: above the rounding of log-probabilities written as text and the
/// near-ties of batched arithmetic (pot serve and llama.cpp's server at repeat penalty 1 show
/// none at all over hundreds of steps).
pub const GREEDY_SLACK: f64 = 0.01;

/// Share of steps off greedy at which decoding is called other than requested (and at least
/// two steps): one near-tie is not a decoding rule.
pub const OFF_GREEDY_SHARE: f64 = 0.01;

/// Whether `token` is, within [`GREEDY_SLACK`], the most likely of the entry `p` reports
/// (its own token, or one of its alternatives); `false` when the entry does not list it.
pub(super) fn is_most_likely(p: &EndpointPosition, token: Option<u32>) -> bool {
    let best = p
        .top
        .iter()
        .map(|(_, l)| *l)
        .fold(f64::NEG_INFINITY, f64::max);
    let lp = if token == p.token {
        Some(p.logprob)
    } else {
        p.top.iter().find(|(t, _)| *t == token).map(|(_, l)| *l)
    };
    best.is_finite() && lp.is_some_and(|l| l >= best - GREEDY_SLACK)
}

/// The steps of an answer that can be checked, and those off greedy.
pub(super) fn greedy_steps(positions: &[EndpointPosition]) -> (u64, u64) {
    // A step counts when at least one other token was reported beside the picked one.
    let checked = positions
        .iter()
        .filter(|p| p.top.iter().any(|(t, _)| *t != p.token));
    let (mut steps, mut off) = (0, 0);
    for p in checked {
        steps += 1;
        off += u64::from(!is_most_likely(p, p.token));
    }
    (steps, off)
}

/// The checks over a run's answers so far.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct DecodingCheck {
    /// Steps whose alternatives were reported.
    pub steps: u64,
    /// Steps where the endpoint picked a token less likely than one it reported.
    pub off_greedy: u64,
    /// Answers that reported their prompt tokens.
    pub prompts_counted: u64,
    /// Least and most prompt tokens reported beyond the reference's count of what was sent.
    pub prompt_surplus: Option<(i64, i64)>,
    /// Sum of those surpluses (for the mean).
    pub prompt_surplus_sum: i64,
    /// The sampling asked for, when not greedy: the endpoint's sampled tokens are then
    /// checked against the reference at those settings (their PITs) instead of for greed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<Sampling>,
    /// Sampled tokens checked.
    #[serde(default)]
    pub sampled_tokens: u64,
    /// Their mean PIT (1/2 when they follow the reference at the settings).
    #[serde(default)]
    pub mean_pit: f64,
    /// log10 of the uniformity e-value of their PITs.
    #[serde(default)]
    pub log10_e: f64,
    #[serde(skip)]
    pits: Uniformity,
    /// Text answers at temperature 0: positions scored (the reference's first choice not
    /// yet seen), and those where the endpoint picked otherwise.
    #[serde(default)]
    pub text_positions: u64,
    /// Misses among them.
    #[serde(default)]
    pub text_misses: u64,
    /// Positions a penalty could explain (the reference's first choice already seen), not
    /// scored.
    #[serde(default)]
    pub repeat_positions: u64,
    /// Misses among them.
    #[serde(default)]
    pub repeat_misses: u64,
    /// Text answers at temperature 0: tokens placed against the reference sampled at
    /// [`crate::score::sampled::SAMPLED_FIT`], and log10 of the e-value against that fit.
    #[serde(default)]
    pub fit_tokens: u64,
    /// See [`DecodingCheck::fit_tokens`].
    #[serde(default)]
    pub fit_log10_e: f64,
    #[serde(skip)]
    fit: Uniformity,
}

impl DecodingCheck {
    pub(super) fn add_steps(&mut self, (steps, off): (u64, u64)) {
        self.steps += steps;
        self.off_greedy += off;
    }

    pub(super) fn add_pits(&mut self, pits: &[f64], surprises: &[f64]) {
        let n = self.sampled_tokens as f64;
        let sum: f64 = pits.iter().sum();
        self.sampled_tokens += pits.len() as u64;
        if self.sampled_tokens > 0 {
            self.mean_pit = (self.mean_pit * n + sum) / self.sampled_tokens as f64;
        }
        for (&u, &s) in pits.iter().zip(surprises) {
            self.pits.push_outcome(u, s);
        }
        self.log10_e = self.pits.log_e() / std::f64::consts::LN_10;
    }

    pub(super) fn add_text(&mut self, scored: &[bool], repeats: crate::score::RepeatPositions) {
        self.text_positions += scored.len() as u64;
        self.text_misses += scored.iter().filter(|a| !**a).count() as u64;
        self.repeat_positions += repeats.positions;
        self.repeat_misses += repeats.misses;
    }

    pub(super) fn add_fit(&mut self, pits: &[f64], surprises: &[f64]) {
        for (&u, &s) in pits.iter().zip(surprises) {
            self.fit.push_outcome(u, s);
        }
        self.fit_tokens += pits.len().min(surprises.len()) as u64;
        self.fit_log10_e = self.fit.log_e() / std::f64::consts::LN_10;
    }

    /// Whether text answers at temperature 0 look sampled: over a tenth of the scored
    /// positions depart from the reference's first choice, and the text has not refuted the
    /// reference sampled at [`crate::score::sampled::SAMPLED_FIT`] (e-value under
    /// [`SAMPLED_E`], so text that is so sampled is said not to fit with probability at most
    /// 1/[`SAMPLED_E`]).
    pub fn looks_sampled(&self) -> bool {
        self.fit_tokens > 0
            && self.text_misses as f64 > 0.1 * self.text_positions as f64
            && self.fit_log10_e < SAMPLED_E.log10()
    }

    /// Whether text answers show a penalty's pattern: the endpoint leaves the reference's
    /// first choice where that token had already appeared (at least [`PENALTY_MISSES`] times)
    /// [`PENALTY_RATIO`] times as often as elsewhere, and more often than chance allows
    /// ([`penalty_p`](Self::penalty_p) under [`PENALTY_LEVEL`]).
    pub fn penalty_pattern(&self) -> bool {
        let rate = |m: u64, n: u64| if n == 0 { 0.0 } else { m as f64 / n as f64 };
        let elsewhere = rate(self.text_misses, self.text_positions).max(0.01);
        self.repeat_misses >= PENALTY_MISSES
            && rate(self.repeat_misses, self.repeat_positions) >= PENALTY_RATIO * elsewhere
            && self.penalty_p() < PENALTY_LEVEL
    }

    /// The one-sided Fisher exact p-value of the departures at repeat positions: the
    /// probability, were departures as likely there as elsewhere, of at least as many of them
    /// falling at repeat positions as did.
    pub fn penalty_p(&self) -> f64 {
        fisher_greater(
            self.repeat_misses,
            self.repeat_positions,
            self.text_misses,
            self.text_positions,
        )
    }

    pub(super) fn add_prompt(&mut self, reported: u64, counted: usize) {
        let d = reported as i64 - counted as i64;
        self.prompts_counted += 1;
        self.prompt_surplus_sum += d;
        self.prompt_surplus = Some(match self.prompt_surplus {
            None => (d, d),
            Some((lo, hi)) => (lo.min(d), hi.max(d)),
        });
    }

    /// Whether the endpoint decoded otherwise than requested: by the greedy check, or, when
    /// sampling was asked for, by its sampled tokens' PITs.
    pub fn decoding_differs(&self) -> bool {
        if self.sampling.is_some() {
            return self.log10_e >= SAMPLED_E.log10();
        }
        self.off_greedy >= 2 && self.off_greedy as f64 >= OFF_GREEDY_SHARE * self.steps as f64
    }

    /// The findings, one line each ("decoding as requested", or what differs).
    pub fn findings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(s) = &self.sampling {
            out.push(if self.sampled_tokens == 0 {
                format!("decoding: not checked ({}; the method samples nothing the reference can place)", s.describe())
            } else if self.decoding_differs() {
                format!(
                    "decoding differs from requested: the {} sampled tokens do not follow the reference at {} (mean PIT {:.3}, e-value 10^{:.1}; a penalty, another temperature or truncation the client did not ask for); the verdict compares distributions and stands",
                    self.sampled_tokens, s.describe(), self.mean_pit, self.log10_e
                )
            } else {
                format!(
                    "decoding as requested, as far as {} sampled tokens show: they follow the reference at {} (mean PIT {:.3}, e-value 10^{:.1})",
                    self.sampled_tokens, s.describe(), self.mean_pit, self.log10_e
                )
            });
        } else if self.steps == 0 && self.text_positions + self.repeat_positions > 0 {
            let pct = |m: u64, n: u64| 100.0 * m as f64 / n.max(1) as f64;
            let counts = format!(
                "the endpoint left the reference's first choice at {} of {} positions where that token had already appeared ({:.1} %), and at {} of {} elsewhere ({:.1} %)",
                self.repeat_misses,
                self.repeat_positions,
                pct(self.repeat_misses, self.repeat_positions),
                self.text_misses,
                self.text_positions,
                pct(self.text_misses, self.text_positions)
            );
            out.push(if self.looks_sampled() {
                format!("decoding differs from requested: {counts}, and the text fits the reference sampled at temperature 1 (e-value 10^{:.2} against that over {} tokens): the endpoint may sample although temperature 0 was asked, and DIFFERENT is withheld while that fit stands (audit it with --temperature 1 to test it so)", self.fit_log10_e, self.fit_tokens)
            } else if self.penalty_pattern() {
                format!("decoding differs from requested: {counts}; one-sided Fisher exact p = {:.1e}: the pattern of a repetition, presence or frequency penalty; those positions are not scored, and the verdict stands", self.penalty_p())
            } else {
                format!("decoding: no penalty's pattern in the text ({counts}; one-sided Fisher exact p = {:.2}); positions where the reference's first choice had appeared are not scored", self.penalty_p())
            });
        } else if self.steps == 0 {
            out.push("decoding: not checked (the answers report no alternatives)".into());
        } else if self.decoding_differs() {
            out.push(format!(
                "decoding differs from requested: at {} of {} steps the endpoint picked a token less likely, by its own log-probabilities, than one it reported (a repetition penalty, a temperature floor or sampling at temperature 0); the verdict compares distributions and stands",
                self.off_greedy, self.steps
            ));
        } else {
            out.push(format!(
                "decoding as requested: greedy at {} of {} steps",
                self.steps - self.off_greedy,
                self.steps
            ));
        }
        match self.prompt_surplus {
            None => out.push("prompt tokens: not reported by the endpoint".into()),
            Some((0, 0)) => out.push(format!(
                "prompt tokens: as the reference counts them, on all {} answers",
                self.prompts_counted
            )),
            Some((lo, hi)) if lo > 0 => out.push(format!(
                "prompt tokens: the endpoint read {lo} to {hi} more than the reference counts of what was sent, on every answer: an injected system prompt or another chat template"
            )),
            Some((lo, hi)) if hi < 0 => out.push(format!(
                "prompt tokens: the endpoint read {} to {} fewer than the reference counts of what was sent, on every answer: a truncated prompt or another tokenizer",
                -hi, -lo
            )),
            Some((lo, hi)) => out.push(format!(
                "prompt tokens: the endpoint's count differs from the reference's by {lo} to {hi} (mean {:.2}) over {} answers",
                self.prompt_surplus_sum as f64 / self.prompts_counted as f64,
                self.prompts_counted
            )),
        }
        out
    }
}

/// One-sided Fisher exact test that `a` of `n` exceeds `b` of `m` as a rate: the
/// hypergeometric probability of at least `a` of the `a + b` events falling among the first
/// `n` of the `n + m` positions. 1 when there is nothing to test.
fn fisher_greater(a: u64, n: u64, b: u64, m: u64) -> f64 {
    use statrs::distribution::{DiscreteCDF, Hypergeometric};
    if a == 0 || n == 0 || m == 0 {
        return 1.0;
    }
    match Hypergeometric::new(n + m, a + b, n) {
        Ok(h) => h.sf(a - 1).clamp(0.0, 1.0),
        Err(_) => 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn text_check(repeat: (u64, u64), elsewhere: (u64, u64)) -> DecodingCheck {
        DecodingCheck {
            repeat_misses: repeat.0,
            repeat_positions: repeat.1,
            text_misses: elsewhere.0,
            text_positions: elsewhere.1,
            ..Default::default()
        }
    }

    /// The counts llama.cpp's server gave on the same weights, unpenalized (a CI run of
    /// 2026-12-03: 3 of 31 against 2 of 74, a ratio of 3.6 by chance), are no pattern; those
    /// behind a 1.3 penalty (11 of 41 against 1 of 59) are.
    #[test]
    fn a_penalty_pattern_needs_more_than_chance() {
        let honest = text_check((3, 31), (2, 74));
        assert!(
            (honest.penalty_p() - 0.1516).abs() < 1e-3,
            "{}",
            honest.penalty_p()
        );
        assert!(!honest.penalty_pattern());
        assert!(honest.findings()[0].starts_with("decoding: no penalty's pattern"));
        let penalized = text_check((11, 41), (1, 59));
        assert!(penalized.penalty_p() < 1e-3, "{}", penalized.penalty_p());
        assert!(penalized.penalty_pattern());
        assert!(penalized.findings()[0].contains("the pattern of a repetition"));
        assert_eq!(fisher_greater(0, 10, 3, 10), 1.0);
        assert_eq!(fisher_greater(3, 10, 0, 0), 1.0);
    }

    /// The false-finding rate under the null (departures equally likely everywhere), by
    /// simulation: 20,000 audits each of 30 to 60 repeat and 60 to 120 other positions, at
    /// departure rates from 1 % to 10 %, show the pattern in at most [`PENALTY_LEVEL`] of them
    /// (the exact test is conservative; the rate floor makes it more so).
    #[test]
    fn an_honest_endpoint_rarely_shows_a_penalty_pattern() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(20261203);
        for rate in [0.01, 0.03, 0.05, 0.1] {
            let trials = 5_000;
            let mut found = 0;
            for _ in 0..trials {
                let n = rng.gen_range(30..=60);
                let m = rng.gen_range(60..=120);
                let a = (0..n).filter(|_| rng.gen::<f64>() < rate).count() as u64;
                let b = (0..m).filter(|_| rng.gen::<f64>() < rate).count() as u64;
                found += text_check((a, n), (b, m)).penalty_pattern() as u32;
            }
            let share = found as f64 / trials as f64;
            assert!(share <= PENALTY_LEVEL, "rate {rate}: {share}");
        }
    }

    fn pos(token: u32, logprob: f64, top: &[(u32, f64)]) -> EndpointPosition {
        EndpointPosition {
            token: Some(token),
            logprob,
            top: top.iter().map(|&(t, l)| (Some(t), l)).collect(),
        }
    }

    #[test]
    fn a_pick_below_a_reported_alternative_is_off_greedy() {
        let greedy = pos(1, -0.2, &[(1, -0.2), (2, -1.9)]);
        let tie = pos(1, -0.693, &[(2, -0.6929), (1, -0.693)]);
        let penalized = pos(2, -1.1, &[(1, -0.5), (2, -1.1)]);
        let alone = pos(3, -0.1, &[(3, -0.1)]);
        assert_eq!(greedy_steps(&[greedy, tie, penalized, alone]), (3, 1));
    }

    #[test]
    fn findings_name_what_differs() {
        let mut c = DecodingCheck::default();
        c.add_steps((300, 1));
        c.add_prompt(40, 40);
        c.add_prompt(12, 12);
        assert!(!c.decoding_differs(), "one near-tie in 300 is not a rule");
        let f = c.findings();
        assert!(f[0].starts_with("decoding as requested"), "{f:?}");
        assert!(f[1].contains("as the reference counts"), "{f:?}");
        c.add_steps((100, 9));
        c.add_prompt(60, 30);
        assert!(c.decoding_differs());
        let f = c.findings();
        assert!(f[0].starts_with("decoding differs from requested"), "{f:?}");
        assert!(f[1].contains("0 to 30"), "{f:?}");
        let mut d = DecodingCheck::default();
        d.add_prompt(70, 40);
        d.add_prompt(71, 41);
        assert!(
            d.findings()[1].contains("30 to 30 more"),
            "{:?}",
            d.findings()
        );
    }
}
