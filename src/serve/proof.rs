//! The provider's side of proof of inference in `pot serve`.
//!
//! With `--node-key`, a request that carries `"pot": {"nonce": "<64 hex>"}` is committed: the
//! engine records each step's data ([`crate::commit::step`]), and the answer carries a signed
//! [`Receipt`] under `"pot"` (in a last chunk before `[DONE]` when streamed). The steps are
//! kept in the store (`--store`) for audits. Routes:
//! * `GET /v1/pot/node`: the node's public key, weight hash, arithmetic and scheme;
//! * `POST /v1/pot/open`: an [`OpenRequest`] (JSON, or CBOR with `Content-Type:
//!   application/cbor`) → an [`Opening`] of the VRF-chosen steps, in the encoding `Accept`
//!   names. The provider checks the router's VRF proof first: it opens only the steps the
//!   proof picks, at most [`MAX_OPEN_STEPS`].

use axum::extract::{Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::api::ApiError;
use super::engine::Committed;
use super::{authorize, body_bytes, error, St};
use crate::commit::receipt::{open, JobRequest, OpenRequest, Opening, Receipt, OPEN_VERSION};
use crate::commit::store::StoredJob;
use crate::commit::wire::{self, Encoding, MAX_OPEN_STEPS};

/// What a committed request needs at its end.
pub struct Pending {
    /// The client's nonce.
    pub nonce: [u8; 32],
    /// The request as run.
    pub request: JobRequest,
}

fn not_committing() -> ApiError {
    ApiError {
        status: 404,
        kind: "invalid_request_error",
        code: Some("proof_not_enabled"),
        param: None,
        message: "this server does not commit to its work; start it with --node-key".into(),
    }
}

/// A failure of the server's own (500), its causes on one line.
fn server_error(e: impl std::error::Error) -> ApiError {
    ApiError::internal(crate::with_causes(&e))
}

/// Sign a finished job's receipt and keep its steps: the receipt as JSON.
pub(crate) async fn seal(
    st: &St,
    pending: Pending,
    committed: Committed,
) -> Result<Value, ApiError> {
    let receipt = seal_receipt(st, pending, committed).await?;
    serde_json::to_value(&receipt).map_err(server_error)
}

/// Sign a finished job's receipt and keep its steps.
pub(crate) async fn seal_receipt(
    st: &St,
    pending: Pending,
    committed: Committed,
) -> Result<Receipt, ApiError> {
    let (Some(prover), Some(store)) = (st.prover.clone(), st.store.clone()) else {
        return Err(not_committing());
    };
    let job_id: [u8; 16] = rand::random();
    let now = crate::transcript::unix_now_ms();
    let receipt = prover
        .commit(
            job_id,
            pending.nonce,
            pending.request,
            committed.output,
            &committed.steps,
            now,
        )
        .map_err(server_error)?;
    let job = StoredJob {
        receipt: receipt.clone(),
        steps: committed.steps,
    };
    tokio::task::spawn_blocking(move || store.put(&job, now))
        .await
        .map_err(server_error)?
        .map_err(server_error)?;
    Ok(receipt)
}

/// `GET /v1/pot/node`.
pub(crate) async fn node(State(st): State<St>) -> Response {
    let Some(p) = &st.prover else {
        return error(not_committing());
    };
    Json(json!({
        "version": crate::commit::receipt::VERSION,
        "node": hex::encode(p.key.public().to_bytes()),
        "model": st.name,
        "weight_hash": st.identity.weight_hash,
        "kernels": p.kernels,
        "top_k": crate::commit::step::TOP_K,
        "scale": crate::commit::step::SCALE,
        "retention_s": st.cfg.retention.as_secs(),
    }))
    .into_response()
}

/// `POST /v1/pot/open`.
pub(crate) async fn open_steps(State(st): State<St>, req: Request) -> Response {
    match open_inner(&st, req).await {
        Ok(r) => r,
        Err(e) => error(e),
    }
}

fn media(req: &Request, h: header::HeaderName) -> Encoding {
    Encoding::from_media_type(req.headers().get(h).and_then(|v| v.to_str().ok()))
}

async fn open_inner(st: &St, req: Request) -> Result<Response, ApiError> {
    authorize(st, req.headers())?;
    if st.store.is_none() {
        return Err(not_committing());
    }
    let (input, output) = (
        media(&req, header::CONTENT_TYPE),
        media(&req, header::ACCEPT),
    );
    let body = body_bytes(st, req).await?;
    let r: OpenRequest = wire::decode(&body, input)
        .map_err(|e| ApiError::invalid("body", crate::with_causes(&e)))?;
    let opening = open_job(st, r).await?;
    let bytes = wire::encode(&opening, output).map_err(server_error)?;
    Ok(([(header::CONTENT_TYPE, output.media_type())], bytes).into_response())
}

/// Open the steps of a stored job that a router's VRF proof picks (at most
/// [`MAX_OPEN_STEPS`]).
pub(crate) async fn open_job(st: &St, r: OpenRequest) -> Result<Opening, ApiError> {
    let Some(store) = st.store.clone() else {
        return Err(not_committing());
    };
    if r.version != OPEN_VERSION {
        return Err(ApiError::invalid(
            "version",
            format!(
                "open request version {} is not supported (this server speaks {OPEN_VERSION})",
                r.version
            ),
        ));
    }
    if r.selection.count as usize > MAX_OPEN_STEPS {
        return Err(ApiError::invalid(
            "selection.count",
            format!("at most {MAX_OPEN_STEPS} steps per opening; ask again for more"),
        ));
    }
    let id = r.job_id.0;
    let now = crate::transcript::unix_now_ms();
    let job = tokio::task::spawn_blocking(move || store.get(&id, now))
        .await
        .map_err(server_error)?
        .map_err(server_error)?
        .ok_or_else(|| ApiError {
            status: 404,
            kind: "invalid_request_error",
            code: Some("job_not_found"),
            param: Some("job_id".into()),
            message: format!(
                "job {} is unknown or past this server's retention of {} s",
                r.job_id,
                st.cfg.retention.as_secs()
            ),
        })?;
    let receipt: &Receipt = &job.receipt;
    let indices = r
        .selection
        .verify(&receipt.digest(), receipt.steps)
        .map_err(|e| ApiError::invalid("selection", crate::with_causes(&e)))?;
    let steps = open(&receipt.job_id.0, &job.steps, &indices).map_err(server_error)?;
    Ok(Opening {
        version: OPEN_VERSION,
        job_id: r.job_id,
        steps,
    })
}
