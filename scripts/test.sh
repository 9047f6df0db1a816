#!/usr/bin/env bash
# The test suite: every crate's tests (reference parity included, against the golden set in tests/golden or
# $AUTORESEARCH_REFERENCE), then the GPU check script's CPU path; all of it runs even where a part fails, and the
# end says which parts failed. Fetches libtorch once (scripts/libtorch.sh) if this checkout has none, and
# installs Debian's chromium and chromium-driver, and Slurm, if they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -d .libtorch/lib ]] || scripts/libtorch.sh
# The dashboard's tests drive a real headless Chromium through ChromeDriver (Debian's packages).
if ! command -v chromedriver >/dev/null; then
    if [[ $(id -u) == 0 ]]; then as_root=(); elif command -v sudo >/dev/null; then as_root=(sudo); else
        echo "the dashboard's browser tests need chromium and chromium-driver: apt-get install chromium chromium-driver" >&2
        exit 1
    fi
    "${as_root[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq chromium chromium-driver >/dev/null
fi
# The Slurm backend's tests start a real single-node cluster (scripts/slurm.sh, which installs Debian's packages
# as root or with sudo). Where that cannot be, they are left out and this says so; in CI they must run.
skip=()
if ! why=$(scripts/slurm.sh install 2>&1); then
    if [[ ${CI:-} == true ]]; then
        echo "CI: the Slurm tests must run, but Slurm cannot be installed here: $why" >&2
        exit 1
    fi
    skip=(--skip slurm_jobs_for_two_workers_and_their_faults --skip a_project_on_slurm)
fi
# Every test binary runs even when one fails; cargo's list of the failed ones is repeated at the very end.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --release --no-fail-fast -- "${skip[@]}" 2>&1 | tee "$log" || status=$?
# A budget with room for steps after the warm-up on 2 cores (the training runs until its deadline, less the
# hand-over: budget + the profile's allowance - the reserve).
BUDGET=15 scripts/gpu-check.sh cpu || { echo "FAILED: scripts/gpu-check.sh cpu"; status=1; }
if [[ ${#skip[@]} -gt 0 ]]; then
    echo "NOTE: the Slurm tests did not run: Slurm cannot be installed here ($why)"
fi
if grep -q '^error: .* failed' "$log"; then
    echo "FAILED test targets:"
    # cargo's "error: N targets failed:" and the indented targets under it, or its one "error: test failed, ..."
    sed -n '/^error: .* failed/,/^[^ ]/{/^error: .* failed/p;/^ /p}' "$log"
fi
exit "$status"
