#!/usr/bin/env bash
# Fetch the real models and run real diffs: the paid-for Qwen2.5-Coder-1.5B against the cheaper
# 0.5B served in its place (DIFFERENT), and SmolLM2 against itself (SAME).
#
#   scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
set +e
echo "== claimed Qwen2.5-Coder-1.5B, served 0.5B =="
"$pot" diff --ref "$models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf" --cand "$models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf" --mode audit
echo "exit code $? (0 SAME, 1 DIFFERENT, 2 error, 3 UNDECIDED)"
echo "== SmolLM2 against itself =="
"$pot" diff --ref "$models/SmolLM2-135M-Instruct.Q4_1.gguf" --cand "$models/SmolLM2-135M-Instruct.Q4_1.gguf" --mode audit
echo "exit code $?"
