//! The OpenAI wire format: requests as clients send them, checked field by field, and the
//! JSON that answers them. Field names are the official ones (`/v1/completions`,
//! `/v1/chat/completions`, `/v1/models`); anything pot cannot honour exactly (several
//! choices, penalties, logit biases, tools) is refused with a 400 that says so, never
//! silently ignored.

use serde_json::Value;

use super::engine::{Finish, TokenInfo};
use crate::model::chat::Message;
pub use crate::openai::{
    ChatRequest, Common, CompletionRequest, ErrorBody, ErrorDetail, Logprobs, LogprobsField, Stop,
    TokenLogprob, TopLogprob,
};

/// Most alternatives per token (OpenAI's own limit for chat).
pub const MAX_TOP_LOGPROBS: usize = 20;
/// Most stop strings (OpenAI's limit).
pub const MAX_STOP: usize = 4;

/// An error as OpenAI sends it, with its HTTP status.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// `error.type`.
    pub kind: &'static str,
    /// `error.code`.
    pub code: Option<&'static str>,
    /// `error.param`.
    pub param: Option<String>,
    /// `error.message`.
    pub message: String,
}

impl ApiError {
    /// A 400 about one parameter.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self {
            status: 400,
            kind: "invalid_request_error",
            code: None,
            param: Some(param.to_string()),
            message: message.into(),
        }
    }

    /// A 500: the server failed, not the request.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: 500,
            kind: "server_error",
            code: None,
            param: None,
            message: message.into(),
        }
    }

    /// The request's `model` against the one model `served` here (`who`: "server",
    /// "router"): 400 when missing, 404 when another.
    pub fn check_model(model: Option<&str>, served: &str, who: &str) -> Result<(), Self> {
        match model {
            None => Err(Self::invalid("model", "model is required")),
            Some(m) if m == served => Ok(()),
            Some(m) => Err(Self {
                status: 404,
                kind: "invalid_request_error",
                code: Some("model_not_found"),
                param: Some("model".into()),
                message: format!(
                    "the model {m:?} does not exist here; this {who} serves {served:?}"
                ),
            }),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                message: self.message.clone(),
                kind: self.kind.into(),
                param: self.param.clone(),
                code: self.code.map(str::to_string),
            },
        }
    }
}

/// What a request asks of the engine, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Tokens at most (`None`: up to the context or the server's limit).
    pub max_tokens: Option<usize>,
    /// Temperature.
    pub temperature: f64,
    /// Nucleus.
    pub top_p: f64,
    /// Seed (`None`: a fresh one).
    pub seed: Option<u64>,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Stream.
    pub stream: bool,
    /// Usage chunk at the end of a stream.
    pub include_usage: bool,
    /// The client's nonce, when it asks for a receipt.
    pub nonce: Option<[u8; 32]>,
}

/// An error answers with its status and OpenAI's error body; a full queue (429) and a
/// shutting-down server (503) say when to come back.
impl axum::response::IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        use axum::http::{header, HeaderValue, StatusCode};
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (status, axum::Json(self.body())).into_response();
        if self.status == 429 || self.status == 503 {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

/// Parse a JSON body, saying what is wrong with it.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| ApiError {
        status: 400,
        kind: "invalid_request_error",
        code: Some("invalid_json"),
        param: None,
        message: format!("the request body is not valid JSON ({e})"),
    })?;
    if !v.is_object() {
        return Err(ApiError::invalid(
            "body",
            "the request body must be a JSON object",
        ));
    }
    serde_json::from_value(v).map_err(|e| ApiError::invalid("body", format!("{e}")))
}

