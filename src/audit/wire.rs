//! The endpoint's side of the wire: the request each method sends, and its answer read back
//! in the reference's vocabulary (tokens come as strings, `bytes:\xNN` spellings or byte
//! lists), refused when a number is not a log-probability.

use serde_json::{json, Value};

use super::{EndpointCandidate, Method, Spelling};
use crate::model::tokenizer::Tokenizer;
use crate::openai::{
    ChatRequest, Choice, Common, Completion, CompletionRequest, Logprobs, LogprobsField,
    WireMessage,
};
use crate::score::{sampled, EndpointPosition};

/// The reference's vocabulary by the bytes each token stands for, to read the endpoint's
/// tokens (which come as strings, `bytes:\xNN` spellings, or byte lists).
pub(super) struct Vocab(std::collections::HashMap<Vec<u8>, u32>);

impl Vocab {
    pub(super) fn new(tokenizer: &Tokenizer) -> Self {
        let mut m = std::collections::HashMap::new();
        for id in 0..tokenizer.vocab_size() as u32 {
            m.entry(tokenizer.token_bytes(id)).or_insert(id);
        }
        Self(m)
    }

    /// A token as the endpoint spelled it: its bytes when given, else its text.
    pub(super) fn id(&self, token: &str, bytes: Option<&[u8]>) -> Option<u32> {
        let b = match bytes {
            Some(b) => b.to_vec(),
            None => match token.strip_prefix("bytes:") {
                Some(esc) => unescape_bytes(esc)?,
                None => token.as_bytes().to_vec(),
            },
        };
        self.0.get(&b).copied()
    }
}

/// `\xNN\xNN...` to bytes.
fn unescape_bytes(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let h = rest.strip_prefix("\\x")?;
        out.push(u8::from_str_radix(h.get(..2)?, 16).ok()?);
        rest = &h[2..];
    }
    Some(out)
}

/// What an echo request sent, to read its answer: the reference's tokens of it, from where
/// the echoed tokens must be these (the first may be a BOS the endpoint spells its own way),
/// and from where they are scored.
#[derive(Clone, Copy)]
pub(super) struct Echoed<'a> {
    pub(super) ids: &'a [u32],
    pub(super) check_from: usize,
    pub(super) score_from: usize,
}

/// The answer to one challenge, read from the endpoint's response.
pub(super) struct Answer {
    /// Positions with log-probabilities (echo / logprobs).
    pub(super) positions: Vec<EndpointPosition>,
    /// The endpoint's tokens in the reference vocabulary (logprobs / text).
    pub(super) tokens: Vec<u32>,
    /// Its text.
    pub(super) text: String,
    /// It stopped on an end token.
    pub(super) stopped: bool,
    /// Tokens it reported using.
    pub(super) usage: u64,
    /// Prompt tokens it reported reading, when it did.
    pub(super) prompt_tokens: Option<u64>,
    /// Why it cannot be scored the usual way.
    pub(super) note: Option<String>,
}

impl EndpointCandidate {
    pub(super) fn chat(&self) -> bool {
        self.endpoint.config().chat
    }

