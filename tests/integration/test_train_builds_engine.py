"""``nscmonitor train`` ends with this machine's engine built beside model.onnx, from the
calibration set the run wrote, gated and recorded (real torch training, real ONNX Runtime /
OpenVINO int8 build in a real subprocess); ``--no-engine`` skips it; registering the run
carries the built engine into the version folder instead of building it again."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")

from nscmonitor.cli import main  # noqa: E402
from nscmonitor.engines import autobuild  # noqa: E402
from nscmonitor.engines.calibration import model_tiles_path, read_manifest  # noqa: E402
from nscmonitor.training.synthetic import write_synthetic_tiles  # noqa: E402


@pytest.mark.slow
def test_train_builds_and_records_the_engine_and_register_carries_it(tmp_path: Path, capsys) -> None:
    data = write_synthetic_tiles(tmp_path / "d", plates=2, wells_per_class=3, timepoints=(48, 96), fields=2,
                                 tile_size=32, seed=5)
    args = ["train", "--data", str(data), "--scheme", "multiclass", "--arch", "tiny", "--epochs", "3",
            "--batch-size", "32", "--threads", "1"]
    assert main([*args, "--out", str(tmp_path / "skip"), "--no-engine"]) == 0
    assert (tmp_path / "skip" / "model.onnx").is_file() and autobuild.read_status(tmp_path / "skip" / "model.onnx") is None

    run = tmp_path / "run"
    assert main([*args, "--out", str(run)]) == 0
    model = run / "model.onnx"
    status = autobuild.read_status(model)
    assert status is not None and status.state in ("ready", "failed"), status
    assert "engine: " in capsys.readouterr().out
    assert status.fingerprint["model_sha256"] == autobuild.cached_sha256(model)
    assert status.fingerprint["calibration_sha256"] == read_manifest(model_tiles_path(model))["sha256"]
    assert status.calibration_source == str(model_tiles_path(model))
    gated = [a for a in status.attempts if a["gate"]]
    n_heldout = read_manifest(model_tiles_path(model))["counts"]["heldout"]
    assert gated and all(a["gate"]["n_tiles"] >= n_heldout for a in gated)
    if status.state == "ready":
        assert status.engine in autobuild.SPEED_FIELDS and (run / status.artefact).is_file()  # a CPU engine: int8, or bf16
    else:
        assert "gate" in status.reason

    cfg = tmp_path / "config.toml"
    cfg.write_text(f'database_url = "sqlite:///{tmp_path / "nsc.db"}"\nmodels_dir = "{tmp_path / "models"}"\n')
    assert main(["--config", str(cfg), "models", "register", str(run)]) == 0
    version_dir = next((tmp_path / "models" / "versions").iterdir())
    # the torch engines (the GPU's without TensorRT) serve the checkpoint: it travels with the version
    assert (version_dir / "best.pt").read_bytes() == (run / "best.pt").read_bytes()
    copied = autobuild.read_status(version_dir / "model.onnx")
    assert copied.finished_at == status.finished_at, "the engine was built again instead of carried over"
    assert autobuild.summary(version_dir / "model.onnx")["state"] == status.state
