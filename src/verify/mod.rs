//! The router: holds a provider to its receipts by re-running VRF-chosen steps.
//!
//! For each job the router sends a request with a fresh nonce and checks, in order:
//! 1. the receipt's Ed25519 signature, under the node key the router pinned;
//! 2. the weight hash against the canonical hash of the router's own copy of the claimed
//!    model, and the arithmetic (`kernels`) against the one it re-executes with;
//! 3. the nonce (the one sent, never seen before: no replay) and the timestamp window;
//! 4. the request (prompt tokens and sampling exactly as sent) and the receipt's shape;
//! 5. then it picks `audit_steps` steps by its VRF over the receipt ([`Selection`]), asks the
//!    provider to open them, checks each opened step's Merkle path against the signed root and
//!    size and its token against the output, and re-executes all of them in **one
//!    teacher-forced pass** of the claimed model over the prompt and the output: every
//!    committed log-probability must lie within the tolerance of the re-executed one, no
//!    token may be missing from a committed top list, and at temperature 0 every emitted
//!    token must be the committed first choice.
//!
//! The tolerance is calibrated on honest runs (BENCHMARKS.md): the default for each
//! arithmetic is over twice the largest honest disagreement measured across batch shapes and
//! thread counts, and below what another model gives on almost every step.

use std::collections::HashSet;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::commit::keys::{NodePublic, RouterKey};
use crate::commit::receipt::{JobRequest, OpenRequest, Opening, Receipt, OPEN_VERSION};
use crate::commit::select::Selection;
use crate::commit::step::{check, Mismatch, StepData, SCALE, TOP_K};
use crate::model::{Kernels, Model, ModelError};

pub mod http;
pub mod session;

/// Default tolerance (nats) when the provider runs quantized kernels (llama.cpp's 8-bit
/// activations, whose rounding amplifies tiny differences of shape and thread count): honest
/// re-execution landed at most 0.96 nats away in calibration (BENCHMARKS.md).
pub const TOL_QUANTIZED: f64 = 2.0;
/// Default tolerance (nats) for dense f32 kernels: honest re-execution landed within the
/// codes' rounding (0.002 nats).
pub const TOL_DENSE: f64 = 0.02;

/// The default tolerance for an arithmetic.
pub fn default_tolerance(k: Kernels) -> f64 {
    match k {
        Kernels::Quantized => TOL_QUANTIZED,
        Kernels::Dense => TOL_DENSE,
    }
}

/// Why a job is rejected.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "reason", content = "detail", rename_all = "snake_case")]
pub enum Rejection {
    /// The signature does not verify.
    #[error("the receipt's signature does not verify")]
    Signature,
    /// Signed by another node.
    #[error("the receipt is signed by node {got}, not by the pinned node {expected}")]
    Node {
        /// Pinned.
        expected: String,
        /// In the receipt.
        got: String,
    },
    /// Another model's weights.
    #[error("the receipt names weights {got}, not the claimed model's {claimed}")]
    WeightHash {
        /// The claimed model's canonical hash.
        claimed: String,
        /// The receipt's.
        got: String,
    },
    /// Another nonce.
    #[error("the receipt answers nonce {got}, not this request's {expected}")]
    Nonce {
        /// Sent.
        expected: String,
        /// In the receipt.
        got: String,
    },
    /// A nonce already used.
    #[error("nonce {nonce} was already answered (replay)")]
    Replay {
        /// The nonce.
        nonce: String,
    },
    /// Outside the time window.
    #[error("the receipt's time {timestamp_ms} ms is {off_ms} ms from now, outside the window of {window_ms} ms")]
    Stale {
        /// Receipt time.
        timestamp_ms: u64,
        /// Distance from now.
        off_ms: u64,
        /// Window.
        window_ms: u64,
    },
    /// Not the request sent.
    #[error("the receipt's request differs from the one sent ({0})")]
    Request(String),
    /// Malformed receipt or opening.
    #[error("malformed: {0}")]
    Malformed(String),
    /// The provider did not open the audited steps.
    #[error("the provider did not open the audited steps: {0}")]
    NotOpened(String),
    /// An opened step is not under the signed root.
    #[error("step {step}: its Merkle path does not lead to the signed root")]
    Path {
        /// Step.
        step: u32,
    },
    /// At temperature 0, a token that is not the committed first choice.
    #[error("step {step}: token {token} is not the committed first choice at temperature 0")]
    NotGreedy {
        /// Step.
        step: u32,
        /// Token.
        token: u32,
    },
    /// Re-execution disagrees.
    #[error("step {step}: re-execution disagrees: {mismatch} (tolerance {tolerance} nats)")]
    Diverges {
        /// Step.
        step: u32,
        /// How.
        mismatch: Mismatch,
        /// The tolerance.
        tolerance: f64,
    },
}

