#!/usr/bin/env bash
# Models larger than the memory they may use (issue 18, part 5): `pot diff` of Qwen 1.5B
# (1,117 MB file) against Qwen 0.5B (491 MB) under a memory cap smaller than the two together
# and smaller than the 1.5B alone, in a memory cgroup (v2 `memory.max`, or v1
# `memory.limit_in_bytes` where the machine has only v1). Needs root (to make the cgroup).
#
#   scripts/larger-than-memory.sh [CAP_MIB ...]      default: 700 500 400
#
# For each cap, three runs on the same key and challenges:
#   * mapped (the default): weights are read in place from the mapped files, paged by the OS;
#   * mapped, --one-at-a-time 1: one model held at a time, one challenge per batch (a diff's
#     own working memory grows with the batch: the reference's full-vocabulary rows of every
#     challenge in it, about 60 MB each for Qwen's 152k-token vocabulary);
#   * POT_MMAP=0 (every weight copied into the process's memory, the old behaviour): the cap
#     kills it wherever the models do not fit.
# and once without a cap. Before each run the model files are dropped from the page cache
# (posix_fadvise DONTNEED), so the capped process pays for every page it reads: a cgroup is
# charged for the pages it faults in, not for pages another process left cached.
#
# Prints one Markdown row per run: verdict, queries, wall seconds, the cgroup's peak charge
# (the process's memory plus the page cache it caused, which the cap bounds), the process's
# peak RSS (resident mapped file pages included), major page faults, whether the cap killed
# it, and whether its per-challenge scores are bit for bit the uncapped run's.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
q05="$models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
q15="$models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
caps=("$@"); [ ${#caps[@]} -gt 0 ] || caps=(700 500 400)
tmp=$(mktemp -d)
if [ -f /sys/fs/cgroup/cgroup.controllers ] && grep -qw memory /sys/fs/cgroup/cgroup.controllers; then
  cg=/sys/fs/cgroup/pot-cap-$$; v=2
elif [ -d /sys/fs/cgroup/memory ]; then
  cg=/sys/fs/cgroup/memory/pot-cap-$$; v=1
else
  echo "larger-than-memory: no memory cgroup here (neither v2 nor v1 memory controller)" >&2; exit 2
fi
mkdir "$cg" || { echo "larger-than-memory: cannot create $cg (run as root)" >&2; exit 2; }
cleanup() { rmdir "$cg" 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
evict() {
  python3 -c "
import os, sys
for p in sys.argv[1:]:
    fd = os.open(p, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)" "$q05" "$q15"
}
set_cap() { # MiB, or "max"
  if [ $v = 2 ]; then
    [ "$1" = max ] && echo max > "$cg/memory.max" || echo $(($1 * 1024 * 1024)) > "$cg/memory.max"
    echo 0 > "$cg/memory.reclaim" 2>/dev/null || true
  else
    [ "$1" = max ] && echo -1 > "$cg/memory.limit_in_bytes" || echo $(($1 * 1024 * 1024)) > "$cg/memory.limit_in_bytes"
    echo 0 > "$cg/memory.max_usage_in_bytes"
  fi
}
peak() { if [ $v = 2 ]; then cat "$cg/memory.peak" 2>/dev/null || echo 0; else cat "$cg/memory.max_usage_in_bytes"; fi; }
"$pot" keygen --out "$tmp/key" 2>/dev/null
echo "memory cgroup v$v; $(basename "$q15") $(($(stat -c %s "$q15") / 1048576)) MiB, $(basename "$q05") $(($(stat -c %s "$q05") / 1048576)) MiB"
echo
echo "| cap MiB | weights | flags | verdict | queries | wall s | cgroup peak MiB | peak RSS MiB | major faults | killed by the cap | scores = uncapped |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
n=0
run() { # cap mmap flags...
  local cap=$1 mm=$2; shift 2
  n=$((n + 1)); mkdir "$tmp/$n"
  # A v2 cgroup keeps memory.peak from its creation: a fresh one per run.
  if [ $v = 2 ]; then rmdir "$cg" 2>/dev/null || true; mkdir -p "$cg"; fi
  set_cap "$cap"
  evict
  local start=$(date +%s.%N) rc=0
  sh -c "echo \$\$ > $cg/cgroup.procs; POT_MMAP=$mm exec /usr/bin/time -f '%M %F' -o $tmp/time \
    $pot --threads 2 diff --json --key-file $tmp/key --run-id cap --transcripts $tmp/$n \
    --ref $q15 --cand $q05 $*" > "$tmp/out.json" 2> "$tmp/err" || rc=$?
  local wall=$(python3 -c "import time; print(f'{time.time() - $start:.0f}')")
  local rss=$(grep -Eo '^[0-9]+ [0-9]+$' "$tmp/time" | tail -1 || echo "0 0")
  local killed=no; grep -q "signal 9" "$tmp/time" "$tmp/err" 2>/dev/null && killed=yes
  [ $rc = 137 ] && killed=yes
  python3 - "$tmp/out.json" "$cap" "$([ "$mm" = 1 ] && echo mapped || echo copied)" "${*:-none}" "$wall" "$(peak)" "$rss" "$killed" "$tmp/$n" "$tmp/1" <<'EOF'
import glob, json, sys
out, cap, weights, flags, wall, peak, rss, killed, mine, first = sys.argv[1:]
try:
    d = json.load(open(out)); verdict, queries = d["decision"], d["queries"]
except Exception:
    verdict, queries = "-", "-"
def scores(folder):
    rows = []
    for f in glob.glob(folder + "/*.ndjson"):
        rows += [json.loads(l) for l in open(f) if l.strip()]
    return [r["score"] for r in rows if r.get("record") == "query"]
same = "-" if verdict == "-" else ("yes" if scores(mine) == scores(first) else "NO")
rss_kb, faults = (rss.split() + ["0", "0"])[:2]
print(f"| {cap} | {weights} | {flags} | {verdict} | {queries} | {wall} | {int(peak) / 2**20:.0f} | {int(rss_kb) / 1024:.0f} | {faults} | {killed} | {same} |")
EOF
}
run max 1
for cap in "${caps[@]}"; do
  run "$cap" 1
  run "$cap" 1 --one-at-a-time 1
  run "$cap" 0
done