impl Common {
    /// Check the shared fields against the server's limit on `max_tokens`.
    pub fn settings(&self, max_tokens_limit: usize) -> Result<Settings, ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid(
                "n",
                "only n = 1 is supported; send several requests",
            ));
        }
        // Each penalty at its neutral value (OpenAI's additive ones 0, llama.cpp's and vLLM's
        // multiplicative ones 1) is no penalty; anything else asks for decoding pot does not do.
        for (name, v, none) in [
            ("presence_penalty", self.presence_penalty, 0.0),
            ("frequency_penalty", self.frequency_penalty, 0.0),
            ("repeat_penalty", self.repeat_penalty, 1.0),
            ("repetition_penalty", self.repetition_penalty, 1.0),
            ("min_p", self.min_p, 0.0),
        ] {
            if v.is_some_and(|x| x != none) {
                return Err(ApiError::invalid(
                    name,
                    format!("{name} is not supported (pot applies no penalties or cuts); send {none} or leave it out"),
                ));
            }
        }
        if self.top_k.is_some_and(|k| k > 0) {
            return Err(ApiError::invalid(
                "top_k",
                "top_k is not supported (pot samples from the whole nucleus); send 0 or leave it out",
            ));
        }
        if self.logit_bias.as_ref().is_some_and(|m| !m.is_empty()) {
            return Err(ApiError::invalid(
                "logit_bias",
                "logit_bias is not supported; leave it out",
            ));
        }
        let max = match self.max_completion_tokens.or(self.max_tokens) {
            None => None,
            Some(m) if m < 0 => {
                return Err(ApiError::invalid(
                    "max_tokens",
                    format!("max_tokens must be 0 or more, got {m}"),
                ))
            }
            Some(m) if m as u64 > max_tokens_limit as u64 => {
                return Err(ApiError::invalid(
                    "max_tokens",
                    format!("max_tokens {m} is above this server's limit of {max_tokens_limit}"),
                ))
            }
            Some(m) => Some(m as usize),
        };
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid(
                "temperature",
                format!("temperature must be between 0 and 2, got {temperature}"),
            ));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid(
                "top_p",
                format!("top_p must be in (0, 1], got {top_p}"),
            ));
        }
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > MAX_STOP {
            return Err(ApiError::invalid(
                "stop",
                format!("at most {MAX_STOP} stop strings, got {}", stop.len()),
            ));
        }
        let nonce = match &self.pot {
            None => None,
            Some(p) => {
                let bad = || {
                    ApiError::invalid(
                        "pot.nonce",
                        "pot.nonce must be 64 hex digits (32 fresh random bytes)",
                    )
                };
                let h = p.nonce.as_deref().ok_or_else(bad)?;
                let b = hex::decode(h).map_err(|_| bad())?;
                Some(<[u8; 32]>::try_from(b).map_err(|_| bad())?)
            }
        };
        Ok(Settings {
            max_tokens: max,
            temperature,
            top_p,
            seed: self.seed.map(|s| s as u64),
            stop,
            stream: self.stream,
            include_usage: self
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage),
            nonce,
        })
    }
}

/// The prompt of a completion request: text, or token ids.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Text to tokenize.
    Text(String),
    /// Token ids.
    Ids(Vec<u32>),
}

impl CompletionRequest {
    /// The prompt, and the number of alternatives when logprobs are asked.
    pub fn prompt_and_logprobs(&self) -> Result<(Prompt, Option<usize>), ApiError> {
        if self.best_of.is_some_and(|b| b != 1) {
            return Err(ApiError::invalid(
                "best_of",
                "only best_of = 1 is supported",
            ));
        }
        if self.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::invalid(
                "suffix",
                "suffix (insertion) is not supported",
            ));
        }
        let bad = || {
            ApiError::invalid(
                "prompt",
                "prompt must be a string, a list of token ids, or a list holding one of these",
            )
        };
        let ids = |a: &Vec<Value>| -> Result<Vec<u32>, ApiError> {
            a.iter()
                .map(|v| {
                    v.as_u64()
                        .filter(|x| *x <= u32::MAX as u64)
                        .map(|x| x as u32)
                })
                .collect::<Option<Vec<u32>>>()
                .ok_or_else(bad)
        };
        let prompt = match &self.prompt {
            None => return Err(ApiError::invalid("prompt", "prompt is required")),
            Some(Value::String(s)) => Prompt::Text(s.clone()),
            Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
                Prompt::Text(a[0].as_str().unwrap_or_default().to_string())
            }
            Some(Value::Array(a)) if a.len() == 1 && a[0].is_array() => {
                Prompt::Ids(ids(a[0].as_array().expect("checked"))?)
            }
            Some(Value::Array(a)) if a.iter().all(Value::is_number) => Prompt::Ids(ids(a)?),
            Some(Value::Array(_)) => {
                return Err(ApiError::invalid(
                    "prompt",
                    "only one prompt per request is supported; send several requests",
                ))
            }
            Some(_) => return Err(bad()),
        };
        // Both spellings: `logprobs: N`, or chat's `logprobs: true, top_logprobs: N`.
        let (n, param) = match (self.logprobs, self.top_logprobs) {
            (None | Some(LogprobsField::Flag(false)), None) => return Ok((prompt, None)),
            (None | Some(LogprobsField::Flag(false)), Some(_)) => {
                return Err(ApiError::invalid(
                    "top_logprobs",
                    "top_logprobs needs logprobs: true",
                ))
            }
            (Some(LogprobsField::Flag(true)), top) => (top.unwrap_or(0), "top_logprobs"),
            (Some(LogprobsField::Count(n)), None) => (n, "logprobs"),
            (Some(LogprobsField::Count(_)), Some(_)) => {
                return Err(ApiError::invalid(
                    "top_logprobs",
                    "give the number of alternatives once: logprobs: N, or logprobs: true with top_logprobs: N",
                ))
            }
        };
        if !(0..=MAX_TOP_LOGPROBS as i64).contains(&n) {
            return Err(ApiError::invalid(
                param,
                format!("{param} must be between 0 and {MAX_TOP_LOGPROBS}, got {n}"),
            ));
        }
        Ok((prompt, Some(n as usize)))
    }
}

