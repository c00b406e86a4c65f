#!/usr/bin/env python3
"""Load a `pot serve` endpoint with N concurrent clients and report throughput and latency.

Usage: bench-serve.py URL MODEL [--clients 1,8,64] [--requests 4] [--max-tokens 32] [--pot]
Each client sends its requests one after another (temperature 0, distinct prompts). A 429 is
counted and not retried. With --pot every request asks for a signed receipt (a fresh nonce;
the server must run with --node-key). Prints one JSON line per concurrency level.
"""
import argparse
import json
import os
import statistics
import threading
import time
import urllib.error
import urllib.request

ap = argparse.ArgumentParser()
ap.add_argument("url")
ap.add_argument("model")
ap.add_argument("--clients", default="1,8,64")
ap.add_argument("--requests", type=int, default=4)
ap.add_argument("--max-tokens", type=int, default=32)
ap.add_argument("--pot", action="store_true", help="committed requests (signed receipts)")
a = ap.parse_args()


def one(i, j, lat, toks, busy):
    msg = {"model": a.model, "prompt": f"Request {i}.{j}: write a short note about the number {i * 31 + j}.",
           "max_tokens": a.max_tokens, "temperature": 0}
    if a.pot:
        msg["pot"] = {"nonce": os.urandom(32).hex()}
    body = json.dumps(msg).encode()
    req = urllib.request.Request(a.url.rstrip("/") + "/v1/completions", body, {"content-type": "application/json"})
    t = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            v = json.load(r)
        lat.append(time.perf_counter() - t)
        if a.pot and "pot" not in v:
            raise SystemExit("--pot: the answer carries no receipt; start the server with --node-key")
        toks.append(v["usage"]["completion_tokens"])
    except urllib.error.HTTPError as e:
        if e.code == 429:
            busy.append(1)
        else:
            raise


for n in [int(x) for x in a.clients.split(",")]:
    lat, toks, busy = [], [], []

    def client(i):
        for j in range(a.requests):
            one(i, j, lat, toks, busy)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else None
    print(json.dumps({"clients": n, "pot": a.pot, "answered": len(lat), "refused_429": len(busy), "wall_s": round(wall, 2),
                      "requests_per_s": round(len(lat) / wall, 2), "completion_tok_per_s": round(sum(toks) / wall, 1),
                      "p50_s": round(q(0.5), 2), "p99_s": round(q(0.99), 2),
                      "mean_s": round(statistics.mean(lat), 2)}), flush=True)
