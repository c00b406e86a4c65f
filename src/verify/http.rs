//! A provider reached over HTTP: `pot serve --node-key` or any server speaking the same
//! routes. Jobs go to `/v1/completions` as token ids with a `pot.nonce`; openings are asked
//! for at `/v1/pot/open` in CBOR. Both go through the one client of [`crate::openai`], with
//! its timeouts, retries and size limits.

use serde::Deserialize;

use super::{Provider, VerifyError};
use crate::commit::receipt::{JobRequest, OpenRequest, Opening, Receipt};
use crate::commit::wire::{self, Encoding, CBOR, MAX_MESSAGE_BYTES};
use crate::openai::{
    ClientError, Common, Completion, CompletionRequest, Endpoint, EndpointConfig, PotField, Stop,
};

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
    endpoint: Endpoint,
    /// Model name to send (the node's, once asked).
    pub model: Option<String>,
}

impl HttpProvider {
    /// A provider at `cfg.url` (with or without `/v1`); `cfg.model`, when not empty, is the
    /// model name sent with jobs (else the node's own, once asked).
    pub fn new(cfg: EndpointConfig) -> Result<Self, VerifyError> {
        let model = Some(cfg.model.clone()).filter(|m| !m.is_empty());
        let url = cfg.url.clone();
        let endpoint = Endpoint::new(cfg).map_err(|e| VerifyError::Provider {
            endpoint: url,
            source: e,
        })?;
        Ok(Self { endpoint, model })
    }

    fn err(&self, e: ClientError) -> VerifyError {
        VerifyError::Provider {
            endpoint: self.endpoint.config().url.clone(),
            source: e,
        }
    }

    /// An answer that came back whole but says something else.
    fn unreadable(&self, route: &str, what: String) -> VerifyError {
        VerifyError::Answer {
            url: self.endpoint.url(route),
            what,
        }
    }

    /// Ask the node who it is.
    pub fn node_info(&mut self) -> Result<NodeInfo, VerifyError> {
        let route = "/pot/node";
        let ex = self.endpoint.get(route).map_err(|e| self.err(e))?;
        let info: NodeInfo = serde_json::from_value(ex.body).map_err(|e| {
            self.unreadable(
                route,
                format!(
                    "this is not a pot node ({e}); is this a pot serve started with --node-key?"
                ),
            )
        })?;
        self.model.get_or_insert(info.model.clone());
        Ok(info)
    }
}

impl Provider for HttpProvider {
    fn run(&mut self, r: &JobRequest, nonce: [u8; 32]) -> Result<Receipt, VerifyError> {
        let route = "/completions";
        let request = CompletionRequest {
            common: Common {
                model: self.model.clone(),
                max_tokens: Some(i64::from(r.max_tokens)),
                temperature: Some(r.temperature),
                top_p: Some(r.top_p),
                seed: Some(r.seed as i64),
                stop: Some(Stop::Many(r.stop.clone())),
                pot: Some(PotField {
                    nonce: Some(hex::encode(nonce)),
                }),
                ..Default::default()
            },
            prompt: Some(serde_json::json!(r.prompt)),
            ..Default::default()
        };
        let ex = self
            .endpoint
            .post(route, &request)
            .map_err(|e| self.err(e))?;
        let answer: Completion = serde_json::from_value(ex.body)
            .map_err(|e| self.unreadable(route, format!("not a completion ({e})")))?;
        let receipt = answer.pot.ok_or_else(|| {
            self.unreadable(
                route,
                "the answer carries no receipt (\"pot\" field)".into(),
            )
        })?;
        serde_json::from_value(receipt)
            .map_err(|e| self.unreadable(route, format!("the receipt does not parse ({e})")))
    }

    fn open(&mut self, req: &OpenRequest) -> Result<Opening, String> {
        let body = wire::encode(req, Encoding::Cbor).map_err(|e| crate::with_causes(&e))?;
        let ex = self
            .endpoint
            .post_bytes("/pot/open", CBOR, &body, MAX_MESSAGE_BYTES)
            .map_err(|e| crate::with_causes(&e))?;
        wire::decode(&ex.body, Encoding::Cbor).map_err(|e| crate::with_causes(&e))
    }
}
