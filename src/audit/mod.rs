//! `pot audit`: the diff's keyed challenges and sequential test, with a vendor's
//! OpenAI-compatible endpoint as the candidate (black box: nothing but its API).
//!
//! The per-challenge score uses what the endpoint gives, in this order of preference
//! (found by probing, or forced with `--method`; see `probe`):
//!
//! * **echo** (completions with `echo` and `logprobs`): the reference greedily continues the
//!   prompt by K tokens, as in `pot diff`; the endpoint is sent prompt + continuation as token
//!   ids and echoes its log-probabilities of them. Score: mean over the K positions of
//!   KL(ref ‖ endpoint) on the endpoint's reported tokens plus "everything else"
//!   ([`score::coarse_kl`]), which is at most the full KL and 0 when both agree.
//! * **echo-text**: the same, for servers that refuse token-id prompts: prompt + continuation
//!   are sent as text, and the echoed tokens must be the reference tokenizer's tokens of that
//!   text (else the endpoint does not use the reference's tokenizer, and says so). Where the
//!   text tokenizes otherwise than the reference generated it, the reference is teacher-forced
//!   on the tokens the text gives.
//! * **logprobs** (completions or chat with `logprobs`): the endpoint continues greedily with
//!   log-probabilities; the reference is teacher-forced on the endpoint's tokens. Same score.
//! * **text**: the endpoint's greedy text only; the reference is teacher-forced on its own
//!   tokenization of that text. Score: the share of positions where the endpoint's token is not
//!   the reference's most likely one (and, when the endpoint stopped on an end token, whether
//!   the reference would have ended there too), over the positions where that most likely
//!   token had not yet appeared: a penalty the server applies regardless cannot change those.
//!   Coarser, so it needs more queries. At a temperature above 0 (`--temperature`), the
//!   sampled tokens' PITs and surprises under the reference at the settings instead
//!   ([`crate::score::sampled`]).
//!
//! Every sampling parameter is sent explicitly (temperature 0, top_p 1, n 1, no penalties, a
//! fixed seed). The endpoint's raw responses go into the transcript, the API key never does.
//! Requests go out in parallel, as many at once as the endpoint sustains
//! ([`crate::openai::pace`]).

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::challenge::Challenge;
use crate::identity::Identity;
use crate::model::tokenizer::Tokenizer;
use crate::model::LoadOptions;
pub mod decoding;
pub mod pack;
mod paths;
mod probe;
pub mod trusted;
mod wire;
use wire::{Answer, Echoed, Vocab};

use crate::openai::pace::Pacer;
use crate::openai::{ClientError, Endpoint, EndpointConfig};
use crate::run::local::LocalModel;
use crate::run::{Candidate, Progress, Reference, RunError, RunSpec, Scored, Summary};
use crate::score::sampled::{self, Sampling};
use crate::score::{self, ChallengeScore, ReferenceSide, ScoreKind};
use crate::transcript::{self, EndpointInfo};

/// How challenges are put to the endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Completions with echo + logprobs: the endpoint scores the reference's continuation,
    /// sent as token ids.
    Echo,
    /// The same, sent as text (for servers that refuse token-id prompts).
    #[serde(rename = "echo-text")]
    EchoText,
    /// The endpoint's own greedy tokens with their logprobs.
    Logprobs,
    /// The endpoint's greedy text only.
    Text,
}

