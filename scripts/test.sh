#!/usr/bin/env bash
# The test suite: every crate's tests (reference parity included, against the golden set in tests/golden or
# $AUTORESEARCH_REFERENCE), then the GPU check script's CPU path. Fetches libtorch once (scripts/libtorch.sh)
# if this checkout has none.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -d .libtorch/lib ]] || scripts/libtorch.sh
cargo test --workspace --release
BUDGET=2 scripts/gpu-check.sh cpu
