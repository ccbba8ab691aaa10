"""The wheel installs into a fresh virtual environment and the installed command works:
what the facility engineer does on the instrument PC. Slow (it installs the CPU
dependencies), so marked ``slow``."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(cmd: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Runs outside the checkout: ``python -c`` would otherwise import it from the cwd."""
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=env["HOME"])
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.mark.slow
def test_wheel_installs_in_a_fresh_venv_and_runs(tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": str(tmp_path / "home" / ".config"),
           "XDG_DATA_HOME": str(tmp_path / "home" / "share"), "XDG_STATE_HOME": str(tmp_path / "home" / "state"),
           "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    Path(env["HOME"]).mkdir()
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(REPO)],
         env)
    (wheel,) = (tmp_path / "dist").glob("nscmonitor-*.whl")
    venv.create(tmp_path / "venv", with_pip=True)
    bindir = tmp_path / "venv" / ("Scripts" if sys.platform == "win32" else "bin")
    py = bindir / "python"
    _run([str(py), "-m", "pip", "install", "--quiet", f"{wheel}[cpu]"], env, timeout=900)
    nsc = str(bindir / "nscmonitor")

    from nscmonitor import __version__

    assert _run([nsc, "--version"], env).stdout.strip() == f"nscmonitor {__version__}"
    doctor = _run([nsc, "doctor"], env).stdout
    assert "ONNX Runtime (CPU engine)" in doctor and "installed" in doctor
    assert any(line.startswith("ok ") and "ONNX Runtime packages" in line and "onnxruntime " in line
               for line in doctor.splitlines()), doctor  # the cpu extra brings exactly one flavour
    # the CPU install brings no training or GPU stack
    assert "PyTorch (training, reference engine)  not installed" in doctor
    assert "TensorRT (GPU engine)" in doctor
    unit = _run([nsc, "service", "install", "--user", "--dry-run"], env).stdout
    assert "Type=notify" in unit and f"ExecStart={nsc} --config" in unit
    # it imports from the venv, not from this checkout
    where = _run([str(py), "-c", "import nscmonitor; print(nscmonitor.__file__)"], env).stdout
    assert str(tmp_path / "venv") in where
