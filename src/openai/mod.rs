//! The OpenAI wire format, once: the requests and answers of `/v1/completions`,
//! `/v1/chat/completions` and `/v1/models` as serde types, and one careful HTTP client.
//!
//! `serve` parses requests into these types and answers with them; `audit` sends them to
//! endpoints nobody here wrote and reads their answers back through them; `verify` sends jobs
//! with them to a provider. Field names are the official ones. Requests are strict about what
//! they carry (a server checks each field; see `serve::api`); answers are read leniently,
//! since third-party servers leave out what they do not support: every field of an answer may
//! be missing, and a `null` where a number belongs reads as missing.

pub mod client;
pub mod pace;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use client::{ClientError, Endpoint, EndpointConfig, Exchange};

fn is_false(b: &bool) -> bool {
    !*b
}

/// Reads a field that no verdict depends on (ids, timestamps, usage, …) leniently: a value of
/// the wrong type reads as the default instead of failing the whole answer.
fn lenient<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned + Default,
{
    let v = Value::deserialize(d)?;
    Ok(serde_json::from_value(v).unwrap_or_default())
}

// ---------------------------------------------------------------------------------------------
// Requests.

/// `stop`: a string or a list of strings.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(untagged)]
pub enum Stop {
    /// One.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct StreamOptions {
    /// Send a last chunk with `usage`.
    #[serde(default)]
    pub include_usage: bool,
}

/// The `pot` field of a request: `{"nonce": "<64 hex digits>"}` asks for a signed receipt.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct PotField {
    /// The client's nonce: 32 bytes in hex, fresh for every request.
    pub nonce: Option<String>,
}

/// Fields shared by both generation routes. Unset fields are left out of a request.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct Common {
    /// Model name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Tokens to generate at most.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<i64>,
    /// Chat's newer name for `max_tokens`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<i64>,
    /// Sampling temperature (OpenAI's default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Seed of the sampler.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// Stop strings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    /// Server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Stream options.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Choices.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<i64>,
    /// Presence penalty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    /// Frequency penalty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    /// llama.cpp's multiplicative repetition penalty (not OpenAI's; 1 is none). llama.cpp's
    /// server and llama-cpp-python apply 1.1 unless told otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repeat_penalty: Option<f64>,
    /// The same under the name vLLM, TGI, SGLang and mlx-lm use (1 is none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f64>,
    /// Only the k most likely tokens (not OpenAI's; llama.cpp, vLLM, TGI; 0 is off, and
    /// llama.cpp's server keeps 40 unless told otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i64>,
    /// Tokens below this share of the most likely one's probability are cut (not OpenAI's;
    /// 0 is off, and llama.cpp's server cuts at 0.05 unless told otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f64>,
    /// Logit biases by token id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logit_bias: Option<serde_json::Map<String, Value>>,
    /// Proof of inference: asks for a signed receipt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pot: Option<PotField>,
}

/// `POST /v1/completions`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct CompletionRequest {
    /// Shared fields.
    #[serde(flatten)]
    pub common: Common,
    /// A string, a list of token ids, or a one-element list of either.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<Value>,
    /// Asks for logprobs: the number of alternatives per token (0..=20, OpenAI's spelling),
    /// or `true` with the number in `top_logprobs` (chat's spelling, which some servers want
    /// on completions too).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<LogprobsField>,
    /// Alternatives per token, with `logprobs: true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<i64>,
    /// Return the prompt too (with its logprobs when asked).
    #[serde(default, skip_serializing_if = "is_false")]
    pub echo: bool,
    /// Candidates to pick the best of.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub best_of: Option<i64>,
    /// Text after the insertion point.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
}

/// The completions route's `logprobs`, in either spelling servers use.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
#[serde(untagged)]
pub enum LogprobsField {
    /// `logprobs: N`: N alternatives per token.
    Count(i64),
    /// `logprobs: true` (alternatives in `top_logprobs`), or `false`.
    Flag(bool),
}

/// A message as sent: content as a string or a list of text parts.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct WireMessage {
    /// Role.
    pub role: String,
    /// Content.
    #[serde(default)]
    pub content: Value,
}

