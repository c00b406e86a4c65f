//! `pot audit`: the diff's keyed challenges and sequential test, with a vendor's
//! OpenAI-compatible endpoint as the candidate (black box: nothing but its API).
//!
//! The per-challenge score uses what the endpoint gives, in this order of preference
//! (detected by probing, or forced with `--method`):
//!
//! * **echo** (completions with `echo` and `logprobs`): the reference greedily continues the
//!   prompt by K tokens, as in `pot diff`; the endpoint is sent prompt + continuation as token
//!   ids and echoes its log-probabilities of them. Score: mean over the K positions of
//!   KL(ref ‖ endpoint) on the endpoint's reported tokens plus "everything else"
//!   ([`score::coarse_kl`]), which is at most the full KL and 0 when both agree.
//! * **logprobs** (completions or chat with `logprobs`): the endpoint continues greedily with
//!   log-probabilities; the reference is teacher-forced on the endpoint's tokens. Same score.
//! * **text**: the endpoint's greedy text only; the reference is teacher-forced on its own
//!   tokenization of that text. Score: the share of positions where the endpoint's token is not
//!   the reference's most likely one (and, when the endpoint stopped on an end token, whether
//!   the reference would have ended there too). Coarser, so it needs more queries.
//!
//! Every sampling parameter is sent explicitly (temperature 0, top_p 1, n 1, no penalties, a
//! fixed seed). The endpoint's raw responses go into the transcript, the API key never does.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::challenge::Challenge;
use crate::identity::Identity;
use crate::model::tokenizer::Tokenizer;
use crate::model::LoadOptions;
mod wire;
use wire::{Answer, Vocab};

use crate::openai::{ClientError, Endpoint, EndpointConfig};
use crate::run::local::LocalModel;
use crate::run::{Candidate, Progress, Reference, RunError, RunSpec, Scored, Summary};
use crate::score::{self, ChallengeScore, ReferenceSide, ScoreKind};
use crate::transcript::{self, EndpointInfo};

/// How challenges are put to the endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Completions with echo + logprobs: the endpoint scores the reference's continuation.
    Echo,
    /// The endpoint's own greedy tokens with their logprobs.
    Logprobs,
    /// The endpoint's greedy text only.
    Text,
}

impl crate::Named for Method {
    const ALL: &'static [Self] = &[Method::Echo, Method::Logprobs, Method::Text];

    fn name(self) -> &'static str {
        match self {
            Method::Echo => "echo",
            Method::Logprobs => "logprobs",
            Method::Text => "text",
        }
    }

    fn about(self) -> &'static str {
        match self {
            Method::Echo => {
                "completions with echo + logprobs: the endpoint scores the reference's continuation"
            }
            Method::Logprobs => "the endpoint's own greedy tokens with their logprobs",
            Method::Text => "the endpoint's greedy text only",
        }
    }
}

impl Method {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        crate::Named::name(self)
    }

    fn score_kind(self) -> ScoreKind {
        match self {
            Method::Echo | Method::Logprobs => ScoreKind::EndpointKl,
            Method::Text => ScoreKind::TextMismatch,
        }
    }
}

/// Everything an audit needs.
pub struct AuditConfig {
    /// Reference model spec (what the vendor claims to serve).
    pub reference: String,
    /// The endpoint.
    pub endpoint: EndpointConfig,
    /// Forced method (`None`: the best the endpoint supports).
    pub method: Option<Method>,
    /// Alternatives to ask per token (lowered when the endpoint refuses).
    pub top_logprobs: usize,
    /// The run.
    pub run: RunSpec,
    /// Stop once the endpoint reports this many tokens used (prompt + completion).
    pub max_total_tokens: Option<u64>,
}

/// The outcome of an audit.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditOutcome {
    /// Verdict (UNDECIDED when stopped by a budget) and how it was reached.
    #[serde(flatten)]
    pub summary: Summary,
    /// How challenges were put to the endpoint.
    pub method: String,
    /// Reference identity.
    pub reference: Identity,
    /// The endpoint.
    pub endpoint: EndpointInfo,
    /// Tokens the endpoint reported using in this session.
    pub tokens_used: u64,
    /// HTTP attempts beyond the first, this session.
    pub retries: u64,
    /// Why the run stopped before a verdict, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