/// What stops a router from checking at all (not a verdict on the provider).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The claimed model.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The provider could not be reached, or refused.
    #[error("provider {endpoint}")]
    Provider {
        /// Where.
        endpoint: String,
        /// What happened.
        #[source]
        source: crate::openai::ClientError,
    },
    /// The provider answered, but not with what was asked for.
    #[error("{url}: {what}")]
    Answer {
        /// The route.
        url: String,
        /// What was wrong with the answer.
        what: String,
    },
    /// A provider on the network could not be reached, refused, or answered out of protocol.
    #[error("peer {peer}: {what}")]
    Peer {
        /// The peer id.
        peer: String,
        /// What happened.
        what: String,
    },
    /// An audit was asked of a router that holds no copy of the model.
    #[error("this router holds no copy of the claimed model, so it cannot re-execute steps; give it the model, or audit no jobs (--audit-rate 0)")]
    CannotReexecute,
    /// The receipt names an arithmetic this router does not run.
    #[error("the provider ran {got:?} kernels and this router re-executes with {have:?}; rerun with --kernels {}", if *got == Kernels::Dense { "dense" } else { "quantized" })]
    Kernels {
        /// The receipt's.
        got: Kernels,
        /// The router's.
        have: Kernels,
    },
}

/// What a provider does for a router: run a job and open its steps.
pub trait Provider {
    /// Run `request` for `nonce`: the receipt and the text shown to the client.
    fn run(&mut self, request: &JobRequest, nonce: [u8; 32]) -> Result<Receipt, VerifyError>;
    /// Open the steps a selection picks (an `Err` is a refusal: the audit fails).
    fn open(&mut self, request: &OpenRequest) -> Result<Opening, String>;
}

/// The outcome of one job.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobReport {
    /// The job id (when a receipt came back).
    pub job_id: String,
    /// Output tokens.
    pub steps: u32,
    /// Audited steps.
    pub audited: Vec<u32>,
    /// Largest disagreement (nats) over the audited steps.
    pub worst: f64,
    /// The rejection, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejection: Option<Rejection>,
    /// Seconds waiting for the provider's answer.
    pub generate_s: f64,
    /// Seconds spent checking (opening and re-execution included).
    pub audit_s: f64,
    /// The receipt.
    pub receipt: Receipt,
    /// The VRF choice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selection: Option<Selection>,
    /// The provider's opening of the chosen steps (evidence when the audit fails).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opening: Option<Opening>,
}

impl JobReport {
    /// Whether the job passed.
    pub fn accepted(&self) -> bool {
        self.rejection.is_none()
    }
}

/// A router's state for one claimed model.
pub struct Verifier {
    /// The claimed model (the router's own copy); without it, receipts are checked (signature,
    /// weight hash, nonce, replay, time, request, shape) but no step can be re-executed.
    pub model: Option<Model>,
    /// The size of the claimed model's vocabulary.
    pub vocab: usize,
    /// Its canonical weight hash.
    pub weight_hash: [u8; 32],
    /// The arithmetic the model was loaded with.
    pub kernels: Kernels,
    /// The node whose receipts are accepted.
    pub node: NodePublic,
    /// The router's VRF key.
    pub router: RouterKey,
    /// Steps audited per job.
    pub audit_steps: u32,
    /// Tolerance (nats).
    pub tolerance: f64,
    /// Largest clock distance accepted (ms).
    pub window_ms: u64,
    seen: HashSet<[u8; 32]>,
}

impl Verifier {
    /// A router for `model` (loaded with `kernels`, canonical hash `weight_hash`) and `node`.
    pub fn new(
        model: Model,
        weight_hash: [u8; 32],
        kernels: Kernels,
        node: NodePublic,
        router: RouterKey,
        audit_steps: u32,
    ) -> Self {
        Self {
            vocab: model.tokenizer.vocab_size(),
            model: Some(model),
            weight_hash,
            kernels,
            node,
            router,
            audit_steps,
            tolerance: default_tolerance(kernels),
            window_ms: 300_000,
            seen: HashSet::new(),
        }
    }

    /// A router without the model: it checks receipts against `weight_hash` and a vocabulary
    /// of `vocab` tokens, and re-executes nothing.
    pub fn without_model(
        vocab: usize,
        weight_hash: [u8; 32],
        kernels: Kernels,
        node: NodePublic,
        router: RouterKey,
    ) -> Self {
        Self {
            model: None,
            vocab,
            weight_hash,
            kernels,
            node,
            router,
            audit_steps: 0,
            tolerance: default_tolerance(kernels),
            window_ms: 300_000,
            seen: HashSet::new(),
        }
    }