    pub(super) fn route(&self) -> &'static str {
        if self.chat() {
            "/chat/completions"
        } else {
            "/completions"
        }
    }

    /// The fields every request carries: the audit's decoding (greedy unless sampling was
    /// asked for) of up to `max_tokens`, every sampling parameter explicit, so that no server
    /// default can change the decoding. `seed_of`: each request carries a seed of its own
    /// (one fixed seed would draw every sampled answer with the same random numbers, and a
    /// server may sample although temperature 0 was asked).
    pub(super) fn decoding(&self, max_tokens: usize, seed_of: &str) -> Common {
        let s = &self.sampling;
        let seed = (sampled::jitter(seed_of, usize::MAX) * (1u64 << 31) as f64) as i64;
        Common {
            model: Some(self.endpoint.config().model.clone()),
            max_tokens: Some(max_tokens as i64),
            temperature: Some(s.temperature),
            top_p: Some(s.top_p),
            n: Some(1),
            presence_penalty: Some(0.0),
            frequency_penalty: Some(0.0),
            // Servers that know no such fields ignore them, or refuse them (the probe then
            // leaves them out): llama.cpp's server otherwise applies a repetition penalty of
            // 1.1, keeps the 40 most likely tokens and cuts below 5 % of the most likely.
            repeat_penalty: self.penalty_fields.then_some(1.0),
            repetition_penalty: self.penalty_fields.then_some(1.0),
            top_k: self.penalty_fields.then_some(s.top_k as i64),
            min_p: self.penalty_fields.then_some(0.0),
            seed: Some(seed),
            stream: false,
            ..Default::default()
        }
    }

    /// The request for a challenge: `ids` for echo (prompt + continuation as token ids), else
    /// the text (for echo-text, prompt + continuation). Every sampling parameter is explicit,
    /// so no server default can change the decoding.
    pub(super) fn request(&self, prompt: &str, ids: Option<&[u32]>) -> Value {
        let mut common = self.decoding(self.k, prompt);
        let top = self.top as i64;
        let (logprobs, top_logprobs) = match (self.method, self.spelling) {
            (Method::Text, _) | (_, Spelling::None) => (None, None),
            (_, Spelling::Count) => (Some(LogprobsField::Count(top)), None),
            (_, Spelling::Flag) => (Some(LogprobsField::Flag(true)), Some(top)),
        };
        let body = if self.chat() {
            serde_json::to_value(ChatRequest {
                common,
                messages: Some(vec![WireMessage {
                    role: "user".into(),
                    content: json!(prompt),
                }]),
                logprobs: logprobs.is_some(),
                top_logprobs,
                ..Default::default()
            })
        } else {
            let echo = self.method.echoes();
            if echo {
                // The echoed prompt is what is scored; one token must be generated, as some
                // servers refuse none.
                common.max_tokens = Some(1);
            }
            let prompt = match (self.method, ids) {
                (Method::Echo, Some(ids)) => json!(ids),
                _ => json!(prompt),
            };
            serde_json::to_value(CompletionRequest {
                common,
                prompt: Some(prompt),
                logprobs,
                top_logprobs,
                echo,
                ..Default::default()
            })
        };
        body.expect("wire types serialize")
    }

    /// Read a response. `sent`: for echo, what was sent.
    pub(super) fn answer(
        &self,
        body: &Value,
        sent: Option<Echoed<'_>>,
        tokenizer: &Tokenizer,
    ) -> Result<Answer, String> {
        let body: Completion = serde_json::from_value(body.clone())
            .map_err(|e| format!("the response is not an OpenAI answer ({e})"))?;
        let choice = body
            .choices
            .first()
            .ok_or("the response has no choices[0]")?;
        let usage = body.usage.as_ref().map_or(0, |u| u.total_tokens);
        let prompt_tokens = body
            .usage
            .as_ref()
            .map(|u| u.prompt_tokens)
            .filter(|&n| n > 0);
        let stopped = choice.finish_reason.as_deref() == Some("stop");
        let text = if self.chat() {
            choice.message.as_ref().and_then(|m| m.content.as_deref())
        } else {
            choice.text.as_deref()
        }
        .ok_or("the response has no text")?
        .to_string();
        let mut a = Answer {
            positions: Vec::new(),
            tokens: Vec::new(),
            text,
            stopped,
            usage,
            prompt_tokens,
            note: None,
        };
        if self.method == Method::Text {
            let ids = tokenizer
                .encode(&a.text)
                .map_err(|e| crate::with_causes(&e))?;
            let skip = usize::from(tokenizer.bos.is_some() && !ids.is_empty());
            a.tokens = ids[skip..].to_vec();
            return Ok(a);
        }
        let entries = self.entries(choice)?;
        match sent {
            Some(Echoed {
                ids,
                check_from,
                score_from,
            }) => {
                // Echo: the entries begin with the tokens sent (perhaps after a BOS the endpoint
                // added); those from `check_from` must be the reference's, and those from
                // `score_from` are compared.
                // The endpoint's index of the reference's token j is j + shift: 0, 1 (it added
                // a BOS of its own) or -1 (it leaves out the BOS the reference counts).
                let found = [0isize, 1, -1].into_iter().find(|&shift| {
                    let at = |j: usize| j.checked_add_signed(shift);
                    check_from >= 1
                        && score_from >= 1
                        && at(ids.len()).is_some_and(|end| entries.len() >= end)
                        && ids.iter().enumerate().skip(check_from).all(|(j, &t)| {
                            at(j)
                                .and_then(|i| entries.get(i))
                                .is_some_and(|e| e.token == Some(t))
                        })
                });
                match found {
                    Some(shift) => {
                        let at = |j: usize| j.checked_add_signed(shift).expect("checked");
                        a.positions = entries[at(score_from)..at(ids.len())].to_vec();
                        if a.positions.iter().any(|p| p.logprob.is_nan()) {
                            return Err("echoed tokens lack logprobs".into());
                        }
                    }
                    None => {
                        a.note = Some("the endpoint echoed tokens other than those sent: it does not use the reference's tokenizer".into());
                    }
                }
            }
            None => {
                if entries.iter().any(|e| e.logprob.is_nan()) {
                    return Err("generated tokens lack logprobs".into());
                }
                if entries.iter().any(|e| e.token.is_none()) {
                    a.note = Some(
                        "the endpoint produced tokens that are not in the reference's vocabulary"
                            .into(),
                    );
                }
                a.tokens = entries.iter().filter_map(|e| e.token).collect();
                a.positions = entries;
            }
        }
        Ok(a)
    }

    /// The per-token log-probability entries of a choice, in either wire format, refused
    /// when a log-probability is not a number at most 0.
    pub(super) fn entries(&self, choice: &Choice) -> Result<Vec<EndpointPosition>, String> {
        let entries = self.entries_unchecked(choice)?;
        // NaN stands for a JSON null (the first echoed token has no log-probability).
        let valid = |l: f64| l.is_nan() || (l.is_finite() && l <= 1e-3);
        for e in &entries {
            if !valid(e.logprob) || e.top.iter().any(|(_, l)| !valid(*l)) {
                return Err("a log-probability is not a number at most 0".into());
            }
        }
        Ok(entries)
    }

    pub(super) fn entries_unchecked(
        &self,
        choice: &Choice,
    ) -> Result<Vec<EndpointPosition>, String> {
        let lp: &Logprobs = choice
            .logprobs
            .as_ref()
            .ok_or("the response has no logprobs")?;
        if self.chat() {
            let content = lp.content.as_ref().ok_or("logprobs.content is missing")?;
            content
                .iter()
                .map(|e| {
                    let logprob = e.logprob.ok_or("a logprobs.content entry has no logprob")?;
                    let top = e
                        .top_logprobs
                        .iter()
                        .filter_map(|t| {
                            Some((self.vocab.id(&t.token, t.bytes.as_deref()), t.logprob?))
                        })
                        .collect();
                    Ok(EndpointPosition {
                        token: self.vocab.id(&e.token, e.bytes.as_deref()),
                        logprob,
                        top,
                    })
                })
                .collect()
        } else {
            let tokens = lp.tokens.as_ref().ok_or("logprobs.tokens is missing")?;
            let lps = lp
                .token_logprobs
                .as_ref()
                .ok_or("logprobs.token_logprobs is missing")?;
            if lps.len() != tokens.len() {
                return Err("logprobs.tokens and token_logprobs differ in length".into());
            }
            let tops = lp.top_logprobs.as_deref().unwrap_or_default();
            Ok(tokens
                .iter()
                .zip(lps)
                .enumerate()
                .map(|(i, (t, l))| {
                    let top = tops
                        .get(i)
                        .and_then(Option::as_ref)
                        .map(|m| {
                            m.iter()
                                .filter_map(|(s, l)| Some((self.vocab.id(s, None), l.as_f64()?)))
                                .collect()
                        })
                        .unwrap_or_default();
                    EndpointPosition {
                        token: self.vocab.id(t, None),
                        // The first echoed token has none (NaN: not comparable).
                        logprob: l.unwrap_or(f64::NAN),
                        top,
                    }
                })
                .collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_spellings_are_read_back() {
        assert_eq!(unescape_bytes("\\xe2\\x82"), Some(vec![0xe2, 0x82]));
        assert_eq!(unescape_bytes(""), Some(vec![]));
        assert_eq!(unescape_bytes("\\xz1"), None);
        assert_eq!(unescape_bytes("ab"), None);
    }
}
