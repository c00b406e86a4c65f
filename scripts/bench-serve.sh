#!/usr/bin/env bash
# Figures for BENCHMARKS.md (issue 3): `pot serve` throughput and latency at 1, 8 and 64
# concurrent clients, and the queries and wall time of each audit case, per method.
#
#   scripts/bench-serve.sh            # SmolLM2 load test, then the six Qwen audit cases
#
# Results print as JSON lines; the audit transcripts go to a temporary folder.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
SMOL=SmolLM2-135M-Instruct.Q4_1.gguf
QWEN05=qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
QWEN15=qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT

start_server() { # model, extra flags... ; sets $url
  "$pot" serve --model "$1" --port 0 --model-name vendor "${@:2}" 2>"$tmp/serve.log" &
  for _ in $(seq 300); do
    url=$(grep -o 'http://[0-9.:]*' "$tmp/serve.log" | head -1 || true)
    [ -n "$url" ] && return
    sleep 0.2
  done
  echo "pot serve did not start" >&2; exit 2
}

echo "# pot serve, SmolLM2-135M Q4_1, 32 tokens per request, 4 requests per client"
start_server "$models/$SMOL" --max-queue 64 --max-batch 8
python3 scripts/bench-serve.py "$url" vendor --clients 1,8,64 --requests 4 --max-tokens 32
kill %1; wait 2>/dev/null || true

echo "# pot serve, Qwen2.5-Coder-0.5B Q4_K_M, 32 tokens per request"
start_server "$models/$QWEN05" --max-queue 64 --max-batch 8
python3 scripts/bench-serve.py "$url" vendor --clients 1,8 --requests 4 --max-tokens 32

echo "# pot audit of that server (it serves 0.5B): queries and wall time to decide"
printf '%064x\n' 3 > "$tmp/key"
for how in "--method echo" "--method logprobs" "--chat --method logprobs" "--method text" "--chat --method text"; do
  for ref in "$QWEN05" "$QWEN15"; do
    # shellcheck disable=SC2086
    "$pot" audit --ref "$models/$ref" --endpoint "$url" --model vendor $how --json \
      --key-file "$tmp/key" --run-id "bench-$(echo "$how$ref" | tr -c 'a-z0-9' '-')" --transcripts "$tmp" \
      | python3 -c "import json,sys; v=json.load(sys.stdin); print(json.dumps({'how': '$how', 'ref': '$ref', 'decision': v['decision'], 'queries': v['queries'], 'seconds': round(v['elapsed_s'], 1), 'mean': round(v['mean'], 4), 'tokens_used': v['tokens_used']}))" || true
  done
done