/// An OpenAI-compatible endpoint as a run's candidate: its answers read in the reference's
/// vocabulary, scored by the method the endpoint supports.
pub struct EndpointCandidate {
    vocab: Vocab,
    endpoint: Endpoint,
    method: Method,
    top: usize,
    k: usize,
    stop_ids: Vec<u32>,
    info: EndpointInfo,
    max_total_tokens: Option<u64>,
    tokens_used: u64,
    retries: u64,
}

impl EndpointCandidate {
    /// Connect to the endpoint `cfg` names and find how to put challenges to it: the forced
    /// method, or the best one it supports (echo, logprobs, text), with as many alternatives
    /// per token as it accepts (up to `top_logprobs`).
    pub fn connect(cfg: &AuditConfig, reference: &mut dyn Reference) -> Result<Self, RunError> {
        let endpoint = Endpoint::new(cfg.endpoint.clone())?;
        let tokenizer = reference.tokenizer()?;
        let mut cand = EndpointCandidate {
            vocab: Vocab::new(tokenizer),
            endpoint,
            method: Method::Text,
            top: 0,
            k: cfg.run.k,
            stop_ids: tokenizer.stop_ids.clone(),
            info: EndpointInfo {
                url: cfg.endpoint.url.clone(),
                model: cfg.endpoint.model.clone(),
                api: if cfg.endpoint.chat {
                    "chat"
                } else {
                    "completions"
                }
                .into(),
                method: String::new(),
                top_logprobs: 0,
                models: None,
            },
            max_total_tokens: cfg.max_total_tokens,
            tokens_used: 0,
            retries: 0,
        };
        cand.info.models = cand.endpoint.get("/models").ok().map(|e| e.body);
        let (method, top) = cand.detect(cfg.method, cfg.top_logprobs, reference)?;
        tracing::info!("auditing by {} with {top} alternatives", method.name());
        (cand.method, cand.top) = (method, top);
        (cand.info.method, cand.info.top_logprobs) = (method.name().into(), top);
        Ok(cand)
    }

    /// How the endpoint is recorded.
    pub fn info(&self) -> &EndpointInfo {
        &self.info
    }

    /// Tokens the endpoint reported using, and HTTP attempts beyond the first, so far.
    pub fn usage(&self) -> (u64, u64) {
        (self.tokens_used, self.retries)
    }

