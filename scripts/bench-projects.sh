#!/usr/bin/env bash
# The research loop's own cost for a project of the user's own (autoresearch.toml), on this machine:
#  1. the harness's time per experiment around a training that takes 1 s (`sleep 1`): `autoresearch run`'s
#     wall time less the training's, over $RUNS runs, and the overhead each run's meta.json records;
#  2. experiments per hour on examples/python-train with `loop` and one worker, then two (a scripted agent that
#     makes a new change each call, $EXPERIMENTS experiments per worker after the baseline, rule `lower`).
# Prints two tables.
#
#   scripts/bench-projects.sh          (RUNS=10 EXPERIMENTS=8 by default)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
runs=${RUNS:-10}
per_worker=${EXPERIMENTS:-8}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo build --release --quiet -p autoresearch --manifest-path "$repo/Cargo.toml"
bin=$repo/target/release/autoresearch
commit() { git -c user.name=bench -c user.email=bench@localhost commit --quiet -m "$1"; }
now() { date +%s.%N; }

# 1. A 1 s training: `sleep 1`, then the score its file names.
mkdir -p "$work/sleep" && cd "$work/sleep" && git init --quiet
echo 'sleep 1; echo score: 1000' > train.sh
echo 'Lower the score.' > program.md
cat > autoresearch.toml <<'EOF'
editable = ["train.sh"]
[train]
command = "sh train.sh"
timeout = 30
[metric]
name = "score"
goal = "lower"
EOF
git add -A && commit start
"$bin" init sleep --rule lower >/dev/null 2>&1
"$bin" run -m baseline >/dev/null 2>&1
total=0
for k in $(seq 1 "$runs"); do
    echo "sleep 1; echo score: $((1000 - k))" > train.sh
    start=$(now)
    "$bin" run -m "score $((1000 - k))" >/dev/null 2>&1
    total=$(echo "$total + $(now) - $start" | bc -l)
done
recorded=$(python3 - "$runs" <<'EOF'
import json, sys
runs = int(sys.argv[1])
metas = [json.load(open(f".autoresearch/runs/{r}/meta.json")) for r in range(2, runs + 2)]
print(f"{sum(m['harness_overhead_seconds'] for m in metas) / runs:.3f}")
EOF
)
echo "| training | runs | \`autoresearch run\`, wall per run | less the 1 s training | overhead in meta.json |"
echo "| --- | --- | --- | --- | --- |"
printf '| sleep 1 | %d | %.3f s | %.3f s | %s s |\n\n' "$runs" "$(echo "$total / $runs" | bc -l)" \
    "$(echo "$total / $runs - 1" | bc -l)" "$recorded"

# 2. examples/python-train, one worker and two.
mkdir -p "$work/py" && cd "$work/py" && git init --quiet
(cd "$repo/examples/python-train" && git ls-files -z | xargs -0 tar cf -) | tar xf -
git add -A && commit start
cat > "$work/agent.sh" <<'EOF'
#!/usr/bin/env bash
# Each call trains for a number of steps no call used before.
set -eu
n=$(( $(cat "$COUNTER" 2>/dev/null || echo 0) + 1 )) && echo $n > "$COUNTER"
sed -i -E "s/^STEPS = [0-9]+ /STEPS = $(( 300 + n )) /" train.py
echo "steps $(( 300 + n ))" > "$AUTORESEARCH_DESCRIPTION"
EOF
echo "| workers | experiments | wall | experiments per hour |"
echo "| --- | --- | --- | --- |"
declare -A rate
for workers in 1 2; do
    git checkout --quiet main 2>/dev/null || git checkout --quiet master
    "$bin" init "py$workers" --rule lower >/dev/null 2>&1
    "$bin" run -m baseline >/dev/null 2>&1
    experiments=$(( per_worker * workers ))
    start=$(now)
    COUNTER=$work/counter$workers "$bin" loop --agent "bash $work/agent.sh" --workers "$workers" \
        --max-experiments "$experiments" >/dev/null 2>&1
    wall=$(echo "$(now) - $start" | bc -l)
    rate[$workers]=$(echo "$experiments * 3600 / $wall" | bc -l)
    printf '| %d | %d | %.1f s | %.0f |\n' "$workers" "$experiments" "$wall" "${rate[$workers]}"
done
printf '\ntwo workers against one: %.2f×\n' "$(echo "${rate[2]} / ${rate[1]}" | bc -l)"