impl ChatRequest {
    /// The messages as text, and the number of alternatives when logprobs are asked.
    pub fn messages_and_logprobs(&self) -> Result<(Vec<Message>, Option<usize>), ApiError> {
        if self.tools.as_ref().is_some_and(|t| !t.is_null()) {
            return Err(ApiError::invalid("tools", "tools are not supported"));
        }
        if self.tool_choice.as_ref().is_some_and(|t| !t.is_null()) {
            return Err(ApiError::invalid(
                "tool_choice",
                "tool_choice is not supported",
            ));
        }
        if let Some(f) = &self.response_format {
            if !f.is_null() && f.get("type").and_then(Value::as_str) != Some("text") {
                return Err(ApiError::invalid(
                    "response_format",
                    "only response_format {\"type\": \"text\"} is supported",
                ));
            }
        }
        let wire = match &self.messages {
            Some(m) if !m.is_empty() => m,
            _ => {
                return Err(ApiError::invalid(
                    "messages",
                    "messages must be a non-empty list",
                ))
            }
        };
        let mut out = Vec::with_capacity(wire.len());
        for (i, m) in wire.iter().enumerate() {
            let content = match &m.content {
                Value::Null => String::new(),
                Value::String(s) => s.clone(),
                Value::Array(parts) => {
                    let mut s = String::new();
                    for p in parts {
                        match (p.get("type").and_then(Value::as_str), p.get("text")) {
                            (Some("text"), Some(Value::String(t))) => s.push_str(t),
                            _ => {
                                return Err(ApiError::invalid(
                                    &format!("messages[{i}].content"),
                                    "only text content parts are supported",
                                ))
                            }
                        }
                    }
                    s
                }
                _ => {
                    return Err(ApiError::invalid(
                        &format!("messages[{i}].content"),
                        "content must be a string or a list of text parts",
                    ))
                }
            };
            out.push(Message {
                role: m.role.clone(),
                content,
            });
        }
        let lp = match (self.logprobs, self.top_logprobs) {
            (false, Some(n)) if n > 0 => {
                return Err(ApiError::invalid(
                    "top_logprobs",
                    "top_logprobs needs logprobs: true",
                ))
            }
            (false, _) => None,
            (true, None) => Some(0),
            (true, Some(n)) if (0..=MAX_TOP_LOGPROBS as i64).contains(&n) => Some(n as usize),
            (true, Some(n)) => {
                return Err(ApiError::invalid(
                    "top_logprobs",
                    format!("top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {n}"),
                ))
            }
        };
        Ok((out, lp))
    }
}

/// A token's text for the `tokens` lists: the text itself, or OpenAI's `bytes:\xNN` spelling
/// when its bytes are not whole UTF-8.
pub fn token_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => {
            let mut s = String::from("bytes:");
            for b in bytes {
                s.push_str(&format!("\\x{b:02x}"));
            }
            s
        }
    }
}

/// The string `finish_reason`.
pub fn finish_reason(f: Finish) -> &'static str {
    match f {
        Finish::Stop => "stop",
        Finish::Length | Finish::Cancelled => "length",
    }
}

/// Completion logprobs (legacy format) of some tokens; `offset` is the character offset of
/// the first, counted from the start of the prompt.
pub fn completion_logprobs(tokens: &[TokenInfo], mut offset: usize) -> Logprobs {
    let mut texts = Vec::with_capacity(tokens.len());
    let mut lps = Vec::with_capacity(tokens.len());
    let mut tops = Vec::with_capacity(tokens.len());
    let mut offsets = Vec::with_capacity(tokens.len());
    for t in tokens {
        let text = token_text(&t.bytes);
        offsets.push(offset);
        offset += String::from_utf8_lossy(&t.bytes).chars().count();
        texts.push(text);
        lps.push(t.logprob.map(f64::from));
        tops.push(t.logprob.map(|_| {
            let mut m = serde_json::Map::new();
            for (_, b, lp) in &t.top {
                m.entry(token_text(b)).or_insert(Value::from(*lp));
            }
            m
        }));
    }
    Logprobs {
        tokens: Some(texts),
        token_logprobs: Some(lps),
        top_logprobs: Some(tops),
        text_offset: Some(offsets),
        ..Default::default()
    }
}

