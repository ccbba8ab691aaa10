"""After registration a retrain run's copies of what the version folder now holds are removed,
byte-identical ones only (real files on disk)."""

from __future__ import annotations

import os
from pathlib import Path

from nscmonitor.schedule.retrain import free_registered_copies


def test_only_identical_copies_and_the_resume_checkpoint_go(tmp_path: Path) -> None:
    run, version = tmp_path / "run" / "train", tmp_path / "versions" / "v1"
    run.mkdir(parents=True)
    version.mkdir(parents=True)
    model, ckpt = os.urandom(5000), os.urandom(7000)
    for folder in (run, version):
        (folder / "model.onnx").write_bytes(model)
        (folder / "best.pt").write_bytes(ckpt)
    (run / "last.pt").write_bytes(os.urandom(7000))
    (run / "metrics.json").write_text('{"a": 1}')
    (version / "metrics.json").write_text('{"a": 2}')  # same size, other bytes: kept
    (run / "history.csv").write_text("epoch\n1\n")  # not in the version folder: kept
    plan = os.urandom(3000)  # an engine copied with its folder
    for folder in (run, version):
        (folder / "trt-cache").mkdir()
        (folder / "trt-cache" / "a.plan").write_bytes(plan)
    (run / "trt-cache" / "timing.cache").write_bytes(b"only here")
    freed = free_registered_copies(run, version)
    assert freed == 5000 + 7000 + 7000 + 3000
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == [
        "history.csv", "metrics.json", "trt-cache", "trt-cache/timing.cache"]
    (run / "trt-cache" / "timing.cache").write_bytes(plan)
    (version / "trt-cache" / "timing.cache").write_bytes(plan)
    assert free_registered_copies(run, version) == 3000 and not (run / "trt-cache").exists()
    assert (version / "model.onnx").read_bytes() == model and (version / "best.pt").read_bytes() == ckpt
    assert free_registered_copies(tmp_path / "absent", version) == 0
