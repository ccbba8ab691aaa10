#!/usr/bin/env bash
# Compile one of the peak kernels beside this script (benchmarks/<name>.c) and run it on all
# cores: what amx_peak.sh and avx2_peak.sh do, each with its own kernel.
# Usage: benchmarks/peak_kernel.sh amx_peak|avx2_peak
set -eu
here=$(cd "$(dirname "$0")" && pwd); out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
gcc -O2 -fopenmp "$here/$1.c" -o "$out/$1"
OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)} "$out/$1"
echo "(ResNet50 at 224x224 = 8.2 GFLOP per image: bound in images/s = GOP/s / 8.2; scale by (size/224)^2 for other tile sizes)"
