//! `pot serve`: an OpenAI-compatible server for a local model.
//!
//! Routes: `GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/completions`,
//! `POST /v1/chat/completions` (both with `stream: true` as server-sent events), `GET /health`.
//! The HTTP side (tokio + axum) checks each request ([`api`]), turns it into an engine job and
//! relays the engine's events; the model runs on one thread of its own ([`engine`]), which
//! batches the requests it holds. Limits: a bounded queue (429 with `Retry-After` when full),
//! a body size limit (413), a `max_tokens` limit (400). Every error is an OpenAI-style JSON
//! error. SIGINT or SIGTERM stops new work (503), lets admitted requests finish for a grace
//! period, then cancels what is left and exits.
//!
//! This room serves; it never decides anything about models.

pub mod api;
pub mod engine;
pub mod proof;
mod reply;
pub mod service;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::openai::{ModelCard, ModelIdentity, ModelList};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::commit::keys::NodeKey;
use crate::commit::receipt::{JobRequest, Prover};
use crate::commit::store::Store;
use crate::identity::{load_identified, Identity};
use crate::model::{Kernels, LoadOptions, Model, ModelError};
use crate::transcript::unix_now;
use api::{ApiError, Prompt, Settings};
use engine::{Event, Job, Sampling};
use reply::{respond, unavailable, Reply};

/// What `pot serve` needs.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Model spec.
    pub model: String,
    /// Name clients use (default: the file's stem).
    pub name: Option<String>,
    /// Address to listen on.
    pub host: String,
    /// Port (0: any free port; the chosen one is printed).
    pub port: u16,
    /// Requests that may wait for the engine; more get 429.
    pub max_queue: usize,
    /// Requests the engine steps together.
    pub max_batch: usize,
    /// Largest `max_tokens` accepted.
    pub max_tokens_limit: usize,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// How long admitted requests may run after SIGINT/SIGTERM.
    pub shutdown_grace: Duration,
    /// Kernels.
    pub kernels: Kernels,
    /// Bearer token clients must send (none: open).
    pub api_key: Option<String>,
    /// Node key file: commit to requests that carry a nonce (proof of inference).
    pub node_key: Option<PathBuf>,
    /// Step store file (needed with `node_key`).
    pub store: Option<PathBuf>,
    /// How long committed steps are kept for audits.
    pub retention: Duration,
    /// Byte budget of the step store.
    pub store_max_bytes: u64,
}

