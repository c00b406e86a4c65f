#!/usr/bin/env bash
# Repeated runs with fresh keys over the real pairs, appended to experimental_results/.
#
#   scripts/run-experiments.sh                  # the small set: 10 runs per pair, quick mode (about 1 h)
#   scripts/run-experiments.sh --full           # the full set: 30 runs per pair in quick, audit and extended mode (estimated 6.5 h)
#   scripts/run-experiments.sh --runs 5 --modes audit --pairs "smol-self qwen-1.5b-0.5b"
#   scripts/run-experiments.sh --estimate       # print the plan and its time estimate, run nothing
#   scripts/run-experiments.sh --list           # the pairs
#
# Every run is `pot diff` (or `pot audit` against a local `pot serve`, or the fixed-N baseline
# in baselines/) with a fresh challenge key and run id, so runs are independent draws.
# Results append to:
#   experimental_results/runs.csv     one row per run: pair, method, mode, decision, queries,
#                                     mean, bounds, seconds, exit code, pot commit
#   experimental_results/queries.csv  one row per challenge of every run: score and the bounds
#                                     after it (what `pot report` plots and pools)
# Transcripts stay in $POT_EXPERIMENTS/transcripts (default ~/.cache/pot/experiments).
# Which verdict is right for a pair is not written here: `pot report` estimates each pair's mean
# score from all its challenges and judges every verdict against the margins γ and δ.
# The machine it was measured on has 2 cores; --threads (default 2) sets the engine's threads.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=10 modes="quick" pairs="" estimate=0 list=0 threads=2 methods="pot baseline"
while [ $# -gt 0 ]; do
  case "$1" in
    --full) runs=30 modes="quick audit extended" ;;
    --runs) runs=$2; shift ;;
    --modes) modes=$2; shift ;;
    --pairs) pairs=$2; shift ;;
    --methods) methods=$2; shift ;;
    --threads) threads=$2; shift ;;
    --estimate) estimate=1 ;;
    --list) list=1 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "run-experiments.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
command -v jq >/dev/null || { echo "run-experiments.sh: needs jq (apt-get install jq)" >&2; exit 2; }

# name | kind (diff, audit) | reference | candidate (a model, or what the endpoint serves) | est. s per run (quick)
all_pairs="
smol-self|diff|smol|smol|4
smol-f16|diff|smol|smol-f16|5
smol-q8_0|diff|smol|smol-q8_0|5
smol-q4_0|diff|smol|smol-q4_0|8
smol-q3_k|diff|smol|smol-q3_k|5
smol-q2_k|diff|smol|smol-q2_k|4
smol-prune1|diff|smol|smol-prune1|4
smol-noise0.02|diff|smol|smol-noise0.02|8
smol-noise0.1|diff|smol|smol-noise0.1|4
qwen-0.5b-self|diff|qwen05|qwen05|12
qwen-1.5b-0.5b|diff|qwen15|qwen05|18
smol-qwen-0.5b|diff|smol|qwen05|6
serve-smol-self|audit|smol|smol|8
serve-smol-q2_k|audit|smol|smol-q2_k|6
qwenf16-self|diff|qwenf16|qwenf16|30
qwenf16-q4km|diff|qwenf16|qwen05|30
qwenf16-bf16|diff|qwenf16|qwenf16-bf16|30
qwenf16-q8_0|diff|qwenf16|qwenf16-q8_0|30
qwenf16-q6_k|diff|qwenf16|qwenf16-q6_k|30
qwenf16-q5_k|diff|qwenf16|qwenf16-q5_k|25
qwenf16-q5_0|diff|qwenf16|qwenf16-q5_0|40
qwenf16-q4_k|diff|qwenf16|qwenf16-q4_k|35
qwenf16-q4_0|diff|qwenf16|qwenf16-q4_0|20
qwenf16-q3_k|diff|qwenf16|qwenf16-q3_k|20
qwenf16-q2_k|diff|qwenf16|qwenf16-q2_k|20
serve-qwenf16-self|audit|qwenf16|qwenf16|40
serve-qwenf16-q4_0|audit|qwenf16|qwenf16-q4_0|30
"
[ -n "$pairs" ] || pairs=$(echo "$all_pairs" | awk -F'|' 'NF>1{print $1}' | tr '\n' ' ')
if [ "$list" = 1 ]; then echo "$all_pairs" | awk -F'|' 'NF>1{printf "%-18s %-6s ref %-8s cand %s\n",$1,$2,$3,$4}'; exit 0; fi

