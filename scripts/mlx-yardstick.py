#!/usr/bin/env python3
"""The MLX runtime (mlx-lm) as a yardstick: token ids and next-token log-probabilities of an
MLX or Hugging Face folder, as JSON on stdout, for pot to be compared with.

    mlx-yardstick.py MODEL_DIR --text "..." [--text ...] [--top-k 20]

Output, in the format of tests/fixtures/*.llamacpp.json: {"engine": "mlx ...", "cases": [{"text",
"token_ids", "positions": [{"top_ids", "top_logits", "logsumexp"}]}]}: row i predicts the token
after token_ids[i]; log-probabilities are top_logits - logsumexp. The tokenizer is the folder's
tokenizer.json run by Hugging Face tokenizers (what mlx-lm loads), with BOS as the folder says.
Needs `mlx[cpu]` (or mlx on Apple silicon) and `mlx-lm`, e.g. in ~/.cache/pot/mlx-venv.
"""
import argparse
import json
import sys

import mlx.core as mx
import mlx_lm


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--text", action="append", required=True)
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "native"],
        help="compute in f32 (default: the stored weights exactly, widened) or in the "
        "checkpoint's own dtype (MLX's default: bf16 arithmetic rounds logits near 30 to steps "
        "of 1/8, which moves log-probabilities by ~0.5 nats on SmolLM2)",
    )
    a = ap.parse_args()
    model, tok = mlx_lm.load(a.model)
    if a.dtype == "float32":
        # Norms, scales and biases widened exactly; packed quants untouched.
        model.set_dtype(mx.float32)
    cases = []
    for text in a.text:
        ids = tok.encode(text)
        logits = model(mx.array([ids]))[0].astype(mx.float32)
        lse = mx.logsumexp(logits, axis=-1)
        order = mx.argsort(-logits, axis=-1)[:, : a.top_k]
        top = mx.take_along_axis(logits, order, axis=-1)
        cases.append(
            {
                "text": text,
                "token_ids": [int(i) for i in ids],
                "positions": [
                    {"top_ids": [int(i) for i in o], "top_logits": [float(v) for v in t], "logsumexp": float(l)}
                    for o, t, l in zip(order.tolist(), top.tolist(), lse.tolist())
                ],
            }
        )
    json.dump({"engine": f"mlx {mx.__version__}, mlx-lm {mlx_lm.__version__} ({a.dtype})", "cases": cases}, sys.stdout)


if __name__ == "__main__":
    main()
