"""The torch CUDA fp16 engine on a real GPU: graph replay equals the eager network at every batch
size, it agrees with the fp32 ONNX, build on arrival gates and records it for a registered
version, selection serves it, and a checkpoint changed after its gate is refused.

Skipped (with the reason) where CUDA torch or a GPU is missing; ``benchmarks/gpu_check.sh``
runs these."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

torch = pytest.importorskip("torch", reason="torch not installed")
if not torch.cuda.is_available():
    pytest.skip(f"torch {torch.__version__} sees no CUDA GPU", allow_module_level=True)
if shutil.which("nvidia-smi") is None:
    pytest.skip("no NVIDIA driver (nvidia-smi not found)", allow_module_level=True)

from nscmonitor.cli import main  # noqa: E402
from nscmonitor.config import load_settings  # noqa: E402
from nscmonitor.engines import autobuild  # noqa: E402
from nscmonitor.engines.metadata import read_onnx_metadata  # noqa: E402
from nscmonitor.engines.ort import OrtCpuEngine  # noqa: E402
from nscmonitor.engines.select import select  # noqa: E402
from nscmonitor.engines.torch_cuda import NAME, TorchCudaEngine, certified  # noqa: E402
from nscmonitor.registry.registry import Registry  # noqa: E402
from nscmonitor.store.db import open_engine  # noqa: E402
from nscmonitor.training.synthetic import write_synthetic_tiles  # noqa: E402
from nscmonitor.training.train_data import TrainConfig  # noqa: E402
from nscmonitor.training.train import main as train  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real training run (tiny network, its OOD head and calibration set included)."""
    root = tmp_path_factory.mktemp("torch-cuda")
    tiles = write_synthetic_tiles(root / "tiles", plates=2, wells_per_class=4, timepoints=(0, 48, 96), fields=4,
                                  tile_size=32, seed=5)
    train(TrainConfig(data=str(tiles), out=str(root / "run"), scheme="multiclass", arch="tiny", epochs=6,
                      batch_size=32, lr=3e-3, warmup_epochs=0.5, threads=2, progress=False))
    return root / "run"


def _x(meta, n, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (n, meta.input_channels, meta.input_size,
                                                      meta.input_size)).astype(np.float32)


def test_graph_replay_equals_the_eager_network_and_agrees_with_fp32(run):
    model = run / "model.onnx"
    meta = read_onnx_metadata(model)
    graphed = TorchCudaEngine(model, meta, batch_size=8)
    eager = TorchCudaEngine(model, meta, batch_size=8, graphs=False)
    ref = OrtCpuEngine(model, meta)
    for e in (graphed, eager, ref):
        e.load()
    try:
        assert graphed._graph is not None, "the forward pass was not captured as a CUDA graph"
        for n in (1, 5, 8, 13, 24):  # under, at, over and a multiple of the captured batch
            x = _x(meta, n, seed=n)
            p_graph, ood_graph = graphed.infer_with_ood(x)
            p_eager, ood_eager = eager.infer_with_ood(x)
            p_ref, ood_ref = ref.infer_with_ood(x)
            assert p_graph.shape == (n, len(meta.classes))
            # same fp16 network; cuDNN may pick other kernels for other batch shapes (rounding)
            np.testing.assert_allclose(p_graph, p_eager, atol=2e-3)
            np.testing.assert_allclose(p_graph, p_ref, atol=2e-2)
            if meta.ood:
                np.testing.assert_allclose(ood_graph, ood_eager, rtol=1e-2, atol=1e-2)
                np.testing.assert_allclose(ood_graph, ood_ref, rtol=5e-2, atol=5e-2)
    finally:
        for e in (graphed, eager, ref):
            e.close()


def test_registered_version_gets_its_gated_fp16_engine_and_is_served_with_it(run, tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'''
database_url = "sqlite:///{tmp_path / 'nsc.db'}"
models_dir = "{tmp_path / 'models'}"
log_dir = "{tmp_path / 'logs'}"
[[watch]]
path = "{tmp_path / 'watch'}"
experiment = "E1"
''')
    (tmp_path / "watch").mkdir()
    assert main(["--config", str(cfg), "models", "register", str(run)]) == 0
    settings = load_settings(cfg, env={})
    model = Path(Registry(settings.models_dir, open_engine(settings.database_url)).active().path)
    assert (model.parent / "best.pt").is_file(), "the registry did not copy the checkpoint the GPU engine serves"
    status = autobuild.read_status(model)
    assert status is not None and status.state == "ready", status
    tried = {a["engine"]: a for a in status.attempts}
    if not status.engine.startswith("tensorrt"):
        assert status.engine == NAME
        gate = tried[NAME]["gate"]
        assert gate["passed"] and gate["top1_agreement"] >= 0.99 and gate["checkpoint_sha256"]
        assert certified(model) is None
        sel = select(model, "auto", batch_size=8)
        try:
            assert sel.backend == "torch-cuda" and sel.engine.name == NAME
            assert sel.engine.preferred_batch >= 64 and sel.engine._graph is not None
            assert sel.engine.infer(_x(sel.engine.metadata, 3)).shape == (3, len(sel.engine.metadata.classes))
        finally:
            sel.engine.close()


def test_a_checkpoint_changed_after_its_gate_is_not_served(run, tmp_path):
    work = tmp_path / "run"
    shutil.copytree(run, work)
    model = work / "model.onnx"
    autobuild.run_build(model, targets=(NAME, "ort-int8"))
    assert certified(model) is None
    saved = torch.load(work / "best.pt", map_location="cpu", weights_only=True)
    first = next(k for k, v in saved["state_dict"].items() if v.dtype.is_floating_point)
    saved["state_dict"][first] = saved["state_dict"][first] + 1.0
    torch.save(saved, work / "best.pt")
    why = certified(model)
    assert why is not None and "best.pt changed" in why
    sel = select(model, "torch-cuda", batch_size=8)
    try:
        assert sel.backend != "torch-cuda"
        assert any(b == "torch-cuda" and "best.pt changed" in r for b, r in sel.skipped)
    finally:
        sel.engine.close()
