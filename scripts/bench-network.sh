#!/usr/bin/env bash
# Figures for BENCHMARKS.md (issue 19): requests/s and latency through a `pot node router
# --openai` against `pot serve` directly, on the same model and machine, at 1 and 8 concurrent
# clients; the router at audit rates 0, 0.1 and 1 (probation 3); bytes on the wire per job and
# per audit; time for the router to discover the provider.
#
#   scripts/bench-network.sh [MODEL_FILE]      # default: SmolLM2-135M Q4_1
#
# Everything runs on this machine: provider, router and clients share its cores.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
model="${1:-$models/SmolLM2-135M-Instruct.Q4_1.gguf}"
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
"$pot" keygen --node --out "$tmp/node.key" >/dev/null
"$pot" keygen --router --out "$tmp/router.key" >/dev/null
load() { python3 scripts/bench-serve.py "$1" vendor --clients 1,8 --requests 4 --max-tokens 32 "${@:2}"; }

echo "# pot serve --node-key, directly (every request committed and signed)"
"$pot" serve --model "$model" --port 0 --model-name vendor --node-key "$tmp/node.key" \
  --store "$tmp/serve.store" --max-queue 64 --max-batch 8 2>"$tmp/serve.log" &
serve=$!
for _ in $(seq 300); do
  url=$(grep -o 'http://[0-9.:]*' "$tmp/serve.log" | head -1 || true); [ -n "$url" ] && break; sleep 0.2
done
load "$url" --pot
kill $serve; wait $serve 2>/dev/null || true

"$pot" node provider --model "$model" --node-key "$tmp/node.key" --store "$tmp/provider.store" \
  --listen /ip4/127.0.0.1/tcp/0 --no-mdns --max-queue 64 --max-batch 8 >"$tmp/provider.json" 2>/dev/null &
for _ in $(seq 300); do [ -s "$tmp/provider.json" ] && break; sleep 0.2; done
boot=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["addrs"][0])' "$tmp/provider.json")

for rate in 0 0.1 1; do
  echo "# through pot node router --openai, audit rate $rate (probation 3)"
  t0=$(date +%s.%N)
  "$pot" node router --router-key "$tmp/router.key" --model "$model" --model-name vendor \
    --openai 127.0.0.1:0 --bootstrap "$boot" --no-mdns --audit-rate "$rate" --probation 3 \
    --reputation "$tmp/rep-$rate.redb" >"$tmp/router.json" 2>/dev/null &
  router=$!
  for _ in $(seq 300); do [ -s "$tmp/router.json" ] && break; sleep 0.1; done
  rurl=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["openai"])' "$tmp/router.json")
  python3 - "$rurl" "$t0" <<'PY'
import json, sys, time, urllib.request
url, t0 = sys.argv[1], float(sys.argv[2])
ready = time.time()
while True:
    s = json.load(urllib.request.urlopen(url + "/v1/pot/router"))
    if s["known"]:
        break
    time.sleep(0.05)
print(json.dumps({"router_start_to_ready_s": round(ready - t0, 2), "ready_to_provider_known_s": round(time.time() - ready, 2)}))
PY
  load "$rurl"
  python3 - "$rurl" <<'PY'
import json, sys, urllib.request
s = json.load(urllib.request.urlopen(sys.argv[1] + "/v1/pot/router"))
w = s["wire"]
per = lambda a, n: round(a / n) if n else None
print(json.dumps({"jobs": w["jobs"], "audits": w["openings"], "job_request_bytes": per(w["job_out"], w["jobs"]),
                  "job_answer_bytes": per(w["job_in"], w["jobs"]), "open_request_bytes": per(w["open_out"], w["openings"]),
                  "opening_bytes": per(w["open_in"], w["openings"]),
                  "provider": {k: v for k, v in next(iter(s["providers"].values())).items() if k != "ban"}}))
PY
  kill $router; wait $router 2>/dev/null || true
done
