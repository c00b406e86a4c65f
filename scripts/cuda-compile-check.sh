#!/usr/bin/env bash
# Compile-check the `cuda` feature on a machine without a GPU or a CUDA install (issue 18
# part 4): NVIDIA's CUDA 13.0 compiler from PyPI wheels (nvcc, its crt headers, cicc, the
# runtime headers and CCCL) in a venv beside the models, then `cargo check --features cuda`
# for every target, which runs candle-kernels' build script (nvcc compiles every CUDA kernel
# candle uses) and type-checks pot's device code path against candle's CUDA backend. It does
# not link (the CUDA driver and cuBLAS are not installed) and runs nothing.
#
#   scripts/cuda-compile-check.sh        (about 17 minutes on 2 cores, most of it nvcc)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${POT_CUDA_VENV:-$HOME/.cache/pot/cuda-venv}"
if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
# One CUDA release throughout: nvcc's generated stubs must match its crt headers.
"$venv/bin/pip" install --quiet "nvidia-cuda-nvcc==13.0.88" "nvidia-cuda-crt==13.0.88" \
  "nvidia-nvvm==13.0.88" "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-cccl==13.0.85"
cuda=$(ls -d "$venv"/lib/python3*/site-packages/nvidia/cu13)
export PATH="$cuda/bin:$PATH" CUDA_ROOT="$cuda" CUDA_PATH="$cuda" CUDA_TOOLKIT_ROOT_DIR="$cuda"
# The GPU generation to compile for (H100/H200: 90); no nvidia-smi here to ask.
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export CARGO_TARGET_DIR="${POT_CUDA_TARGET:-$HOME/.cache/pot/target-cuda}"
nvcc --version | tail -2
start=$(date +%s)
cargo check --release --features cuda --all-targets
echo "cargo check --features cuda: passed in $(( $(date +%s) - start )) s"
