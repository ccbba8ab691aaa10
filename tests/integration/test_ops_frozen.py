"""Smoke test of the self-contained folder built by installer/build_frozen.sh: it starts,
prints its version, runs doctor and renders the service unit from its bundled templates.

Building takes about 100 s on two cores, so the test uses a folder built beforehand:
``NSCMONITOR_FROZEN=dist/nscmonitor`` (set by CI after running installer/build_frozen.sh),
and skips saying how to build one when it is absent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nscmonitor import __version__


@pytest.fixture()
def frozen_exe() -> Path:
    folder = os.environ.get("NSCMONITOR_FROZEN")
    if not folder:
        pytest.skip("no frozen build: run installer/build_frozen.sh and set NSCMONITOR_FROZEN=dist/nscmonitor")
    exe = Path(folder) / ("nscmonitor.exe" if sys.platform == "win32" else "nscmonitor")
    assert exe.is_file(), f"NSCMONITOR_FROZEN={folder} holds no nscmonitor executable"
    return exe


def test_frozen_app_starts_and_reports(frozen_exe: Path, tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
           "XDG_DATA_HOME": str(tmp_path / "share"), "XDG_STATE_HOME": str(tmp_path / "state")}
    r = subprocess.run([str(frozen_exe), "--version"], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0 and r.stdout.strip() == f"nscmonitor {__version__}", r.stderr
    r = subprocess.run([str(frozen_exe), "doctor"], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0 and "ok  ONNX Runtime (CPU engine)" in r.stdout, r.stdout + r.stderr
    assert "schema new" in r.stdout  # the bundled Alembic migrations were found
    r = subprocess.run([str(frozen_exe), "service", "install", "--user", "--dry-run"], capture_output=True,
                       text=True, timeout=120, env=env)
    assert r.returncode == 0 and f"ExecStart={frozen_exe.absolute()} --config" in r.stdout, r.stdout + r.stderr