    /// Whether this router can re-execute (it holds the model).
    pub fn can_reexecute(&self) -> bool {
        self.model.is_some()
    }

    /// Run one job through `p` and check it, audit included.
    pub fn job(
        &mut self,
        p: &mut dyn Provider,
        request: &JobRequest,
    ) -> Result<JobReport, VerifyError> {
        let nonce: [u8; 32] = rand::random();
        let t0 = Instant::now();
        let receipt = p.run(request, nonce)?;
        let generate_s = t0.elapsed().as_secs_f64();
        self.examine(p, receipt, nonce, request, generate_s, true)
    }

    /// Check a receipt `p` returned for `request` and `nonce` (steps 1–4), then, when `audit`
    /// is set, open and re-execute VRF-chosen steps (step 5).
    pub fn examine(
        &mut self,
        p: &mut dyn Provider,
        receipt: Receipt,
        nonce: [u8; 32],
        request: &JobRequest,
        generate_s: f64,
        audit: bool,
    ) -> Result<JobReport, VerifyError> {
        if audit && self.model.is_none() {
            return Err(VerifyError::CannotReexecute);
        }
        let t1 = Instant::now();
        let mut report = JobReport {
            job_id: receipt.job_id.to_string(),
            steps: receipt.steps,
            audited: Vec::new(),
            worst: 0.0,
            rejection: None,
            generate_s,
            audit_s: 0.0,
            receipt: receipt.clone(),
            selection: None,
            opening: None,
        };
        let outcome = self
            .check_receipt(&receipt, nonce, request, crate::transcript::unix_now_ms())
            .and_then(|()| match audit {
                true => self.audit(p, &receipt, &mut report),
                false => Ok(()),
            });
        report.audit_s = t1.elapsed().as_secs_f64();
        match outcome {
            Ok(()) => {}
            Err(Checked::Rejected(r)) => report.rejection = Some(r),
            Err(Checked::Error(e)) => return Err(e),
        }
        Ok(report)
    }

    /// Step 5: VRF-chosen steps opened by `p` and re-executed.
    fn audit(
        &self,
        p: &mut dyn Provider,
        r: &Receipt,
        report: &mut JobReport,
    ) -> Result<(), Checked> {
        let (selection, indices) =
            Selection::make(&self.router, &r.digest(), r.steps, self.audit_steps);
        report.audited = indices.clone();
        report.selection = Some(selection.clone());
        let opening = p
            .open(&OpenRequest {
                version: OPEN_VERSION,
                job_id: r.job_id,
                selection,
            })
            .map_err(|e| Checked::Rejected(Rejection::NotOpened(e)))?;
        report.opening = Some(opening.clone());
        let opened = self.check_opening(r, &indices, &opening)?;
        report.worst = self.reexecute(r, &opened)?;
        Ok(())
    }

    /// Steps 1–4: the receipt alone.
    pub fn check_receipt(
        &mut self,
        r: &Receipt,
        nonce: [u8; 32],
        request: &JobRequest,
        now_ms: u64,
    ) -> Result<(), Checked> {
        let reject = |x: Rejection| Err(Checked::Rejected(x));
        if r.node.0 != self.node.to_bytes() {
            return reject(Rejection::Node {
                expected: hex::encode(self.node.to_bytes()),
                got: r.node.to_string(),
            });
        }
        if !r.signature_valid() {
            return reject(Rejection::Signature);
        }
        if r.weight_hash.0 != self.weight_hash {
            return reject(Rejection::WeightHash {
                claimed: hex::encode(self.weight_hash),
                got: r.weight_hash.to_string(),
            });
        }
        if r.nonce.0 != nonce {
            return reject(Rejection::Nonce {
                expected: hex::encode(nonce),
                got: r.nonce.to_string(),
            });
        }
        if !self.seen.insert(nonce) {
            return reject(Rejection::Replay {
                nonce: hex::encode(nonce),
            });
        }
        let off = now_ms.abs_diff(r.timestamp_ms);
        if off > self.window_ms {
            return reject(Rejection::Stale {
                timestamp_ms: r.timestamp_ms,
                off_ms: off,
                window_ms: self.window_ms,
            });
        }
        if r.request != *request {
            let what = if r.request.prompt != request.prompt {
                "prompt tokens"
            } else {
                "sampling settings"
            };
            return reject(Rejection::Request(what.into()));
        }
        if r.kernels != self.kernels {
            return Err(Checked::Error(VerifyError::Kernels {
                got: r.kernels,
                have: self.kernels,
            }));
        }
        let vocab = self.vocab;
        let shape = if r.version != crate::commit::receipt::VERSION {
            Some(format!("receipt version {}", r.version))
        } else if r.top_k as usize != TOP_K || r.scale as f64 != SCALE {
            Some(format!("scheme top_k {} scale {}", r.top_k, r.scale))
        } else if r.steps as usize != r.output.len() {
            Some(format!(
                "{} steps for {} output tokens",
                r.steps,
                r.output.len()
            ))
        } else if r.output.len() > request.max_tokens as usize {
            Some(format!(
                "{} tokens, more than max_tokens {}",
                r.output.len(),
                request.max_tokens
            ))
        } else {
            r.output
                .iter()
                .find(|&&t| t as usize >= vocab)
                .map(|t| format!("output token {t} is outside the vocabulary"))
        };
        match shape {
            Some(s) => reject(Rejection::Malformed(s)),
            None => Ok(()),
        }
    }