/// What can stop the server from starting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The model.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The address.
    #[error("{addr}: cannot listen ({source}); pick another --port or --host")]
    Bind {
        /// Address.
        addr: String,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// Options that do not go together.
    #[error("{0}")]
    Options(&'static str),
    /// The runtime or the listening socket failed.
    #[error("server: {what} ({source})")]
    Runtime {
        /// What failed.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The node key or the step store.
    #[error(transparent)]
    Commit(#[from] crate::commit::CommitError),
}

pub(crate) struct AppState {
    model: Arc<Model>,
    name: String,
    identity: Identity,
    queue: SyncSender<Job>,
    stopping: AtomicBool,
    cfg: ServeConfig,
    created: u64,
    prover: Option<Arc<Prover>>,
    store: Option<Arc<Store>>,
}

pub(crate) type St = Arc<AppState>;

/// What a server runs with: the model and its identity, the name clients use, and with a
/// node key the prover and the step store.
struct Loaded {
    model: Arc<Model>,
    identity: Identity,
    name: String,
    prover: Option<Arc<Prover>>,
    store: Option<Arc<Store>>,
}

/// Read the keys and the store (a bad file is reported before the model loads), then the model.
fn load(cfg: &ServeConfig) -> Result<Loaded, ServeError> {
    let path = crate::model::resolve(&cfg.model)?;
    let node_key = cfg.node_key.as_deref().map(NodeKey::read).transpose()?;
    let store = match (&node_key, &cfg.store) {
        (Some(_), Some(p)) => Some(Arc::new(Store::open(
            p,
            cfg.retention.as_millis() as u64,
            cfg.store_max_bytes,
        )?)),
        (Some(_), None) => {
            return Err(ServeError::Options(
                "--node-key needs --store FILE, where committed steps are kept for audits",
            ))
        }
        (None, _) => None,
    };
    let (model, identity) = load_identified(&path, LoadOptions::kernels(cfg.kernels))?;
    let name = cfg.name.clone().unwrap_or_else(|| {
        path.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| cfg.model.clone())
    });
    let prover = match node_key {
        Some(key) => {
            let weight_hash =
                crate::commit::keys::parse_hex32(&identity.weight_hash, "weight hash")?;
            Some(Arc::new(Prover {
                key,
                weight_hash,
                kernels: cfg.kernels,
            }))
        }
        None => None,
    };
    Ok(Loaded {
        model: Arc::new(model),
        identity,
        name,
        prover,
        store,
    })
}

/// Load the model, listen, and serve until SIGINT or SIGTERM.
pub fn run(cfg: ServeConfig) -> Result<(), ServeError> {
    let loaded = load(&cfg)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| ServeError::Runtime {
            what: "cannot start the async runtime",
            source,
        })?;
    let grace = cfg.shutdown_grace;
    let addr = format!("{}:{}", cfg.host, cfg.port);
    let (state, worker, cancel) = start(loaded, cfg);
    let result = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|source| ServeError::Bind {
                addr: addr.clone(),
                source,
            })?;
        let local: SocketAddr = listener
            .local_addr()
            .map_err(|source| ServeError::Runtime {
                what: "cannot read the listening address",
                source,
            })?;
        eprintln!(
            "pot serve: listening on http://{local} (model {:?}, weights {})",
            state.name,
            &state.identity.weight_hash[..16]
        );
        let app = router(state.clone());
        let (signalled_tx, signalled) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        let serving = axum::serve(listener, app).with_graceful_shutdown(async move {
            wait_for_signal().await;
            st.stopping.store(true, Ordering::SeqCst);
            eprintln!(
                "pot serve: shutting down; admitted requests have {:.0} s to finish",
                grace.as_secs_f64()
            );
            let _ = signalled_tx.send(());
        });
        let cancel_after_grace = async {
            if signalled.await.is_err() {
                // The server ended by itself.
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(grace).await;
            cancel.store(true, Ordering::SeqCst);
            eprintln!("pot serve: grace period over; cancelling what is left");
            // Cancelled requests answer at once; give the connections a moment to close.
            tokio::time::sleep(Duration::from_secs(5)).await;
        };
        tokio::select! {
            r = serving => r.map_err(|source| ServeError::Runtime {
                what: "serving failed",
                source,
            }),
            _ = cancel_after_grace => Ok(()),
        }
    });
    // Closing the queue ends the worker once it holds nothing.
    cancel.store(true, Ordering::SeqCst);
    drop(state);
    rt.shutdown_timeout(Duration::from_secs(1));
    let _ = worker.join();
    eprintln!("pot serve: stopped");
    result
}

/// The server's state over a loaded model, with its engine worker started: what [`run`]
/// listens with, and what the tests drive in process through [`router`]. Setting the flag
/// cancels what the worker holds; dropping every copy of the state ends it.
fn start(loaded: Loaded, cfg: ServeConfig) -> (St, std::thread::JoinHandle<()>, Arc<AtomicBool>) {
    let Loaded {
        model,
        identity,
        name,
        prover,
        store,
    } = loaded;
    let (queue, jobs) = std::sync::mpsc::sync_channel::<Job>(cfg.max_queue);
    let cancel = Arc::new(AtomicBool::new(false));
    let worker = engine::spawn(model.clone(), jobs, cfg.max_batch, cancel.clone());
    let state = Arc::new(AppState {
        prover,
        store,
        model,
        name,
        identity,
        queue,
        stopping: AtomicBool::new(false),
        cfg,
        created: unix_now(),
    });
    (state, worker, cancel)
}

pub(crate) async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

fn router(state: St) -> Router {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model_by_id))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .route("/health", get(health))
        .route("/v1/pot/node", get(proof::node))
        .route("/v1/pot/open", post(proof::open_steps))
        .fallback(|| async {
            error(ApiError {
                status: 404,
                kind: "invalid_request_error",
                code: Some("unknown_url"),
                param: None,
                message:
                    "unknown route; pot serves /v1/models, /v1/completions, /v1/chat/completions"
                        .into(),
            })
        })
        .method_not_allowed_fallback(|| async {
            error(ApiError {
                status: 405,
                kind: "invalid_request_error",
                code: Some("method_not_allowed"),
                param: None,
                message: "method not allowed on this route".into(),
            })
        })
        .with_state(state)
}

pub(crate) fn error(e: ApiError) -> Response {
    e.into_response()
}

