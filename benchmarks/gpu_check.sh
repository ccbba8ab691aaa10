#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU, TensorRT 10+ and CUDA torch (nscmonitor[gpu,train]):
# runs the gpu-marked tests, builds TensorRT fp16/int8 engines for ResNet50 and benchmarks them
# against ONNX Runtime fp32 and torch CUDA fp16. Everything lands in OUT_DIR. Budget: < 8 minutes.
#
#   benchmarks/gpu_check.sh [OUT_DIR]
#   MODEL=RUN_DIR/model.onnx TILES=TILES_DIR benchmarks/gpu_check.sh   # a trained model + real tiles
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-check-$(date +%Y%m%d-%H%M%S)}
PY=${PYTHON:-python}
mkdir -p "$OUT"
status=0

{ nvidia-smi || echo "nvidia-smi not found"; } > "$OUT/nvidia-smi.txt" 2>&1
"$PY" - > "$OUT/versions.txt" 2>&1 <<'PYEOF'
import onnxruntime, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0), "sm", torch.cuda.get_device_capability(0))
try:
    import tensorrt
    print("tensorrt", tensorrt.__version__)
except ImportError as exc:
    print("tensorrt missing:", exc)
print("onnxruntime", onnxruntime.__version__, onnxruntime.get_available_providers())
PYEOF
cat "$OUT/versions.txt"

echo "== gpu tests"
timeout 180 "$PY" -m pytest tests/gpu -m gpu -q -rs -p no:cacheprovider --junitxml "$OUT/gpu-tests.xml" \
    > "$OUT/gpu-tests.txt" 2>&1 || status=1
tail -n 15 "$OUT/gpu-tests.txt"

echo "== benchmark"
args=(--batches 1,8,32 --seconds 2 --n-heldout 256 --n-calib 256 --threads "$(nproc)"
      --backends ort-fp32,torch-cuda-fp16,tensorrt-fp16,tensorrt-int8 --work "$OUT/work" --out "$OUT")
[ -n "${MODEL:-}" ] && args+=(--model "$MODEL")
[ -n "${TILES:-}" ] && args+=(--tiles "$TILES")
[ -z "${MODEL:-}" ] && args+=(--sizes 224)
timeout 270 "$PY" benchmarks/inference.py "${args[@]}" > "$OUT/benchmark.txt" 2>&1 || status=1
tail -n 20 "$OUT/benchmark.txt"
find "$OUT/work" \( -name '*.npy' -o -name '*.onnx' -o -name '*.engine' -o -name '*.pt' \) -delete 2>/dev/null
echo "results in $OUT (exit $status)"
exit $status
