"""The files ``service install`` writes: systemd unit, desktop entry, Task Scheduler XML,
and the PowerShell installer. Rendered for real from the shipped templates."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from nscmonitor.cli import main
from nscmonitor.core.errors import UserFacingError
from nscmonitor.installer.common import fill, template_path
from nscmonitor.installer.systemd import LinuxLayout, linux_layout, render_desktop, render_unit
from nscmonitor.installer.task_scheduler import render_task_xml

TASK_NS = {"t": "http://schemas.microsoft.com/windows/2004/02/mit/task"}
REPO = Path(__file__).resolve().parents[2]


def _layout(tmp_path: Path, *, system: bool = False) -> LinuxLayout:
    return LinuxLayout(system=system, config=tmp_path / "etc" / "config.toml", data_dir=tmp_path / "data",
                       log_dir=tmp_path / "logs", unit=tmp_path / "unit" / "nscmonitor.service",
                       env_file=tmp_path / "etc" / "nscmonitor.env", desktop=tmp_path / "nscmonitor-gui.desktop",
                       run_as="labuser" if system else None)


class _Section(dict):
    """systemd allows repeated keys (Environment=); keep them all, read the last by default."""

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key)[-1]

    def all(self, key: str) -> list[str]:
        return super().__getitem__(key)


def _parse_unit(text: str) -> dict[str, _Section]:
    """systemd's INI dialect: case-sensitive keys, '#' comments, repeatable keys."""
    sections: dict[str, _Section] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], _Section())
            continue
        assert current is not None and "=" in line, f"not a unit line: {raw!r}"
        key, value = line.split("=", 1)
        dict.setdefault(current, key.strip(), []).append(value.strip())
    return sections


@pytest.mark.parametrize("system", [False, True], ids=["user", "system"])
def test_unit_has_the_keys_a_weeks_long_daemon_needs(tmp_path: Path, system: bool) -> None:
    exe = [str(tmp_path / "venv" / "bin" / "nscmonitor")]
    unit = _parse_unit(render_unit(_layout(tmp_path, system=system), exe=exe, systemd=255))
    svc = unit["Service"]
    assert svc["Type"] == "notify"
    assert svc["ExecStart"] == f"{exe[0]} --config ${{NSCMONITOR_CONFIG}} run"
    assert Path(svc["ExecStart"].split()[0]).is_absolute()
    assert svc["Restart"] == "on-failure"
    assert int(svc["RestartSec"]) > 0 and svc["RestartSteps"] and svc["RestartMaxDelaySec"]
    assert int(svc["WatchdogSec"]) >= 120
    assert svc["WorkingDirectory"] == str(tmp_path / "data")
    assert svc["EnvironmentFile"] == f"-{tmp_path / 'etc' / 'nscmonitor.env'}"
    assert f"NSCMONITOR_CONFIG={tmp_path / 'etc' / 'config.toml'}" in svc.all("Environment")
    assert int(unit["Unit"]["StartLimitBurst"]) > 1 and int(unit["Unit"]["StartLimitIntervalSec"]) > 0
    if system:
        assert svc["User"] == "labuser"
        assert unit["Install"]["WantedBy"] == "multi-user.target"
    else:
        assert "User" not in svc
        assert unit["Install"]["WantedBy"] == "default.target"
    assert "@" not in re.sub(r"\$\{\w+\}", "", render_unit(_layout(tmp_path), exe=exe, systemd=255))


def test_old_systemd_gets_no_restart_steps(tmp_path: Path) -> None:
    svc = _parse_unit(render_unit(_layout(tmp_path), exe=["/opt/nsc/nscmonitor"], systemd=252))["Service"]
    assert "RestartSteps" not in svc and "RestartMaxDelaySec" not in svc


def test_paths_with_spaces_are_quoted_for_systemd(tmp_path: Path) -> None:
    svc = _parse_unit(render_unit(_layout(tmp_path), exe=["/opt/nsc monitor/nscmonitor"], systemd=252))["Service"]
    assert svc["ExecStart"].startswith('"/opt/nsc monitor/nscmonitor" --config')