fn model_card(st: &AppState) -> ModelCard {
    ModelCard {
        id: st.name.clone(),
        object: "model".into(),
        created: st.created,
        owned_by: "pot".into(),
        pot: Some(ModelIdentity {
            weight_hash: st.identity.weight_hash.clone(),
            tokenizer_hash: st.identity.tokenizer_hash.clone(),
            config_hash: st.identity.config_hash.clone(),
            arch: st.identity.arch.clone(),
            context_length: st.model.decoder.max_positions(),
        }),
    }
}

async fn models(State(st): State<St>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&st, &headers) {
        return error(e);
    }
    Json(ModelList {
        object: "list".into(),
        data: vec![model_card(&st)],
    })
    .into_response()
}

async fn model_by_id(State(st): State<St>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(e) = authorize(&st, &headers) {
        return error(e);
    }
    match check_model(&st, Some(&id)) {
        Ok(()) => Json(model_card(&st)).into_response(),
        Err(e) => error(e),
    }
}

async fn health(State(st): State<St>) -> Response {
    Json(json!({
        "status": if st.stopping.load(Ordering::SeqCst) { "stopping" } else { "ok" },
        "max_queue": st.cfg.max_queue,
    }))
    .into_response()
}

pub(crate) fn authorize(st: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &st.cfg.api_key else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Compare digests so the time taken does not depend on how much of the key matched.
    use sha2::{Digest, Sha256};
    let ok = given.is_some_and(|g| Sha256::digest(g.as_bytes()) == Sha256::digest(key.as_bytes()));
    if ok {
        Ok(())
    } else {
        Err(ApiError {
            status: 401,
            kind: "invalid_request_error",
            code: Some("invalid_api_key"),
            param: None,
            message: "missing or wrong API key (send Authorization: Bearer KEY)".into(),
        })
    }
}

fn check_model(st: &AppState, model: Option<&str>) -> Result<(), ApiError> {
    ApiError::check_model(model, &st.name, "server")
}

/// The request body, refused with 413 past the limit.
pub(crate) async fn body_bytes(st: &AppState, req: Request) -> Result<axum::body::Bytes, ApiError> {
    let limit = st.cfg.max_body_bytes;
    let too_large = || ApiError {
        status: 413,
        kind: "invalid_request_error",
        code: Some("request_too_large"),
        param: None,
        message: format!("the request body is larger than this server's limit of {limit} bytes"),
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        // Read and drop what the client sends (up to a bound), so that it can read the 413
        // rather than fail writing into a closed connection.
        if declared.is_some_and(|n| n <= DRAIN_LIMIT) {
            use tokio_stream::StreamExt;
            let mut s = req.into_body().into_data_stream();
            while let Some(Ok(_)) = s.next().await {}
        }
        return Err(too_large());
    }
    axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| too_large())
}

/// Largest refused body the server still reads to the end before answering 413.
const DRAIN_LIMIT: u64 = 64 << 20;

async fn completions(State(st): State<St>, req: Request) -> Response {
    match start_completion(&st, req).await {
        Ok((reply, rx)) => respond(st, reply, rx).await,
        Err(e) => error(e),
    }
}

async fn chat(State(st): State<St>, req: Request) -> Response {
    match start_chat(&st, req).await {
        Ok((reply, rx)) => respond(st, reply, rx).await,
        Err(e) => error(e),
    }
}

async fn start_completion(
    st: &St,
    req: Request,
) -> Result<(Reply, UnboundedReceiver<Event>), ApiError> {
    authorize(st, req.headers())?;
    let body = body_bytes(st, req).await?;
    let r: api::CompletionRequest = api::parse(&body)?;
    check_model(st, r.common.model.as_deref())?;
    let settings = r.common.settings(st.cfg.max_tokens_limit)?;
    let (prompt, logprobs) = r.prompt_and_logprobs()?;
    let tok = &st.model.tokenizer;
    let ids = match &prompt {
        Prompt::Text(t) => tok
            .encode(t)
            .map_err(|e| ApiError::invalid("prompt", crate::with_causes(&e)))?,
        Prompt::Ids(ids) => {
            if let Some(bad) = ids.iter().find(|&&i| i as usize >= tok.vocab_size()) {
                return Err(ApiError::invalid(
                    "prompt",
                    format!(
                        "token id {bad} is outside the vocabulary (size {})",
                        tok.vocab_size()
                    ),
                ));
            }
            ids.clone()
        }
    };
    let text = match &prompt {
        Prompt::Text(t) => t.clone(),
        Prompt::Ids(ids) => String::from_utf8_lossy(
            &ids.iter()
                .flat_map(|&i| tok.token_bytes(i))
                .collect::<Vec<u8>>(),
        )
        .into_owned(),
    };
    // OpenAI's default for completions is 16 tokens.
    let max_new = settings.max_tokens.unwrap_or(16);
    let (rx, pending) = submit(st, ids, max_new, &settings, logprobs, r.echo)?;
    let mut reply = Reply::new(st, false, settings, logprobs);
    reply.pending = pending;
    reply.prompt_chars = text.chars().count();
    reply.echo = r.echo.then_some(text);
    Ok((reply, rx))
}

