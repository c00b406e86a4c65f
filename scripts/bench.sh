#!/usr/bin/env bash
# Engine speed (prompt-eval and generation tokens/s, 2 threads) on the three real models, and
# the wall time of the issue's decisions. Prints Markdown rows for BENCHMARKS.md.
#
#   scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pot/target}"
models=$(scripts/fetch-models.sh)
cargo build --release --quiet
pot="$CARGO_TARGET_DIR/release/pot"
smol="$models/SmolLM2-135M-Instruct.Q4_1.gguf"
q05="$models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
q15="$models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
echo "| model | kernels | load s | prompt-eval tok/s (256) | generation tok/s (64) |"
echo "|---|---|---|---|---|"
for m in "$smol" "$q05" "$q15"; do
  for k in dense quantized; do
    "$pot" --threads 2 bench "$m" --kernels "$k" --json | python3 -c "import json,sys; d=json.load(sys.stdin); print(f\"| {d['model'].split('/')[-1]} | $k | {d['load_s']:.1f} | {d['prompt_eval_tok_s']:.0f} | {d['generation_tok_s']:.0f} |\")"
  done
done
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
echo
echo "| decision | verdict | queries | wall s |"
echo "|---|---|---|---|"
run() { # label ref cand
  local t0=$(date +%s.%N)
  "$pot" --threads 2 diff --json --transcripts "$tmp" --ref "$2" --cand "$3" > "$tmp/out.json" || true
  local t1=$(date +%s.%N)
  python3 -c "import json; d=json.load(open('$tmp/out.json')); print(f\"| $1 | {d['decision']} | {d['queries']} | {$t1-$t0:.1f} |\")"
}
run "Qwen 0.5B vs 1.5B" "$q05" "$q15"
run "Qwen 1.5B vs 0.5B" "$q15" "$q05"
run "SmolLM2 self" "$smol" "$smol"
run "SmolLM2 vs Qwen 0.5B" "$smol" "$q05"
