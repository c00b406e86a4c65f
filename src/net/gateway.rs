//! `pot node router --openai ADDR`: the user's entry point to the network.
//!
//! The router serves the OpenAI API (`/v1/models`, `/v1/completions`, `/v1/chat/completions`,
//! streaming included) for its claimed model. Each request becomes a job for a provider of the
//! model's weight hash, chosen by reputation and load ([`reputation`](super::reputation)):
//!
//! 1. every receipt is checked: the signature under the key the provider's peer id names, the
//!    weight hash, the router's fresh nonce (never seen before), the time window, the request
//!    exactly as sent, the receipt's shape;
//! 2. a job is audited — VRF-chosen steps opened and re-executed with the router's own copy of
//!    the model — always during a provider's probation (its first `probation` jobs), and
//!    otherwise with probability `audit_rate`, drawn after the receipt is signed, so the
//!    provider cannot know which answers will be checked;
//! 3. the text the client receives is rebuilt by the router from the receipt's output tokens
//!    (the provider's own text is not relayed), and only once the checks passed; a failed
//!    job is retried on another provider, and its evidence kept. A proven cheat bans the
//!    provider's peer id and, when others can re-check the evidence, is gossiped as a signed
//!    report; reports from other routers are re-checked (re-executed) before they ban.
//!
//! Streaming answers are sent once the checks have passed (a stream of one chunk of text):
//! a router that relayed tokens as they came could not take back an answer that fails.
//!
//! A router without the model checks receipts (step 1) and re-executes nothing; it says so at
//! startup, in `/v1/pot/router`, and in every answer's `x-pot-audited: no` header.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use libp2p::{Multiaddr, PeerId};
use serde::Serialize;

use super::message::{Announcement, AuditReport, Evidence, JobAnswer, JobMsg, Recheck};
use super::message::{JOB_VERSION, REPORT_VERSION};
use super::node::{self, Event, NetOptions, Node};
use super::remote::RemoteProvider;
use super::reputation::{PeerRecord, Reputation, StoreError};
use super::{Client, NetError};
use crate::commit::keys::NodePublic;
use crate::commit::receipt::{JobRequest, Receipt};
use crate::commit::wire::Bytes;
use crate::model::TextSide;
use crate::openai::{AssistantMessage, Choice, Completion, Delta, ModelCard, ModelList, Usage};
use crate::serve::api::{self, ApiError, Prompt};
use crate::verify::{Checked, JobReport, Verifier};

/// What a router needs.
pub struct GatewayConfig {
    /// Its network identity.
    pub identity: libp2p::identity::Keypair,
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Peers to join through.
    pub bootstrap: Vec<Multiaddr>,
    /// Network options.
    pub net: NetOptions,
    /// Where the OpenAI API listens (`host:port`).
    pub openai: String,
    /// The model's name for clients.
    pub name: String,
    /// The claimed model's tokenizer and chat template.
    pub text: TextSide,
    /// Share of jobs audited after probation.
    pub audit_rate: f64,
    /// Jobs of a new provider that are all audited.
    pub probation: u64,
    /// Providers tried per request.
    pub attempts: usize,
    /// The reputation store.
    pub reputation: std::path::PathBuf,
    /// Largest `max_tokens` a client may ask for (and the default).
    pub max_tokens_limit: u32,
    /// How often to look for providers.
    pub discover_every: Duration,
    /// Largest request body.
    pub max_body_bytes: usize,
}

/// Where the router listens, once it does.
#[derive(Clone, Debug, Serialize)]
pub struct Ready {
    /// Always "ready".
    pub event: &'static str,
    /// The OpenAI API's base URL.
    pub openai: String,
    /// Its peer id.
    pub peer: String,
    /// Its network addresses.
    pub addrs: Vec<String>,
    /// The claimed model's weight hash.
    pub weight_hash: String,
    /// Whether it re-executes (holds the model).
    pub reexecutes: bool,
}