impl crate::Named for Method {
    const ALL: &'static [Self] = &[
        Method::Echo,
        Method::EchoText,
        Method::Logprobs,
        Method::Text,
    ];

    fn name(self) -> &'static str {
        match self {
            Method::Echo => "echo",
            Method::EchoText => "echo-text",
            Method::Logprobs => "logprobs",
            Method::Text => "text",
        }
    }

    fn about(self) -> &'static str {
        match self {
            Method::Echo => {
                "completions with echo + logprobs: the endpoint scores the reference's continuation, sent as token ids"
            }
            Method::EchoText => {
                "the same with the continuation sent as text, for servers that refuse token-id prompts"
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

    /// Whether the endpoint scores the reference's continuation (else it generates).
    fn echoes(self) -> bool {
        matches!(self, Method::Echo | Method::EchoText)
    }

    /// How its answers are scored, at `sampling`: text sampled at a temperature above 0 by
    /// the PITs of its tokens, every other method as at temperature 0 (log-probabilities
    /// compare distributions, which the decoding does not change).
    fn score_kind(self, sampling: &Sampling) -> ScoreKind {
        match self {
            Method::Echo | Method::EchoText | Method::Logprobs => ScoreKind::EndpointKl,
            Method::Text if sampling.sampled() => ScoreKind::SampledText,
            Method::Text => ScoreKind::TextMismatch,
        }
    }
}

/// How a request asks for log-probabilities: servers spell it two ways.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spelling {
    /// `logprobs: N` (OpenAI's completions).
    Count,
    /// `logprobs: true, top_logprobs: N` (OpenAI's chat; some servers want it on completions).
    Flag,
    /// No log-probabilities asked (text).
    None,
}

impl Spelling {
    /// As the transcript records it.
    pub fn wire(self) -> &'static str {
        match self {
            Spelling::Count => "logprobs: N",
            Spelling::Flag => "logprobs: true, top_logprobs: N",
            Spelling::None => "",
        }
    }
}

/// Most requests in flight at once, unless told otherwise.
pub const DEFAULT_CONCURRENCY: usize = 8;

/// What the vendor's endpoint is compared with.
#[derive(Clone, Debug)]
pub enum ReferenceSource {
    /// The claimed model's file, folder or cached id, run here.
    Model(String),
    /// A trusted endpoint serving the claimed model (`--ref-endpoint`), and the model file or
    /// folder whose tokenizer and chat template it uses (no weights are read).
    Endpoint {
        /// The trusted endpoint.
        endpoint: EndpointConfig,
        /// Where its tokenizer is read.
        tokenizer: String,
    },
    /// A reference pack (`pot reference build`), already opened and its signature checked
    /// ([`pack::open`]), and the model file or folder whose tokenizer and chat template it
    /// was built with.
    Pack {
        /// Where the pack was read.
        path: std::path::PathBuf,
        /// Its body.
        body: Box<pack::PackBody>,
        /// Where its tokenizer is read.
        tokenizer: String,
    },
}

/// Everything an audit needs.
pub struct AuditConfig {
    /// What the vendor claims to serve.
    pub reference: ReferenceSource,
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
    /// Most requests in flight at once (fewer while the endpoint is slow or failing).
    pub concurrency: usize,
    /// The decoding asked for (greedy unless the endpoint requires sampling).
    pub sampling: Sampling,
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
    /// How the endpoint decoded and what it read, this session (beside the verdict, never in
    /// it).
    #[serde(default)]
    pub decoding: decoding::DecodingCheck,
    /// What [`AuditOutcome::decoding`] found, one line each.
    #[serde(default)]
    pub findings: Vec<String>,
    /// When the reference is a trusted endpoint: what was trusted, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted: Option<String>,
    /// Tokens the trusted endpoint reported using, this session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_tokens_used: Option<u64>,
}

/// An OpenAI-compatible endpoint as a run's candidate: its answers read in the reference's
/// vocabulary, scored by the method the endpoint supports.
pub struct EndpointCandidate {
    vocab: Vocab,
    endpoint: Endpoint,
    method: Method,
    spelling: Spelling,
    top: usize,
    /// Whether requests carry `repeat_penalty` and `repetition_penalty` of 1 (servers that
    /// apply one by default read them; the probe drops them where they are refused).
    penalty_fields: bool,
    pacer: Pacer,
    k: usize,
    sampling: Sampling,
    stop_ids: Vec<u32>,
    info: EndpointInfo,
    max_total_tokens: Option<u64>,
    tokens_used: u64,
    retries: u64,
    decoding: decoding::DecodingCheck,
}

