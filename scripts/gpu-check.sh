#!/usr/bin/env bash
# All GPU checks in one call of the GPU machine, ending in a short table.
#
#   scripts/gpu-check.sh stage    here: build the CUDA variant and stage it in .gpu/ with the golden set's
#                                 data (tests/golden/data, prepared as the h100 profile)
#   scripts/gpu-check.sh device   there (repository root, .gpu carried): CUDA smoke tests, then the h100
#                                 baseline for $BUDGET seconds (default 60), then the same with the GPU memory
#                                 capped at each of $CAPS gigabytes (say CAPS="24 40"); tables on stdout and in
#                                 $OUT; exits non-zero if a smoke test or the baseline fails
#   scripts/gpu-check.sh cpu      the same run on this machine's CPU with the small profile (a short budget):
#                                 checks the script end to end where no GPU is at hand
#
# The GPU machine has PyTorch 2.11 (CUDA 13) and python3 but no Rust and no network: the binaries are built
# here and run there against its torch libraries.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
stage=$repo/.gpu
budget=${BUDGET:-60}
reference=${AUTORESEARCH_REFERENCE:-$repo/tests/golden}

stage() {
    scripts/libtorch.sh --cuda
    export LIBTORCH=$repo/.libtorch-cuda
    cargo build --release --quiet -p autoresearch -p autoresearch-train --features autoresearch-train/cuda --target-dir target/cuda
    local tests
    tests=$(cargo test --release --quiet -p autoresearch-train --features cuda --target-dir target/cuda --test cuda \
        --no-run --message-format=json | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "cuda" and m.get("executable"):
        print(m["executable"])')
    rm -rf "$stage" && mkdir -p "$stage/bin" "$stage/cache/data" "$stage/reference"
    cp target/cuda/release/autoresearch target/cuda/release/autoresearch-train "$stage/bin/"
    cp "$tests" "$stage/bin/cuda-tests"
    cargo build --release --quiet -p autoresearch-train --features cuda --target-dir target/cuda --example gpu_breakdown
    cp target/cuda/release/examples/gpu_breakdown "$stage/bin/"
    strip "$stage"/bin/*  # the device tool carries at most 64 MiB
    mkdir -p "$stage/reference/model"
    cp -r "$reference/dataloader" "$reference/meta.json" "$stage/reference/"
    cp "$reference"/model/{random,forward_backward}.safetensors "$stage/reference/model/"
    cp "$reference"/data/*.parquet "$stage/cache/data/"
    # The h100 profile over the reference shards (the tokenizer equals the original's tokenizer-8192).
    target/cuda/release/autoresearch --cache-dir "$stage/cache" prepare --profile h100 --parquet "$stage/cache/data"
    git rev-parse --short HEAD > "$stage/commit"
    du -sh "$stage"
}

# Prints the table from a training log: the summary block and the `loop:` line.
table() {
    python3 - "$1" "$2" "$3" <<'PY'
import re, sys
log, card, commit = open(sys.argv[1]).read().replace("\r", "\n"), sys.argv[2], sys.argv[3]
summary = dict(re.findall(r"^(\w+):\s+(.+)$", log.split("\n---\n")[-1], re.M))
loop = re.search(r"loop: (\d+) steps in ([\d.]+)s \(([\d.]+)s of them in the first (\d+) steps, not counted for MFU\)", log)
tokens_per_step = int(re.search(r"tokens/step: (\d+)", log).group(1))
steps, loop_s, warm_s, warm_n = int(loop.group(1)), float(loop.group(2)), float(loop.group(3)), int(loop.group(4))
total_s = float(summary["total_seconds"])
# The timed steps, as the original counts training time (summary's training_seconds is the whole process).
timed, train_s = steps - warm_n, loop_s - warm_s
# A machine so slow (or busy) that the deadline came within the warm-up: the training ended well, its rate is n/a.
measured = timed > 0 and train_s > 0
none = f"n/a (no steps after the {warm_n} warm-up steps, {loop_s} s)"
rows = [
    ("card", card), ("commit", commit), ("profile / budget", f'{summary["profile"]} / {summary["time_budget"]} s'),
    ("tokens/s", f"{tokens_per_step * timed / train_s:,.0f}" if measured else none), ("MFU", summary["mfu_percent"] + ("" if summary["mfu_percent"] == "n/a" else " %")),
    ("step time", f"{1000 * train_s / timed:.0f} ms ({timed} timed steps)" if measured else none),
    ("start-up (before step 0 + after the last, evaluation included)", f"{total_s - loop_s:.1f} s"),
    ("overhead (total - training, as the original counts)", f"{total_s - train_s:.1f} s (warm-up steps {warm_s:.1f} s)"),
    ("peak memory", f'{float(summary["peak_vram_mb"]):,.0f} MiB'), ("val_bpb", summary["val_bpb"]),
]
print("\n| metric | value |\n| --- | --- |")
for k, v in rows:
    print(f"| {k} | {v} |")
PY
}

device() {
    out=${OUT:-$stage/out}
    mkdir -p "$out"
    local torch
    torch=$(python3 -c 'import os, torch; print(os.path.dirname(torch.__file__))')
    export LD_LIBRARY_PATH=$torch/lib:$torch/../nvidia/cu13/lib:${LD_LIBRARY_PATH:-}
    local card
    card=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)
    echo "card: $card; torch $(python3 -c 'import torch; print(torch.__version__)')"
    echo "== CUDA smoke tests"
    local smoke=0
    AUTORESEARCH_REFERENCE=$stage/reference "$stage/bin/cuda-tests" --test-threads 1 --nocapture > "$out/smoke.log" 2>&1 \
        || smoke=$?
    if [[ $smoke == 0 ]]; then
        grep -E "^(window|bf16|loss|NVIDIA|test result)|: peak" "$out/smoke.log"
    else
        # The baseline still runs, for its figures; the script fails at the end.
        tail -40 "$out/smoke.log"
        echo "SMOKE TESTS FAILED (exit $smoke)"
    fi
    echo "== h100 baseline, ${budget}s budget"
    "$stage/bin/autoresearch" --cache-dir "$stage/cache" train --device cuda --profile h100 --time-budget "$budget" \
        --binary "$stage/bin/autoresearch-train" > "$out/train.log" 2>&1 || { tail -c 3000 "$out/train.log"; exit 1; }
    tr '\r' '\n' < "$out/train.log" | grep -E '^step' | tail -3
    sed -n '/^---$/,$p' "$out/train.log"
    table "$out/train.log" "$card" "$(cat "$stage/commit")" | tee "$out/table.md"
    # The h100 profile with the process's GPU memory capped (the caching allocator's memory fraction), as on a
    # smaller card: the device batch is searched afresh (the remembered one is for the whole card).
    local total_mib cap fraction
    total_mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
    for cap in ${CAPS:-}; do
        fraction=$(python3 -c "print(round($cap * 1e9 / ($total_mib * 2**20), 4))")
        echo "== h100 profile capped at $cap GB (per_process_memory_fraction:$fraction of $total_mib MiB), ${budget}s budget"
        if ! PYTORCH_CUDA_ALLOC_CONF=per_process_memory_fraction:$fraction python3 -c "
import torch; torch.empty(1, device='cuda'); f = torch.cuda.get_per_process_memory_fraction(0)
assert abs(f - $fraction) < 1e-6, f; print('torch applies the cap:', f)"; then
            echo "this torch does not take per_process_memory_fraction from PYTORCH_CUDA_ALLOC_CONF: cap skipped"
            continue
        fi
        rm -rf "$stage/cache/h100/fit"
        PYTORCH_CUDA_ALLOC_CONF=per_process_memory_fraction:$fraction "$stage/bin/autoresearch" --cache-dir "$stage/cache" \
            train --device cuda --profile h100 --time-budget "$budget" --binary "$stage/bin/autoresearch-train" \
            > "$out/train-$cap.log" 2>&1 || { tail -c 3000 "$out/train-$cap.log"; continue; }
        grep -E "^device batch" "$out/train-$cap.log"
        table "$out/train-$cap.log" "$card, capped at $cap GB" "$(cat "$stage/commit")" | tee "$out/table-$cap.md"
    done
    rm -rf "$stage/cache/h100/fit"
    if [[ ${BREAKDOWN:-1} == 1 ]]; then
        echo "== where the time goes (each part alone, synchronised)"
        "$stage/bin/gpu_breakdown" 2>&1 | tee "$out/breakdown.log" | grep -E "^breakdown|error|panicked"
    fi
    [[ $smoke == 0 ]]
}

cpu() {
    cargo build --release --quiet -p autoresearch -p autoresearch-train
    local cache
    cache=$(mktemp -d)
    trap 'rm -rf "$cache"' RETURN
    target/release/autoresearch --cache-dir "$cache" prepare --profile small
    target/release/autoresearch --cache-dir "$cache" train --device cpu --time-budget "${BUDGET:-5}" > "$cache/train.log" 2>&1 \
        || { tail -c 3000 "$cache/train.log"; return 1; }
    table "$cache/train.log" "cpu: $(nproc) cores" "$(git rev-parse --short HEAD)"
}

# Whether CUDA starts and computes inside the training's sandbox, and if not, which of its rules stop it: torch
# starts CUDA and runs a matrix product under policies from everything allowed to the training's own (`/dev`,
# `/proc`, `/sys` writable), then narrower ones (device nodes one by one, without `/proc` or `/sys`), then the
# training's with each of the confinements the CPU has (seccomp filters, capabilities) and with all of them.
sandbox() {
    local torch
    torch=$(python3 -c 'import os, torch; print(os.path.dirname(torch.__file__))')
    export LD_LIBRARY_PATH=$torch/lib:$torch/../nvidia/cu13/lib:${LD_LIBRARY_PATH:-}
    local shard tmp check nodes cuda flag policies policy
    shard=$(ls "$stage"/cache/data/*.parquet | tail -1)
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' RETURN
    check='import torch; a = torch.ones(256, 256, device="cuda", dtype=torch.bfloat16); torch.cuda.synchronize()
print("cuda works:", torch.cuda.device_count(), "devices,", float((a @ a)[0, 0]))'
    nodes=$(for node in /dev/nvidia* /dev/null /dev/zero /dev/urandom; do
        if [[ -e $node ]]; then echo "\"$node\""; fi
    done | paste -sd, -)
    cuda="\"$tmp\", \"/dev\", \"/proc\", \"/sys\""
    policies=(
        '{"deny_read": [], "write": ["/"]}'
        "{\"deny_read\": [\"$shard\"], \"write\": [$cuda]}"
        "{\"write\": [\"$tmp\", \"/dev\"]}"
        "{\"write\": [\"$tmp\", \"/dev\", \"/proc\"]}"
        "{\"write\": [\"$tmp\", \"/dev\", \"/sys\"]}"
        "{\"write\": [\"$tmp\", $nodes, \"/proc\", \"/sys\"]}"
    )
    for flag in unix_sockets_only keep_metadata no_kernel_objects file_capabilities_only others_untouched; do
        policies+=("{\"write\": [$cuda], \"$flag\": true}")
    done
    policies+=("{\"write\": [$cuda], \"unix_sockets_only\": true, \"keep_metadata\": true, \"no_kernel_objects\": true, \"file_capabilities_only\": true, \"others_untouched\": true}")
    echo "| policy | CUDA |"
    echo "| --- | --- |"
    for policy in "${policies[@]}"; do
        local said
        # A policy that stops CUDA fails the command: its row says how, and the next policy is tried.
        said=$({ "$stage/bin/autoresearch" sandboxed --policy "$policy" -- python3 -c "$check" 2>&1 || true; } \
            | { grep -E "cuda works|Error|error" || true; } | tail -2 | tr '\n' ' ')
        echo "| \`$policy\` | ${said:-nothing printed} |"
    done
}

case ${1:-} in
    stage) stage ;;
    device) device ;;
    sandbox) sandbox ;;
    cpu) cpu ;;
    *) echo "usage: scripts/gpu-check.sh stage|device|sandbox|cpu" >&2; exit 2 ;;
esac
