#!/usr/bin/env bash
# The harness's benchmarks beside the Python packages they must beat, in one run on one machine:
#   tokenizer training (ours vs rustbpe), encoding (ours vs tiktoken, 1 and 2 threads), data loading.
# Usage: scripts/bench.sh [TEXT_DIR] (default: the built-in demo corpus, data/demo)
# Data loading reads the h100 profile prepared in $AUTORESEARCH_CACHE (run `autoresearch prepare` first).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
text=${1:-$repo/data/demo}
venv=${AUTORESEARCH_BUILD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/autoresearch-build}/bench-venv
if [[ ! -x $venv/bin/python ]]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet rustbpe==0.1.0 tiktoken==0.14.0
fi
cargo build --release --quiet -p autoresearch --manifest-path "$repo/Cargo.toml"
bin=$repo/target/release/autoresearch
tok=$(mktemp -d)
trap 'rm -rf "$tok"' EXIT

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%F)"
"$bin" bench tokenizer --text "$text" --vocab 8192 --save "$tok"
"$bin" bench encode --text "$text" --tokenizer "$tok" --repeat 5
"$venv/bin/python" "$repo/scripts/bench.py" "$text" 8192 "$tok" 5
"$bin" bench dataloader --profile h100 --batch 128 --seq 2048 --batches 20 || echo "dataloader: prepare the h100 profile first"
