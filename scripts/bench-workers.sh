#!/usr/bin/env bash
# Experiments per hour with one local worker and with two, one thread each, on this machine's CPU: the same
# session (the small profile's default model, a $BUDGET s budget) run by `loop` with a scripted agent that makes
# a new change each call; $EXPERIMENTS experiments per worker after the baseline. Prints a table (with where an
# experiment's time went) and the ratio.
#
#   scripts/bench-workers.sh          (EXPERIMENTS=6 BUDGET=15 by default)
#
# The session runs in a clone of this repository (committed files only) in a temporary folder; the build
# shares this checkout's target folder.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
per_worker=${EXPERIMENTS:-6}
budget=${BUDGET:-15}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo build --release --quiet -p autoresearch --manifest-path "$repo/Cargo.toml"
bin=$repo/target/release/autoresearch
git clone --quiet "$repo" "$work/repo"
ln -s "$(readlink -f "$repo/.libtorch")" "$work/repo/.libtorch"
export CARGO_TARGET_DIR=$repo/target AUTORESEARCH_CACHE=$work/cache
cd "$work/repo"
"$bin" prepare --profile small >/dev/null 2>&1
# Each call sets the scalar learning rate to a value no call used before.
cat > "$work/agent.sh" <<'EOF'
#!/usr/bin/env bash
set -eu
n=$(( $(cat "$COUNTER" 2>/dev/null || echo 0) + 1 )) && echo $n > "$COUNTER"
value=$(printf '0.%03d' $(( 300 + n )))
sed -i -E "s/scalar_lr: [0-9.]+,/scalar_lr: $value,/" train/train.rs
echo "scalar lr $value" > "$AUTORESEARCH_DESCRIPTION"
EOF
echo "| workers | threads each | experiments | wall | experiments per hour | an experiment, on average |"
echo "| --- | --- | --- | --- | --- | --- |"
declare -A rate
for workers in 1 2; do
    git checkout --quiet main 2>/dev/null || git checkout --quiet master
    # `lower`: no re-measure of the baseline's noise, so that the rate is the loop's own.
    "$bin" init "bench$workers" --profile small --time-budget "$budget" --device cpu --rule lower >/dev/null
    # The baseline first, untimed (a session measures it once, alone, before any worker starts): the rate is the
    # steady one.
    OMP_NUM_THREADS=1 "$bin" run -m baseline > "$work/baseline-$workers.log" 2>&1
    experiments=$((per_worker * workers))
    start=$(date +%s.%N)
    COUNTER=$work/count OMP_NUM_THREADS=1 "$bin" loop --workers "$workers" --agent "bash $work/agent.sh" \
        --max-experiments "$experiments" > "$work/loop-$workers.log" 2>&1 || { tail -20 "$work/loop-$workers.log"; exit 1; }
    end=$(date +%s.%N)
    done_=$(($(wc -l < results.tsv) - 2))
    rate[$workers]=$(python3 -c "print(f'{$done_ / ($end - $start) * 3600:.1f}')")
    wall=$(python3 -c "print(f'{$end - $start:.0f} s')")
    # Where an experiment's time went, on average (run folders; the baseline left out).
    parts=$(python3 - .autoresearch/runs <<'PY'
import json, os, sys
metas = [json.load(open(os.path.join(sys.argv[1], d, "meta.json"))) for d in os.listdir(sys.argv[1])]
metas = [m for m in metas if m.get("harness_overhead_seconds") is not None and m["run"] > 1]
mean = lambda f: sum(f(m) for m in metas) / len(metas)
print(f"{mean(lambda m: m['seconds']):.1f} s: build {mean(lambda m: m['build_seconds']):.1f}, "
      f"training and evaluation {mean(lambda m: m['seconds'] - m['harness_overhead_seconds']):.1f}, "
      f"the rest {mean(lambda m: m['harness_overhead_seconds'] - m['build_seconds']):.2f}")
PY
)
    echo "| $workers | 1 | $done_ | $wall | ${rate[$workers]} | $parts |"
done
python3 -c "print(f'two workers: {${rate[2]} / ${rate[1]}:.2f}x the experiments per hour of one')"
