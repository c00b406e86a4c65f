//! pot: tell whether an inference provider serves the model it claims.
//!
//! The data path, one module per room:
//! `challenge` (keyed prompts) → `model` (engine) → `score` (per-challenge divergence) →
//! `stats` (anytime-valid decision) → `transcript` (append-only record), joined by `diff`.
//! `serve` is an OpenAI-compatible server for a local model.
//! `identity` names models by their weights; `variant` derives cheaper substitutes.
#![deny(missing_docs)]

pub mod challenge;
pub mod diff;
pub mod identity;
pub mod model;
pub mod score;
pub mod serve;
pub mod stats;
pub mod transcript;
pub mod variant;
