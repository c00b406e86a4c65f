//! A trusted endpoint as the reference (`pot audit --ref-endpoint`): nobody audits a 70B
//! endpoint with a 70B model on a laptop, so the model maker's own API (or any endpoint the
//! auditor trusts) stands in for the weights, through its log-probabilities.
//!
//! The trusted endpoint continues each challenge greedily, reporting its top alternatives at
//! every position (`pot audit`'s logprobs method, probed the same way). Its rows know those
//! tokens only: every other entry is NaN, and [`crate::score::coarse_kl`] then compares the
//! vendor with it on {tokens both reported, everything else}, still at most the full KL and 0
//! when both serve the same distributions.
//!
//! It cannot be teacher-forced on tokens of the vendor's choosing. Where the vendor generates
//! (the logprobs and text methods), a position is scored only while the vendor's tokens so far
//! are the trusted endpoint's own, and at the first one where they part; past it the
//! reference's row is unknown (empty) and that position is not scored. Under the same model
//! both greedy paths are one and every position counts; another model parts early, and the
//! position where it parts carries the difference.
//!
//! The prompts are tokenized, and chat prompts rendered, with the tokenizer and chat template
//! of a model file or folder the auditor holds (`--ref-tokenizer`; no weights are read).

use sha2::{Digest, Sha256};

use super::paths::{prompt_ids, KnownPaths, Path, SparseRow};
use super::{EndpointCandidate, Method};
use crate::identity::Identity;
use crate::model::tokenizer::Tokenizer;
use crate::model::TextSide;
use crate::openai::EndpointConfig;
use crate::run::{Reference, RunError};
use crate::score::{ReferenceSide, ScoreKind};

/// Domain tag of a trusted endpoint's identity hash.
const TRUSTED_TAG: &str = "pot/trusted-endpoint/v1";

/// A model's text side standing in for the reference while the trusted endpoint is probed
/// (the probe reads answers through the tokenizer only).
struct TextOnly<'a>(&'a TextSide, &'a Identity);

impl Reference for TextOnly<'_> {
    fn identity(&self) -> &Identity {
        self.1
    }

    fn tokenizer(&mut self) -> Result<&Tokenizer, RunError> {
        Ok(&self.0.tokenizer)
    }

    fn prompt_ids(&mut self, prompt: &str, chat: bool) -> Result<Vec<u32>, RunError> {
        prompt_ids(self.0, prompt, chat)
    }

    fn continue_group(
        &mut self,
        _prompts: &[String],
        _k: usize,
        _kind: ScoreKind,
    ) -> Result<Vec<ReferenceSide>, RunError> {
        unreachable!("the logprobs probe never asks the reference for continuations")
    }

    fn distributions(
        &mut self,
        _seqs: &[&[u32]],
        _from: &[usize],
    ) -> Result<Vec<Vec<Vec<f32>>>, RunError> {
        unreachable!("the logprobs probe never asks the reference for distributions")
    }
}

/// A trusted endpoint as a run's reference.
pub struct TrustedEndpoint {
    text: TextSide,
    identity: Identity,
    endpoint: EndpointCandidate,
    /// The trusted endpoint's greedy paths.
    paths: KnownPaths,
}

impl TrustedEndpoint {
    /// Connect to the trusted endpoint `cfg` names, reading prompts with the tokenizer and chat
    /// template of `tokenizer` (a model file or folder; its weights are not read), and find how
    /// it reports log-probabilities (up to `top` alternatives). Continuations are `k` tokens.
    pub fn connect(
        cfg: &EndpointConfig,
        tokenizer: &str,
        top: usize,
        k: usize,
        concurrency: usize,
    ) -> Result<Self, RunError> {
        let text = TextSide::load(tokenizer)?;
        let tokenizer_hash = text.tokenizer.hash.clone();
        let hash = hex::encode(Sha256::digest(
            format!(
                "{TRUSTED_TAG}\n{}\n{}\n{tokenizer_hash}",
                cfg.url, cfg.model
            )
            .as_bytes(),
        ));
        let identity = Identity {
            path: format!("{} model {:?}", cfg.url, cfg.model),
            arch: "endpoint".into(),
            file_bytes: 0,
            parameters: 0,
            vocab_size: text.tokenizer.vocab_size(),
            file_sha256: hash.clone(),
            weight_hash: hash,
            config_hash: String::new(),
            tokenizer_hash,
            vocab_hash: text.tokenizer.vocab_hash(),
            tlsh: None,
        };
        let endpoint = EndpointCandidate::open(
            cfg,
            Some(Method::Logprobs),
            top,
            (k, crate::score::sampled::Sampling::GREEDY),
            concurrency,
            None,
            &mut TextOnly(&text, &identity),
        )
        .map_err(|e| match e {
            RunError::Unsupported { url, what } => RunError::Unsupported {
                url,
                what: format!("as the trusted reference: {what}"),
            },
            e => e,
        })?;
        Ok(Self {
            paths: KnownPaths::new(text.tokenizer.vocab_size()),
            text,
            identity,
            endpoint,
        })
    }

