"""The torch backend serves a run's checkpoint and must agree with that run's ONNX."""

from __future__ import annotations

import numpy as np
import pytest

from nscmonitor.engines.base import EngineError
from nscmonitor.engines.metadata import ModelMetadata
from nscmonitor.engines.ort import OrtCpuEngine
from nscmonitor.engines.select import select

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from nscmonitor.engines.torch import TorchEngine, export_onnx, save_checkpoint, with_prelude  # noqa: E402

META = ModelMetadata(name="r18", version="t", scheme="multiclass",
                     classes=("neuron", "astrocyte", "oligodendrocyte", "undifferentiated"), input_size=32,
                     arch="resnet18", normalization={"p_low": 1.0, "p_high": 99.8, "mean": [0.40, 0.45, 0.50],
                                                     "std": [0.20, 0.22, 0.25], "in_graph": True})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=4).eval()
    save_checkpoint(run / "best.pt", net, "resnet18", META)
    export_onnx(with_prelude(net, META), META, run / "model.onnx")
    return run


X = np.random.default_rng(0).uniform(-0.2, 1.2, (6, 1, 32, 32)).astype(np.float32)


@pytest.mark.parametrize("channels_last", [False, True])
def test_torch_backend_matches_the_runs_onnx(run_dir, channels_last):
    eng = TorchEngine(run_dir / "model.onnx", META, channels_last=channels_last, threads=1)
    eng.load()
    ref = OrtCpuEngine(run_dir / "model.onnx", META)
    ref.load()
    np.testing.assert_allclose(eng.infer(X), ref.infer(X), atol=1e-4)


def test_training_checkpoint_format_is_served(tmp_path):
    model_mod = pytest.importorskip("nscmonitor.training.model")
    torch.manual_seed(1)
    net = model_mod.build_model("resnet18", 4).eval()
    save_checkpoint(tmp_path / "best.pt", net, "resnet18", META)
    export_onnx(net, META, tmp_path / "model.onnx")
    eng = TorchEngine(tmp_path, META)
    eng.load()
    ref = OrtCpuEngine(tmp_path / "model.onnx", META)
    ref.load()
    np.testing.assert_allclose(eng.infer(X), ref.infer(X), atol=1e-4)


def test_checkpoint_with_other_classes_is_refused(run_dir):
    other = ModelMetadata(**{**META.__dict__, "classes": ("neuron", "glia", "x", "y")})
    with pytest.raises(EngineError, match="classes"):
        TorchEngine(run_dir, other).load()


def test_selector_falls_back_to_torch_when_onnxruntime_is_disabled(run_dir, monkeypatch):
    monkeypatch.setenv("NSCMONITOR_DISABLE_ORT", "1")
    sel = select(run_dir / "model.onnx", threads=1)
    assert sel.backend == "torch"
    assert [b for b, _ in sel.skipped] == ["tensorrt", "torch-cuda", "ort-cuda", "openvino-int8", "ort-int8",
                                           "openvino-bf16", "ort-cpu"]
    assert sel.engine.infer(X).shape == (6, 4)


def test_torch_cuda_is_passed_over_with_the_reason_where_there_is_no_gpu(run_dir):
    from nscmonitor.engines.autobuild import gpu_names
    from nscmonitor.engines.torch_cuda import TorchCudaEngine

    if gpu_names() or torch.cuda.is_available():
        pytest.skip("this machine has an NVIDIA GPU (tests/gpu covers the engine there)")
    sel = select(run_dir / "model.onnx", threads=1)
    assert dict(sel.skipped)["torch-cuda"] == "no NVIDIA GPU on this machine"
    with pytest.raises(EngineError, match="sees no CUDA GPU"):
        TorchCudaEngine(run_dir / "model.onnx", META).load()


def test_a_gpu_that_fails_when_the_network_is_put_on_it_is_a_clean_engine_error(run_dir, monkeypatch):
    """torch says a GPU is there (the one fake: the GPU), moving the network onto it fails as
    an absent driver or a full card does: selection must be able to go on to the next backend."""
    from nscmonitor.engines.torch_cuda import TorchCudaEngine

    if torch.cuda.is_available():
        pytest.skip("this machine has a working CUDA GPU")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    engine = TorchCudaEngine(run_dir / "model.onnx", META)
    with pytest.raises(EngineError, match="cannot put the network on the GPU"):
        engine.load()
    assert engine._model is None


def test_disabled_torch_is_a_clean_engine_error(run_dir, monkeypatch):
    monkeypatch.setenv("NSCMONITOR_DISABLE_TORCH", "1")
    with pytest.raises(EngineError, match="NSCMONITOR_DISABLE_TORCH"):
        TorchEngine(run_dir, META).load()


def test_checkpoint_that_disagrees_with_its_onnx_fails_the_gate_at_selection(run_dir, tmp_path):
    from test_engines_int8_select import write_tiles

    from nscmonitor.engines.calibration import load_tiles

    stale = tmp_path / "run"
    stale.mkdir()
    (stale / "model.onnx").write_bytes((run_dir / "model.onnx").read_bytes())
    torch.manual_seed(7)
    save_checkpoint(stale / "best.pt", torchvision.models.resnet18(num_classes=4).eval(), "resnet18", META)
    tiles = load_tiles(write_tiles(tmp_path / "tiles", n=16, size=32), META)
    sel = select(stale / "model.onnx", prefer="torch", validation_tiles=tiles, threads=1)
    assert sel.backend == "ort-cpu"
    assert "validation gate" in dict(sel.skipped)["torch"]
