#!/usr/bin/env bash
# This CPU's AMX peak (int8 and bf16 tiles) on all its cores: the bound to quote an engine
# against where oneDNN runs it on AMX (benchmarks/amx_peak.c says why).
# Usage: benchmarks/amx_peak.sh > amx_peak.txt; python benchmarks/ingest.py --side-by-side --cpu-peak amx_peak.txt
exec "$(dirname "$0")/peak_kernel.sh" amx_peak
