"""``registry.prune.plan``: which versions a prune removes, decided from their rows alone."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from nscmonitor.registry.prune import plan
from nscmonitor.store.registry import ModelInfo

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def info(version: str, state: str, day: int, activated: int | None, folder: Path) -> ModelInfo:
    return ModelInfo(version, "m", str(folder / version / "model.onnx"), "0" * 64, "multiclass", ("a", "b"), state,
                     None, {}, T0 + timedelta(days=day), None if activated is None else T0 + timedelta(days=activated),
                     {})


def test_rollback_targets_are_kept_newest_first_and_odd_rows_are_left_alone(tmp_path: Path) -> None:
    versions = tmp_path / "versions"
    rows = [info("r1", "retired", 0, 1, versions), info("r2", "retired", 2, 3, versions),
            info("r3", "retired", 4, 5, versions), info("rb", "retired", 6, None, versions),
            info("act", "active", 7, 8, versions), info("gone", "removed", 1, None, versions),
            info("odd", "quarantined", 1, None, versions),
            info("elsewhere", "retired", 0, 1, tmp_path / "other"),
            info("nul\x00", "retired", 0, 1, versions)]  # a hostile row: no file system takes its path
    got = {d.version: d.remove for d in plan(rows, versions, keep=2)}
    assert got == {"r1": True, "r2": False, "r3": False, "rb": True, "act": False, "odd": False,
                   "elsewhere": False, "nul\x00": False}
    assert {d.version: d.remove for d in plan(rows, versions, keep=0)}["r3"] is True
    with pytest.raises(ValueError):
        plan(rows, versions, keep=-1)