/// Why a router stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The network.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The reputation store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The API's address.
    #[error("{addr}: cannot listen ({source}); pick another --openai address")]
    Bind {
        /// Address.
        addr: String,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// The runtime.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// A provider the router has heard of.
#[derive(Clone, Debug, Default)]
struct Known {
    /// Its latest checked announcement of the claimed weights.
    announcement: Option<Announcement>,
}

struct Gw {
    client: Client,
    rt: tokio::runtime::Handle,
    verifier: Mutex<Verifier>,
    reexecutes: bool,
    rep: Reputation,
    me: String,
    hash: [u8; 32],
    text: TextSide,
    name: String,
    audit_rate: f64,
    probation: u64,
    attempts: usize,
    max_tokens_limit: u32,
    max_body_bytes: usize,
    created: u64,
    known: Mutex<BTreeMap<PeerId, Known>>,
    in_flight: Mutex<HashMap<PeerId, usize>>,
    wire: Mutex<Wire>,
}

/// Payload bytes on the wire (the CBOR messages; noise adds 16 bytes per frame of up to
/// 64 KiB and yamux 12 bytes per frame on top).
#[derive(Clone, Debug, Default, Serialize)]
struct Wire {
    /// Jobs that got an answer.
    jobs: u64,
    /// Job requests sent.
    job_out: u64,
    /// Job answers received.
    job_in: u64,
    /// Audits (openings asked for).
    openings: u64,
    /// Opening requests sent.
    open_out: u64,
    /// Openings received.
    open_in: u64,
}

fn cbor_len(v: &impl Serialize) -> u64 {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).map_or(0, |_| out.len() as u64)
}

