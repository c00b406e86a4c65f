#!/usr/bin/env bash
# Figures for BENCHMARKS.md (issue 4): what proof of inference costs and catches.
#
#   scripts/bench-proof.sh          # about 25 minutes on 2 cores
#
# 1. examples/commit_cost on Qwen2.5-Coder-0.5B: commitment overhead (end to end and per part),
#    receipt and opening bytes per token (JSON, CBOR), the router's audit cost.
# 2. pot serve of Qwen 0.5B at 1 and 8 clients, plain requests and committed ones (--pot),
#    alternating, so batching's effect on the overhead shows.
# 3. examples/selective_cheating: Qwen 1.5B claimed, 0.5B on a fraction of the steps;
#    detection against the number of audited steps.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
QWEN05=qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
QWEN15=qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
cargo build --release --quiet --examples
ex="$CARGO_TARGET_DIR/release/examples"

echo "# commit_cost: Qwen 0.5B, 8 jobs of up to 64 tokens, 3 rounds"
"$ex/commit_cost" "$models/$QWEN05" 8 64 3

echo "# pot serve --node-key, Qwen 0.5B: plain and committed requests, 32 tokens"
"$pot" keygen --node -o "$tmp/node.key" >/dev/null
"$pot" serve --model "$models/$QWEN05" --port 0 --model-name vendor --max-batch 8 \
  --node-key "$tmp/node.key" --store "$tmp/steps.redb" 2>"$tmp/serve.log" &
for _ in $(seq 300); do
  url=$(grep -o 'http://[0-9.:]*' "$tmp/serve.log" | head -1 || true)
  [ -n "$url" ] && break
  sleep 0.2
done
[ -n "$url" ] || { echo "pot serve did not start" >&2; exit 2; }
for round in 1 2; do
  python3 scripts/bench-serve.py "$url" vendor --clients 1,8 --requests 4 --max-tokens 32
  python3 scripts/bench-serve.py "$url" vendor --clients 1,8 --requests 4 --max-tokens 32 --pot
done
kill %1; wait 2>/dev/null || true

echo "# selective_cheating: Qwen 1.5B claimed, 0.5B on a fraction of the steps"
"$ex/selective_cheating" "$models/$QWEN15" "$models/$QWEN05" 16 32 1,0.5,0.2,0.1