    /// Which method the endpoint supports, and the number of alternatives it accepts.
    fn detect(
        &mut self,
        forced: Option<Method>,
        top: usize,
        reference: &mut dyn Reference,
    ) -> Result<(Method, usize), RunError> {
        let url = self.endpoint.url(self.route());
        let candidates: Vec<Method> = match (forced, self.chat()) {
            (Some(Method::Echo), true) => return Err(RunError::Unsupported {
                url,
                what:
                    "--method echo needs the completions API; drop --chat or use --method logprobs"
                        .into(),
            }),
            (Some(m), _) => vec![m],
            (None, false) => vec![Method::Echo, Method::Logprobs, Method::Text],
            (None, true) => vec![Method::Logprobs, Method::Text],
        };
        let probe_text = "The capital of France is";
        let tokenizer = reference.tokenizer()?;
        let ids = tokenizer.encode(probe_text)?;
        let mut reasons = Vec::new();
        for m in candidates {
            self.method = m;
            let tops: Vec<usize> = if m == Method::Text {
                vec![0]
            } else {
                let mut t = vec![top, 5, 1];
                t.retain(|&x| x <= top);
                t.dedup();
                t
            };
            for n in tops {
                self.top = n;
                let body = self.request(probe_text, Some(&ids));
                let ex = match self.endpoint.post(self.route(), &body) {
                    Ok(ex) => ex,
                    // A refused key, model or route has nothing to do with the method: stop here.
                    Err(
                        e @ ClientError::Refused {
                            status: 401 | 403 | 404,
                            ..
                        },
                    ) => return Err(e.into()),
                    Err(ClientError::Refused {
                        status, message, ..
                    }) => {
                        reasons.push(format!(
                            "{} with {n} alternatives: HTTP {status} {message}",
                            m.name()
                        ));
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                let sent = (m == Method::Echo).then_some((ids.as_slice(), 1));
                match self.answer(&ex.body, sent, tokenizer) {
                    Ok(a) if a.note.is_none() && (m == Method::Text || !a.positions.is_empty()) => {
                        return Ok((m, n))
                    }
                    Ok(a) => reasons.push(format!(
                        "{}: {}",
                        m.name(),
                        a.note.unwrap_or_else(|| "no positions".into())
                    )),
                    Err(why) => reasons.push(format!("{}: {why}", m.name())),
                }
                break;
            }
        }
        Err(RunError::Unsupported {
            url,
            what: format!(
                "the endpoint supports none of the methods tried ({})",
                reasons.join("; ")
            ),
        })
    }

    /// The endpoint's answers to a group, in parallel, each request retried on its own (an
    /// answer that cannot be read is asked again too): the answer, the exchange as the
    /// transcript keeps it, and the attempts it took.
    fn ask(
        &self,
        requests: &[(Value, Option<Vec<u32>>)],
        prompt_ids: &[Vec<u32>],
        tokenizer: &Tokenizer,
    ) -> Result<Vec<(Answer, Value, u32)>, RunError> {
        let route = self.route();
        let url = self.endpoint.url(route);
        let answers: Vec<Result<(Answer, Value, u32), RunError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = requests
                .iter()
                .zip(prompt_ids)
                .map(|((body, ids), prompt)| {
                    let url = url.clone();
                    let start = prompt.len();
                    scope.spawn(move || -> Result<(Answer, Value, u32), RunError> {
                        let mut attempts = 0;
                        let mut last = String::new();
                        for _ in 0..=self.endpoint.config().retries {
                            let ex = self.endpoint.post(route, body)?;
                            attempts += ex.attempts;
                            match self.answer(&ex.body, ids.as_deref().map(|v| (v, start)), tokenizer) {
                                Ok(a) => {
                                    let record = json!({"request": body, "response": ex.body, "attempts": attempts});
                                    return Ok((a, record, attempts));
                                }
                                Err(why) => {
                                    tracing::info!("{url}: unreadable answer: {why}");
                                    last = why;
                                }
                            }
                        }
                        Err(unreadable(url, last).into())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("request threads do not panic"))
                .collect()
        });
        answers.into_iter().collect()
    }
}

/// A response the audit could not read: retried like a failed request, since a garbled
/// answer must never become a score.
fn unreadable(url: String, what: String) -> ClientError {
    ClientError::GaveUp {
        url,
        attempts: 1,
        last: format!("unreadable response: {what}"),
    }
}

impl Candidate for EndpointCandidate {
    fn describe(&self) -> transcript::Candidate {
        transcript::Candidate::Endpoint(self.info.clone())
    }

    fn is(&self, recorded: &transcript::Candidate) -> bool {
        let i = &self.info;
        matches!(recorded, transcript::Candidate::Endpoint(e) if e.url == i.url && e.model == i.model
            && e.api == i.api && e.method == i.method && e.top_logprobs == i.top_logprobs)
    }

    fn score_kind(&self, _reference: &Identity) -> ScoreKind {
        self.method.score_kind()
    }

    /// Echo scores the reference's continuations (with its full rows, as in `pot diff`);
    /// the other methods have the endpoint generate.
    fn continuations(&self, _kind: ScoreKind) -> Option<ScoreKind> {
        (self.method == Method::Echo).then_some(ScoreKind::Kl)
    }

    fn stop(&self) -> Option<String> {
        let max = self.max_total_tokens?;
        (self.tokens_used >= max).then(|| {
            format!(
                "token budget reached: the endpoint reported {} tokens (--max-total-tokens {max}); raise it",
                self.tokens_used
            )
        })
    }

    /// Endpoint requests in parallel, the reference's passes batched.
    fn score_group(
        &mut self,
        reference: &mut dyn Reference,
        chs: &[Challenge],
        sides: Option<Vec<ReferenceSide>>,
    ) -> Result<Vec<Scored>, RunError> {
        let prompt_ids: Vec<Vec<u32>> = match &sides {
            Some(s) => s.iter().map(|r| r.prompt_ids.clone()).collect(),
            None => chs
                .iter()
                .map(|c| reference.prompt_ids(&c.prompt, self.chat()))
                .collect::<Result<_, _>>()?,
        };
        let requests: Vec<(Value, Option<Vec<u32>>)> = chs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                // Echo sends prompt + the reference's continuation as ids.
                let ids = sides.as_ref().map(|s| {
                    let mut v = s[i].prompt_ids.clone();
                    v.extend(&s[i].continuation_ids);
                    v
                });
                (self.request(&c.prompt, ids.as_deref()), ids)
            })
            .collect();
        let answers = self.ask(&requests, &prompt_ids, reference.tokenizer()?)?;
        // The reference's rows for the endpoint's own tokens (logprobs, text): one batched pass.
        let rows: Vec<Option<Vec<Vec<f32>>>> = if sides.is_some() {
            answers.iter().map(|_| None).collect()
        } else {
            let seqs: Vec<Vec<u32>> = answers
                .iter()
                .zip(&prompt_ids)
                .map(|((a, _, _), p)| p.iter().chain(&a.tokens).copied().collect())
                .collect();
            let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
            let from: Vec<usize> = prompt_ids.iter().map(|p| p.len() - 1).collect();
            reference
                .distributions(&refs, &from)?
                .into_iter()
                .map(Some)
                .collect()
        };
        let stop_ids = &self.stop_ids;
        let mut out = Vec::with_capacity(chs.len());
        for (i, ((a, exchange, attempts), rows)) in answers.into_iter().zip(rows).enumerate() {
            let mut sc = match (&a.note, self.method, &sides, &rows) {
                (Some(note), _, _, _) => ChallengeScore {
                    kind: self.method.score_kind(),
                    score: score::UNSCORABLE,
                    kl: Vec::new(),
                    top1_agree: Vec::new(),
                    bpb: None,
                    note: Some(note.clone()),
                },
                (None, Method::Echo, Some(s), _) => {
                    score::endpoint_kl_score(s[i].reference_rows(), &a.positions)
                }
                (None, Method::Logprobs, _, Some(r)) => score::endpoint_kl_score(r, &a.positions),
                (None, Method::Text, _, Some(r)) => score::text_mismatch_score(
                    r,
                    &a.tokens,
                    a.stopped.then_some(stop_ids.as_slice()),
                ),
                _ => unreachable!("rows exist for every method that needs them"),
            };
            if !sc.score.is_finite() {
                sc.score = score::UNSCORABLE;
                sc.note = Some("the endpoint's numbers give no finite score".into());
            }
            if sc.kl.is_empty() && sc.top1_agree.is_empty() && sc.note.is_none() {
                // No evidence must never pass for agreement: an answer with no tokens counts as
                // agreeing only when it stopped at once and the reference would have too.
                let ends_here = a.stopped
                    && rows
                        .as_ref()
                        .and_then(|r| r.first())
                        .is_some_and(|r| stop_ids.contains(&crate::model::argmax(r)));
                if ends_here {
                    sc.note = Some("the endpoint stopped at once, as the reference would".into());
                } else {
                    sc.score = score::UNSCORABLE;
                    sc.note = Some("the endpoint returned no tokens".into());
                }
            }
            let (continuation_ids, continuation_text) = match &sides {
                Some(s) => (
                    s[i].continuation_ids.clone(),
                    s[i].continuation_text.clone(),
                ),
                None => (a.tokens.clone(), a.text.clone()),
            };
            self.tokens_used += a.usage;
            self.retries += u64::from(attempts.saturating_sub(1));
            out.push(Scored {
                score: sc,
                continuation_ids,
                continuation_text,
                exchange: Some(exchange),
            });
        }
        Ok(out)
    }
}

/// Run (or resume) an audit to a decision.
pub fn run(cfg: &AuditConfig, progress: Progress<'_>) -> Result<AuditOutcome, RunError> {
    let opts = LoadOptions {
        kernels: cfg.run.kernels,
    };
    let mut reference = LocalModel::open(&cfg.reference, opts, true)?;
    if cfg.endpoint.chat && reference.model()?.chat_template.is_none() {
        return Err(RunError::Unsupported {
            url: cfg.endpoint.url.clone(),
            what: format!(
                "--chat needs the reference's chat template to know what the endpoint's model sees, and {} has none; audit through completions instead",
                reference.identity().path
            ),
        });
    }
    let mut candidate = EndpointCandidate::connect(cfg, &mut reference)?;
    let out = crate::run::run(&cfg.run, &mut reference, &mut candidate, None, progress)?;
    let (tokens_used, retries) = candidate.usage();
    Ok(AuditOutcome {
        summary: out.summary,
        method: candidate.method.name().into(),
        reference: reference.identity().clone(),
        endpoint: candidate.info.clone(),
        tokens_used,
        retries,
        stopped: out.stopped,
    })
}