/// Run the router until SIGINT or SIGTERM; `on_ready` is told where it listens.
pub fn run(
    cfg: GatewayConfig,
    verifier: Verifier,
    on_ready: impl FnOnce(&Ready),
) -> Result<(), GatewayError> {
    let rep = Reputation::open(&cfg.reputation)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(GatewayError::Runtime)?;
    let handle = rt.handle().clone();
    rt.block_on(async move {
        let swarm = node::swarm(cfg.identity.clone(), &cfg.net)?;
        let (node, client, events) = Node::new(swarm, 64);
        let node = node.with_limits(&cfg.net);
        tokio::spawn(node.run());
        for a in &cfg.listen {
            client.listen(a.clone()).await?;
        }
        for b in &cfg.bootstrap {
            client.dial(b.clone()).await?;
        }
        let listener = tokio::net::TcpListener::bind(&cfg.openai)
            .await
            .map_err(|source| GatewayError::Bind {
                addr: cfg.openai.clone(),
                source,
            })?;
        let local = listener.local_addr().map_err(GatewayError::Runtime)?;
        let reexecutes = verifier.can_reexecute();
        let gw = Arc::new(Gw {
            client: client.clone(),
            rt: handle,
            hash: verifier.weight_hash,
            verifier: Mutex::new(verifier),
            reexecutes,
            rep,
            me: client.peer_id().to_string(),
            text: cfg.text,
            name: cfg.name,
            audit_rate: if reexecutes { cfg.audit_rate } else { 0.0 },
            probation: if reexecutes { cfg.probation } else { 0 },
            attempts: cfg.attempts.max(1),
            max_tokens_limit: cfg.max_tokens_limit,
            max_body_bytes: cfg.max_body_bytes,
            created: crate::transcript::unix_now(),
            known: Mutex::new(BTreeMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            wire: Mutex::new(Wire::default()),
        });
        if !reexecutes {
            eprintln!(
                "pot node: this router holds no copy of the model: it checks receipts (signature, weights, nonce, replay, request) but cannot re-execute steps, so a provider that forges the weight hash is not caught here"
            );
        }
        let listening = client.listening().await?;
        on_ready(&Ready {
            event: "ready",
            openai: format!("http://{local}"),
            peer: client.peer_id().to_string(),
            addrs: listening.iter().map(|a| a.to_string()).collect(),
            weight_hash: hex::encode(gw.hash),
            reexecutes,
        });
        tokio::spawn(discover(gw.clone(), cfg.discover_every));
        tokio::spawn(listen_network(gw.clone(), events));
        let app = routes(gw.clone());
        let serving = axum::serve(listener, app)
            .with_graceful_shutdown(crate::serve::wait_for_signal());
        serving.await.map_err(GatewayError::Runtime)?;
        eprintln!("pot node: router stopping");
        Ok(())
    })
}

/// Look for providers now and then: Kademlia provider records of the weight hash (fast at
/// first, every `every` once some are known).
async fn discover(gw: Arc<Gw>, every: Duration) {
    loop {
        match gw.client.providers(gw.hash).await {
            Ok(found) => {
                let mut known = gw.known.lock().expect("not poisoned");
                for p in found {
                    if p != gw.client.peer_id() {
                        known.entry(p).or_default();
                    }
                }
            }
            Err(e) => tracing::debug!("provider query: {e}"),
        }
        let empty = gw.known.lock().expect("not poisoned").is_empty();
        tokio::time::sleep(if empty {
            Duration::from_millis(500)
        } else {
            every
        })
        .await;
    }
}

/// What the network brings: announcements of the claimed weights add providers; audit
/// reports are re-checked and, when they hold, ban; refusals are faults of their sender.
async fn listen_network(gw: Arc<Gw>, mut events: tokio::sync::mpsc::Receiver<Event>) {
    while let Some(e) = events.recv().await {
        match e {
            Event::Announced { peer, announcement } => {
                if announcement.weight_hash.0 == gw.hash {
                    gw.known
                        .lock()
                        .expect("not poisoned")
                        .entry(peer)
                        .or_default()
                        .announcement = Some(announcement);
                }
            }
            Event::Reported { peer, report } => {
                let gw = gw.clone();
                tokio::task::spawn_blocking(move || gw.on_report(peer, *report));
            }
            Event::Refused { peer, reason } => {
                let _ = gw.rep.update(&peer.to_string(), |r| {
                    r.faults += 1;
                    None
                });
                tracing::warn!(%peer, "refused: {reason}");
            }
            Event::Job { channel, .. } => {
                let _ = gw
                    .client
                    .answer_job(
                        channel,
                        JobAnswer::Refused {
                            reason: "this node is a router; it runs no jobs".into(),
                        },
                    )
                    .await;
            }
            Event::Open { channel, .. } => {
                let _ = gw
                    .client
                    .answer_open(
                        channel,
                        super::message::OpenAnswer::Refused {
                            reason: "this node is a router; it keeps no jobs".into(),
                        },
                    )
                    .await;
            }
        }
    }
}

/// An answer that passed its checks.
struct Served {
    text: String,
    finish: &'static str,
    prompt_tokens: usize,
    receipt: Receipt,
    provider: PeerId,
    audited: bool,
    attempts: usize,
}

/// One attempt's outcome: an answer that passed, or why not.
type Attempt = Result<Served, String>;

impl Gw {
    /// The provider to try next: not banned and not tried for this request. A request's first
    /// attempt goes to a provider never sent a job before, if any (each newcomer is tried, and
    /// audited, at once); otherwise, and on retries, to the best score per job in flight.
    fn choose(&self, tried: &HashSet<PeerId>) -> Option<(PeerId, PeerRecord)> {
        let first = tried.is_empty();
        let candidates: Vec<PeerId> = self
            .known
            .lock()
            .expect("not poisoned")
            .keys()
            .filter(|p| !tried.contains(p))
            .copied()
            .collect();
        let load = self.in_flight.lock().expect("not poisoned").clone();
        let weight = |p: &PeerId, r: &PeerRecord| {
            let fresh = if first && r.jobs == 0 { 1.0 } else { 0.0 };
            fresh + r.score() / (1.0 + *load.get(p).unwrap_or(&0) as f64)
        };
        candidates
            .into_iter()
            .filter_map(|p| {
                let rec = self.rep.get(&p.to_string()).ok()?;
                rec.ban.is_none().then_some((p, rec))
            })
            .max_by(|(a, ra), (b, rb)| weight(a, ra).total_cmp(&weight(b, rb)))
    }

    fn load(&self, peer: PeerId, delta: isize) {
        let mut m = self.in_flight.lock().expect("not poisoned");
        let n = m.entry(peer).or_default();
        *n = n.saturating_add_signed(delta);
    }

    /// Run `request` on providers until one answer passes, trying at most `attempts`.
    async fn serve(self: &Arc<Self>, request: JobRequest) -> Result<Served, ApiError> {
        let mut tried = HashSet::new();
        let mut why = Vec::new();
        for attempt in 1..=self.attempts {
            let Some((peer, rec)) = self.choose(&tried) else {
                break;
            };
            tried.insert(peer);
            self.load(peer, 1);
            let outcome = self.attempt(peer, rec, &request).await;
            self.load(peer, -1);
            match outcome {
                Ok(mut s) => {
                    s.attempts = attempt;
                    return Ok(s);
                }
                Err(reason) => {
                    tracing::warn!(%peer, "attempt {attempt}: {reason}");
                    why.push(format!("{peer}: {reason}"));
                }
            }
        }
        Err(if tried.is_empty() {
            ApiError {
                status: 503,
                kind: "server_error",
                code: Some("no_provider"),
                param: None,
                message: format!(
                    "no provider of weights {} is available (none found yet, or all banned); retry later",
                    hex::encode(self.hash)
                ),
            }
        } else {
            ApiError {
                status: 502,
                kind: "server_error",
                code: Some("no_answer_passed"),
                param: None,
                message: format!(
                    "no provider gave an answer that passed its checks ({} tried): {}",
                    tried.len(),
                    why.join("; ")
                ),
            }
        })
    }

    async fn attempt(
        self: &Arc<Self>,
        peer: PeerId,
        rec: PeerRecord,
        request: &JobRequest,
    ) -> Attempt {
        let peer_s = peer.to_string();
        let fault = |reason: String| {
            let _ = self.rep.update(&peer_s, |r| {
                r.jobs += 1;
                r.faults += 1;
                None
            });
            Err(reason)
        };
        let Some(node) = NodePublic::of_peer(&peer) else {
            return fault(
                "its peer id names no Ed25519 key, so no receipt of it can verify".into(),
            );
        };
        let nonce: [u8; 32] = rand::random();
        let t0 = Instant::now();
        let msg = JobMsg {
            version: JOB_VERSION,
            weight_hash: Bytes(self.hash),
            request: request.clone(),
            nonce: Bytes(nonce),
        };
        let out = cbor_len(&msg);
        let answer = self.client.job(peer, msg).await;
        let generate_s = t0.elapsed().as_secs_f64();
        if let Ok(a) = &answer {
            let mut w = self.wire.lock().expect("not poisoned");
            w.jobs += 1;
            w.job_out += out;
            w.job_in += cbor_len(a);
        }
        let receipt = match answer {
            Ok(JobAnswer::Done { receipt, .. }) => *receipt,
            Ok(JobAnswer::Refused { reason }) => return fault(format!("refused: {reason}")),
            Err(e) => return fault(e.to_string()),
        };
        // Audited during probation, else with probability audit_rate, drawn only now that the
        // receipt is signed.
        let audit = self.reexecutes
            && (rec.jobs < self.probation || rand::random::<f64>() < self.audit_rate);
        let gw = self.clone();
        let request2 = request.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let mut v = gw.verifier.lock().expect("not poisoned");
            v.node = node;
            let mut provider = RemoteProvider::new(gw.client.clone(), peer, gw.hash, gw.rt.clone());
            v.examine(&mut provider, receipt, nonce, &request2, generate_s, audit)
        })
        .await;
        let report = match checked {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return fault(crate::with_causes(&e)),
            Err(e) => return fault(format!("the check stopped: {e}")),
        };
        if let Some(sel) = &report.selection {
            let mut w = self.wire.lock().expect("not poisoned");
            w.openings += 1;
            w.open_out += cbor_len(&crate::commit::receipt::OpenRequest {
                version: crate::commit::receipt::OPEN_VERSION,
                job_id: report.receipt.job_id,
                selection: sel.clone(),
            });
            if let Some(o) = &report.opening {
                w.open_in += cbor_len(&super::message::OpenAnswer::Opened(o.clone()));
            }
        }
        match report.rejection.clone() {
            None => {
                let _ = self.rep.update(&peer_s, |r| {
                    r.jobs += 1;
                    r.passed += 1;
                    if audit {
                        r.audits_passed += 1;
                    }
                    None
                });
                let (text, stopped) = crate::model::generate::text_of_output(
                    &self.text.tokenizer,
                    &report.receipt.output,
                    &request.stop,
                );
                Ok(Served {
                    text,
                    finish: if stopped { "stop" } else { "length" },
                    prompt_tokens: request.prompt.len(),
                    receipt: report.receipt,
                    provider: peer,
                    audited: audit,
                    attempts: 0,
                })
            }
            Some(rejection) => {
                let reason = rejection.to_string();
                self.convict(peer, report);
                Err(format!("rejected: {reason}"))
            }
        }
    }

    /// Keep a rejected job's evidence, ban on proof, and tell other routers when they can
    /// re-check it.
    fn convict(&self, peer: PeerId, report: JobReport) {
        let announcement = self
            .known
            .lock()
            .expect("not poisoned")
            .get(&peer)
            .and_then(|k| k.announcement.clone());
        let evidence = Evidence {
            claimed: Bytes(self.hash),
            rejection: report.rejection.expect("a rejected job"),
            receipt: report.receipt,
            selection: report.selection,
            opening: report.opening,
            announcement,
        };
        let now = crate::transcript::unix_now_ms();
        let shareable = Reputation::shareable(&evidence);
        let gossip = AuditReport {
            version: REPORT_VERSION,
            timestamp_ms: now,
            evidence: evidence.clone(),
        };
        match self
            .rep
            .failed(&peer.to_string(), &self.me, evidence, true, now)
        {
            Ok(rec) => {
                if let Some(b) = &rec.ban {
                    eprintln!("pot node: banned provider {peer}: {}", b.reason);
                }
                if rec.ban.is_some() && shareable {
                    let client = self.client.clone();
                    self.rt.spawn(async move {
                        if let Err(e) = client.report(gossip).await {
                            tracing::info!("audit report not gossiped: {e}");
                        }
                    });
                }
            }
            Err(e) => tracing::error!("cannot record a rejection of {peer}: {e}"),
        }
    }

    /// Another router's report: re-checked here (signatures, or re-execution with this
    /// router's model) before it bans; an unfounded one is a fault of its publisher.
    fn on_report(&self, from: PeerId, report: AuditReport) {
        let Ok(node) = report.provider() else { return };
        let accused = node.peer_id();
        let ev = &report.evidence;
        if ev.claimed.0 != self.hash {
            return; // about another model: not this router's business.
        }
        if self
            .rep
            .get(&accused.to_string())
            .is_ok_and(|r| r.ban.is_some())
        {
            return; // already banned, on evidence of its own.
        }
        let verdict: Result<(), String> = match ev.recheck() {
            Recheck::Local => Err("not re-checkable".into()),
            Recheck::Signatures => ev.check_switch(),
            Recheck::Reexecution if !self.reexecutes => {
                tracing::info!(%accused, "a report of failed re-execution, which this router cannot re-check");
                return;
            }
            Recheck::Reexecution => self.reexecute_evidence(ev),
        };
        match verdict {
            Ok(()) => {
                let now = crate::transcript::unix_now_ms();
                match self
                    .rep
                    .failed(&accused.to_string(), &from.to_string(), ev.clone(), false, now)
                {
                    Ok(rec) if rec.ban.is_some() => eprintln!(
                        "pot node: banned provider {accused} on router {from}'s report, re-checked here"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::error!("cannot record a report on {accused}: {e}"),
                }
            }
            Err(why) => {
                tracing::warn!(%from, %accused, "an unfounded audit report: {why}");
                let _ = self.rep.update(&from.to_string(), |r| {
                    r.faults += 1;
                    None
                });
            }
        }
    }

    /// Re-execute a report's opened steps: Ok when they fail here too.
    fn reexecute_evidence(&self, ev: &Evidence) -> Result<(), String> {
        let (Some(sel), Some(opening)) = (&ev.selection, &ev.opening) else {
            return Err("no opening to re-execute".into());
        };
        let indices = sel
            .verify(&ev.receipt.digest(), ev.receipt.steps)
            .map_err(|e| e.to_string())?;
        let v = self.verifier.lock().expect("not poisoned");
        if ev.receipt.kernels != v.kernels {
            return Err(format!(
                "the receipt ran {:?} kernels and this router re-executes with {:?}",
                ev.receipt.kernels, v.kernels
            ));
        }
        let opened = match v.check_opening(&ev.receipt, &indices, opening) {
            Ok(o) => o,
            Err(Checked::Rejected(_)) => return Ok(()),
            Err(Checked::Error(e)) => return Err(e.to_string()),
        };
        match v.reexecute(&ev.receipt, &opened) {
            Err(Checked::Rejected(_)) => Ok(()),
            Err(Checked::Error(e)) => Err(e.to_string()),
            Ok(worst) => Err(format!(
                "the opened steps re-execute within tolerance here (worst {worst:.3} nats)"
            )),
        }
    }
}

