//! The answer to a generation request: the engine's events as one JSON object or as
//! server-sent events, in the OpenAI wire format ([`crate::openai`]), with usage and, for a
//! committed request, pot's signed receipt.

use std::convert::Infallible;

use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio::sync::mpsc::UnboundedReceiver;

use super::api::{self, ApiError, Settings};
use super::engine::{Event, Finish, TokenInfo};
use super::{error, proof, AppState, St};
use crate::openai::{AssistantMessage, Choice, Completion, Delta, Logprobs, Usage};
use crate::transcript::unix_now;

/// Everything the response needs besides the engine's events.
pub(crate) struct Reply {
    chat: bool,
    id: String,
    created: u64,
    model: String,
    fingerprint: String,
    settings: Settings,
    /// Alternatives per token, when logprobs were asked.
    logprobs: Option<usize>,
    /// Completions: the prompt text when echoed.
    pub(crate) echo: Option<String>,
    /// Completions: characters of the prompt (text offsets start there without echo).
    pub(crate) prompt_chars: usize,
    /// A committed request's nonce and request.
    pub(crate) pending: Option<proof::Pending>,
}

fn request_id(prefix: &str) -> String {
    format!("{prefix}-{:024x}", rand::random::<u128>() >> 32)
}

pub(crate) fn unavailable() -> ApiError {
    ApiError {
        status: 503,
        kind: "server_error",
        code: Some("shutting_down"),
        param: None,
        message: "the server is shutting down; retry on another instance".into(),
    }
}

impl Reply {
    /// A reply of this server (completions: no echo, offsets from 0 until set).
    pub(crate) fn new(
        st: &AppState,
        chat: bool,
        settings: Settings,
        logprobs: Option<usize>,
    ) -> Self {
        Self {
            chat,
            id: request_id(if chat { "chatcmpl" } else { "cmpl" }),
            created: unix_now(),
            model: st.name.clone(),
            fingerprint: format!("pot-{}", &st.identity.weight_hash[..16]),
            settings,
            logprobs,
            echo: None,
            prompt_chars: 0,
            pending: None,
        }
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.chat, chunk) {
            (true, false) => "chat.completion",
            (true, true) => "chat.completion.chunk",
            (false, _) => "text_completion",
        }
    }

    fn envelope(&self, chunk: bool, choices: Vec<Choice>) -> Completion {
        Completion {
            id: self.id.clone(),
            object: self.object(chunk).into(),
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: Some(self.fingerprint.clone()),
            choices,
            usage: None,
            pot: None,
        }
    }

    /// Logprobs of some tokens in this endpoint's format; `offset`: characters before them.
    fn logprobs_of(&self, tokens: &[TokenInfo], offset: usize) -> Option<Logprobs> {
        match (self.logprobs, self.chat) {
            (None, _) => None,
            (Some(_), true) => Some(api::chat_logprobs(tokens)),
            (Some(_), false) => Some(api::completion_logprobs(tokens, offset)),
        }
    }

    /// One streamed chunk.
    fn chunk(&self, text: &str, logprobs: Option<Logprobs>, finish: Option<&str>) -> Completion {
        let mut choice = Choice {
            logprobs,
            finish_reason: finish.map(str::to_string),
            ..Default::default()
        };
        if self.chat {
            choice.delta = Some(Delta {
                role: None,
                content: (finish.is_none() || !text.is_empty()).then(|| text.to_string()),
            });
        } else {
            choice.text = Some(text.to_string());
        }
        self.envelope(true, vec![choice])
    }
}

pub(crate) async fn respond(st: St, reply: Reply, rx: UnboundedReceiver<Event>) -> Response {
    if reply.settings.stream {
        stream(st, reply, rx)
    } else {
        collect(st, reply, rx).await
    }
}

pub(crate) fn engine_failure(msg: String) -> ApiError {
    ApiError::internal(msg)
}

