"""ONNX Runtime on the GPU (onnxruntime-gpu): pip's CUDA libraries preloaded, the session really
on CUDAExecutionProvider, answers equal to the CPU engine's. Skipped with the reason where
onnxruntime-gpu or a GPU is missing; ``benchmarks/gpu_check.sh`` runs it."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
if "CUDAExecutionProvider" not in ort.get_available_providers():
    pytest.skip("this onnxruntime has no CUDAExecutionProvider (install the gpu extra: onnxruntime-gpu)",
                allow_module_level=True)
if shutil.which("nvidia-smi") is None:
    pytest.skip("no NVIDIA driver (nvidia-smi not found)", allow_module_level=True)

from nscmonitor.engines.ort import OrtCpuEngine, OrtCudaEngine, preload_cuda_libraries  # noqa: E402
from nscmonitor.engines.tiny import build_tiny_classifier  # noqa: E402
from nscmonitor.ops.runtime_packages import installed_versions, ort_flavour_check  # noqa: E402


def test_one_onnxruntime_flavour_is_installed():
    ok, msg = ort_flavour_check(installed_versions())
    assert ok, msg


def test_cuda_session_runs_on_the_gpu_and_agrees_with_the_cpu(tmp_path):
    assert preload_cuda_libraries(ort) == ""
    meta = build_tiny_classifier(tmp_path / "m.onnx")
    x = np.random.default_rng(0).uniform(0, 1, (64, 1, 64, 64)).astype(np.float32)
    gpu, cpu = OrtCudaEngine(tmp_path / "m.onnx", meta), OrtCpuEngine(tmp_path / "m.onnx", meta)
    gpu.load()
    cpu.load()
    try:
        assert gpu._session.get_providers()[0] == "CUDAExecutionProvider"
        got, want = gpu.infer(x), cpu.infer(x)
    finally:
        gpu.close()
        cpu.close()
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