type St = Arc<Gw>;

fn routes(gw: St) -> Router {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/pot/router", get(status))
        .route("/v1/pot/router/evidence/{peer}", get(evidence))
        .route("/health", get(|| async { Json(serde_json::json!({"status": "ok"})) }))
        .fallback(|| async {
            ApiError {
                status: 404,
                kind: "invalid_request_error",
                code: Some("unknown_url"),
                param: None,
                message: "unknown route; the router serves /v1/models, /v1/completions, /v1/chat/completions, /v1/pot/router".into(),
            }
            .into_response()
        })
        .with_state(gw)
}

async fn models(State(gw): State<St>) -> Response {
    Json(ModelList {
        object: "list".into(),
        data: vec![ModelCard {
            id: gw.name.clone(),
            object: "model".into(),
            created: gw.created,
            owned_by: "pot-network".into(),
            pot: None,
        }],
    })
    .into_response()
}

/// The router's view: what it checks, and every provider's record.
async fn status(State(gw): State<St>) -> Response {
    let known: Vec<String> = gw
        .known
        .lock()
        .expect("not poisoned")
        .keys()
        .map(|p| p.to_string())
        .collect();
    match gw.rep.all() {
        Ok(records) => Json(serde_json::json!({
            "peer": gw.me,
            "weight_hash": hex::encode(gw.hash),
            "reexecutes": gw.reexecutes,
            "audit_rate": gw.audit_rate,
            "probation": gw.probation,
            "known": known,
            "wire": gw.wire.lock().expect("not poisoned").clone(),
            "providers": records,
        }))
        .into_response(),
        Err(e) => ApiError::internal(e.to_string()).into_response(),
    }
}

