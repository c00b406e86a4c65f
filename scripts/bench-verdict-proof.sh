#!/usr/bin/env bash
# Figures for BENCHMARKS.md (issue 20): what a Halo2 proof of a verdict costs (proof size,
# proving time and peak memory, verification time) for runs of 10, 50 and 200 challenges,
# and the fixed-point test replayed on every recorded run of real pairs.
#
#   scripts/bench-verdict-proof.sh [N ...]      # default: 10 50 200
#
# The public parameters (2^k points hashed to the curve: 5 s at k = 13, 4 to 7 minutes at k = 18 on
# 2 cores) are made once and kept in ~/.cache/pot/halo2 (pinned by SHA-256 in src/zk); a
# first pass makes them, so the measured pass shows proving and verifying as they run after.
# Each N runs in its own process, so the peak memory is that N's.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pot/target}"
cargo build --release --example verdict_proof --example fixed_point_replay >&2
bin="$CARGO_TARGET_DIR/release/examples"
ns=("$@"); [ ${#ns[@]} -gt 0 ] || ns=(10 50 200)
echo "# making the public parameters once (cached after)" >&2
"$bin/verdict_proof" "${ns[@]}" >/dev/null 2>&1
echo "## Verdict proofs ($(nproc) cores, $(date -u +%F))"
first=1
for n in "${ns[@]}"; do
  if [ $first = 1 ]; then "$bin/verdict_proof" "$n" 2>/dev/null; first=0
  else "$bin/verdict_proof" "$n" 2>/dev/null | tail -1; fi
done
echo
echo "## The fixed-point test on every recorded run"
"$bin/fixed_point_replay"
