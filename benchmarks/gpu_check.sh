#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU and the `gpu` extra (TensorRT 10.x/11.x,
# onnxruntime-gpu, CUDA torch; `make gpu-check` makes that venv and runs this with its Python):
#   1. versions, and whether onnxruntime and onnxruntime-gpu are (wrongly) installed together;
#   2. the gpu-marked tests (TensorRT build -> gate -> cache -> serve, fp16 and int8);
#   3. build on register: a model registered in a fresh data folder gets its TensorRT engine
#      (build time, gate, engine) with no further command, then the daemon's frames/s with it;
#   4. the inference benchmark: ONNX Runtime CPU fp32, ONNX Runtime CUDA, torch CUDA fp16 (eager
#      and CUDA graphs) and TensorRT fp16/int8 side by side (a backend that fails keeps its row,
#      with the reason);
#   5. (SIDE_BY_SIDE=1, the default) benchmarks/ingest.py --side-by-side: a ResNet50 trained here
#      on the GPU, the daemon's frames/s with the fp32 ONNX and with the engine built for this
#      machine, the engine alone, and live latency.
# Everything lands in OUT_DIR. Budget: about 10 minutes (5 without step 5).
#
#   benchmarks/gpu_check.sh [OUT_DIR]
#   MODEL=RUN_DIR/model.onnx TILES=TILES_DIR benchmarks/gpu_check.sh   # a trained model + real tiles
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-check-$(date +%Y%m%d-%H%M%S)}
PY=${PYTHON:-python}
NSC=("$PY" -m nscmonitor)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
status=0

echo "== versions"
{ nvidia-smi || echo "nvidia-smi not found"; } > "$OUT/nvidia-smi.txt" 2>&1
"$PY" - > "$OUT/versions.txt" 2>&1 <<'PYEOF'
import torch
from nscmonitor.ops.runtime_packages import installed_versions, ort_flavour_check
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0), "sm", torch.cuda.get_device_capability(0))
try:
    import tensorrt
    from nscmonitor.engines.tensorrt import build_recipe
    print("tensorrt", tensorrt.__version__, "recipes:",
          {p: build_recipe(tensorrt.__version__, p).graph for p in ("fp16", "int8")})
except Exception as exc:  # report what is missing, the rest of the check still runs
    print("tensorrt unusable:", exc)
ok, msg = ort_flavour_check(installed_versions())
print("onnxruntime packages", "ok" if ok else "PROBLEM", msg)
import onnxruntime
print("onnxruntime", onnxruntime.__version__, onnxruntime.get_available_providers())
PYEOF
cat "$OUT/versions.txt"

echo "== gpu tests"
timeout 240 "$PY" -m pytest tests/gpu -m gpu -q -rs -p no:cacheprovider --junitxml "$OUT/gpu-tests.xml" \
    > "$OUT/gpu-tests.txt" 2>&1 || status=1
tail -n 15 "$OUT/gpu-tests.txt"

echo "== build on register"
WORK="$OUT/work"
mkdir -p "$WORK"
reg_model=${MODEL:-}
reg_tiles=${TILES:-}
if [ -z "$reg_model" ]; then
    # a short real training run (speed and the build path do not depend on accuracy, the gate does)
    reg_tiles="$WORK/synthetic-tiles-96"
    "$PY" -c "from nscmonitor.training.synthetic import write_synthetic_tiles as w; w('$reg_tiles', plates=3, \
wells_per_class=2, timepoints=(48, 96), fields=2, tile_size=96)" > "$OUT/register.txt" 2>&1
    timeout 240 "${NSC[@]}" train --data "$reg_tiles" --arch resnet18 --epochs 3 --image-size 96 --device cuda \
        --out "$WORK/run" >> "$OUT/register.txt" 2>&1 || status=1
    reg_model="$WORK/run/model.onnx"
