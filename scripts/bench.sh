#!/usr/bin/env bash
# Engine speed (prompt-eval and generation tokens/s, 2 threads) on the three real models, and
# the wall time and peak memory of the issue's decisions. Prints Markdown rows for BENCHMARKS.md.
#
#   scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
# The Python that has llama-cpp-python (the yardstick), e.g. a venv's: POT_LLAMA_PYTHON.
py="${POT_LLAMA_PYTHON:-python3}"
smol="$models/SmolLM2-135M-Instruct.Q4_1.gguf"
q05="$models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
q15="$models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
echo "| model | kernels | load s | prompt-eval tok/s (256) | generation tok/s (64) |"
echo "|---|---|---|---|---|"
for m in "$smol" "$q05" "$q15"; do
  for k in quantized dense; do
    "$pot" --threads 2 bench "$m" --kernels "$k" --json | python3 -c "import json,sys; d=json.load(sys.stdin); print(f\"| {d['model'].split('/')[-1]} | $k | {d['load_s']:.1f} | {d['prompt_eval_tok_s']:.0f} | {d['generation_tok_s']:.0f} |\")"
  done
done
# The 16-bit reference (issue 15): Qwen 0.5B re-encoded as f16, pot (half-precision kernels)
# and llama.cpp on the same file, alternating for POT_F16_ROUNDS rounds (default 7; this VM's
# speed moves by a third within minutes, so one round proves nothing), then the median of the
# per-round ratios; pot's f32 dense kernels once; peak RSS beside the file.
f16="${POT_MODELS:-$HOME/.cache/pot/models}/derived-ladder-v1/qwen05-f16.gguf"
[ -s "$f16" ] || { mkdir -p "$(dirname "$f16")"; "$pot" variant --to f16 "$q05" -o "$f16.part" 2>/dev/null && mv "$f16.part" "$f16"; }
echo
echo "| engine on $(basename "$f16") ($(du -m "$f16" | cut -f1) MB) | prompt-eval tok/s (256) | generation tok/s (64) | peak RSS GB |"
echo "|---|---|---|---|"
ratios=$(mktemp)
for round in $(seq 1 "${POT_F16_ROUNDS:-7}"); do
  kinds=quantized; [ "$round" = 1 ] && kinds="quantized dense"
  for k in $kinds; do
    /usr/bin/time -f "%M" -o /tmp/pot-bench-rss "$pot" --threads 2 bench "$f16" --kernels "$k" --json > /tmp/pot-bench.json
    [ "$k" = quantized ] && cp /tmp/pot-bench.json /tmp/pot-bench-q.json
    python3 -c "import json; d=json.load(open('/tmp/pot-bench.json')); rss=int(open('/tmp/pot-bench-rss').read().split()[-1])/2**20; print(f\"| pot --kernels $k (round $round) | {d['prompt_eval_tok_s']:.0f} | {d['generation_tok_s']:.1f} | {rss:.2f} |\")"
  done
  if "$py" -c "import llama_cpp" 2>/dev/null; then
    line=$("$py" scripts/llamacpp-yardstick.py --speed "$f16")
    echo "$line" | sed -n 's/^llama.cpp [^:]*: prompt-eval \([0-9.]*\) tok\/s, generation \([0-9.]*\) tok\/s, peak RSS \([0-9.]*\) GB/| llama.cpp (round '"$round"') | \1 | \2 | \3 |/p'
    echo "$line" | sed -n 's/^llama.cpp [^:]*: prompt-eval \([0-9.]*\) tok\/s, generation \([0-9.]*\) tok\/s.*/\1 \2/p' | python3 -c "import json,sys; p,g=map(float,sys.stdin.read().split()); d=json.load(open('/tmp/pot-bench-q.json')); print(d['prompt_eval_tok_s']/p, d['generation_tok_s']/g)" >> "$ratios"
  fi
done
if [ -s "$ratios" ]; then
  python3 -c "import statistics,sys; r=[tuple(map(float,l.split())) for l in open('$ratios')]; print(); print(f'pot / llama.cpp on the f16 file, median of {len(r)} rounds: prompt-eval {statistics.median(x for x,_ in r):.2f}x (rounds {min(x for x,_ in r):.2f}-{max(x for x,_ in r):.2f}), generation {statistics.median(y for _,y in r):.2f}x (rounds {min(y for _,y in r):.2f}-{max(y for _,y in r):.2f})')"
fi
rm -f "$ratios"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
# One fixed key and run id: every run below sees the same challenges (each run keeps its
# transcript in a folder of its own).
"$pot" keygen --out "$tmp/key" 2>/dev/null
n=0
echo
echo "| decision | verdict | queries | wall s | peak RSS GB |"
echo "|---|---|---|---|---|"
run() { # label ref cand [flags...]
  local label=$1 ref=$2 cand=$3; shift 3
  n=$((n + 1)); mkdir "$tmp/$n"
  /usr/bin/time -f "%M" -o "$tmp/rss" "$pot" --threads 2 diff --json --key-file "$tmp/key" \
    --run-id bench --transcripts "$tmp/$n" --ref "$ref" --cand "$cand" "$@" > "$tmp/out.json" || true
  python3 -c "import json; d=json.load(open('$tmp/out.json')); rss=int(open('$tmp/rss').read().split()[-1])/2**20; print(f\"| $label | {d['decision']} | {d['queries']} | {d['elapsed_s']:.1f} | {rss:.2f} |\")"
}
run "Qwen 0.5B vs 1.5B" "$q05" "$q15"
run "Qwen 0.5B vs 1.5B, --one-at-a-time 5" "$q05" "$q15" --one-at-a-time 5
run "Qwen 1.5B vs 0.5B" "$q15" "$q05"
run "SmolLM2 self" "$smol" "$smol"
run "SmolLM2 vs Qwen 0.5B" "$smol" "$q05"
run "Qwen 0.5B vs 1.5B, --kernels dense" "$q05" "$q15" --kernels dense
# llama.cpp on the same machine and files, measured just now (speed varies between runs and
# days on a shared VM, so compare side by side): only where llama-cpp-python is installed.
if "$py" -c "import llama_cpp" 2>/dev/null; then
  echo
  "$py" scripts/llamacpp-yardstick.py "$models"
else
  echo
  echo "(llama-cpp-python not installed: no llama.cpp figures side by side)"
fi
