//! A provider reached over HTTP: `pot serve --node-key` or any server speaking the same
//! routes. Jobs go to `/v1/completions` as token ids with a `pot.nonce`; openings are asked
//! for at `/v1/pot/open` in CBOR.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use super::{Provider, VerifyError};
use crate::commit::receipt::{JobRequest, OpenRequest, Opening, Receipt};
use crate::commit::wire::{self, Encoding, CBOR, MAX_MESSAGE_BYTES};

/// What `GET /v1/pot/node` says.
#[derive(Clone, Debug, Deserialize)]
pub struct NodeInfo {
    /// The node's public key (hex).
    pub node: String,
    /// The served model's name.
    pub model: String,
    /// Its canonical weight hash (hex).
    pub weight_hash: String,
    /// Its arithmetic.
    pub kernels: crate::model::Kernels,
}

/// An HTTP provider.
pub struct HttpProvider {
    base: String,
    client: reqwest::blocking::Client,
    api_key: Option<String>,
    /// Model name to send (the node's, once asked).
    pub model: Option<String>,
}

impl HttpProvider {
    /// A provider at `url` (with or without `/v1`).
    pub fn new(url: &str, api_key: Option<String>, timeout: Duration) -> Result<Self, VerifyError> {
        let client = reqwest::blocking::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| VerifyError::Provider {
                endpoint: url.into(),
                reason: e.to_string(),
            })?;
        let base = url.trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base).to_string();
        Ok(Self {
            base,
            client,
            api_key,
            model: None,
        })
    }

    fn err(&self, reason: impl std::fmt::Display) -> VerifyError {
        VerifyError::Provider {
            endpoint: self.base.clone(),
            reason: reason.to_string(),
        }
    }

    fn send(&self, rb: reqwest::blocking::RequestBuilder) -> Result<Vec<u8>, String> {
        let rb = match &self.api_key {
            Some(k) => rb.bearer_auth(k),
            None => rb,
        };
        let resp = rb.send().map_err(|e| format!("request failed ({e})"))?;
        let status = resp.status();
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_MESSAGE_BYTES as u64)
        {
            return Err(format!("the answer is over {MAX_MESSAGE_BYTES} bytes"));
        }
        let body = resp
            .bytes()
            .map_err(|e| format!("reading the answer failed ({e})"))?;
        if body.len() > MAX_MESSAGE_BYTES {
            return Err(format!("the answer is over {MAX_MESSAGE_BYTES} bytes"));
        }
        if !status.is_success() {
            let msg = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| {
                    String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()
                });
            return Err(format!("HTTP {status}: {msg}"));
        }
        Ok(body.to_vec())
    }

    /// Ask the node who it is.
    pub fn node_info(&mut self) -> Result<NodeInfo, VerifyError> {
        let body = self
            .send(self.client.get(format!("{}/v1/pot/node", self.base)))
            .map_err(|e| self.err(format!("{e}; is this a pot serve started with --node-key?")))?;
        let info: NodeInfo = serde_json::from_slice(&body)
            .map_err(|e| self.err(format!("/v1/pot/node answered something else ({e})")))?;
        self.model.get_or_insert(info.model.clone());
        Ok(info)
    }
}

impl Provider for HttpProvider {
    fn run(&mut self, r: &JobRequest, nonce: [u8; 32]) -> Result<Receipt, VerifyError> {
        let body = json!({
            "model": self.model,
            "prompt": r.prompt,
            "max_tokens": r.max_tokens,
            "temperature": r.temperature,
            "top_p": r.top_p,
            "seed": r.seed,
            "stop": r.stop,
            "pot": {"nonce": hex::encode(nonce)},
        });
        let answer = self
            .send(
                self.client
                    .post(format!("{}/v1/completions", self.base))
                    .json(&body),
            )
            .map_err(|e| self.err(e))?;
        let v: serde_json::Value = serde_json::from_slice(&answer)
            .map_err(|e| self.err(format!("the answer is not JSON ({e})")))?;
        let receipt = v
            .get("pot")
            .ok_or_else(|| self.err("the answer carries no receipt (\"pot\" field)"))?;
        serde_json::from_value(receipt.clone())
            .map_err(|e| self.err(format!("the receipt does not parse ({e})")))
    }

    fn open(&mut self, req: &OpenRequest) -> Result<Opening, String> {
        let body = wire::encode(req, Encoding::Cbor).map_err(|e| e.to_string())?;
        let answer = self.send(
            self.client
                .post(format!("{}/v1/pot/open", self.base))
                .header(reqwest::header::CONTENT_TYPE, CBOR)
                .header(reqwest::header::ACCEPT, CBOR)
                .body(body),
        )?;
        wire::decode(&answer, Encoding::Cbor).map_err(|e| e.to_string())
    }
}