/// The evidence kept against one provider (receipts, VRF choices, openings, verdicts).
async fn evidence(
    State(gw): State<St>,
    axum::extract::Path(peer): axum::extract::Path<String>,
) -> Response {
    match gw.rep.evidence(&peer) {
        Ok(kept) => Json(serde_json::json!({ "peer": peer, "evidence": kept })).into_response(),
        Err(e) => ApiError::internal(e.to_string()).into_response(),
    }
}

async fn body(gw: &Gw, req: Request) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(req.into_body(), gw.max_body_bytes)
        .await
        .map_err(|_| ApiError {
            status: 413,
            kind: "invalid_request_error",
            code: Some("request_too_large"),
            param: None,
            message: format!(
                "the request body is larger than this router's limit of {} bytes",
                gw.max_body_bytes
            ),
        })
}

fn no_logprobs(lp: Option<usize>, param: &str) -> Result<(), ApiError> {
    match lp {
        None => Ok(()),
        Some(_) => Err(ApiError::invalid(
            param,
            "the router returns text rebuilt from checked receipts; log-probabilities are not relayed (leave logprobs out)",
        )),
    }
}

fn job_request(gw: &Gw, prompt: Vec<u32>, s: &api::Settings) -> Result<JobRequest, ApiError> {
    if prompt.is_empty() {
        return Err(ApiError::invalid("prompt", "the prompt is empty"));
    }
    let vocab = gw.text.tokenizer.vocab_size();
    if let Some(bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
        return Err(ApiError::invalid(
            "prompt",
            format!("token id {bad} is outside the vocabulary (size {vocab})"),
        ));
    }
    Ok(JobRequest {
        prompt,
        max_tokens: s.max_tokens.map_or(gw.max_tokens_limit, |m| m as u32),
        temperature: s.temperature,
        top_p: s.top_p,
        seed: s.seed.unwrap_or_else(rand::random),
        stop: s.stop.clone(),
    })
}