/// Wait for the whole output and answer with one JSON object.
async fn collect(st: St, mut reply: Reply, mut rx: UnboundedReceiver<Event>) -> Response {
    let mut prompt_tokens: Vec<TokenInfo> = Vec::new();
    let mut tokens: Vec<TokenInfo> = Vec::new();
    let mut text = String::new();
    loop {
        match rx.recv().await {
            Some(Event::Prompt(p)) => prompt_tokens = p,
            Some(Event::Token { info, text: t }) => {
                tokens.push(info);
                text.push_str(&t);
            }
            Some(Event::Done {
                finish: Finish::Cancelled,
                ..
            }) => return error(unavailable()),
            Some(Event::Done {
                finish,
                text: t,
                prompt_tokens: np,
                completion_tokens: nc,
                steps,
                ..
            }) => {
                text.push_str(&t);
                let lp = if let Some(echo) = &reply.echo {
                    let all: Vec<TokenInfo> = prompt_tokens.into_iter().chain(tokens).collect();
                    text = format!("{echo}{text}");
                    reply.logprobs_of(&all, 0)
                } else {
                    reply.logprobs_of(&tokens, reply.prompt_chars)
                };
                let mut choice = Choice {
                    logprobs: lp,
                    finish_reason: Some(api::finish_reason(finish).into()),
                    ..Default::default()
                };
                if reply.chat {
                    choice.message = Some(AssistantMessage {
                        role: "assistant".into(),
                        content: Some(text),
                    });
                } else {
                    choice.text = Some(text);
                }
                let mut body = reply.envelope(false, vec![choice]);
                body.usage = Some(Usage::new(np, nc));
                if let (Some(p), Some(c)) = (reply.pending.take(), steps) {
                    match proof::seal(&st, p, c).await {
                        Ok(receipt) => body.pot = Some(receipt),
                        Err(e) => return error(e),
                    }
                }
                return Json(body).into_response();
            }
            Some(Event::Failed(msg)) => return error(engine_failure(msg)),
            None => return error(engine_failure("the engine stopped".into())),
        }
    }
}

/// One server-sent event holding `v` as JSON.
fn sse(v: &impl serde::Serialize) -> Result<Sse, Infallible> {
    Ok(Sse::default().data(serde_json::to_string(v).expect("wire types serialize")))
}

/// Relay the output as server-sent events, ending with `data: [DONE]`.
fn stream(st: St, mut reply: Reply, mut rx: UnboundedReceiver<Event>) -> Response {
    let (tx, out) = tokio::sync::mpsc::channel::<Result<Sse, Infallible>>(64);
    tokio::spawn(async move {
        if reply.chat {
            let first = reply.envelope(
                true,
                vec![Choice {
                    delta: Some(Delta {
                        role: Some("assistant".into()),
                        content: Some(String::new()),
                    }),
                    ..Default::default()
                }],
            );
            if tx.send(sse(&first)).await.is_err() {
                return;
            }
        }
        let mut chars = reply.prompt_chars;
        while let Some(ev) = rx.recv().await {
            let msg = match ev {
                Event::Prompt(p) => match &reply.echo {
                    Some(echo) => {
                        let lp = reply.logprobs_of(&p, 0);
                        reply.chunk(echo, lp, None)
                    }
                    None => continue,
                },
                Event::Token { info, text } => {
                    let lp = reply.logprobs_of(std::slice::from_ref(&info), chars);
                    chars += String::from_utf8_lossy(&info.bytes).chars().count();
                    reply.chunk(&text, lp, None)
                }
                Event::Done {
                    finish: Finish::Cancelled,
                    ..
                } => {
                    let _ = tx.send(sse(&unavailable().body())).await;
                    return;
                }
                Event::Done {
                    finish,
                    text,
                    prompt_tokens,
                    completion_tokens,
                    steps,
                    ..
                } => {
                    let last = reply.chunk(&text, None, Some(api::finish_reason(finish)));
                    if tx.send(sse(&last)).await.is_err() {
                        return;
                    }
                    if let (Some(p), Some(c)) = (reply.pending.take(), steps) {
                        let sent = match proof::seal(&st, p, c).await {
                            Ok(receipt) => {
                                let mut v = reply.envelope(true, vec![]);
                                v.pot = Some(receipt);
                                tx.send(sse(&v)).await
                            }
                            Err(e) => tx.send(sse(&e.body())).await,
                        };
                        if sent.is_err() {
                            return;
                        }
                    }
                    if reply.settings.include_usage {
                        let mut u = reply.envelope(true, vec![]);
                        u.usage = Some(Usage::new(prompt_tokens, completion_tokens));
                        if tx.send(sse(&u)).await.is_err() {
                            return;
                        }
                    }
                    let _ = tx.send(Ok(Sse::default().data("[DONE]"))).await;
                    return;
                }
                Event::Failed(msg) => {
                    let _ = tx.send(sse(&engine_failure(msg).body())).await;
                    return;
                }
            };
            if tx.send(sse(&msg)).await.is_err() {
                // The client is gone; dropping `rx` tells the engine.
                return;
            }
        }
    });
    axum::response::sse::Sse::new(tokio_stream::wrappers::ReceiverStream::new(out))
        .keep_alive(KeepAlive::default())
        .into_response()
}
