"""Linux: a systemd unit (user or system) rendered from ``linux/nscmonitor.service.in``.

``Type=notify`` so a daemon that dies during set-up is a failed start, ``WatchdogSec`` so a
hung one is restarted, ``Restart=on-failure`` with back-off; plus a desktop entry for the
dashboard. Uninstalling keeps the config, the database and the logs.
"""

from __future__ import annotations

import getpass
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nscmonitor.config import default_config_path, default_data_dir, default_log_dir
from nscmonitor.core.errors import UserFacingError
from nscmonitor.installer.common import NAME, executable, fill, run_command, starter_config, template_path, write_file

WATCHDOG_SEC = 300
"""systemd's watchdog period. The daemon pings every heartbeat (5 s) but a batch of large
frames on a slow CPU can hold the loop for tens of seconds; 5 min only catches real hangs."""
RESTART_STEPS_SYSTEMD = 254
"""RestartSteps/RestartMaxDelaySec appeared in systemd 254; older ones warn on unknown keys."""


def _systemd_quote(word: str) -> str:
    return word if re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", word) else '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_version() -> int | None:
    try:
        out = subprocess.run(["systemctl", "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.match(r"systemd (\d+)", out)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class LinuxLayout:
    """Where each file of a user or a system install lives."""

    system: bool
    config: Path
    data_dir: Path
    log_dir: Path
    unit: Path
    env_file: Path
    desktop: Path
    run_as: str | None

    @property
    def systemctl(self) -> list[str]:
        return ["systemctl"] if self.system else ["systemctl", "--user"]


def linux_layout(*, system: bool, config: str | None, run_as: str | None = None, home: Path | None = None) -> LinuxLayout:
    if system:
        return LinuxLayout(
            system=True, config=Path(config or "/etc/nscmonitor/config.toml").absolute(),
            data_dir=Path("/var/lib/nscmonitor"), log_dir=Path("/var/log/nscmonitor"),
            unit=Path("/etc/systemd/system/nscmonitor.service"), env_file=Path("/etc/nscmonitor/nscmonitor.env"),
            desktop=Path("/usr/share/applications/nscmonitor-gui.desktop"),
            run_as=run_as or os.environ.get("SUDO_USER") or getpass.getuser(),
        )
    home = home or Path.home()
    xdg_config = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    xdg_data = Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share")
    cfg = Path(config).absolute() if config else default_config_path()
    return LinuxLayout(
        system=False, config=cfg, data_dir=default_data_dir(), log_dir=default_log_dir(),
        unit=xdg_config / "systemd" / "user" / "nscmonitor.service", env_file=xdg_config / NAME / "nscmonitor.env",
        desktop=xdg_data / "applications" / "nscmonitor-gui.desktop", run_as=None,
    )


def render_unit(lay: LinuxLayout, *, exe: Sequence[str], systemd: int | None,
                watchdog_sec: int = WATCHDOG_SEC) -> str:
    user_lines = ""
    if lay.system and lay.run_as:
        user_lines = f"User={lay.run_as}"
    steps = ("# Back-off: the delay grows from RestartSec to 10 min over 6 restarts (systemd >= 254).\n"
             "RestartSteps=6\nRestartMaxDelaySec=600") \
        if systemd is None or systemd >= RESTART_STEPS_SYSTEMD else \
        f"# systemd {systemd} has no RestartSteps: fixed RestartSec back-off."
    text = template_path("linux/nscmonitor.service.in").read_text(encoding="utf-8")
    return fill(text, {
        "USER_LINES": user_lines, "DATA_DIR": str(lay.data_dir), "CONFIG": _env_value(lay.config),
        "LOG_DIR": _env_value(lay.log_dir), "ENV_FILE": str(lay.env_file),
        "EXEC": " ".join(_systemd_quote(w) for w in exe), "WATCHDOG_SEC": str(watchdog_sec),
        "RESTART_STEPS_LINES": steps, "WANTED_BY": "multi-user.target" if lay.system else "default.target",
    }).replace("\n\n\n", "\n\n")


def _env_value(p: Path) -> str:
    s = str(p)
    if any(c in s for c in ' "\\'):
        raise UserFacingError(f"{s}: spaces, quotes and backslashes are not supported in a systemd environment value")
    return s


def render_desktop(*, exe: Sequence[str], config: Path) -> str:
    def q(w: str) -> str:
        return w if re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", w) else '"' + re.sub(r'(["`$\\])', r"\\\1", w) + '"'

    text = template_path("linux/nscmonitor-gui.desktop.in").read_text(encoding="utf-8")
    return fill(text, {"EXEC": " ".join(q(w) for w in exe), "CONFIG": q(str(config))})


def linux_install(lay: LinuxLayout, *, dry_run: bool, now: bool, exe: Sequence[str] | None = None) -> int:
    if lay.system and not dry_run and os.geteuid() != 0:
        raise UserFacingError("--system writes /etc/systemd/system: run it with sudo (or use --user)")
    exe = list(exe or executable())
    unit = render_unit(lay, exe=exe, systemd=systemd_version())
    for d in (lay.data_dir, lay.log_dir):
        if dry_run:
            print(f"would create {d}" + (f" owned by {lay.run_as}" if lay.system else ""))
        else:
            d.mkdir(parents=True, exist_ok=True)
            if lay.system and lay.run_as:
                shutil.chown(d, lay.run_as)
    write_file(lay.config, starter_config(lay.data_dir if lay.system else None), dry_run=dry_run, keep=True)
    write_file(lay.env_file, f"# Read by the nscmonitor unit; survives re-installs.\nNSCMONITOR_CONFIG={lay.config}\n",
               dry_run=dry_run, keep=True)
    write_file(lay.unit, unit, dry_run=dry_run)
    write_file(lay.desktop, render_desktop(exe=exe, config=lay.config), dry_run=dry_run)
    run_command([*lay.systemctl, "daemon-reload"], dry_run=dry_run)
    run_command([*lay.systemctl, "enable", *(["--now"] if now else []), "nscmonitor.service"], dry_run=dry_run)
    if not lay.system:
        print("note: a user service starts at boot only with lingering on: "
              f"sudo loginctl enable-linger {getpass.getuser()}")
    if not now:
        print(f"add [[watch]] folders to {lay.config}, then: {shlex.join([*lay.systemctl, 'start', 'nscmonitor'])}")
    return 0


def linux_uninstall(lay: LinuxLayout, *, dry_run: bool) -> int:
    """Removes what install wrote except the config, the database and the logs: an
    uninstall before an upgrade must not lose weeks of readouts."""
    run_command([*lay.systemctl, "disable", "--now", "nscmonitor.service"], dry_run=dry_run, check=False)
    for p in (lay.unit, lay.desktop):
        if dry_run:
            print(f"would remove {p}")
        elif p.exists():
            p.unlink()
            print(f"removed {p}")
    run_command([*lay.systemctl, "daemon-reload"], dry_run=dry_run, check=False)
    print(f"kept {lay.config}, {lay.env_file}, {lay.data_dir} and {lay.log_dir}")
    return 0
