//! Finding how to put challenges to an endpoint: one small request per shape, best method
//! first, until one gives a usable answer.
//!
//! Servers differ in what they accept and bend the wire format, so a method is tried in each
//! spelling servers use (completions' `logprobs: N`, or chat's `logprobs: true` with
//! `top_logprobs: N`) and with fewer alternatives before it is given up:
//!
//! * an answer the endpoint refuses (any 4xx but 401, 403 and 404, which no other shape
//!   would change) is recorded with the endpoint's own words, and the same spelling is tried
//!   with fewer alternatives, then the next spelling;
//! * a 500 or 501 that repeats for that request (a server that fails on token-id prompts), or
//!   an answer pot cannot use (no log-probabilities, tokens that are not the reference's, an
//!   echo that scores each token by another position's distribution), is recorded likewise,
//!   and the next spelling is tried, then the next method;
//! * passing trouble (429, 502-504, a timeout, a cut-off body) is retried under the audit's
//!   full retry policy, and an endpoint that never answers stops the probe: it is down,
//!   whatever the shape;
//! * when no method works, the error names every method and why it failed.
//!
//! Requests carry `repeat_penalty: 1`, `repetition_penalty: 1`, `top_k: 0` (or the one asked
//! for) and `min_p: 0` besides OpenAI's own penalties of 0: llama.cpp's server applies a
//! penalty of 1.1, keeps 40 tokens and cuts below 5 % of the most likely unless told
//! otherwise, and vLLM, TGI and mlx-lm read the second name. A server that refuses fields it
//! does not know is asked without them from the first shape they fail on.
//!
//! What was tried before the method chosen is kept in the transcript (`probes`).

use super::wire::Echoed;
use super::{EndpointCandidate, Method, Spelling};
use crate::openai::{ClientError, Endpoint};
use crate::run::{Reference, RunError};

/// The text probed with.
const PROBE_TEXT: &str = "The capital of France is";

/// Retries of a probe that meets a 500: a server may fail once; one that fails three times on
/// the same request fails on its shape.
const PROBE_RETRIES: u32 = 2;

/// How one shape fared.
enum Outcome {
    /// Usable.
    Works,
    /// Refused, or failed on the server: try fewer alternatives, then the next spelling.
    Refused(String),
    /// Answered, but not usably, or failed on the server again and again: the next
    /// spelling, then the next method.
    Unusable(String),
}