/// Chat logprobs of some tokens (`logprobs.content`).
pub fn chat_logprobs(tokens: &[TokenInfo]) -> Logprobs {
    let content = tokens
        .iter()
        .map(|t| TokenLogprob {
            token: token_text(&t.bytes),
            logprob: t.logprob.map(f64::from),
            bytes: Some(t.bytes.clone()),
            top_logprobs: t
                .top
                .iter()
                .map(|(_, b, lp)| TopLogprob {
                    token: token_text(b),
                    logprob: Some(f64::from(*lp)),
                    bytes: Some(b.clone()),
                })
                .collect(),
        })
        .collect();
    Logprobs {
        content: Some(content),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion(body: &str) -> Result<(Settings, Prompt, Option<usize>), ApiError> {
        let r: CompletionRequest = parse(body.as_bytes())?;
        let s = r.common.settings(4096)?;
        let (p, lp) = r.prompt_and_logprobs()?;
        Ok((s, p, lp))
    }

    #[test]
    fn prompts_come_as_text_or_ids() {
        let (_, p, _) = completion(r#"{"model":"m","prompt":"hi"}"#).unwrap();
        assert_eq!(p, Prompt::Text("hi".into()));
        let (_, p, _) = completion(r#"{"model":"m","prompt":[1,2,3]}"#).unwrap();
        assert_eq!(p, Prompt::Ids(vec![1, 2, 3]));
        let (_, p, _) = completion(r#"{"model":"m","prompt":[[4,5]]}"#).unwrap();
        assert_eq!(p, Prompt::Ids(vec![4, 5]));
        let e = completion(r#"{"model":"m","prompt":["a","b"]}"#).unwrap_err();
        assert_eq!((e.status, e.param.as_deref()), (400, Some("prompt")));
        assert!(completion(r#"{"model":"m","prompt":[-1]}"#).is_err());
    }

    #[test]
    fn bad_fields_are_400s_that_name_the_field() {
        for (body, param) in [
            (r#"{"prompt":"x","temperature":-0.5}"#, "temperature"),
            (r#"{"prompt":"x","max_tokens":1000000000}"#, "max_tokens"),
            (r#"{"prompt":"x","max_tokens":-1}"#, "max_tokens"),
            (r#"{"prompt":"x","top_p":0}"#, "top_p"),
            (r#"{"prompt":"x","n":2}"#, "n"),
            (r#"{"prompt":"x","logprobs":21}"#, "logprobs"),
            (
                r#"{"prompt":"x","presence_penalty":0.5}"#,
                "presence_penalty",
            ),
            (r#"{"prompt":"x","repeat_penalty":1.1}"#, "repeat_penalty"),
            (
                r#"{"prompt":"x","repetition_penalty":0.9}"#,
                "repetition_penalty",
            ),
            (
                r#"{"prompt":"x","logprobs":true,"top_logprobs":21}"#,
                "top_logprobs",
            ),
            (r#"{"prompt":"x","top_logprobs":2}"#, "top_logprobs"),
            (r#"{"prompt":"x","stop":["a","b","c","d","e"]}"#, "stop"),
            (r#"{"prompt":"x","temperature":"hot"}"#, "body"),
            (r#"[1,2]"#, "body"),
        ] {
            let e = completion(body).unwrap_err();
            assert_eq!(e.status, 400, "{body}");
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
        }
        let e = completion("{not json").unwrap_err();
        assert_eq!(e.code, Some("invalid_json"));
    }

    #[test]
    fn chat_content_parts_and_logprob_flags() {
        let r: ChatRequest = parse(
            br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],"logprobs":true,"top_logprobs":3}"#,
        )
        .unwrap();
        let (m, lp) = r.messages_and_logprobs().unwrap();
        assert_eq!(m[0].content, "ab");
        assert_eq!(lp, Some(3));
        let r: ChatRequest =
            parse(br#"{"model":"m","messages":[{"role":"user","content":"x"}],"top_logprobs":3}"#)
                .unwrap();
        assert_eq!(
            r.messages_and_logprobs().unwrap_err().param.as_deref(),
            Some("top_logprobs")
        );
        let r: ChatRequest = parse(br#"{"model":"m","messages":[]}"#).unwrap();
        assert!(r.messages_and_logprobs().is_err());
    }

    #[test]
    fn partial_utf8_tokens_are_spelled_as_bytes() {
        assert_eq!(token_text(b"abc"), "abc");
        assert_eq!(token_text(&[0xe2, 0x82]), "bytes:\\xe2\\x82");
    }
}