# Plan and estimate. Audit mode costs about 1.5x quick (K = 32 instead of 16); extended about
# 3x (K = 64); the baseline about 3x a quick pot run (it generates N = 20 greedy continuations
# from both models). A pair whose mean score lies between a mode's margins can run to its
# budget (50, 200 or 1000 challenges). The qwenf16 pairs are the quantization ladder of Qwen
# 0.5B as an f16 claimed model (issue 15): their estimates are audit-mode seconds already.
total=0
for p in $pairs; do
  line=$(echo "$all_pairs" | grep "^$p|") || { echo "run-experiments.sh: unknown pair $p (see --list)" >&2; exit 2; }
  s=$(echo "$line" | cut -d'|' -f5)
  for m in $modes; do
    case $m in audit) f=15 ;; extended) f=30 ;; *) f=10 ;; esac
    case $p in *qwenf16*) f=$((f * 10 / 15)) ;; esac
    for meth in $methods; do
      [ "$meth" = baseline ] && { [ "$m" = quick ] || continue; [ "$(echo "$line" | cut -d'|' -f2)" = diff ] || continue; f=30; }
      total=$((total + runs * s * f / 10))
    done
  done
done
echo "plan: pairs [$pairs] × modes [$modes] × methods [$methods] × $runs runs: about $((total / 60)) min on 2 cores" >&2
[ "$estimate" = 1 ] && exit 0

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pot/target}"
models=$(scripts/fetch-models.sh)
[ -n "${POT_BIN:-}" ] || cargo build --release --quiet --bin pot --example fixed-n
pot="${POT_BIN:-$CARGO_TARGET_DIR/release/pot}"
baseline="${POT_BASELINE_BIN:-$CARGO_TARGET_DIR/release/examples/fixed-n}"
work="${POT_EXPERIMENTS:-$HOME/.cache/pot/experiments}"
mkdir -p "$work/transcripts" "$work/variants" experimental_results
# The commit the pot binary was built from (`pot --version` says it), not the checkout's.
commit=$("$pot" --version | sed -n 's/.*(\([0-9a-f]\{7\}\)[0-9a-f]*\(-dirty\)\{0,1\}).*/\1\2/p')
[ -n "$commit" ] || commit=unknown

smol="$models/SmolLM2-135M-Instruct.Q4_1.gguf"
model_file() {
  case "$1" in
    smol) echo "$smol" ;;
    qwen05) echo "$models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf" ;;
    qwen15) echo "$models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf" ;;
    smol-*|qwenf16*)
      local out="$work/variants/$1.gguf" args src="$smol"
      case "$1" in
        smol-prune1) args="--to f16 --prune-layers 1" ;;
        smol-noise*) args="--to f16 --noise ${1#smol-noise}" ;;
        smol-*) args="--to ${1#smol-}" ;;
        # The claimed full-precision model: Qwen 0.5B's Q4_K_M file re-encoded as f16; its
        # ladder rungs are made from that f16.
        qwenf16) args="--to f16"; src="$models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf" ;;
        qwenf16-*) args="--to ${1#qwenf16-}"; src=$(model_file qwenf16) ;;
      esac
      # Made once; written to a temporary name first so a killed run leaves no half file.
      [ -s "$out" ] || { "$pot" variant $args -o "$out.part" "$src" >&2 && mv "$out.part" "$out"; }
      echo "$out" ;;
  esac
}