def test_a_leftover_field_is_refused() -> None:
    with pytest.raises(UserFacingError, match="EXEC"):
        fill("ExecStart=@EXEC@ run", {})


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("system", [False, True], ids=["user", "system"])
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path, system: bool) -> None:
    """systemd's own parser; exit 0 alone is not enough: unknown keys are only warnings."""
    from nscmonitor.installer.common import executable
    from nscmonitor.installer.systemd import systemd_version

    lay = _layout(tmp_path, system=system)
    if system:
        lay = LinuxLayout(**{**lay.__dict__, "run_as": "root"})
    lay.data_dir.mkdir()
    unit = tmp_path / "nscmonitor.service"
    unit.write_text(render_unit(lay, exe=executable(), systemd=systemd_version()), encoding="utf-8")
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    cmd = ["systemd-analyze", "verify", *([] if system else ["--user"]), str(unit)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)})
    ours = [line for line in (r.stdout + r.stderr).splitlines() if "nscmonitor.service" in line]
    assert r.returncode == 0 and not ours, r.stdout + r.stderr


def test_desktop_entry_starts_the_dashboard_with_the_config(tmp_path: Path) -> None:
    text = render_desktop(exe=["/opt/nsc monitor/nscmonitor"], config=tmp_path / "config.toml")
    cp = configparser.ConfigParser(interpolation=None)
    cp.optionxform = str
    cp.read_string(text)
    entry = cp["Desktop Entry"]
    assert entry["Type"] == "Application" and entry["Terminal"] == "false"
    assert entry["Exec"] == f'"/opt/nsc monitor/nscmonitor" --config {tmp_path / "config.toml"} gui'
    if shutil.which("desktop-file-validate"):
        f = tmp_path / "nscmonitor-gui.desktop"
        f.write_text(text, encoding="utf-8")
        r = subprocess.run(["desktop-file-validate", str(f)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


def test_user_layout_follows_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "share"))
    lay = linux_layout(system=False, config=None)
    assert lay.unit == tmp_path / "cfg" / "systemd" / "user" / "nscmonitor.service"
    assert lay.desktop == tmp_path / "share" / "applications" / "nscmonitor-gui.desktop"
    assert lay.systemctl == ["systemctl", "--user"]