    /// What the verdict trusted, in words.
    pub fn trusted(&self) -> String {
        let i = self.endpoint.info();
        format!(
            "the reference is the endpoint {} serving {:?} ({} {}), taken as the claimed model without check; prompts read with the tokenizer of {} (tokenizer {})",
            i.url,
            i.model,
            i.api,
            self.endpoint.shape(),
            self.text.spec,
            &self.text.tokenizer.hash[..16]
        )
    }

    /// Tokens the trusted endpoint reported using, and its retries, so far.
    pub fn usage(&self) -> (u64, u64) {
        self.endpoint.usage()
    }

    /// The chat template the prompts are rendered with, if the tokenizer's model has one.
    pub fn has_chat_template(&self) -> bool {
        self.text.chat_template.is_some()
    }

    /// Have the trusted endpoint continue every prompt of `prompts` it has not continued yet.
    fn walk(&mut self, prompts: &[(Vec<u32>, String)]) -> Result<(), RunError> {
        let todo: Vec<&(Vec<u32>, String)> = prompts
            .iter()
            .filter(|(ids, _)| !self.paths.has(ids))
            .collect();
        if todo.is_empty() {
            return Ok(());
        }
        let asks: Vec<super::Ask> = todo
            .iter()
            .map(|(_, p)| super::Ask {
                body: self.endpoint.request(p, None),
                echo: None,
            })
            .collect();
        let answers = self.endpoint.ask(&asks, &self.text.tokenizer)?;
        let url = self.endpoint.info().url.clone();
        for ((ids, _), (a, _, attempts)) in todo.into_iter().zip(answers) {
            self.endpoint.tokens_used += a.usage;
            self.endpoint.retries += u64::from(attempts.saturating_sub(1));
            if let Some(note) = a.note {
                return Err(RunError::Unsupported {
                    url,
                    what: format!(
                        "as the trusted reference: {note}; pass the tokenizer of the model it serves with --ref-tokenizer"
                    ),
                });
            }
            let rows = a
                .positions
                .iter()
                .map(|p| {
                    let mut row: SparseRow = p
                        .top
                        .iter()
                        .filter_map(|&(t, lp)| Some((t?, lp as f32)))
                        .collect();
                    if let Some(t) = p.token {
                        if !row.iter().any(|&(id, _)| id == t) {
                            row.push((t, p.logprob as f32));
                        }
                    }
                    row
                })
                .collect();
            self.paths.insert(
                ids.clone(),
                Path {
                    ids: a.tokens,
                    text: a.text,
                    rows,
                },
            );
        }
        Ok(())
    }
}

impl Reference for TrustedEndpoint {
    fn identity(&self) -> &Identity {
        &self.identity
    }

    fn tokenizer(&mut self) -> Result<&Tokenizer, RunError> {
        Ok(&self.text.tokenizer)
    }

    fn prompt_ids(&mut self, prompt: &str, chat: bool) -> Result<Vec<u32>, RunError> {
        let ids = prompt_ids(&self.text, prompt, chat)?;
        self.paths.prompt(&ids, prompt);
        Ok(ids)
    }

    /// The trusted endpoint's greedy continuations (its own length `k`, set at connect).
    fn continue_group(
        &mut self,
        prompts: &[String],
        _k: usize,
        _kind: ScoreKind,
    ) -> Result<Vec<ReferenceSide>, RunError> {
        let chat = self.endpoint.chat();
        let keyed = prompts
            .iter()
            .map(|p| Ok((self.prompt_ids(p, chat)?, p.clone())))
            .collect::<Result<Vec<_>, RunError>>()?;
        self.walk(&keyed)?;
        Ok(keyed
            .into_iter()
            .map(|(ids, prompt)| self.paths.side(&prompt, ids).expect("walked"))
            .collect())
    }

    /// Rows along the trusted endpoint's own path only (see the module's notes): a position
    /// off it, or past what it generated, has an empty row.
    fn distributions(
        &mut self,
        seqs: &[&[u32]],
        from: &[usize],
    ) -> Result<Vec<Vec<Vec<f32>>>, RunError> {
        let keyed = self
            .paths
            .prompts_of(seqs, from)
            .ok_or_else(|| RunError::Unsupported {
                url: self.endpoint.info().url.clone(),
                what:
                    "a trusted endpoint gives rows only after the prompts of this run's challenges"
                        .into(),
            })?;
        self.walk(&keyed)?;
        Ok(self.paths.rows(seqs, from, &keyed))
    }
}
