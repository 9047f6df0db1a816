#!/usr/bin/env bash
# The main job on a small default, offline: fetch libtorch (once), build, prepare the `small` profile from the
# built-in demo corpus, and train for 60 seconds. On a GPU machine use `autoresearch prepare` (the h100
# profile, climbmix) and `autoresearch train` instead; see README.md.
#
# One cargo build makes both programs, the CLI and the training binary (CPU variant): their dependencies compile
# once, the two cores busy throughout, and `autoresearch train` finds its binary built.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -d .libtorch/lib ]] || scripts/libtorch.sh
start=$SECONDS
cargo build --release -p autoresearch -p autoresearch-train
echo "[quickstart] built in $((SECONDS - start)) s"
target/release/autoresearch prepare --profile small
target/release/autoresearch train --profile small --device cpu --time-budget "${BUDGET:-60}"
