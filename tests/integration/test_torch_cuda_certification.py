"""The torch CUDA engine's certification and its place in build on arrival, checked where CI
runs (no GPU): the build tries it first and records why it could not serve, the CPU int8 engine
is built after it, and selection serves it only under a passed gate of this machine, this
model and this checkpoint. The one fake is the GPU's presence (``gpu_names``), for the
certification rules; the build records, models and checkpoints are real files."""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the torch engines need the train extra")
torchvision = pytest.importorskip("torchvision")

from test_engines_int8_select import write_tiles  # noqa: E402

from nscmonitor.engines import autobuild_status  # noqa: E402
from nscmonitor.engines.autobuild import read_status, run_build  # noqa: E402
from nscmonitor.engines.autobuild_status import EngineStatus, fingerprint, write_status  # noqa: E402
from nscmonitor.engines.calibration import tiles_from_folder  # noqa: E402
from nscmonitor.engines.metadata import ModelMetadata  # noqa: E402
from nscmonitor.engines.select import select  # noqa: E402
from nscmonitor.engines.torch import export_onnx, save_checkpoint, with_prelude  # noqa: E402
from nscmonitor.engines.torch_cuda import NAME, certified  # noqa: E402

META = ModelMetadata(name="shufflenet", version="t", scheme="multiclass",
                     classes=("neuron", "astrocyte", "oligodendrocyte", "undifferentiated"), input_size=32,
                     arch="shufflenet_v2_x0_5", normalization={"p_low": 1.0, "p_high": 99.8, "mean": [0.4], "std": [0.2],
                                                     "in_graph": True},
                     # random weights: a gate any int8 copy passes keeps the CPU build to its plain recipe
                     # (what is tested here is the order of the attempts and their records, not int8; a
                     # torchvision net of 0.3 M weights: the recipe's weight rounding took 18 s on a resnet18)
                     int8_tolerance={"top1_agreement": 0.0, "well_readout_pp": 100.0})


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run folder as training leaves it: model.onnx, best.pt and the calibration set."""
    root = tmp_path_factory.mktemp("tc")
    torch.manual_seed(0)
    net = torchvision.models.shufflenet_v2_x0_5(num_classes=4).eval()
    save_checkpoint(root / "run" / "best.pt", net, "shufflenet_v2_x0_5", META)
    export_onnx(with_prelude(net, META), META, root / "run" / "model.onnx")
    tiles_from_folder(write_tiles(root / "tiles"), root / "run")
    return root / "run"


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest / "model.onnx"


def test_the_build_tries_the_gpu_engine_first_records_why_not_and_builds_the_cpu_one(run, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU (tests/gpu covers the engine there)")
    model = _copy(run, tmp_path / "run")
    status = run_build(model, targets=(NAME, "ort-int8"))
    tried = [a["engine"] for a in status.attempts]
    assert tried[0] == NAME and "ort-int8" in tried, tried  # the GPU engine first, the CPU int8 after it failed
    gpu = status.attempts[0]
    assert not gpu["passed"] and "sees no CUDA GPU" in gpu["reason"]
    assert status.engine != NAME

    # the same attempt once its checkpoint is gone (alone: the CPU build after it is as above)
    from nscmonitor.engines.autobuild_run import _try_torch_cuda, load_tiles_for
    from nscmonitor.engines.metadata import read_onnx_metadata

    (model.parent / "best.pt").unlink()
    attempt = _try_torch_cuda(model, load_tiles_for(model, read_onnx_metadata(model), None), 1, lambda msg: None)
    assert not attempt.passed and "no best.pt beside the model" in attempt.reason


def test_the_gpu_engine_serves_only_under_its_own_passed_gate(run, tmp_path, monkeypatch):
    # this machine's identity and runtimes are read (and cached for the process) before the fake,
    # so nothing else in this process sees the fake GPU
    autobuild_status.machine_id()
    autobuild_status.runtime_versions()
    monkeypatch.setattr(autobuild_status, "gpu_names", lambda: ("NVIDIA test GPU",))
    model = _copy(run, tmp_path / "run")
    assert "not built on this machine yet" in certified(model)

    fp = asdict(fingerprint(model))
    sha = autobuild_status.cached_sha256(model.parent / "best.pt")
    gate = {"passed": True, "top1_agreement": 1.0, "well_readout_pp": 0.01, "checkpoint_sha256": sha}

    def record(*attempts):
        write_status(model, EngineStatus("ready", fp, engine="ort-int8", attempts=tuple(attempts)))

    record({"engine": "ort-int8", "passed": True, "gate": {"passed": True}})
    assert "did not try it" in certified(model)
    record({"engine": NAME, "passed": False, "gate": {**gate, "passed": False}, "reason": "well readout 3 pp"})
    assert certified(model) == "failed its gate: well readout 3 pp"
    record({"engine": NAME, "passed": False, "gate": None, "reason": "CUDA out of memory"})
    assert certified(model) == "could not be gated: CUDA out of memory"
    record({"engine": NAME, "passed": True, "gate": gate})
    assert certified(model) is None

    # certified, but this machine's torch cannot reach a GPU: selection says so and goes on
    if not torch.cuda.is_available():
        sel = select(model, "torch-cuda", batch_size=8)
        try:
            assert sel.backend != "torch-cuda" and "sees no CUDA GPU" in dict(sel.skipped)["torch-cuda"]
        finally:
            sel.engine.close()

    saved = torch.load(model.parent / "best.pt", map_location="cpu", weights_only=True)
    saved["arch"] += " "  # any change of the file
    torch.save(saved, model.parent / "best.pt")
    assert certified(model) == "best.pt changed since its gate"

    with open(model, "ab") as fh:  # another model under the same name
        fh.write(b"\0")
    assert "gated under another model" in certified(model)
    assert read_status(model).engine == "ort-int8"
