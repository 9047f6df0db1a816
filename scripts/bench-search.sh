#!/usr/bin/env bash
# How far a search gets on the synthetic project examples/rastrigin: for each search (greedy, frontier) and 1, 2
# and 4 workers, $SEEDS sessions of $EXPERIMENTS experiments each, driven by a scripted agent that makes a random
# local edit per call (one constant moved by a normal step, its random numbers from the session's seed, the worker
# and the call). Prints, per search and worker count, the median and the quartiles of the best's true loss (the
# function without its seed noise), as a table; with CURVES=file, also writes each session's best-so-far true loss
# after each experiment (search, workers, seed, experiment, loss) as CSV, for scripts/plot-search.py.
#
#   scripts/bench-search.sh        (SEEDS=20 EXPERIMENTS=60 WORKERS="1 2 4" SEARCHES="greedy frontier" by default;
#                                   AUTORESEARCH=path runs that binary instead of building this checkout's)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
seeds=${SEEDS:-20}
experiments=${EXPERIMENTS:-60}
workers_list=${WORKERS:-1 2 4}
searches=${SEARCHES:-greedy frontier}
curves=${CURVES:-/dev/null}
echo "search,workers,seed,experiment,loss" > "$curves"
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
# The session's best after each experiment (greedy: the last keep; frontier: the best node, a re-measured node
# replaced by its re-measure), as the true loss of its params.py: one line each.
best_so_far() {
    python3 - "$1" "$2" <<'PY'
import math, subprocess, sys
search, repo = sys.argv[1:]
def true_loss(commit, cache={}):
    if commit not in cache:
        text = subprocess.run(["git", "-C", repo, "show", f"{commit}:params.py"], capture_output=True, text=True, check=True).stdout
        ns = {}
        exec(text, ns)
        xs = [ns[k] for k in ("X1", "X2", "X3", "X4")]
        cache[commit] = 10 * len(xs) + sum(x * x - 10 * math.cos(2 * math.pi * x) for x in xs)
    return cache[commit]
rows = [l.rstrip("\n").split("\t") for l in open(f"{repo}/results.tsv")][1:]
nodes, best = {}, None  # run -> (value, commit)
for r in rows:
    if r[3] == "rerun":
        continue
    if r[3] == "keep":
        run, parent = r[8], r[12] if len(r) > 12 else "-"
        if search == "greedy":
            best = r[0]
        else:
            if parent in nodes and nodes[parent][1] == r[0]:
                del nodes[parent]
            nodes[run] = (float(r[1]), r[0])
            best = min(nodes.values())[1]
    print(f"{true_loss(best):.4f}" if best else "nan")
PY
}
echo "| search | workers | sessions | experiments each | median best (true loss) | quartiles | wall per session |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for search in $searches; do
for workers in $workers_list; do
    bests=()
    wall=0
    for seed in $(seq 1 "$seeds"); do
        dir=$work/$search-w$workers-s$seed
        mkdir -p "$dir/state" "$dir/repo" && cd "$dir/repo" && git init --quiet
        (cd "$repo/examples/rastrigin" && git ls-files -z | xargs -0 tar cf -) | tar xf -
        git add -A && git -c user.name=bench -c user.email=bench@localhost commit --quiet -m start
        "$bin" init bench >/dev/null 2>&1
        start=$(date +%s.%N)
        STATE=$dir/state BENCH_SEED=$seed "$bin" loop --agent "bash $work/agent.sh" --workers "$workers" \
            --search "$search" --max-experiments "$experiments" >/dev/null 2>&1
        wall=$(echo "$wall + $(date +%s.%N) - $start" | bc -l)
        curve=$(best_so_far "$search" "$dir/repo")
        echo "$curve" | awk -v s="$search" -v w="$workers" -v seed="$seed" '{print s "," w "," seed "," NR "," $1}' >> "$curves"
        bests+=("$(echo "$curve" | tail -1)")
        cd "$work" && rm -rf "$dir"
    done
    printf '%s\n' "${bests[@]}" | python3 -c '
import statistics, sys
search, workers, seeds, experiments, wall = sys.argv[1:]
v = sorted(float(l) for l in sys.stdin)
q = statistics.quantiles(v, n=4) if len(v) > 1 else [v[0], v[0], v[0]]
print(f"| {search} | {workers} | {seeds} | {experiments} | {statistics.median(v):.3f} | {q[0]:.3f} to {q[2]:.3f} | {float(wall) / int(seeds):.1f} s |")
' "$search" "$workers" "$seeds" "$experiments" "$wall"
done
done