/// `POST /v1/chat/completions`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct ChatRequest {
    /// Shared fields.
    #[serde(flatten)]
    pub common: Common,
    /// The conversation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<WireMessage>>,
    /// Return log-probabilities of the output tokens.
    #[serde(default, skip_serializing_if = "is_false")]
    pub logprobs: bool,
    /// Alternatives per token (needs `logprobs: true`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<i64>,
    /// Tools the model may call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tools: Option<Value>,
    /// Which tool to call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    /// The answer's format.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_format: Option<Value>,
}

// ---------------------------------------------------------------------------------------------
// Answers.

/// A completion or chat completion, whole or as one streamed chunk.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct Completion {
    /// Request id.
    #[serde(default, deserialize_with = "lenient")]
    pub id: String,
    /// `text_completion`, `chat.completion` or `chat.completion.chunk`.
    #[serde(default, deserialize_with = "lenient")]
    pub object: String,
    /// Unix seconds.
    #[serde(default, deserialize_with = "lenient")]
    pub created: u64,
    /// The model that answered.
    #[serde(default, deserialize_with = "lenient")]
    pub model: String,
    /// The serving configuration.
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub system_fingerprint: Option<String>,
    /// The choices (pot sends one).
    #[serde(default)]
    pub choices: Vec<Choice>,
    /// Tokens used.
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub usage: Option<Usage>,
    /// pot's signed receipt (`commit::receipt::Receipt`), when the request carried a nonce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pot: Option<Value>,
}

/// One choice of an answer.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct Choice {
    /// Its index.
    #[serde(default, deserialize_with = "lenient")]
    pub index: u32,
    /// Completions: the text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Chat: the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<AssistantMessage>,
    /// Chat, streamed: what this chunk adds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<Delta>,
    /// Log-probabilities, in the route's format.
    #[serde(default)]
    pub logprobs: Option<Logprobs>,
    /// `stop`, `length`, ….
    #[serde(default, deserialize_with = "lenient")]
    pub finish_reason: Option<String>,
}

impl Choice {
    /// The text of a completion or the content of a chat message.
    pub fn text(&self) -> Option<&str> {
        self.text
            .as_deref()
            .or_else(|| self.message.as_ref()?.content.as_deref())
    }
}

/// A chat answer's message.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct AssistantMessage {
    /// `assistant`.
    #[serde(default, deserialize_with = "lenient")]
    pub role: String,
    /// Its text (`null` when a server answers with something else, such as a tool call).
    #[serde(default)]
    pub content: Option<String>,
}

/// What a streamed chat chunk adds.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct Delta {
    /// The role, in the first chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// New text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// Log-probabilities of a choice: chat's `content` list, or the completions route's parallel
/// lists. A server fills the one its route uses.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct Logprobs {
    /// Chat: one entry per token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Vec<TokenLogprob>>,
    /// Completions: the tokens' texts (`bytes:\xNN…` when not whole UTF-8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Vec<String>>,
    /// Completions: each token's log-probability (`null` for the first echoed token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_logprobs: Option<Vec<Option<f64>>>,
    /// Completions: the alternatives at each position, by text (`null` where there are none).
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub top_logprobs: Option<Vec<Option<TopMap>>>,
    /// Completions: each token's character offset in the text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_offset: Option<Vec<usize>>,
}

/// The completions route's alternatives at one position: text → log-probability (`null` when
/// a server cannot write the number, such as minus infinity).
pub type TopMap = serde_json::Map<String, Value>;

/// Chat: one token's log-probability and its alternatives.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct TokenLogprob {
    /// The token's text.
    #[serde(default)]
    pub token: String,
    /// Its log-probability.
    #[serde(default)]
    pub logprob: Option<f64>,
    /// Its bytes (UTF-8 of the text, or the raw bytes of a partial character).
    #[serde(default, deserialize_with = "lenient")]
    pub bytes: Option<Vec<u8>>,
    /// The most likely tokens at its position.
    #[serde(default, deserialize_with = "lenient")]
    pub top_logprobs: Vec<TopLogprob>,
}

