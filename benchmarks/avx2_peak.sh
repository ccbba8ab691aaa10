#!/usr/bin/env bash
# This CPU's AVX2 peak (fp32 FMA, and int8 as u8 x s8 multiply-adds without VNNI) on all its
# cores: the bound to quote an engine against on CPUs without AVX-512 (benchmarks/avx2_peak.c
# says why).
# Usage: benchmarks/avx2_peak.sh > avx2_peak.txt; python benchmarks/ingest.py --side-by-side --cpu-peak avx2_peak.txt
exec "$(dirname "$0")/peak_kernel.sh" avx2_peak
