"""Training on several GPUs: DistributedDataParallel over nccl, one GPU per process, SyncBatchNorm.
Skipped with the reason where CUDA torch or enough GPUs are missing; ``benchmarks/gpu_check.sh``
runs the gpu tests."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.gpu

torch = pytest.importorskip("torch", reason="torch not installed")
if not torch.cuda.is_available():
    pytest.skip("torch sees no CUDA GPU", allow_module_level=True)

from nscmonitor.cli import main as cli_main  # noqa: E402
from nscmonitor.engines import read_onnx_metadata  # noqa: E402
from nscmonitor.training import data as D  # noqa: E402
from nscmonitor.training.export import check_parity, load_checkpoint  # noqa: E402
from nscmonitor.training.synthetic import write_synthetic_tiles  # noqa: E402


@pytest.fixture(scope="module")
def tiles_dir(tmp_path_factory):
    return write_synthetic_tiles(tmp_path_factory.mktemp("tiles") / "d", plates=2, wells_per_class=4,
                                 timepoints=(0, 48, 96), fields=4, tile_size=32, seed=5)


def _train(tiles_dir, out, nproc: int) -> int:
    return cli_main(["train", "--data", str(tiles_dir), "--scheme", "multiclass", "--arch", "tiny", "--epochs", "2",
                     "--batch-size", "32", "--out", str(out), "--device", "cuda", "--nproc", str(nproc),
                     "--no-engine"])


def test_more_processes_than_gpus_is_refused_with_the_reason(tiles_dir, tmp_path, capfd):
    n = torch.cuda.device_count()
    assert _train(tiles_dir, tmp_path / "r", n + 1) == 2
    assert f"torch sees {n} GPU(s): use at most one process per GPU" in capfd.readouterr().err


def test_two_gpus_train_over_nccl_and_export_with_parity(tiles_dir, tmp_path, capfd):
    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs 2 GPUs, torch sees {torch.cuda.device_count()}")
    out = tmp_path / "r"
    assert _train(tiles_dir, out, 2) == 0
    assert "2 processes (nccl)" in capfd.readouterr().out
    assert json.loads((out / "config.json").read_text())["nproc"] == 2
    md = read_onnx_metadata(out / "model.onnx")
    recs, _ = D.read_tiles_export(tiles_dir)
    x, _, _ = D.load_arrays(recs[::10], D.MULTICLASS, tile_size=32, image_size=32)
    model, _ = load_checkpoint(out)
    assert check_parity(model, out / "model.onnx", x, md) <= 1e-4
