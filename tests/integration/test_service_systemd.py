"""``service install --user`` then a real start/stop under the user's systemd.

Needs a running user manager (``systemctl --user``); containers and CI runners usually have
none, and the test then skips saying so. It installs the real ``nscmonitor.service`` user
unit, so it also skips when one is already installed rather than replace it."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from nscmonitor.cli import main
from nscmonitor.installer.systemd import linux_layout


def _user_systemd() -> str | None:
    if shutil.which("systemctl") is None:
        return "systemctl is not installed"
    r = subprocess.run(["systemctl", "--user", "show-environment"], capture_output=True, text=True, timeout=20)
    if r.returncode != 0:
        return f"no user systemd manager: {(r.stderr or r.stdout).strip()[:200]}"
    return None


def _state(prop: str) -> str:
    return subprocess.run(["systemctl", "--user", "show", "-p", prop, "--value", "nscmonitor.service"],
                          capture_output=True, text=True, timeout=20).stdout.strip()


def _wait(prop: str, wanted: set[str], timeout: float) -> str:
    end = time.monotonic() + timeout
    state = _state(prop)
    while state not in wanted and time.monotonic() < end:
        time.sleep(0.5)
        state = _state(prop)
    return state


def test_user_service_starts_reports_ready_and_stops(tmp_path: Path, tiny_model: Path) -> None:
    why = _user_systemd()
    if why:
        pytest.skip(why)
    lay = linux_layout(system=False, config=str(tmp_path / "config.toml"))
    if lay.unit.exists():
        pytest.skip(f"{lay.unit} exists already; not replacing a real installation")
    watch = tmp_path / "plates"
    watch.mkdir()
    (tmp_path / "config.toml").write_text(
        f'database_url = "sqlite:///{tmp_path / "nsc.db"}"\nmodel = "{tiny_model}"\n'
        f'models_dir = "{tmp_path / "models"}"\n[[watch]]\npath = "{watch}"\nexperiment = "e1"\n', encoding="utf-8")
    try:
        assert main(["service", "install", "--user", "--config", str(tmp_path / "config.toml")]) == 0
        assert lay.unit.is_file()
        subprocess.run(["systemctl", "--user", "start", "--no-block", "nscmonitor.service"], check=True, timeout=20)
        # 'active' for a Type=notify unit means the daemon sent READY=1 after its set-up.
        assert _wait("ActiveState", {"active", "failed"}, 90) == "active", \
            subprocess.run(["journalctl", "--user", "-u", "nscmonitor", "-n", "30", "--no-pager"],
                           capture_output=True, text=True).stdout
        assert main(["--config", str(tmp_path / "config.toml"), "status"]) == 0
        subprocess.run(["systemctl", "--user", "stop", "nscmonitor.service"], check=True, timeout=180)
        assert _state("ActiveState") == "inactive"
        assert _state("Result") == "success"
    finally:
        main(["service", "uninstall", "--user", "--config", str(tmp_path / "config.toml")])
    assert not lay.unit.exists()
