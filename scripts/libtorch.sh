#!/usr/bin/env bash
# Fetches libtorch 2.11.0 (the version tch 0.24 binds to) from PyPI wheels, unpacks the parts a build needs
# into a cache, and links it into the repository, where .cargo/config.toml and `autoresearch train` look:
#
#   scripts/libtorch.sh          .libtorch: libtorch_cpu and the two CUDA runtime libraries it loads
#   scripts/libtorch.sh --cuda   also .libtorch-cuda, with libtorch_cuda, to link the CUDA variant (it runs on
#                                a GPU machine, against the torch libraries installed there)
#
# Cache: ${AUTORESEARCH_BUILD_CACHE:-~/.cache/autoresearch-build}. Needs python3 with pip.
# The folders keep the wheels' site-packages layout (torch/lib beside nvidia/cu13/lib), because the torch
# libraries find their CUDA neighbours by a path relative to their own real location.
set -euo pipefail

TORCH_VERSION=2.11.0
CUDART_VERSION=13.0.96   # the versions torch 2.11.0's cuda-toolkit==13.0.2 pins
CUPTI_VERSION=13.0.85

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${AUTORESEARCH_BUILD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/autoresearch-build}
wheels=$cache/wheels
cpu_root=$cache/libtorch-$TORCH_VERSION
cuda_root=$cache/libtorch-$TORCH_VERSION-cuda

say() { printf '[libtorch] %s\n' "$*" >&2; }

fetch() {  # fetch NAME VERSION PLATFORM...: download a wheel unless one is cached
    local name=$1 version=$2; shift 2
    local glob="${name//-/_}-$version-*.whl"
    if compgen -G "$wheels/$glob" >/dev/null; then return; fi
    say "downloading $name==$version from PyPI"
    local platforms=()
    for p in "$@"; do platforms+=(--platform "$p"); done
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
        "${platforms[@]}" -d "$wheels" "$name==$version"
}

wheel() { compgen -G "$wheels/${1//-/_}-$2-*.whl"; }

extract() {  # extract WHEEL DEST PATTERN...: the wheel's members that match a shell pattern
    python3 - "$@" <<'PY'
import fnmatch, sys, zipfile
wheel, dest, patterns = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    members = [m for m in z.namelist() if any(fnmatch.fnmatch(m, p) for p in patterns)]
    missing = [p for p in patterns if not any(fnmatch.fnmatch(m, p) for m in members)]
    if missing:
        sys.exit(f"{wheel} has nothing matching {missing}")
    z.extractall(dest, members)
PY
}

install() {  # install ROOT MEMBER...: (re)build ROOT from the wheels unless it holds every member
    local root=$1; shift
    local m missing=0
    for m in "$@"; do [[ $m == *'*' || -e $root/$m ]] || missing=1; done
    [[ $missing == 0 ]] && return
    say "unpacking into $root"
    # Built beside and moved into place last, so an interrupted run leaves nothing half-done.
    rm -rf "$root.partial"
    local torch=()
    for m in "$@"; do [[ $m == torch/* ]] && torch+=("$m"); done
    extract "$(wheel torch "$TORCH_VERSION")" "$root.partial" "${torch[@]}"
    extract "$(wheel nvidia-cuda-runtime "$CUDART_VERSION")" "$root.partial" nvidia/cu13/lib/libcudart.so.13
    extract "$(wheel nvidia-cuda-cupti "$CUPTI_VERSION")" "$root.partial" nvidia/cu13/lib/libcupti.so.13
    rm -rf "$root"
    mv "$root.partial" "$root"
}

mkdir -p "$wheels"
fetch torch "$TORCH_VERSION" manylinux_2_28_x86_64
fetch nvidia-cuda-runtime "$CUDART_VERSION" manylinux2014_x86_64 manylinux_2_17_x86_64
fetch nvidia-cuda-cupti "$CUPTI_VERSION" manylinux_2_25_x86_64

cpu=(torch/lib/libtorch_cpu.so torch/lib/libtorch.so torch/lib/libc10.so 'torch/lib/libgomp*'
     torch/include/ATen/ATen.h 'torch/include/*' nvidia/cu13/lib/libcudart.so.13 nvidia/cu13/lib/libcupti.so.13)
install "$cpu_root" "${cpu[@]}"
ln -sfn "$cpu_root/torch" "$repo/.libtorch"
say "ready: .libtorch -> $cpu_root/torch"

if [[ ${1:-} == --cuda ]]; then
    install "$cuda_root" "${cpu[@]}" torch/lib/libtorch_cuda.so torch/lib/libc10_cuda.so
    ln -sfn "$cuda_root/torch" "$repo/.libtorch-cuda"
    say "ready: .libtorch-cuda -> $cuda_root/torch"
fi