def test_install_dry_run_prints_everything_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "share"))
    cfg = tmp_path / "site" / "config.toml"
    assert main(["service", "install", "--user", "--config", str(cfg), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "Type=notify" in out and "[Desktop Entry]" in out
    assert "would run: systemctl --user enable nscmonitor.service" in out
    assert not (tmp_path / "cfg").exists() and not cfg.exists()


# --- Windows -----------------------------------------------------------------------------
def test_task_xml_template_and_rendered_task_are_well_formed() -> None:
    ET.parse(template_path("windows/nscmonitor-task.xml"))
    xml = render_task_xml(exe=r"C:\Program Files\nscmonitor\nscmonitor.exe", config=r"C:\ProgramData\nscmonitor\config.toml",
                          data_dir=r"C:\ProgramData\nscmonitor", run_as=r"LAB\svc-nscmonitor")
    root = ET.fromstring(xml.encode("utf-8"))
    get = lambda p: root.find(p, TASK_NS)  # noqa: E731
    assert get("t:Triggers/t:BootTrigger/t:Enabled").text == "true"
    assert get("t:Principals/t:Principal/t:UserId").text == r"LAB\svc-nscmonitor"
    assert get("t:Principals/t:Principal/t:LogonType").text == "Password"
    assert get("t:Settings/t:RestartOnFailure/t:Interval").text == "PT1M"
    assert int(get("t:Settings/t:RestartOnFailure/t:Count").text) >= 3
    assert get("t:Settings/t:ExecutionTimeLimit").text == "PT0S"
    assert get("t:Settings/t:DisallowStartIfOnBatteries").text == "false"
    assert get("t:Settings/t:MultipleInstancesPolicy").text == "IgnoreNew"
    assert get("t:Actions/t:Exec/t:Command").text == r"C:\Program Files\nscmonitor\nscmonitor.exe"
    assert get("t:Actions/t:Exec/t:Arguments").text == r'--config "C:\ProgramData\nscmonitor\config.toml" service supervise'


def test_builtin_account_logs_on_as_service_account_and_xml_is_escaped() -> None:
    xml = render_task_xml(exe="C:\\a&b\\nscmonitor.exe", config="C:\\cfg.toml", data_dir="C:\\d",
                          run_as="NT AUTHORITY\\NETWORK SERVICE")
    root = ET.fromstring(xml.encode("utf-8"))
    assert root.find("t:Principals/t:Principal/t:LogonType", TASK_NS).text == "ServiceAccount"
    assert root.find("t:Actions/t:Exec/t:Command", TASK_NS).text == "C:\\a&b\\nscmonitor.exe"


def _strip_ps(text: str) -> str:
    """PowerShell source without comments, here-strings and string literals, so the
    delimiter check below sees only code."""
    text = re.sub(r"<#.*?#>", "", text, flags=re.S)
    text = re.sub(r"@'.*?'@|@\".*?\"@", "''", text, flags=re.S)
    text = re.sub(r"'(?:[^']|'')*'", "''", text)
    text = re.sub(r'"(?:`.|[^"`])*"', "''", text)
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def test_install_ps1_is_balanced_and_has_its_switches() -> None:
    """No PowerShell here (Debian ships none); pwsh's parser runs where it exists."""
    ps1 = REPO / "installer" / "windows" / "install.ps1"
    text = ps1.read_text(encoding="utf-8")
    code = _strip_ps(text)
    for o, c in ("{}", "()", "[]"):
        assert code.count(o) == code.count(c), f"unbalanced {o}{c}"
    for switch in ("[switch]$Uninstall", "$Wheel", "$FrozenDir", "$ServiceAccount", "$WatchFolder"):
        assert switch in text
    assert "Set-StrictMode" in text and "$ErrorActionPreference = 'Stop'" in text
    pwsh = shutil.which("pwsh")
    if pwsh:
        r = subprocess.run([pwsh, "-NoProfile", "-Command",
                            f"$e=$null; [void][System.Management.Automation.Language.Parser]::ParseFile('{ps1}', "
                            "[ref]$null, [ref]$e); if ($e) { $e; exit 1 }"], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


def test_install_ps1_users_read_only_service_account_writes() -> None:
    """Ordinary users must not be able to write the database, the models or the config whose
    retrain.hook the daemon executes: read and execute only, inheritance from ProgramData cut."""
    text = (REPO / "installer" / "windows" / "install.ps1").read_text(encoding="utf-8")
    code = "\n".join(line.split("# ", 1)[0] for line in re.sub(r"<#.*?#>", "", text, flags=re.S).splitlines())
    assert "Users" not in code  # by SID only: the group's name is localised
    grants = re.findall(r"S-1-5-32-545:\(OI\)\(CI\)(\w+)", code)
    assert grants == ["RX"], grants
    assert re.search(r"\$\(\$ServiceAccount\):\(OI\)\(CI\)M", code)
    assert "'/grant:r'" in code and "'/inheritance:r'" in code and "'/remove:g', '*S-1-5-32-545', '/T'" in code
    assert code.index("'/remove:g'") < code.index("'/grant:r'") < code.index("'/inheritance:r'")


@pytest.mark.skipif(os.name == "nt", reason="the Linux branch: systemctl")
def test_service_status_shows_the_unit_then_the_daemon_with_status_exit_code(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    """The service manager's view first, then the same health verdict and exit code as
    ``nscmonitor status`` (capfd: the unit's status comes from a child process). systemctl is the
    one thing faked: a script on PATH."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "systemctl"
    fake.write_text("#!/bin/sh\necho \"fake systemctl $*\"\nexit 3\n", encoding="utf-8")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'database_url = "sqlite:///{(tmp_path / "nsc.db").as_posix()}"\n', encoding="utf-8")
    assert main(["--config", str(cfg), "db", "upgrade"]) == 0
    capfd.readouterr()
    status_code = main(["--config", str(cfg), "status"])
    status_out = capfd.readouterr().out

    code = main(["service", "status", "--config", str(cfg)])
    out = capfd.readouterr().out
    assert code == status_code == 3  # no daemon has run on this database
    assert out.index("fake systemctl --user status --no-pager --lines 20 nscmonitor.service") < out.index(
        "no daemon running")
    assert out.endswith(status_out)
