#!/usr/bin/env python3
"""llama.cpp on this machine, as a yardstick for pot's figures (BENCHMARKS.md).

For each model: how far llama.cpp run here reproduces the committed llama.cpp fixture
(tests/fixtures/*.llamacpp.json: top-1 agreement, mean and max |Δ log-softmax| over the
fixture's top-20), and llama.cpp's prompt-eval and generation tokens/s measured the way
`pot bench` measures (256-token prompt in one pass; one-token steps after 16 tokens, 2 threads).

Needs the llama-cpp-python package (`pip install llama-cpp-python`, a C++ build of about
25 minutes); scripts/bench.sh runs this only where it is installed.

Usage: scripts/llamacpp-yardstick.py [MODELS_DIR]
       scripts/llamacpp-yardstick.py --speed FILE...   (speed only, with peak RSS, for any GGUF;
                                                    scoring = one pass of 256 tokens keeping
                                                    every position's logits)
"""
import json
import math
import os
import sys
import time

try:
    from llama_cpp import Llama
except ImportError:
    sys.exit("llamacpp-yardstick: the llama_cpp module is missing; install llama-cpp-python")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] != "--speed" else os.environ.get(
    "POT_MODELS", os.path.expanduser("~/.cache/pot/models"))
PAIRS = [
    ("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct-q4_1.llamacpp.json"),
    ("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "qwen2.5-coder-0.5b-instruct-q4_k_m.llamacpp.json"),
    ("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", "qwen2.5-coder-1.5b-instruct-q4_k_m.llamacpp.json"),
]


def agreement(llm, fixture):
    same = positions = 0
    total = count = 0
    worst = 0.0
    for case in fixture["cases"]:
        ids = case["token_ids"]
        llm.reset()
        llm.eval(ids)
        for i, ref in enumerate(case["positions"]):
            row = [float(v) for v in llm.scores[i]]
            top = max(row)
            lse = top + math.log(sum(math.exp(v - top) for v in row))
            for t, logit in zip(ref["top_ids"], ref["top_logits"]):
                d = abs((row[t] - lse) - (logit - ref["logsumexp"]))
                total += d
                count += 1
                worst = max(worst, d)
            positions += 1
            same += int(row.index(top) == ref["top_ids"][0])
    return same, positions, total / count, worst


def speed(path):
    llm = Llama(model_path=path, n_ctx=512, n_threads=2, n_batch=512, verbose=False)
    toks = list(range(1000, 1256))
    llm.reset()
    llm.eval(toks)  # warm-up, as pot bench does one
    llm.reset()
    t = time.time()
    llm.eval(toks)
    prompt = len(toks) / (time.time() - t)
    llm.reset()
    llm.eval(toks[:16])
    t = time.time()
    for tok in toks[16:80]:
        llm.eval([tok])
    gen = 64 / (time.time() - t)
    del llm
    return prompt, gen


def scoring(path, n=256):
    """Tokens/s of one pass over n tokens keeping every position's logits (logits_all), as
    pot scores a text in a diff; `pot bench`'s scoring figure."""
    llm = Llama(model_path=path, n_ctx=512, n_threads=2, n_batch=512, logits_all=True,
                verbose=False)
    toks = list(range(1000, 1000 + n))
    llm.reset()
    llm.eval(toks)  # warm-up
    llm.reset()
    t = time.time()
    llm.eval(toks)
    return n / (time.time() - t)


if len(sys.argv) > 1 and sys.argv[1] == "--speed":
    import resource
    for path in sys.argv[2:]:
        pe, gen = speed(path)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        sc = scoring(path)
        print(f"llama.cpp {os.path.basename(path)}: prompt-eval {pe:.1f} tok/s, "
              f"generation {gen:.1f} tok/s, peak RSS {rss:.2f} GB, scoring {sc:.1f} tok/s")
    sys.exit(0)

for model, fixture in PAIRS:
    path = os.path.join(MODELS, model)
    if not os.path.exists(path):
        sys.exit(f"llamacpp-yardstick: {path} is missing; run scripts/fetch-models.sh first")
    with open(os.path.join(ROOT, "tests", "fixtures", fixture)) as f:
        ref = json.load(f)
    llm = Llama(model_path=path, logits_all=True, n_ctx=512, n_threads=2, verbose=False)
    same, n, mean, worst = agreement(llm, ref)
    del llm
    pe, gen = speed(path)
    print(f"llama.cpp {model}: fixture top-1 {same}/{n} ({100 * same / n:.1f}%), "
          f"mean |Δ| {mean:.3f}, max {worst:.3f}; prompt-eval {pe:.1f} tok/s, "
          f"generation {gen:.1f} tok/s")