fi
data="$WORK/data"
rm -rf "$data"
mkdir -p "$data"
export NSCMONITOR_DATABASE_URL="sqlite:///$data/nscmonitor.db" NSCMONITOR_MODELS_DIR="$data/models"
cal=()
[ -n "$reg_tiles" ] && [ -n "${MODEL:-}" ] && cal=(--calibration "$reg_tiles")  # a trained run carries its own
t0=$(date +%s.%N)
# a run directory is registered whole (its best.pt is what the torch GPU engine serves)
reg_source=$reg_model
[ "$(basename "$reg_model")" = model.onnx ] && reg_source=$(dirname "$reg_model")
timeout 300 "${NSC[@]}" models register "$reg_source" "${cal[@]}" >> "$OUT/register.txt" 2>&1 || status=1
t1=$(date +%s.%N)
version_model=$(find "$data/models/versions" -name model.onnx 2>/dev/null | head -n 1)
if [ -n "$version_model" ] && [ ! -f "$(dirname "$version_model")/engine-status.json" ]; then
    echo "register built nothing: running 'nscmonitor engine autobuild' on the registered version" \
        | tee -a "$OUT/register.txt"
    timeout 300 "${NSC[@]}" engine autobuild "$version_model" "${cal[@]}" >> "$OUT/register.txt" 2>&1 || status=1
    t1=$(date +%s.%N)
fi
"$PY" - "$version_model" "$t0" "$t1" <<'PYEOF' | tee -a "$OUT/register.txt"
import json, sys
from pathlib import Path
model, t0, t1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
status = Path(model).parent / "engine-status.json" if model else None
if not status or not status.is_file():
    print("no engine status recorded for", model or "(nothing registered)")
    sys.exit(0)
s = json.loads(status.read_text())
print(f"register -> engine: {t1 - t0:.1f} s wall; state {s.get('state')}, engine {s.get('engine')}, "
      f"build {s.get('build_seconds')} s")
for a in s.get("attempts") or []:
    g = a.get("gate") or {}
    print(f"  {a['engine']:<15} {'passed' if a['passed'] else 'FAILED'} in {a.get('seconds')} s; "
          f"top-1 {g.get('top1_agreement', float('nan')):.2%}, readout {g.get('well_readout_pp', float('nan')):.2f} pp"
          + (f"; {a['reason']}" if a.get("reason") else ""))
if s.get("reason"):
    print("  reason:", s["reason"])
PYEOF
"${NSC[@]}" engine list "$version_model" >> "$OUT/register.txt" 2>&1
unset NSCMONITOR_DATABASE_URL NSCMONITOR_MODELS_DIR
if [ -n "$version_model" ]; then
    echo "frames/s of the daemon's pipeline with the registered version (1408x1040 frames, engine chosen as the daemon does):"
    timeout 240 "$PY" benchmarks/ingest.py --model "$version_model" --frames 60 --live-frames 0 \
        --out "$OUT/ingest-registered.json" > "$OUT/ingest-registered.txt" 2>&1 || status=1
    grep -E "^(model|backlog)" "$OUT/ingest-registered.txt"
fi

echo "== benchmark"
args=(--batches 1,8,32,128 --seconds 2 --n-heldout 256 --n-calib 256 --threads "$(nproc)"
      --backends ort-fp32,ort-cuda,torch-cuda-fp16-eager,torch-cuda-fp16,tensorrt-fp16,tensorrt-int8 --work "$WORK/bench" --out "$OUT")
[ -n "${MODEL:-}" ] && args+=(--model "$MODEL")
[ -n "${TILES:-}" ] && args+=(--tiles "$TILES")
[ -z "${MODEL:-}" ] && args+=(--sizes 224)
timeout 270 "$PY" benchmarks/inference.py "${args[@]}" > "$OUT/benchmark.txt" 2>&1 || status=1
tail -n 20 "$OUT/benchmark.txt"
if [ "${SIDE_BY_SIDE:-1}" = 1 ]; then
    echo "== ingest side by side (ResNet50, 96 px tiles, 1408x1040 frames)"
    timeout 420 "$PY" benchmarks/ingest.py --side-by-side --train-device cuda --threads "$(nproc)" \
        --frames "${SBS_FRAMES:-120}" --live-frames "${SBS_LIVE:-20}" --out "$OUT/ingest-side-by-side.json" \
        > "$OUT/ingest-side-by-side.txt" 2>&1 || status=1
    tail -n 14 "$OUT/ingest-side-by-side.txt"
fi
find "$WORK" \( -name '*.npy' -o -name '*.npz' -o -name '*.onnx' -o -name '*.engine' -o -name '*.pt' \
    -o -name '*.tif' -o -name '*.db' \) -delete 2>/dev/null
echo "results in $OUT (exit $status)"
exit $status
