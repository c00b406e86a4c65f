//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The model cache of `scripts/fetch-models.sh`.
pub fn models_dir() -> PathBuf {
    match std::env::var_os("POT_MODELS") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/pot/models"),
    }
}

/// A fetched model file; panics with the fix when it is missing.
pub fn model_path(name: &str) -> PathBuf {
    let p = models_dir().join(name);
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch-models.sh first",
        p.display()
    );
    p
}

pub const SMOL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const QWEN05: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";
pub const QWEN15: &str = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf";
