# nscmonitor: the two commands a new machine needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed-all
DEMO_DIR ?= demo-out
DEMO_ARGS ?=   # e.g. DEMO_ARGS="--model runs/r50-mc/model.onnx" to score with a full training run's model
# Test files run on two worker processes (pytest-xdist): one test after another kept about one of
# two cores busy (many tests wait on real watchers, daemons, subprocesses and servers), and two
# workers took the suite from 17 to about 10 minutes on a 2-core VM. A file stays on one
# worker (`--dist loadfile`) because its module fixtures (a trained model, a served plate) are
# built once per file. TEST_WORKERS=0 runs everything in this process, one test after another.
TEST_WORKERS ?= 2

.PHONY: test demo install lint bench gpu-check clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel

# Everything but the `gpu` extra (TensorRT needs an NVIDIA GPU; see docs/performance.md).
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -e ".[all]"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/lint-imports

test: $(STAMP)
	$(VENV)/bin/lint-imports
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q -m "not gpu" --durations=15 -n $(TEST_WORKERS) --dist loadfile

demo: $(STAMP)
	$(PY) -m nscmonitor demo --out $(DEMO_DIR) $(DEMO_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/ingest.py
	$(PY) benchmarks/inference.py

# On a machine with an NVIDIA GPU: its own venv with the `gpu` extra (onnxruntime-gpu, TensorRT,
# CUDA torch), because `.[all]` brings the CPU onnxruntime and the two must never share one
# environment; then gpu tests, build on register, GPU benchmark (benchmarks/gpu_check.sh).
GPU_VENV  ?= .venv-gpu
GPU_PY    := $(GPU_VENV)/bin/python
GPU_STAMP := $(GPU_VENV)/.installed-gpu

$(GPU_STAMP): pyproject.toml
	$(PYTHON) -m venv $(GPU_VENV)
	$(GPU_PY) -m pip install --upgrade pip setuptools wheel
	$(GPU_PY) -m pip install -e ".[gpu,train,dev]"
	touch $(GPU_STAMP)

gpu-check: $(GPU_STAMP)
	PYTHON=$(abspath $(GPU_PY)) benchmarks/gpu_check.sh gpu-check-out

clean:
	rm -rf $(DEMO_DIR) build dist *.egg-info .pytest_cache gpu-check-out