runs_csv=experimental_results/runs.csv
queries_csv=experimental_results/queries.csv
[ -s "$runs_csv" ] || echo "finished_utc,pair,kind,method,mode,run_id,decision,queries,mean,lower,upper,alpha,gamma,delta,clip,elapsed_s,wall_s,exit_code,threads,pot_commit" > "$runs_csv"
[ -s "$queries_csv" ] || echo "run_id,pair,method,mode,index,family,score,mean,lower,upper" > "$queries_csv"

server_pid=""
stop_server() { [ -z "$server_pid" ] || { kill "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null || true; server_pid=""; }; }
trap stop_server EXIT
port=${POT_PORT:-18431}  # POT_PORT: another port for a second run beside this one
start_server() { # model file
  stop_server
  "$pot" serve --model "$1" --model-name vendor --port $port --max-batch 1 --threads "$threads" 2>"$work/serve.log" &
  server_pid=$!
  for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$port/v1/models" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "run-experiments.sh: pot serve did not come up (see $work/serve.log)" >&2; exit 2
}

record() { # pair kind method mode json exit wall
  local pair=$1 kind=$2 method=$3 mode=$4 json=$5 code=$6 wall=$7
  echo "$json" | jq -r --arg pair "$pair" --arg kind "$kind" --arg method "$method" --arg mode "$mode" \
      --arg code "$code" --arg wall "$wall" --arg threads "$threads" --arg commit "$commit" \
      '[(now|todate), $pair, $kind, $method, $mode, .run_id, .decision, .queries, .mean, .lower, .upper,
        .params.alpha, .params.gamma, .params.delta, .params.clip, .elapsed_s, ($wall|tonumber), ($code|tonumber), ($threads|tonumber), $commit] | @csv' >> "$runs_csv"
}

done_runs=0
for p in $pairs; do
  IFS='|' read -r name kind ref cand _ <<<"$(echo "$all_pairs" | grep "^$p|")"
  rf=$(model_file "$ref"); cf=$(model_file "$cand")
  [ "$kind" = audit ] && [[ " $methods " == *" pot "* ]] && start_server "$cf"
  for m in $modes; do
    for meth in $methods; do
      if [ "$meth" = baseline ]; then { [ "$m" = quick ] && [ "$kind" = diff ]; } || continue; fi
      for i in $(seq 1 "$runs"); do
        t0=$(date +%s.%N); set +e
        case "$meth/$kind" in
          pot/diff) out=$("$pot" diff --ref "$rf" --cand "$cf" --mode "$m" --json --threads "$threads" --transcripts "$work/transcripts" 2>"$work/last.err") ;;
          pot/audit) out=$("$pot" audit --ref "$rf" --endpoint "http://127.0.0.1:$port" --model vendor --mode "$m" --json --threads "$threads" --transcripts "$work/transcripts" 2>"$work/last.err") ;;
          baseline/diff) out=$("$baseline" --ref "$rf" --cand "$cf" --json --threads "$threads" 2>"$work/last.err") ;;
        esac
        code=$?; set -e
        wall=$(echo "$(date +%s.%N) - $t0" | bc)
        if [ "$code" = 2 ] || [ -z "$out" ]; then
          echo "run-experiments.sh: $name $meth $m run $i failed (exit $code): $(tail -1 "$work/last.err")" >&2
          continue
        fi
        record "$name" "$kind" "$meth" "$m" "$out" "$code" "$wall"
        if [ "$meth" = pot ]; then
          run_id=$(echo "$out" | jq -r .run_id)
          jq -r --arg pair "$name" --arg mode "$m" --arg run "$run_id" \
            'select(.record=="query") | [$run, $pair, "pot", $mode, .index, .family, .score, .mean, .lower, .upper] | @csv' \
            "$work/transcripts/$run_id.ndjson" >> "$queries_csv"
        fi
        done_runs=$((done_runs + 1))
        printf '%s %s %s run %d/%d: %s after %s queries, %.1f s\n' "$name" "$meth" "$m" "$i" "$runs" \
          "$(echo "$out" | jq -r .decision)" "$(echo "$out" | jq -r .queries)" "$wall" >&2
      done
    done
  done
  stop_server
done
echo "run-experiments.sh: $done_runs runs appended to $runs_csv and $queries_csv; now run: pot report" >&2
