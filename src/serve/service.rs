//! `pot serve`'s engine without its HTTP side: what `pot node provider` answers the network's
//! jobs and openings with. The same model, batching engine, node key and step store as
//! `pot serve --node-key`, so a job that arrives over libp2p is run, committed, signed and kept
//! for audits exactly as one that arrives over HTTP.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::api::{ApiError, Settings, MAX_STOP};
use super::engine::{Event, Finish};
use super::{load, proof, start, ServeConfig, ServeError, St};
use crate::commit::keys::NodePublic;
use crate::commit::receipt::{JobRequest, OpenRequest, Opening, Receipt};
use crate::model::Kernels;

/// A loaded model with its engine worker, prover and step store. Cheap to clone; the engine
/// stops when the [`Engine`] guard is dropped.
#[derive(Clone)]
pub struct Service {
    st: St,
    /// The weight hash the node claims on the network (its model's, unless disguised).
    claimed: [u8; 32],
    /// Never answer jobs (a stalling peer, for tests).
    stall: bool,
}

/// How a provider lies, for the tests of routers that must catch it (hidden flags of
/// `pot node provider`; an honest node has none).
#[derive(Clone, Debug, Default)]
pub struct Disguise {
    /// Advertise, announce and accept jobs for these weights instead of the served model's.
    pub claim: Option<[u8; 32]>,
    /// Also sign the claimed hash into receipts (a forged identity; without it the receipts
    /// honestly name the served weights).
    pub forge: bool,
    /// Accept jobs and never answer them (a peer that stalls mid-request).
    pub stall: bool,
}

/// Owns the engine worker: dropping it cancels what the engine holds and waits for it.
pub struct Engine {
    worker: Option<std::thread::JoinHandle<()>>,
    cancel: Arc<AtomicBool>,
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::SeqCst);
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

impl Service {
    /// Load the model, the node key and the step store as `pot serve` does; both the key and
    /// the store are required (a provider that does not commit has nothing to offer a router).
    pub fn start(cfg: ServeConfig) -> Result<(Service, Engine), ServeError> {
        Self::start_disguised(cfg, Disguise::default())
    }

    /// [`Service::start`], lying as `disguise` says.
    pub fn start_disguised(
        cfg: ServeConfig,
        disguise: Disguise,
    ) -> Result<(Service, Engine), ServeError> {
        if cfg.node_key.is_none() {
            return Err(ServeError::Options(
                "a provider needs --node-key FILE (make one with `pot keygen --node --out FILE`)",
            ));
        }
        let mut loaded = load(&cfg)?;
        let prover = loaded
            .prover
            .as_mut()
            .and_then(Arc::get_mut)
            .expect("a node key makes a prover, held once");
        let claimed = disguise.claim.unwrap_or(prover.weight_hash);
        if disguise.forge {
            prover.weight_hash = claimed;
        }
        let (st, worker, cancel) = start(loaded, cfg);
        Ok((
            Service {
                st,
                claimed,
                stall: disguise.stall,
            },
            Engine {
                worker: Some(worker),
                cancel,
            },
        ))
    }

    /// The canonical weight hash of the served model (what the node claims to serve).
    pub fn weight_hash(&self) -> [u8; 32] {
        self.claimed
    }

    /// Whether the node stalls instead of answering jobs (a test's hostile peer).
    pub fn stalls(&self) -> bool {
        self.stall
    }

    /// The node's public key (the one that signs receipts).
    pub fn node(&self) -> NodePublic {
        self.prover().key.public()
    }

    /// The node's signing key, as a libp2p identity: the network sees the receipts' signer.
    pub fn libp2p_keypair(&self) -> libp2p::identity::Keypair {
        self.prover().key.libp2p_keypair()
    }

    /// A signed announcement of this node and its model.
    pub fn announcement(&self, now_ms: u64) -> crate::net::message::Announcement {
        let p = self.prover();
        crate::net::message::Announcement::new(&p.key, self.name(), self.claimed, p.kernels, now_ms)
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        &self.st.name
    }

    /// The arithmetic the model runs with.
    pub fn kernels(&self) -> Kernels {
        self.prover().kernels
    }

    fn prover(&self) -> &crate::commit::receipt::Prover {
        self.st
            .prover
            .as_deref()
            .expect("Service::start requires a node key")
    }

    /// Run `request` for `nonce`, committed: the text and the signed receipt. The request is
    /// checked as the HTTP API checks it (token ids, sampling, the server's limits).
    pub async fn job(
        &self,
        request: JobRequest,
        nonce: [u8; 32],
    ) -> Result<(String, Receipt), ApiError> {
        let st = &self.st;
        let vocab = st.model.tokenizer.vocab_size();
        if let Some(bad) = request.prompt.iter().find(|&&i| i as usize >= vocab) {
            return Err(ApiError::invalid(
                "prompt",
                format!("token id {bad} is outside the vocabulary (size {vocab})"),
            ));
        }
        if request.max_tokens as usize > st.cfg.max_tokens_limit {
            return Err(ApiError::invalid(
                "max_tokens",
                format!(
                    "max_tokens {} is above this server's limit of {}",
                    request.max_tokens, st.cfg.max_tokens_limit
                ),
            ));
        }
        if !(0.0..=2.0).contains(&request.temperature) {
            return Err(ApiError::invalid(
                "temperature",
                format!(
                    "temperature must be between 0 and 2, got {}",
                    request.temperature
                ),
            ));
        }
        if !(request.top_p > 0.0 && request.top_p <= 1.0) {
            return Err(ApiError::invalid(
                "top_p",
                format!("top_p must be in (0, 1], got {}", request.top_p),
            ));
        }
        if request.stop.len() > MAX_STOP {
            return Err(ApiError::invalid(
                "stop",
                format!(
                    "at most {MAX_STOP} stop strings, got {}",
                    request.stop.len()
                ),
            ));
        }
        let settings = Settings {
            max_tokens: Some(request.max_tokens as usize),
            temperature: request.temperature,
            top_p: request.top_p,
            seed: Some(request.seed),
            stop: request.stop.clone(),
            stream: false,
            include_usage: false,
            nonce: Some(nonce),
        };
        let (mut rx, pending) = super::submit(
            st,
            request.prompt.clone(),
            request.max_tokens as usize,
            &settings,
            None,
            false,
        )?;
        let mut text = String::new();
        while let Some(event) = rx.recv().await {
            match event {
                Event::Prompt(_) => {}
                Event::Token { text: t, .. } => text.push_str(&t),
                Event::Done {
                    finish: Finish::Cancelled,
                    ..
                } => return Err(super::reply::unavailable()),
                Event::Done { text: t, steps, .. } => {
                    text.push_str(&t);
                    let (Some(p), Some(c)) = (pending, steps) else {
                        return Err(super::reply::engine_failure(
                            "the engine did not commit to a committed job".into(),
                        ));
                    };
                    let receipt = proof::seal_receipt(st, p, c).await?;
                    return Ok((text, receipt));
                }
                Event::Failed(msg) => return Err(super::reply::engine_failure(msg)),
            }
        }
        Err(super::reply::engine_failure("the engine stopped".into()))
    }

    /// Open the steps of a stored job that the router's VRF proof picks.
    pub async fn open(&self, request: OpenRequest) -> Result<Opening, ApiError> {
        proof::open_job(&self.st, request).await
    }
}
