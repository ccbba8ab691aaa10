#!/usr/bin/env bash
# This CPU's AVX2 peak (fp32 FMA, and int8 as u8 x s8 multiply-adds without VNNI) on all its
# cores: the bound to quote an engine against on CPUs without AVX-512 (benchmarks/avx2_peak.c
# says why).
# Usage: benchmarks/avx2_peak.sh > avx2_peak.txt; python benchmarks/ingest.py --side-by-side --cpu-peak avx2_peak.txt
set -eu
here=$(cd "$(dirname "$0")" && pwd); out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
gcc -O2 -fopenmp "$here/avx2_peak.c" -o "$out/avx2_peak"
OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)} "$out/avx2_peak"
echo "(ResNet50 at 224x224 = 8.2 GFLOP per image: bound in images/s = GOP/s / 8.2; scale by (size/224)^2 for other tile sizes)"
