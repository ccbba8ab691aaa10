"""The ingest benchmark's during-build mode on a tiny model with its calibration set: a real
daemon on a real backlog starts its own engine build and the table and JSON say which engine
scored every frame."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from test_engine_autobuild import run_dir_with_calibration

ROOT = Path(__file__).resolve().parents[2]


def test_during_build_accounts_for_every_frame_and_the_build(tmp_path: Path) -> None:
    run = run_dir_with_calibration(tmp_path)
    out = tmp_path / "during.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ingest.py"), "--during-build", "--frames", "5",
                           "--shape", "96x128", "--threads", "1", "--model", str(run / "model.onnx"),
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    by_engine = result["by_engine"]
    assert sum(e["frames"] for e in by_engine.values()) == 5 == result["frames"], result
    assert all(0 <= e["first_s"] <= e["last_s"] <= result["wall_s"] for e in by_engine.values()), by_engine
    assert set(result["build_record_at_end"]) == {"state", "engine", "pending", "build_seconds", "started_at",
                                                  "finished_at"}
    assert result["build_record_at_end"]["state"] in ("building", "ready", "failed", None)
    for name, e in by_engine.items():
        assert f"{name:<16}{e['frames']:>8}" in proc.stdout
    assert not (run / "engine-status.json").exists()  # the build ran on a private copy
    # without a model there is nothing to build: a clear refusal
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ingest.py"), "--during-build"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "--during-build needs --model" in bad.stderr