async fn completions(State(gw): State<St>, req: Request) -> Response {
    let prepared = async {
        let bytes = body(&gw, req).await?;
        let r: api::CompletionRequest = api::parse(&bytes)?;
        ApiError::check_model(r.common.model.as_deref(), &gw.name, "router")?;
        if r.echo {
            return Err(ApiError::invalid(
                "echo",
                "echo is not supported by the router",
            ));
        }
        let s = r.common.settings(gw.max_tokens_limit as usize)?;
        let (prompt, lp) = r.prompt_and_logprobs()?;
        no_logprobs(lp, "logprobs")?;
        let ids = match prompt {
            Prompt::Ids(ids) => ids,
            Prompt::Text(t) => gw
                .text
                .tokenizer
                .encode(&t)
                .map_err(|e| ApiError::invalid("prompt", e.to_string()))?,
        };
        Ok((job_request(&gw, ids, &s)?, s))
    }
    .await;
    answer(gw, prepared, false).await
}

async fn chat(State(gw): State<St>, req: Request) -> Response {
    let prepared = async {
        let bytes = body(&gw, req).await?;
        let r: api::ChatRequest = api::parse(&bytes)?;
        ApiError::check_model(r.common.model.as_deref(), &gw.name, "router")?;
        let s = r.common.settings(gw.max_tokens_limit as usize)?;
        let (messages, lp) = r.messages_and_logprobs()?;
        no_logprobs(lp, "logprobs")?;
        let ids = gw
            .text
            .chat_prompt(&messages)
            .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
        Ok((job_request(&gw, ids, &s)?, s))
    }
    .await;
    answer(gw, prepared, true).await
}