impl EndpointCandidate {
    /// Connect to the endpoint `cfg` names and find how to put challenges to it: the forced
    /// method, or the best one it supports (echo, logprobs, text), with as many alternatives
    /// per token as it accepts (up to `top_logprobs`).
    pub fn connect(cfg: &AuditConfig, reference: &mut dyn Reference) -> Result<Self, RunError> {
        Self::open(
            &cfg.endpoint,
            cfg.method,
            cfg.top_logprobs,
            (cfg.run.k, cfg.sampling),
            cfg.concurrency,
            cfg.max_total_tokens,
            reference,
        )
    }

    /// [`EndpointCandidate::connect`] from its parts: continuations of `k` tokens decoded as
    /// `sampling` asks, at most `concurrency` requests at once, stopping at
    /// `max_total_tokens`.
    fn open(
        endpoint_cfg: &EndpointConfig,
        method: Option<Method>,
        top_logprobs: usize,
        (k, sampling): (usize, Sampling),
        concurrency: usize,
        max_total_tokens: Option<u64>,
        reference: &mut dyn Reference,
    ) -> Result<Self, RunError> {
        let endpoint = Endpoint::new(endpoint_cfg.clone())?;
        let tokenizer = reference.tokenizer()?;
        let mut cand = EndpointCandidate {
            vocab: Vocab::new(tokenizer),
            endpoint,
            method: Method::Text,
            spelling: Spelling::None,
            top: 0,
            penalty_fields: true,
            pacer: Pacer::new(1, concurrency, endpoint_cfg.timeout),
            k,
            sampling,
            stop_ids: tokenizer.stop_ids.clone(),
            info: EndpointInfo {
                url: endpoint_cfg.url.clone(),
                model: endpoint_cfg.model.clone(),
                api: if endpoint_cfg.chat {
                    "chat"
                } else {
                    "completions"
                }
                .into(),
                method: String::new(),
                top_logprobs: 0,
                logprobs_field: String::new(),
                penalty_fields: false,
                probes: Vec::new(),
                models: None,
                sampling: sampling.sampled().then_some(sampling),
            },
            max_total_tokens,
            tokens_used: 0,
            retries: 0,
            decoding: Default::default(),
        };
        cand.info.models = cand.endpoint.get("/models").ok().map(|e| e.body);
        cand.info.probes = cand.detect(method, top_logprobs, reference)?;
        for p in &cand.info.probes {
            tracing::info!("not {p}");
        }
        tracing::info!("auditing by {}", cand.shape());
        (cand.info.method, cand.info.top_logprobs) = (cand.method.name().into(), cand.top);
        cand.info.logprobs_field = cand.spelling.wire().into();
        cand.info.penalty_fields = cand.penalty_fields;
        if sampling.top_k > 0 && !cand.penalty_fields {
            return Err(RunError::Unsupported {
                url: endpoint_cfg.url.clone(),
                what: "the endpoint refuses top_k (with llama.cpp's other sampler fields): audit without --top-k, at the settings it applies".into(),
            });
        }
        cand.decoding.sampling = cand.sampling.sampled().then_some(cand.sampling);
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

    /// The endpoint's answers to a group, in parallel as the pacer allows, each request
    /// retried on its own (an answer that cannot be read is asked again too): the answer, the
    /// exchange as the transcript keeps it, and the attempts it took.
    fn ask(
        &self,
        requests: &[Ask],
        tokenizer: &Tokenizer,
    ) -> Result<Vec<(Answer, Value, u32)>, RunError> {
        let route = self.route();
        let url = self.endpoint.url(route);
        let answers: Vec<Result<(Answer, Value, u32), RunError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = requests
                .iter()
                .map(|ask| {
                    let url = url.clone();
                    scope.spawn(move || -> Result<(Answer, Value, u32), RunError> {
                        // One slot for every attempt: retries never add load.
                        let _slot = self.pacer.slot();
                        let echoed = ask.echo.as_ref().map(|(ids, check_from, score_from)| Echoed {
                            ids,
                            check_from: *check_from,
                            score_from: *score_from,
                        });
                        let mut attempts = 0;
                        let mut last = String::new();
                        for _ in 0..=self.endpoint.config().retries {
                            let began = std::time::Instant::now();
                            let ex = self.endpoint.post(route, &ask.body)?;
                            self.pacer.answered(ex.attempts, began.elapsed() / ex.attempts);
                            attempts += ex.attempts;
                            match self.answer(&ex.body, echoed, tokenizer) {
                                Ok(a) => {
                                    let record = json!({"request": ask.body, "response": ex.body, "attempts": attempts});
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

    /// Echo-text: what to send for each challenge (prompt + continuation as text), the
    /// reference's tokens of it, and from where they are scored; `fresh[i]` when those tokens
    /// are not the ones the reference generated (its rows must then be computed anew).
    fn echo_text_plan(
        &self,
        reference: &mut dyn Reference,
        sides: &[ReferenceSide],
    ) -> Result<(Vec<Ask>, Vec<bool>), RunError> {
        let tokenizer = reference.tokenizer()?;
        let mut asks = Vec::with_capacity(sides.len());
        let mut fresh = Vec::with_capacity(sides.len());
        for s in sides {
            let text = format!("{}{}", s.prompt, s.continuation_text);
            let ids = tokenizer.encode(&text)?;
            let generated = s.prompt_ids.len() + s.continuation_ids.len() == ids.len()
                && ids.starts_with(&s.prompt_ids)
                && ids.ends_with(&s.continuation_ids);
            let score_from = if generated {
                s.prompt_ids.len()
            } else {
                // Where the text's tokens part from the prompt's (the boundary may merge).
                let common = ids
                    .iter()
                    .zip(&s.prompt_ids)
                    .take_while(|(a, b)| a == b)
                    .count();
                common.clamp(2.min(ids.len()), ids.len())
            };
            asks.push(Ask {
                body: self.request(&text, None),
                echo: Some((ids, 1, score_from)),
            });
            fresh.push(!generated);
        }
        Ok((asks, fresh))
    }
}

/// One request of a group, and for echo what it sent: the reference's tokens of it, from where
/// the echo must match them, and from where they are scored.
struct Ask {
    body: Value,
    echo: Option<(Vec<u32>, usize, usize)>,
}

/// A response the audit could not read: retried like a failed request, since a garbled
/// answer must never become a score.
fn unreadable(url: String, what: String) -> ClientError {
    ClientError::GaveUp {
        url,
        attempts: 1,
        last: format!("unreadable response: {what}"),
        status: None,
    }
}

impl Candidate for EndpointCandidate {
    fn describe(&self) -> transcript::Candidate {
        transcript::Candidate::Endpoint(self.info.clone())
    }

    fn is(&self, recorded: &transcript::Candidate) -> bool {
        let i = &self.info;
        matches!(recorded, transcript::Candidate::Endpoint(e) if e.url == i.url && e.model == i.model
            && e.api == i.api && e.method == i.method && e.top_logprobs == i.top_logprobs
            && e.sampling == i.sampling
            && (e.logprobs_field.is_empty() || e.logprobs_field == i.logprobs_field))
    }

    fn score_kind(&self, _reference: &Identity) -> ScoreKind {
        self.method.score_kind(&self.sampling)
    }

    /// Echo scores the reference's continuations (with its full rows, as in `pot diff`);
    /// the other methods have the endpoint generate.
    fn continuations(&self, _kind: ScoreKind) -> Option<ScoreKind> {
        self.method.echoes().then_some(ScoreKind::Kl)
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
        let (requests, fresh): (Vec<Ask>, Vec<bool>) = match (&sides, self.method) {
            (Some(s), Method::EchoText) => self.echo_text_plan(reference, s)?,
            _ => chs
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    // Echo sends prompt + the reference's continuation as ids.
                    let echo = sides.as_ref().map(|s| {
                        let mut v = s[i].prompt_ids.clone();
                        v.extend(&s[i].continuation_ids);
                        (v, s[i].prompt_ids.len(), s[i].prompt_ids.len())
                    });
                    let body = self.request(&c.prompt, echo.as_ref().map(|e| e.0.as_slice()));
                    (Ask { body, echo }, false)
                })
                .unzip(),
        };
        let answers = self.ask(&requests, reference.tokenizer()?)?;
        // The reference's rows for the endpoint's own tokens (logprobs, text), or for text
        // an echo tokenized otherwise than the reference generated it: one batched pass.
        let rows: Vec<Option<Vec<Vec<f32>>>> = if sides.is_some() {
            let need: Vec<usize> = (0..requests.len()).filter(|&i| fresh[i]).collect();
            let mut rows: Vec<Option<Vec<Vec<f32>>>> = requests.iter().map(|_| None).collect();
            if !need.is_empty() {
                let seqs: Vec<&[u32]> = need
                    .iter()
                    .map(|&i| requests[i].echo.as_ref().expect("echo").0.as_slice())
                    .collect();
                let from: Vec<usize> = need
                    .iter()
                    .map(|&i| requests[i].echo.as_ref().expect("echo").2 - 1)
                    .collect();
                for (i, r) in need.iter().zip(reference.distributions(&seqs, &from)?) {
                    rows[*i] = Some(r);
                }
            }
            rows
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
                    kind: self.method.score_kind(&self.sampling),
                    score: score::UNSCORABLE,
                    kl: Vec::new(),
                    top1_agree: Vec::new(),
                    bpb: None,
                    note: Some(note.clone()),
                    pit: Vec::new(),
                    surprise: Vec::new(),
                },
                (None, Method::Echo | Method::EchoText, _, Some(r)) => {
                    score::endpoint_kl_score(r, &a.positions)
                }
                (None, Method::Echo | Method::EchoText, Some(s), None) => {
                    score::endpoint_kl_score(s[i].reference_rows(), &a.positions)
                }
                (None, Method::Logprobs, _, Some(r)) => score::endpoint_kl_score(r, &a.positions),
                (None, Method::Text, _, Some(r)) if self.sampling.sampled() => {
                    sampled::sampled_text_score(
                        r,
                        &a.tokens,
                        a.stopped,
                        stop_ids,
                        &self.sampling,
                        &chs[i].prompt,
                    )
                }
                (None, Method::Text, _, Some(r)) => {
                    let (mut s, repeats) = score::text_mismatch_score(
                        r,
                        &a.tokens,
                        a.stopped.then_some(stop_ids.as_slice()),
                        &prompt_ids[i],
                    );
                    // The same text against the reference sampled as a server that ignores
                    // temperature 0 would: DIFFERENT needs that refuted too.
                    let fit = sampled::sampled_text_score(
                        r,
                        &a.tokens,
                        a.stopped,
                        stop_ids,
                        &sampled::SAMPLED_FIT,
                        &chs[i].prompt,
                    );
                    (s.pit, s.surprise) = (fit.pit, fit.surprise);
                    self.decoding.add_text(&s.top1_agree, repeats);
                    self.decoding.add_fit(&s.pit, &s.surprise);
                    s
                }
                _ => unreachable!("rows exist for every method that needs them"),
            };
            if !sc.score.is_finite() {
                sc.score = score::UNSCORABLE;
                sc.note = Some("the endpoint's numbers give no finite score".into());
            }
            if sc.kl.is_empty()
                && sc.top1_agree.is_empty()
                && sc.pit.is_empty()
                && sc.note.is_none()
            {
                // No evidence must never pass for agreement: an answer with no tokens counts as
                // agreeing only when it stopped at once and the reference would have too.
                // The reference ends at once: its continuation is empty (echo), or its first
                // row puts an end token first or is unknown (a trusted endpoint that stopped).
                let reference_ends = match (&sides, self.method.echoes()) {
                    (Some(s), true) => s[i].continuation_ids.is_empty(),
                    _ => rows.as_ref().and_then(|r| r.first()).is_some_and(|r| {
                        r.is_empty() || stop_ids.contains(&crate::model::argmax(r))
                    }),
                };
                if a.stopped && reference_ends {
                    sc.note = Some("the endpoint stopped at once, as the reference would".into());
                } else if reference_ends {
                    sc.score = score::UNSCORABLE;
                    sc.note = Some("the endpoint went on where the reference stops".into());
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
            match (&rows, self.method, &a.note) {
                (Some(r), Method::Logprobs, None) if self.sampling.sampled() => {
                    // The endpoint's own tokens, sampled: do they follow the reference at the
                    // settings asked? (Its log-probabilities cannot tell: servers report the
                    // model's, before temperature and truncation.)
                    let stop_listed = a.tokens.last().is_some_and(|t| stop_ids.contains(t));
                    let s = sampled::sampled_text_score(
                        r,
                        &a.tokens,
                        a.stopped && !stop_listed,
                        stop_ids,
                        &self.sampling,
                        &chs[i].prompt,
                    );
                    self.decoding.add_pits(&s.pit, &s.surprise);
                }
                (_, Method::Logprobs, None) => {
                    self.decoding
                        .add_steps(decoding::greedy_steps(&a.positions));
                }
                _ => {}
            }
            if let Some(reported) = a.prompt_tokens {
                let counted = match &requests[i].echo {
                    Some((ids, _, _)) => ids.len(),
                    None => prompt_ids[i].len(),
                };
                self.decoding.add_prompt(reported, counted);
            }
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

/// The reference an audit or a watch compares with: a model run here, or a trusted endpoint.
pub enum OpenedReference {
    /// A model file, folder or cached id.
    Local(Box<LocalModel>),
    /// A trusted endpoint (`--ref-endpoint`).
    Trusted(Box<trusted::TrustedEndpoint>),
    /// A reference pack (`--ref-pack`).
    Pack(Box<pack::PackReference>, String),
}

impl OpenedReference {
    /// Open what `cfg.reference` names, checked against what the audit needs (a chat
    /// template for `--chat`).
    pub fn open(cfg: &AuditConfig) -> Result<Self, RunError> {
        let no_template = |what: &str| {
            RunError::Unsupported {
            url: cfg.endpoint.url.clone(),
            what: format!(
                "--chat needs the reference's chat template to know what the endpoint's model sees, and {what} has none; audit through completions instead"
            ),
        }
        };
        match &cfg.reference {
            ReferenceSource::Model(spec) => {
                let opts = LoadOptions::kernels(cfg.run.kernels);
                let mut reference = LocalModel::open(spec, opts, true)?;
                if cfg.endpoint.chat && reference.model()?.chat_template.is_none() {
                    return Err(no_template(&reference.identity().path));
                }
                Ok(Self::Local(Box::new(reference)))
            }
            ReferenceSource::Endpoint {
                endpoint,
                tokenizer,
            } => {
                let mut trusted_cfg = endpoint.clone();
                trusted_cfg.chat = cfg.endpoint.chat;
                let reference = trusted::TrustedEndpoint::connect(
                    &trusted_cfg,
                    tokenizer,
                    cfg.top_logprobs,
                    cfg.run.k,
                    cfg.concurrency,
                )?;
                if cfg.endpoint.chat && !reference.has_chat_template() {
                    return Err(no_template(tokenizer));
                }
                Ok(Self::Trusted(Box::new(reference)))
            }
            ReferenceSource::Pack {
                path,
                body,
                tokenizer,
            } => {
                let body = body.as_ref().clone();
                let h = &body.header;
                let what = format!(
                    "the reference is the pack {} of {} (weights {}), {} challenges of K = {} built {} and signed by {}",
                    path.display(),
                    h.reference.path,
                    &h.reference.weight_hash[..16.min(h.reference.weight_hash.len())],
                    h.challenges,
                    h.k,
                    h.created,
                    h.signer
                );
                if h.key_commitment != cfg.run.key.commitment() || h.run_id != cfg.run.run_id {
                    return Err(RunError::Unsupported {
                        url: path.display().to_string(),
                        what: "the audit's challenge key or run id is not the pack's: pass the --key-file the pack was built with (the run id is taken from the pack)".into(),
                    });
                }
                if h.chat != cfg.endpoint.chat {
                    return Err(RunError::Unsupported {
                        url: path.display().to_string(),
                        what: format!(
                            "the pack was built {} --chat; audit the same way or build another pack",
                            if h.chat { "with" } else { "without" }
                        ),
                    });
                }
                if h.k != cfg.run.k {
                    return Err(RunError::Unsupported {
                        url: path.display().to_string(),
                        what: format!(
                            "the pack holds continuations of K = {}; audit with --k {}",
                            h.k, h.k
                        ),
                    });
                }
                let reference = pack::PackReference::new(body, path, tokenizer)?;
                Ok(Self::Pack(Box::new(reference), what))
            }
        }
    }

    /// As a run's reference.
    pub fn as_reference(&mut self) -> &mut dyn Reference {
        match self {
            Self::Local(m) => m.as_mut(),
            Self::Trusted(t) => t.as_mut(),
            Self::Pack(p, _) => p.as_mut(),
        }
    }

    /// What was trusted, when the reference is an endpoint.
    pub fn trusted(&self) -> Option<String> {
        match self {
            Self::Local(_) => None,
            Self::Trusted(t) => Some(t.trusted()),
            Self::Pack(_, what) => Some(what.clone()),
        }
    }

    /// Tokens the trusted endpoint reported using, when the reference is one.
    pub fn trusted_tokens(&self) -> Option<u64> {
        match self {
            Self::Local(_) | Self::Pack(..) => None,
            Self::Trusted(t) => Some(t.usage().0),
        }
    }
}

/// Run (or resume) an audit to a decision.
pub fn run(cfg: &AuditConfig, progress: Progress<'_>) -> Result<AuditOutcome, RunError> {
    let mut reference = OpenedReference::open(cfg)?;
    let trusted = reference.trusted();
    let mut out = audit_against(cfg, reference.as_reference(), trusted, progress)?;
    out.trusted_tokens_used = reference.trusted_tokens();
    Ok(out)
}

fn audit_against(
    cfg: &AuditConfig,
    reference: &mut dyn Reference,
    trusted: Option<String>,
    progress: Progress<'_>,
) -> Result<AuditOutcome, RunError> {
    let mut candidate = EndpointCandidate::connect(cfg, reference)?;
    if candidate.method == Method::Text && cfg.sampling.sampled() && trusted.is_some() {
        return Err(RunError::Unsupported {
            url: cfg.endpoint.url.clone(),
            what: "the endpoint answers with text only, and sampled text is tested against the reference's whole distribution, which a trusted endpoint or a pack does not give: audit with --ref, or at temperature 0".into(),
        });
    }
    let out = crate::run::run(&cfg.run, reference, &mut candidate, None, progress)?;
    let (tokens_used, retries) = candidate.usage();
    let mut findings = candidate.decoding.findings();
    if candidate.method == Method::Text && cfg.sampling.sampled() {
        findings[0] = format!(
            "decoding: not separable from the model by text alone at {}: the verdict tests the sampled text against the reference at those settings, and a decoding the client did not ask for fails it as another model does",
            cfg.sampling.describe()
        );
    }
    Ok(AuditOutcome {
        summary: out.summary,
        method: candidate.method.name().into(),
        reference: reference.identity().clone(),
        endpoint: candidate.info.clone(),
        tokens_used,
        retries,
        stopped: out.stopped,
        findings,
        decoding: candidate.decoding,
        trusted,
        trusted_tokens_used: None,
    })
}
