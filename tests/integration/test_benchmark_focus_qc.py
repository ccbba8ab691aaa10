"""The focus benchmark runs end to end on a small simulated plate and finds the simulator's own
autofocus failures, and nothing else, as the daemon would judge them (reliability.md's table
comes from it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_focus_benchmark_catches_the_simulators_autofocus_failures(tmp_path: Path) -> None:
    out = tmp_path / "focus.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "focus_qc.py"), "--frame", "384x288",
                          "--wells", "36", "--fields", "1", "--hours", "32", "--interval", "8", "--seed", "1",
                          "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    r = json.loads(out.read_text())
    # seed 1's B02, C08 (its first scan) and C10 lose focus among these wells, perhaps more
    assert r["frames"] == 36 * 5 and r["autofocus_failures"] >= 3
    assert r["caught"] == r["autofocus_failures"] and r["in_focus_failed"] == 0 and r["unjudged"] == 0, r
    assert r["highest_caught_ratio"] < 0.4 < r["lowest_in_focus_ratio"], r
    assert "in-focus failed" in run.stdout and str(out) in run.stdout