/// Chat: one alternative.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct TopLogprob {
    /// Its text.
    #[serde(default)]
    pub token: String,
    /// Its log-probability.
    #[serde(default)]
    pub logprob: Option<f64>,
    /// Its bytes.
    #[serde(default, deserialize_with = "lenient")]
    pub bytes: Option<Vec<u8>>,
}

/// Tokens an answer used.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// In the prompt.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Generated.
    #[serde(default)]
    pub completion_tokens: u64,
    /// Both.
    #[serde(default)]
    pub total_tokens: u64,
}

impl Usage {
    /// Usage of `prompt` and `completion` tokens.
    pub fn new(prompt: usize, completion: usize) -> Self {
        Self {
            prompt_tokens: prompt as u64,
            completion_tokens: completion as u64,
            total_tokens: (prompt + completion) as u64,
        }
    }
}

/// `GET /v1/models`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct ModelList {
    /// `list`.
    #[serde(default)]
    pub object: String,
    /// The models.
    #[serde(default)]
    pub data: Vec<ModelCard>,
}

/// One model of `/v1/models`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct ModelCard {
    /// Its name.
    #[serde(default)]
    pub id: String,
    /// `model`.
    #[serde(default)]
    pub object: String,
    /// Unix seconds.
    #[serde(default)]
    pub created: u64,
    /// Owner.
    #[serde(default)]
    pub owned_by: String,
    /// What `pot serve` adds: the model's identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pot: Option<ModelIdentity>,
}

/// The identity `pot serve` publishes with its model.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct ModelIdentity {
    /// Canonical weight hash (hex).
    pub weight_hash: String,
    /// Tokenizer hash (hex).
    pub tokenizer_hash: String,
    /// Configuration hash (hex).
    pub config_hash: String,
    /// Architecture.
    pub arch: String,
    /// Longest context.
    pub context_length: usize,
}

/// An error answer: `{"error": {...}}`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct ErrorDetail {
    /// For people.
    #[serde(default)]
    pub message: String,
    /// `invalid_request_error`, `server_error`, ….
    #[serde(default, rename = "type")]
    pub kind: String,
    /// The parameter at fault.
    #[serde(default)]
    pub param: Option<String>,
    /// A code for programs.
    #[serde(default)]
    pub code: Option<String>,
}

impl ErrorBody {
    /// The message of an error answer, if `body` is one.
    pub fn message_of(body: &[u8]) -> Option<String> {
        serde_json::from_slice::<ErrorBody>(body)
            .ok()
            .map(|e| e.error.message)
            .filter(|m| !m.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_from_other_servers_read_leniently() {
        // llama.cpp-style completions answer with a null first logprob and no usage.
        let c: Completion = serde_json::from_str(
            r#"{"choices":[{"text":"ab","logprobs":{"tokens":["a","b"],"token_logprobs":[null,-0.5],
                "top_logprobs":[null,{"b":-0.5,"c":null}]},"finish_reason":"length"}]}"#,
        )
        .unwrap();
        let lp = c.choices[0].logprobs.as_ref().unwrap();
        assert_eq!(lp.token_logprobs.as_deref(), Some(&[None, Some(-0.5)][..]));
        assert_eq!(c.choices[0].text(), Some("ab"));
        assert!(c.usage.is_none());
        // A chat answer whose content is null (a tool call) has no text.
        let c: Completion = serde_json::from_str(
            r#"{"choices":[{"message":{"role":"assistant","content":null},"logprobs":null}]}"#,
        )
        .unwrap();
        assert_eq!(c.choices[0].text(), None);
        assert!(c.choices[0].logprobs.is_none());
    }

    #[test]
    fn requests_leave_out_what_is_unset() {
        let r = CompletionRequest {
            common: Common {
                model: Some("m".into()),
                ..Default::default()
            },
            prompt: Some(Value::from("x")),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::json!({"model": "m", "prompt": "x", "stream": false})
        );
        let back: CompletionRequest =
            serde_json::from_value(serde_json::to_value(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        let e = ErrorBody::message_of(br#"{"error":{"message":"no","type":"x"}}"#);
        assert_eq!(e.as_deref(), Some("no"));
        assert_eq!(ErrorBody::message_of(b"<html>"), None);
    }
}
