#!/usr/bin/env bash
# The network's integration test with the issue's models (the #[ignore] test of
# tests/node_real.rs): an honest provider of Qwen2.5-Coder 1.5B, one serving the 0.5B while
# advertising the 1.5B's weight hash, one serving the 0.5B that forges the 1.5B's hash into its
# receipts, and one that stalls; two routers holding the 1.5B; requests through the router's
# OpenAI API (and the official openai client). Prints discovery, latency, ban times and bytes
# on the wire. Minutes on 2 cores; needs what scripts/test.sh sets up (models, openai venv).
#
#   scripts/experiments-network.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pot/target}"
export POT_OPENAI_PYTHON="${POT_OPENAI_PYTHON:-${POT_OPENAI_VENV:-$HOME/.cache/pot/openai-venv}/bin/python}"
cargo test --release --test node_real -- --ignored --test-threads=1 --nocapture
