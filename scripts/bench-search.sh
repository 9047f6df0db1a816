#!/usr/bin/env bash
# How far a search gets on the synthetic project examples/rastrigin: for 1, 2 and 4 workers, $SEEDS sessions of
# $EXPERIMENTS experiments each, driven by a scripted agent that makes a random local edit per call (one constant
# moved by a normal step, its random numbers from the session's seed, the worker and the call). Prints, per worker
# count, the median and the quartiles of the best's true loss (the function without its seed noise), as a table.
#
#   scripts/bench-search.sh        (SEEDS=20 EXPERIMENTS=60 WORKERS="1 2 4" by default; AUTORESEARCH=path runs
#                                   that binary instead of building this checkout's)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
seeds=${SEEDS:-20}
experiments=${EXPERIMENTS:-60}
workers_list=${WORKERS:-1 2 4}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bin=${AUTORESEARCH:-}
if [[ -z $bin ]]; then
    cargo build --release --quiet -p autoresearch --manifest-path "$repo/Cargo.toml"
    bin=$repo/target/release/autoresearch
fi
cat > "$work/agent.sh" <<'EOF'
#!/usr/bin/env bash
# One random local edit of params.py: its random numbers from the session's seed, the worker and the call.
set -eu
w=0
case $PWD in */workers/*/tree) w=$(basename "$(dirname "$PWD")") ;; esac
n=$(( $(cat "$STATE/count-$w" 2>/dev/null || echo 0) + 1 )) && echo $n > "$STATE/count-$w"
python3 - "$BENCH_SEED" "$w" "$n" "$AUTORESEARCH_DESCRIPTION" <<'PY'
import random, re, sys
seed, worker, call, description = sys.argv[1:]
rng = random.Random(f"{seed}/{worker}/{call}")
text = open("params.py").read()
name = rng.choice(["X1", "X2", "X3", "X4"])
old = float(re.search(rf"^{name} = (\S+)$", text, re.M).group(1))
new = round(old + rng.gauss(0.0, 0.5), 3)
open("params.py", "w").write(re.sub(rf"^{name} = \S+$", f"{name} = {new}", text, flags=re.M))
open(description, "w").write(f"{name} {old} -> {new}\n")
PY
EOF
# The true loss at a commit's params.py: the function without its noise.
true_loss() {
    git -C "$1" show "$2:params.py" | python3 -c '
import math, sys
ns = {}
exec(sys.stdin.read(), ns)
xs = [ns[k] for k in ("X1", "X2", "X3", "X4")]
print(f"{10 * len(xs) + sum(x * x - 10 * math.cos(2 * math.pi * x) for x in xs):.4f}")'
}
echo "| workers | sessions | experiments each | median best (true loss) | quartiles | wall per session |"
echo "| --- | --- | --- | --- | --- | --- |"
for workers in $workers_list; do
    bests=()
    start=$(date +%s.%N)
    for seed in $(seq 1 "$seeds"); do
        dir=$work/w$workers-s$seed
        mkdir -p "$dir/state" "$dir/repo" && cd "$dir/repo" && git init --quiet
        (cd "$repo/examples/rastrigin" && git ls-files -z | xargs -0 tar cf -) | tar xf -
        git add -A && git -c user.name=bench -c user.email=bench@localhost commit --quiet -m start
        "$bin" init bench >/dev/null 2>&1
        STATE=$dir/state BENCH_SEED=$seed "$bin" loop --agent "bash $work/agent.sh" --workers "$workers" \
            --max-experiments "$experiments" >/dev/null 2>&1
        best=$(python3 -c 'import json; print(json.load(open(".autoresearch/state.json"))["best"]["commit"])')
        bests+=("$(true_loss "$dir/repo" "$best")")
    done
    wall=$(echo "($(date +%s.%N) - $start) / $seeds" | bc -l)
    printf '%s\n' "${bests[@]}" | python3 -c '
import statistics, sys
workers, seeds, experiments, wall = sys.argv[1:]
v = sorted(float(l) for l in sys.stdin)
q = statistics.quantiles(v, n=4) if len(v) > 1 else [v[0], v[0], v[0]]
print(f"| {workers} | {seeds} | {experiments} | {statistics.median(v):.3f} | {q[0]:.3f} to {q[2]:.3f} | {float(wall):.1f} s |")
' "$workers" "$seeds" "$experiments" "$wall"
done
