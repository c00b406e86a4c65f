#!/usr/bin/env bash
# The whole test suite: unit tests, statistics simulations, and the real-model integration
# tests (engine vs llama.cpp, pot diff verdicts, resume after kill, bad input).
#
#   scripts/test.sh
#
# Fetches the three real models first (cached in ${POT_MODELS:-~/.cache/pot/models}) and builds
# optimized (model code is many times slower unoptimized) into ${CARGO_TARGET_DIR:-~/.cache/pot/target}.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pot/target}"
scripts/fetch-models.sh >/dev/null
# One test at a time: the integration tests load models of several GB each.
cargo test --release -- --test-threads=1
