#!/usr/bin/env bash
# pot's kernels against llama.cpp on the same files, side by side, in alternating rounds:
# prompt-eval (256 tokens, last position's logits), scoring (the same 256 tokens with the
# logits of every position, the pass a diff or an audit makes), and generation (64 tokens),
# 2 threads. pot runs with the kernels this CPU picks and again capped at AVX2 (POT_ISA=avx2)
# and at portable code (POT_ISA=scalar, SmolLM2 only: slow). Prints Markdown rows and the
# median pot / llama.cpp ratio per model for BENCHMARKS.md.
#
#   scripts/bench-kernels.sh            # POT_ROUNDS=3 rounds by default
#
# POT_LLAMA_AVX2_PYTHON names a Python whose llama-cpp-python was built for AVX2 only
# (CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF
# -DGGML_AVX_VNNI=OFF"): each round then also runs it, and the medians compare pot capped at
# AVX2 with it, which is what an AVX2-only host runs.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
py="${POT_LLAMA_PYTHON:-python3}"
"$py" -c "import llama_cpp" 2>/dev/null || { echo "bench-kernels: llama-cpp-python is missing (set POT_LLAMA_PYTHON)" >&2; exit 2; }
rounds="${POT_ROUNDS:-3}"
cpu=$(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
flags=$(grep -m1 flags /proc/cpuinfo | tr ' ' '\n' | grep -xE 'avx2|avx512f|avx512_vnni|avx_vnni' | tr '\n' ' ')
echo "CPU: $cpu ($flags), $(date -u +%F)"
echo
echo "| model | engine | prompt-eval tok/s | scoring tok/s | generation tok/s |"
echo "|---|---|---|---|---|"
ratios=$(mktemp); trap 'rm -f "$ratios"' EXIT
for f in SmolLM2-135M-Instruct.Q4_1.gguf qwen2.5-coder-0.5b-instruct-q4_k_m.gguf qwen2.5-coder-1.5b-instruct-q4_k_m.gguf; do
  m="$models/$f"
  isas="native avx2"; [ "$f" = SmolLM2-135M-Instruct.Q4_1.gguf ] && isas="native avx2 scalar"
  for round in $(seq 1 "$rounds"); do
    for isa in $isas; do
      [ "$isa" = scalar ] && [ "$round" != 1 ] && continue
      if [ "$isa" = native ]; then env -u POT_ISA "$pot" --threads 2 bench "$m" --json > /tmp/pot-bk.json
      else POT_ISA=$isa "$pot" --threads 2 bench "$m" --json > /tmp/pot-bk.json; fi
      python3 -c "import json; d=json.load(open('/tmp/pot-bk.json')); print(f\"| $f | pot, {d['kernels']} kernels (round $round) | {d['prompt_eval_tok_s']:.0f} | {d['scoring_tok_s']:.0f} | {d['generation_tok_s']:.1f} |\")"
      [ "$isa" = native ] && cp /tmp/pot-bk.json /tmp/pot-bk-native.json
      [ "$isa" = avx2 ] && cp /tmp/pot-bk.json /tmp/pot-bk-avx2.json
    done
    if [ -n "${POT_LLAMA_AVX2_PYTHON:-}" ]; then
      line=$("$POT_LLAMA_AVX2_PYTHON" scripts/llamacpp-yardstick.py --speed "$m")
      python3 - "$line" "$f" "$round" >> "$ratios" <<'EOF'
import json, re, sys
line, f, rnd = sys.argv[1:]
pe, gen, sc = (float(re.search(p + r" ([0-9.]+) tok/s", line).group(1))
               for p in ("prompt-eval", "generation", "scoring"))
print(f"| {f} | llama.cpp, AVX2-only build (round {rnd}) | {pe:.0f} | {sc:.0f} | {gen:.1f} |", file=sys.stderr)
d = json.load(open("/tmp/pot-bk-avx2.json"))
print(f + "@avx2", d["prompt_eval_tok_s"] / pe, d["scoring_tok_s"] / sc, d["generation_tok_s"] / gen)
EOF
    fi
    line=$("$py" scripts/llamacpp-yardstick.py --speed "$m")
    python3 - "$line" "$f" "$round" >> "$ratios" <<'EOF'
import json, re, sys
line, f, rnd = sys.argv[1:]
pe, gen, sc = (float(re.search(p + r" ([0-9.]+) tok/s", line).group(1))
               for p in ("prompt-eval", "generation", "scoring"))
print(f"| {f} | llama.cpp (round {rnd}) | {pe:.0f} | {sc:.0f} | {gen:.1f} |", file=sys.stderr)
d = json.load(open("/tmp/pot-bk-native.json"))
print(f, d["prompt_eval_tok_s"] / pe, d["scoring_tok_s"] / sc, d["generation_tok_s"] / gen)
EOF
  done 2>&1
done
echo
python3 - "$ratios" <<'EOF'
import statistics, sys
rows = {}
for l in open(sys.argv[1]):
    f, *r = l.split()
    rows.setdefault(f, []).append(tuple(map(float, r)))
for f, r in rows.items():
    med = [statistics.median(x[i] for x in r) for i in range(3)]
    who = "pot / llama.cpp"
    if f.endswith("@avx2"):
        f, who = f[:-5], "pot (AVX2) / llama.cpp (AVX2-only build)"
    print(f"{who}, {f}, median of {len(r)} rounds: prompt-eval {med[0]:.2f}x, "
          f"scoring {med[1]:.2f}x, generation {med[2]:.2f}x")
EOF
