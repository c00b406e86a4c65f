# Sourced by scripts/demo.sh and scripts/bench.sh: fetch the real models, build optimized, and
# set $models (the model cache) and $pot (the binary).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pot/target}"
models=$(scripts/fetch-models.sh)
cargo build --release --quiet
pot="$CARGO_TARGET_DIR/release/pot"