async fn answer(
    gw: St,
    prepared: Result<(JobRequest, api::Settings), ApiError>,
    chat: bool,
) -> Response {
    let (request, settings) = match prepared {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let served = match gw.serve(request).await {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let id = format!(
        "{}-{:024x}",
        if chat { "chatcmpl" } else { "cmpl" },
        rand::random::<u128>() >> 32
    );
    let envelope = |object: &str, choices: Vec<Choice>| Completion {
        id: id.clone(),
        object: object.into(),
        created: crate::transcript::unix_now(),
        model: gw.name.clone(),
        system_fingerprint: Some(format!("pot-network-{}", &hex::encode(gw.hash)[..16])),
        choices,
        usage: None,
        pot: None,
    };
    let usage = Usage::new(served.prompt_tokens, served.receipt.output.len());
    let receipt = serde_json::to_value(&served.receipt).ok();
    let mut response = if settings.stream {
        let object = if chat {
            "chat.completion.chunk"
        } else {
            "text_completion"
        };
        let mut events = Vec::new();
        let text_choice = |text: &str, finish: Option<&str>, first: bool| {
            let mut c = Choice {
                finish_reason: finish.map(str::to_string),
                ..Default::default()
            };
            if chat {
                c.delta = Some(Delta {
                    role: first.then(|| "assistant".to_string()),
                    content: Some(text.to_string()),
                });
            } else {
                c.text = Some(text.to_string());
            }
            c
        };
        if chat {
            events.push(envelope(object, vec![text_choice("", None, true)]));
        }
        events.push(envelope(
            object,
            vec![text_choice(&served.text, None, false)],
        ));
        events.push(envelope(
            object,
            vec![text_choice("", Some(served.finish), false)],
        ));
        let mut tail = envelope(object, vec![]);
        tail.pot = receipt;
        events.push(tail);
        if settings.include_usage {
            let mut u = envelope(object, vec![]);
            u.usage = Some(usage);
            events.push(u);
        }
        let mut sse: Vec<Result<Sse, Infallible>> = events
            .iter()
            .map(|e| {
                Ok(Sse::default().data(serde_json::to_string(e).expect("wire types serialize")))
            })
            .collect();
        sse.push(Ok(Sse::default().data("[DONE]")));
        axum::response::sse::Sse::new(tokio_stream::iter(sse))
            .keep_alive(KeepAlive::default())
            .into_response()
    } else {
        let mut c = Choice {
            finish_reason: Some(served.finish.into()),
            ..Default::default()
        };
        if chat {
            c.message = Some(AssistantMessage {
                role: "assistant".into(),
                content: Some(served.text.clone()),
            });
        } else {
            c.text = Some(served.text.clone());
        }
        let mut body = envelope(
            if chat {
                "chat.completion"
            } else {
                "text_completion"
            },
            vec![c],
        );
        body.usage = Some(usage);
        body.pot = receipt;
        Json(body).into_response()
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&served.provider.to_string()) {
        h.insert("x-pot-provider", v);
    }
    h.insert(
        "x-pot-audited",
        HeaderValue::from_static(if served.audited { "yes" } else { "no" }),
    );
    if let Ok(v) = HeaderValue::from_str(&served.attempts.to_string()) {
        h.insert("x-pot-attempts", v);
    }
    response
}
