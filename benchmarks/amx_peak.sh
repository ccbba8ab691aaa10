#!/usr/bin/env bash
# This CPU's AMX peak (int8 and bf16 tiles) on all its cores: the bound to quote an engine
# against where oneDNN runs it on AMX (benchmarks/amx_peak.c says why).
# Usage: benchmarks/amx_peak.sh > amx_peak.txt; python benchmarks/ingest.py --side-by-side --cpu-peak amx_peak.txt
set -eu
here=$(cd "$(dirname "$0")" && pwd); out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
gcc -O2 -fopenmp "$here/amx_peak.c" -o "$out/amx_peak"
OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)} "$out/amx_peak"
echo "(ResNet50 at 224x224 = 8.2 GFLOP per image: bound in images/s = GOP/s / 8.2; scale by (size/224)^2 for other tile sizes)"