async fn start_chat(st: &St, req: Request) -> Result<(Reply, UnboundedReceiver<Event>), ApiError> {
    authorize(st, req.headers())?;
    let body = body_bytes(st, req).await?;
    let r: api::ChatRequest = api::parse(&body)?;
    check_model(st, r.common.model.as_deref())?;
    let settings = r.common.settings(st.cfg.max_tokens_limit)?;
    let (messages, logprobs) = r.messages_and_logprobs()?;
    let ids = st.model.chat_prompt(&messages).map_err(chat_error)?;
    let room = st.model.decoder.max_positions().saturating_sub(ids.len());
    let max_new = settings
        .max_tokens
        .unwrap_or(room.min(st.cfg.max_tokens_limit));
    let (rx, pending) = submit(st, ids, max_new, &settings, logprobs, false)?;
    let mut reply = Reply::new(st, true, settings, logprobs);
    reply.pending = pending;
    Ok((reply, rx))
}

/// A chat the model cannot turn into a prompt: the request's fault (400, on `messages`) when
/// the model has no chat template or the template refuses these messages; the server's (500)
/// otherwise.
fn chat_error(e: ModelError) -> ApiError {
    match e {
        ModelError::Template { .. } | ModelError::NoChatTemplate { .. } => {
            ApiError::invalid("messages", crate::with_causes(&e))
        }
        other => ApiError {
            status: 500,
            kind: "server_error",
            code: None,
            param: None,
            message: crate::with_causes(&other),
        },
    }
}

/// Queue a job; 429 when the queue is full, 503 when shutting down. A request with a nonce
/// is committed: its run is returned to seal at the end.
fn submit(
    st: &St,
    prompt: Vec<u32>,
    max_new: usize,
    s: &Settings,
    logprobs: Option<usize>,
    echo: bool,
) -> Result<(UnboundedReceiver<Event>, Option<proof::Pending>), ApiError> {
    if s.nonce.is_some() && st.prover.is_none() {
        return Err(ApiError::invalid(
            "pot",
            "this server does not commit to its work (it has no --node-key); leave out the pot field",
        ));
    }
    if prompt.is_empty() {
        return Err(ApiError::invalid(
            "prompt",
            "the prompt has no tokens; send a non-empty prompt",
        ));
    }
    let context = st.model.decoder.max_positions();
    if prompt.len() + max_new > context {
        return Err(ApiError {
            status: 400,
            kind: "invalid_request_error",
            code: Some("context_length_exceeded"),
            param: Some("max_tokens".into()),
            message: format!(
                "this model's context is {context} tokens; the prompt has {} and max_tokens asks for {max_new} more",
                prompt.len()
            ),
        });
    }
    if st.stopping.load(Ordering::SeqCst) {
        return Err(unavailable());
    }
    let (tx, rx) = unbounded_channel();
    let seed = s.seed.unwrap_or_else(rand::random);
    let pending = s.nonce.map(|nonce| proof::Pending {
        nonce,
        request: JobRequest {
            prompt: prompt.clone(),
            max_tokens: max_new as u32,
            temperature: s.temperature,
            top_p: s.top_p,
            seed,
            stop: s.stop.clone(),
        },
    });
    let job = Job {
        prompt,
        max_tokens: max_new,
        sampling: Sampling {
            temperature: s.temperature,
            top_p: s.top_p,
            seed,
        },
        stop: s.stop.clone(),
        top_logprobs: logprobs,
        echo,
        commit: pending.is_some(),
        stop_at_end: true,
        keep_rows: false,
        events: tx,
    };
    match st.queue.try_send(job) {
        Ok(()) => Ok((rx, pending)),
        Err(TrySendError::Full(_)) => Err(ApiError {
            status: 429,
            kind: "rate_limit_error",
            code: Some("rate_limit_exceeded"),
            param: None,
            message: format!(
                "the server's queue is full ({} requests waiting); retry after a moment",
                st.cfg.max_queue
            ),
        }),
        Err(TrySendError::Disconnected(_)) => Err(unavailable()),
    }
}

#[cfg(test)]
mod tests;
