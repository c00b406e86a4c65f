#!/usr/bin/env python3
"""The quantization ladder as llama.cpp sees it: every rung `pot variant` writes, loaded and run
by llama.cpp, beside the same rung made by llama.cpp's own quantizer.

For a reference GGUF (its best precision, e.g. an f16 made by `pot variant --to f16`) and a
folder of pot's rungs (`pot calibrate --keep DIR` names them HASH-RUNG.gguf), for each rung:
- llama.cpp loads pot's file and computes every position's logits on fixed texts (the prompts
  of tests/fixtures/*.llamacpp.json): a rung pot wrote that llama.cpp cannot read fails here;
- KL(ref || rung) per position, mean over all positions, both models run by llama.cpp: the
  rung's divergence measured by an engine nobody here wrote;
- the same for the rung made by llama.cpp's quantizer (llama_model_quantize, pure: every
  matrix the one type, as pot writes them) from the same reference: do pot's rungs diverge as
  much as the files vendors make with llama-quantize?
- with --calibration CAL.json, pot's own mean KL of the rung (`pot calibrate`) beside them.

Needs llama-cpp-python (a C++ build of 10-25 minutes; scripts/bench.sh notes).

Usage: scripts/ladder-llamacpp.py REF.gguf RUNG_DIR [--calibration CAL.json] [--work DIR] [--json OUT]
"""
import argparse
import ctypes
import glob
import json
import math
import os
import sys

try:
    import numpy as np
    import llama_cpp
    from llama_cpp import Llama
except ImportError:
    sys.exit("ladder-llamacpp: needs numpy and llama-cpp-python (pip install llama-cpp-python numpy)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FTYPES = {
    "f16": "LLAMA_FTYPE_MOSTLY_F16",
    "bf16": "LLAMA_FTYPE_MOSTLY_BF16",
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "q5_k": "LLAMA_FTYPE_MOSTLY_Q5_K_S",
    "q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0",
    "q4_k": "LLAMA_FTYPE_MOSTLY_Q4_K_S",
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "q3_k": "LLAMA_FTYPE_MOSTLY_Q3_K_S",
    "q2_k": "LLAMA_FTYPE_MOSTLY_Q2_K",
}


def texts():
    out = []
    for f in sorted(glob.glob(os.path.join(ROOT, "tests", "fixtures", "*.llamacpp.json"))):
        if "tiny" in f:
            continue
        with open(f) as fh:
            for case in json.load(fh)["cases"]:
                if case["text"] not in out:
                    out.append(case["text"])
    return out


def rows(path, corpus):
    """log-softmax rows of every position of every text, llama.cpp."""
    llm = Llama(path, n_ctx=512, logits_all=True, n_threads=2, verbose=False)
    out = []
    for t in corpus:
        ids = llm.tokenize(t.encode(), add_bos=True, special=False)
        llm.reset()
        llm.eval(ids)
        logits = np.array(llm.scores[: len(ids)], dtype=np.float64)
        m = logits.max(axis=1, keepdims=True)
        lse = m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True))
        out.append(logits - lse)
    del llm
    return out


def mean_kl(ref_rows, rows_):
    total, n = 0.0, 0
    for p, q in zip(ref_rows, rows_):
        pe = np.exp(p)
        kl = (pe * (p - q)).sum(axis=1)
        total += float(np.maximum(kl, 0.0).sum())
        n += len(kl)
    return total / max(n, 1)


def quantize(src, rung, out):
    if os.path.exists(out):
        return True
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, FTYPES[rung])
    params.pure = True
    params.nthread = 2
    params.allow_requantize = True
    rc = llama_cpp.llama_model_quantize(src.encode(), (out + ".part").encode(), ctypes.byref(params))
    if rc != 0:
        return False
    os.rename(out + ".part", out)
    return True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("reference")
    ap.add_argument("rungs")
    ap.add_argument("--calibration")
    ap.add_argument("--work", default=os.path.expanduser("~/.cache/pot/ladder-llamacpp"))
    ap.add_argument("--json")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    pot_kl = {}
    if a.calibration:
        with open(a.calibration) as fh:
            for e in json.load(fh)["entries"]:
                pot_kl[e["name"]] = e["kl"]["mean"]
    corpus = texts()
    ref = rows(a.reference, corpus)
    stem = os.path.splitext(os.path.basename(a.reference))[0]
    results = []
    print(f"llama-cpp-python {llama_cpp.__version__}; {len(corpus)} texts, {sum(len(r) for r in ref)} positions; reference {a.reference}")
    print("| rung | pot's file: llama.cpp loads it | KL(ref ‖ pot's rung), llama.cpp | llama.cpp's own rung: KL, llama.cpp | pot calibrate's KL |")
    print("|---|---|---|---|---|")
    for rung in FTYPES:
        found = glob.glob(os.path.join(a.rungs, f"*-{rung}.gguf"))
        r = {"rung": rung}
        if found:
            try:
                r["pot_kl_llamacpp"] = mean_kl(ref, rows(found[0], corpus))
                r["loads"] = True
            except Exception as e:  # llama.cpp refused pot's file
                r["loads"] = False
                r["error"] = str(e)
        own = os.path.join(a.work, f"{stem}-llamacpp-{rung}.gguf")
        if quantize(a.reference, rung, own):
            r["llamacpp_kl"] = mean_kl(ref, rows(own, corpus))
            r["llamacpp_bytes"] = os.path.getsize(own)
        r["pot_calibrate_kl"] = pot_kl.get(rung)
        results.append(r)
        fmt = lambda v: "-" if v is None else f"{v:.5f}"
        loads = {True: "yes", False: "NO: " + r.get("error", ""), None: "(no file)"}[r.get("loads")]
        print(f"| {rung} | {loads} | {fmt(r.get('pot_kl_llamacpp'))} | {fmt(r.get('llamacpp_kl'))} | {fmt(r.get('pot_calibrate_kl'))} |", flush=True)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(results, fh, indent=1)
    if any(r.get("loads") is False for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