impl EndpointCandidate {
    /// Find the method, spelling and alternatives to use (`forced`: that method only); the
    /// shapes tried before, each with why it did not do.
    pub(super) fn detect(
        &mut self,
        forced: Option<Method>,
        top: usize,
        reference: &mut dyn Reference,
    ) -> Result<Vec<String>, RunError> {
        let url = self.endpoint.url(self.route());
        let methods: Vec<Method> = match (forced, self.chat()) {
            (Some(m), true) if m.echoes() => {
                return Err(RunError::Unsupported {
                    url,
                    what: format!(
                    "--method {} needs the completions API; drop --chat or use --method logprobs",
                    m.name()
                ),
                })
            }
            (Some(m), _) => vec![m],
            (None, false) => vec![
                Method::Echo,
                Method::EchoText,
                Method::Logprobs,
                Method::Text,
            ],
            (None, true) => vec![Method::Logprobs, Method::Text],
        };
        // Probes retry little: a shape that fails twice is a shape this server does not take.
        let mut cfg = self.endpoint.config().clone();
        cfg.retries = cfg.retries.min(PROBE_RETRIES);
        cfg.max_backoff = cfg.max_backoff.min(std::time::Duration::from_secs(2));
        let probe = Endpoint::new(cfg)?;
        let mut tried = Vec::new();
        for m in methods {
            let spellings: &[Spelling] = match (m, self.chat()) {
                (Method::Text, _) => &[Spelling::None],
                (_, true) => &[Spelling::Flag],
                (_, false) => &[Spelling::Count, Spelling::Flag],
            };
            let tops: Vec<usize> = if m == Method::Text {
                vec![0]
            } else {
                let mut t = vec![top, 5, 1];
                t.retain(|&x| x <= top);
                t.dedup();
                t
            };
            'spelling: for &spelling in spellings {
                for &n in &tops {
                    (self.method, self.spelling, self.top) = (m, spelling, n);
                    let shape = self.shape();
                    match self.try_shape_with_penalties(&probe, reference, &mut tried)? {
                        Outcome::Works => return Ok(tried),
                        Outcome::Refused(why) => tried.push(format!("{shape}: {why}")),
                        Outcome::Unusable(why) => {
                            tried.push(format!("{shape}: {why}"));
                            continue 'spelling;
                        }
                    }
                }
            }
        }
        Err(RunError::Unsupported {
            url,
            what: format!(
                "the endpoint supports none of the methods tried ({}); see pot audit --help on methods",
                tried.join("; ")
            ),
        })
    }

    /// The shape now set, as the records name it (`echo, logprobs: N, 20 alternatives`).
    pub(super) fn shape(&self) -> String {
        match self.method {
            Method::Text => self.method.name().to_string(),
            m => format!(
                "{} ({}, {} alternatives)",
                m.name(),
                self.spelling.wire(),
                self.top
            ),
        }
    }

    /// [`Self::try_shape`] with the penalty fields, then (when refused) without them: a
    /// server that refuses fields it does not know (OpenAI's does) is asked without them from
    /// then on.
    fn try_shape_with_penalties(
        &mut self,
        probe: &Endpoint,
        reference: &mut dyn Reference,
        tried: &mut Vec<String>,
    ) -> Result<Outcome, RunError> {
        let outcome = self.try_shape(probe, reference)?;
        let Outcome::Refused(why) = &outcome else {
            return Ok(outcome);
        };
        if !self.penalty_fields {
            return Ok(outcome);
        }
        self.penalty_fields = false;
        match self.try_shape(probe, reference)? {
            Outcome::Works => {
                tried.push(format!(
                    "{} with llama.cpp's sampler fields (repeat_penalty, repetition_penalty, top_k, min_p): {why}",
                    self.shape()
                ));
                Ok(Outcome::Works)
            }
            _ => {
                self.penalty_fields = true;
                Ok(outcome)
            }
        }
    }

    /// Post a probe; `Err(Ok(outcome))` when the shape is refused or fails, `Err(Err(e))`
    /// when the endpoint itself fails. A 500 or 501 that repeats ([`PROBE_RETRIES`]) is the
    /// shape's failure; other failures (429, 502-504, timeouts, cut-off bodies) are the
    /// endpoint's passing trouble, and the request is tried again under its full retry policy.
    fn post(
        &self,
        probe: &Endpoint,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, Result<Outcome, RunError>> {
        let first = probe.post(self.route(), body);
        let answer = match first {
            Err(ClientError::GaveUp {
                status: Some(500 | 501),
                ..
            })
            | Ok(_)
            | Err(ClientError::Refused { .. })
            | Err(ClientError::TooLarge { .. }) => first,
            Err(ClientError::GaveUp { .. }) => self.endpoint.post(self.route(), body),
            Err(e) => Err(e),
        };
        match answer {
            Ok(ex) => Ok(ex.body),
            // A refused key, model or route has nothing to do with the shape: stop here.
            Err(
                e @ ClientError::Refused {
                    status: 401 | 403 | 404,
                    ..
                },
            ) => Err(Err(e.into())),
            Err(ClientError::Refused {
                status, message, ..
            }) => Err(Ok(Outcome::Refused(format!(
                "HTTP {status}: {}",
                first_line(&message)
            )))),
            Err(ClientError::GaveUp {
                status: Some(status @ (500 | 501)),
                attempts,
                last,
                ..
            }) => Err(Ok(Outcome::Unusable(format!(
                "{} ({attempts} attempts, HTTP {status} each time)",
                first_line(&last)
            )))),
            Err(ClientError::TooLarge { limit, .. }) => Err(Ok(Outcome::Unusable(format!(
                "an answer over {limit} bytes"
            )))),
            Err(e) => Err(Err(e.into())),
        }
    }

    fn try_shape(
        &self,
        probe: &Endpoint,
        reference: &mut dyn Reference,
    ) -> Result<Outcome, RunError> {
        if self.method.echoes() {
            return self.try_echo(probe, reference);
        }
        let body = self.request(PROBE_TEXT, None);
        let body = match self.post(probe, &body) {
            Ok(b) => b,
            Err(outcome) => return outcome,
        };
        Ok(match self.answer(&body, None, reference.tokenizer()?) {
            Ok(a)
                if a.note.is_none() && (self.method == Method::Text || !a.positions.is_empty()) =>
            {
                Outcome::Works
            }
            Ok(a) => Outcome::Unusable(a.note.unwrap_or_else(|| "no log-probabilities".into())),
            Err(why) => Outcome::Unusable(why),
        })
    }

    /// Echo must give each token's log-probability where the token stands: under the
    /// distribution of the position before it. Some servers give the one after it instead
    /// (llama-cpp-python 0.3.36 does: each echoed token is scored by the next position's
    /// distribution), which would score the wrong positions. So the probe echoes the
    /// endpoint's own greedy continuation of the probe text: at each of those positions the
    /// token must be the most likely of its entry. Shifted by one, the entry's most likely
    /// token is the next one instead.
    fn try_echo(
        &self,
        probe: &Endpoint,
        reference: &mut dyn Reference,
    ) -> Result<Outcome, RunError> {
        let greedy = serde_json::to_value(crate::openai::CompletionRequest {
            common: self.decoding(ALIGNMENT_TOKENS, PROBE_TEXT),
            prompt: Some(serde_json::json!(PROBE_TEXT)),
            ..Default::default()
        })
        .expect("wire types serialize");
        let body = match self.post(probe, &greedy) {
            Ok(b) => b,
            Err(outcome) => return outcome,
        };
        let continued = serde_json::from_value::<crate::openai::Completion>(body)
            .ok()
            .and_then(|c| c.choices.into_iter().next())
            .and_then(|c| c.text)
            .unwrap_or_default();
        let tokenizer = reference.tokenizer()?;
        let prompt_ids = tokenizer.encode(PROBE_TEXT)?;
        let ids = tokenizer.encode(&format!("{PROBE_TEXT}{continued}"))?;
        let common = ids
            .iter()
            .zip(&prompt_ids)
            .take_while(|(a, b)| a == b)
            .count();
        if ids.len() < common + 2 {
            return Ok(Outcome::Unusable(format!(
                "its greedy continuation of the probe ({continued:?}) is too short to check the echo's alignment"
            )));
        }
        let body = self.request(&format!("{PROBE_TEXT}{continued}"), Some(&ids));
        let body = match self.post(probe, &body) {
            Ok(b) => b,
            Err(outcome) => return outcome,
        };
        let echoed = Echoed {
            ids: &ids,
            check_from: 1,
            score_from: common.max(2),
        };
        let a = match self.answer(&body, Some(echoed), tokenizer) {
            Ok(a) => a,
            Err(why) => return Ok(Outcome::Unusable(why)),
        };
        if let Some(note) = a.note {
            return Ok(Outcome::Unusable(note));
        }
        // Each position is read both ways: is its token the most likely of its own entry
        // (aligned), or is the next token (shifted by one)? Near-ties may flip a position
        // or two either way (the echo is one batched pass, the continuation was generated
        // step by step); a shifted echo is shifted at nearly every position.
        use super::decoding::is_most_likely;
        let n = a.positions.len();
        let aligned = a
            .positions
            .iter()
            .filter(|p| is_most_likely(p, p.token))
            .count();
        let shifted = a
            .positions
            .windows(2)
            .filter(|w| w[1].token != w[0].token && is_most_likely(&w[0], w[1].token))
            .count();
        if a.positions
            .iter()
            .all(|p| p.top.iter().all(|(t, _)| *t == p.token))
        {
            return Ok(Outcome::Unusable(
                "the echo reports no alternatives to check its alignment by".into(),
            ));
        }
        if aligned == 0 || shifted >= aligned {
            return Ok(Outcome::Unusable(format!(
                "the echo is misaligned: of {n} positions of its own greedy continuation {continued:?}, {aligned} hold the most likely token of their entry and {shifted} the next position's (each token scored by another position's distribution)"
            )));
        }
        Ok(Outcome::Works)
    }
}

/// Tokens of the endpoint's own continuation echoed to check alignment.
const ALIGNMENT_TOKENS: usize = 6;

/// A server's message, first line, at most 300 characters (some answer with a traceback).
fn first_line(message: &str) -> String {
    let line = message.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let mut out: String = line.chars().take(300).collect();
    if out.len() < line.len() || message.trim().lines().count() > 1 {
        out.push_str(" …");
    }
    out
}
