#!/usr/bin/env bash
# The whole test suite: unit tests, statistics simulations, and the real-model integration
# tests (engine vs llama.cpp, pot diff verdicts, resume after kill, bad input, pot serve and
# pot audit: verdicts by every method, a misbehaving endpoint, 64 clients, the openai client,
# audits of llama.cpp's own server, and MLX checkpoints against the MLX runtime).
#
#   scripts/test.sh
#
# Fetches the three real models first (cached in ${POT_MODELS:-~/.cache/pot/models}) and builds
# optimized (model code is many times slower unoptimized) into ${CARGO_TARGET_DIR:-~/.cache/pot/target}.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pot/target}"
scripts/fetch-models.sh >/dev/null
# The official openai Python package checks `pot serve` (a client nobody here wrote); it lives
# in a venv beside the models, made once from PyPI.
venv="${POT_OPENAI_VENV:-$HOME/.cache/pot/openai-venv}"
if ! "$venv/bin/python" -c "import openai" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet openai
fi
export POT_OPENAI_PYTHON="$venv/bin/python"
# llama.cpp's own server (llama-cpp-python) is the third-party endpoint the audit tests run
# against: a C++ build of 10-25 minutes on 2 cores, made once into a venv beside the models.
llama="${POT_LLAMA_VENV:-$HOME/.cache/pot/llama-venv}"
if ! "$llama/bin/python" -c "import llama_cpp.server" 2>/dev/null; then
  echo "building llama-cpp-python (once, 10-25 minutes) into $llama" >&2
  python3 -m venv "$llama"
  CMAKE_ARGS="-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAVA_BUILD=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$llama/bin/pip" install --quiet 'llama-cpp-python[server]==0.3.36'
fi
export POT_LLAMA_PYTHON="$llama/bin/python"
# The MLX runtime (mlx[cpu] and mlx-lm, wheels from PyPI) converts and runs the MLX checkpoints
# pot reads natively: a venv beside the models, made once (about a minute).
mlx="${POT_MLX_VENV:-$HOME/.cache/pot/mlx-venv}"
if ! "$mlx/bin/python" -c "import mlx.core, mlx_lm" 2>/dev/null; then
  python3 -m venv "$mlx"
  "$mlx/bin/pip" install --quiet 'mlx[cpu]==0.32.4' 'mlx-lm==0.32.2'
fi
export POT_MLX_PYTHON="$mlx/bin/python"
# One test at a time: the integration tests load models of several GB each.
cargo test --release -- --test-threads=1