    /// Step 5a: the opening answers the selection and proves against the receipt.
    pub fn check_opening(
        &self,
        r: &Receipt,
        indices: &[u32],
        o: &Opening,
    ) -> Result<Vec<(u32, StepData)>, Checked> {
        let reject = |x: Rejection| Checked::Rejected(x);
        if o.job_id != r.job_id || o.version != OPEN_VERSION {
            return Err(reject(Rejection::Malformed(
                "the opening is for another job or version".into(),
            )));
        }
        let got: Vec<u32> = o.steps.iter().map(|s| s.index).collect();
        if got != indices {
            return Err(reject(Rejection::NotOpened(format!(
                "opened steps {got:?}, the VRF chose {indices:?}"
            ))));
        }
        let vocab = self.vocab;
        let mut out = Vec::with_capacity(o.steps.len());
        for s in &o.steps {
            if !s.proves(r) {
                return Err(reject(Rejection::Path { step: s.index }));
            }
            s.data
                .well_formed(vocab)
                .map_err(|e| reject(Rejection::Malformed(format!("step {}: {e}", s.index))))?;
            if s.data.token != r.output[s.index as usize] {
                return Err(reject(Rejection::Malformed(format!(
                    "step {}: committed token {} but the output has {}",
                    s.index, s.data.token, r.output[s.index as usize]
                ))));
            }
            out.push((s.index, s.data.clone()));
        }
        Ok(out)
    }

    /// Step 5b: one teacher-forced pass over the prompt and the output up to the last audited
    /// step; the largest disagreement, or the first rejection.
    pub fn reexecute(&self, r: &Receipt, opened: &[(u32, StepData)]) -> Result<f64, Checked> {
        let Some(last) = opened.iter().map(|(i, _)| *i).max() else {
            return Ok(0.0);
        };
        let prompt = &r.request.prompt;
        if prompt.is_empty() {
            return Err(Checked::Rejected(Rejection::Malformed(
                "empty prompt".into(),
            )));
        }
        let mut seq = prompt.clone();
        seq.extend_from_slice(&r.output[..last as usize]);
        // Step i is predicted after seq[prompt.len() - 1 + i]; only those rows are projected.
        let positions: Vec<usize> = opened
            .iter()
            .map(|(i, _)| prompt.len() - 1 + *i as usize)
            .collect();
        let model = self
            .model
            .as_ref()
            .ok_or(Checked::Error(VerifyError::CannotReexecute))?;
        let rows = model
            .logprobs_at(&seq, &positions)
            .map_err(|e| Checked::Error(e.into()))?;
        let mut worst = 0.0f64;
        for ((i, d), row) in opened.iter().zip(&rows) {
            if r.request.temperature <= 0.0 && !d.is_greedy(self.tolerance) {
                return Err(Checked::Rejected(Rejection::NotGreedy {
                    step: *i,
                    token: d.token,
                }));
            }
            let (w, bad) = check(d, row, self.tolerance);
            worst = worst.max(w);
            if let Some(m) = bad {
                return Err(Checked::Rejected(Rejection::Diverges {
                    step: *i,
                    mismatch: m,
                    tolerance: self.tolerance,
                }));
            }
        }
        Ok(worst)
    }
}

/// A check's failure: a rejection of the provider, or an error of the router.
#[derive(Debug)]
pub enum Checked {
    /// The provider fails.
    Rejected(Rejection),
    /// The router cannot check.
    Error(VerifyError),
}

impl From<Rejection> for Checked {
    fn from(r: Rejection) -> Self {
        Self::Rejected(r)
    }
}
