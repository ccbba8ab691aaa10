"""``nscmonitor service``: install the daemon once on the instrument PC and leave it running.

Linux gets a systemd unit (user or system) rendered from ``installer/linux/nscmonitor.service.in``:
``Type=notify`` so a daemon that dies during set-up is a failed start, ``WatchdogSec`` so a hung
one is restarted, ``Restart=on-failure`` with back-off. Windows gets a Task Scheduler task from
``installer/windows/nscmonitor-task.xml`` (see docs/install.md for why a task and not a pywin32
service) whose action is ``service supervise``: Task Scheduler's own RestartOnFailure acts only
when the task cannot be launched, so the supervisor restarts a daemon that exits or stops
beating. Rendering is pure and separate from installing, so ``--dry-run`` and the tests show
exactly what would be written.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from nscmonitor.config import default_config_path, default_data_dir, default_log_dir
from nscmonitor.core.errors import UserFacingError

log = logging.getLogger(__name__)

NAME = "nscmonitor"
WATCHDOG_SEC = 300
"""systemd's watchdog period. The daemon pings every heartbeat (5 s) but a batch of large
frames on a slow CPU can hold the loop for tens of seconds; 5 min only catches real hangs."""
RESTART_STEPS_SYSTEMD = 254
"""RestartSteps/RestartMaxDelaySec appeared in systemd 254; older ones warn on unknown keys."""
BUILTIN_WINDOWS_ACCOUNTS = {"SYSTEM", "NT AUTHORITY\\SYSTEM", "LOCAL SERVICE", "NT AUTHORITY\\LOCAL SERVICE",
                            "NETWORK SERVICE", "NT AUTHORITY\\NETWORK SERVICE"}


# --- templates ------------------------------------------------------------------------
def template_path(relative: str) -> Path:
    """The installer templates ship inside the wheel as ``nscmonitor.installer`` (and inside
    the frozen folder); in a source checkout they are read from ``installer/`` directly."""
    candidates = []
    try:
        from importlib import resources

        candidates.append(Path(str(resources.files("nscmonitor.installer") / relative)))
    except (ImportError, ModuleNotFoundError, TypeError):
        pass
    if getattr(sys, "frozen", False):
        candidates.append(Path(getattr(sys, "_MEIPASS", Path(sys.executable).parent)) / "installer" / relative)
    candidates.append(Path(__file__).resolve().parents[2] / "installer" / relative)
    for c in candidates:
        if c.is_file():
            return c
    raise UserFacingError(f"installer template {relative} is missing from this installation "
                          f"(looked in: {', '.join(str(c) for c in candidates)})")


def fill(template: str, values: dict[str, str]) -> str:
    """Replace ``@KEY@`` fields; a field left over means the template and the code disagree,
    and a unit with a literal ``@EXEC@`` in it would only fail later, at boot."""
    out = template
    for k, v in values.items():
        out = out.replace(f"@{k}@", v)
    left = sorted(set(re.findall(r"@([A-Z_]+)@", out)))
    if left:
        raise UserFacingError(f"installer template has unfilled fields: {', '.join(left)}")
    return out


def executable() -> list[str]:
    """The absolute command that starts this very installation: the frozen exe, the
    ``nscmonitor`` script beside the venv's python, else ``python -m nscmonitor.cli``.
    Never ``which``: a PATH lookup may find another installation than the one installed."""
    if getattr(sys, "frozen", False):
        return [str(Path(sys.executable).absolute())]
    bindir = Path(sys.executable).absolute().parent
    for name in ("nscmonitor.exe", "nscmonitor") if sys.platform == "win32" else ("nscmonitor",):
        if (bindir / name).is_file():
            return [str(bindir / name)]
    return [str(Path(sys.executable).absolute()), "-m", "nscmonitor.cli"]


def _systemd_quote(word: str) -> str:
    return word if re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", word) else '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_version() -> int | None:
    try:
        out = subprocess.run(["systemctl", "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.match(r"systemd (\d+)", out)
    return int(m.group(1)) if m else None


# --- Linux ------------------------------------------------------------------------------
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


STARTER_CONFIG = """\
# nscmonitor configuration (docs/install.md). Add one [[watch]] table per microscope folder,
# then start the service. Network shares: give the mounted path (Linux) or the UNC path
# \\\\server\\share\\folder (Windows); polling is switched on for them automatically.
{db}
# [[watch]]
# path = "/mnt/imager/plate_001"
# experiment = "plate_001"
# profile = "auto"
# plate_format = 96
"""


def starter_config(data_dir: Path | None) -> str:
    db = "" if data_dir is None else (
        f'database_url = "sqlite:///{(data_dir / "nscmonitor.db").as_posix()}"\n'
        f'models_dir = "{(data_dir / "models").as_posix()}"\n')
    return STARTER_CONFIG.format(db=db)


def _write(path: Path, text: str, *, dry_run: bool, mode: int = 0o644, keep: bool = False) -> None:
    if dry_run:
        print(f"--- {path}{' (kept if present)' if keep else ''}\n{text}")
        return
    if keep and path.exists():
        print(f"kept {path}")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    part.write_text(text, encoding="utf-8")
    os.chmod(part, mode)
    os.replace(part, path)
    print(f"wrote {path}")


def _run(cmd: Sequence[str], *, dry_run: bool, check: bool = True) -> int:
    if dry_run:
        print("would run: " + shlex.join(cmd))
        return 0
    log.info("running %s", shlex.join(cmd))
    try:
        rc = subprocess.run(list(cmd), timeout=120).returncode
    except FileNotFoundError as exc:
        raise UserFacingError(f"{cmd[0]} not found: {exc}") from exc
    if rc and check:
        raise UserFacingError(f"'{shlex.join(cmd)}' failed with exit code {rc}")
    return rc


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
    _write(lay.config, starter_config(lay.data_dir if lay.system else None), dry_run=dry_run, keep=True)
    _write(lay.env_file, f"# Read by the nscmonitor unit; survives re-installs.\nNSCMONITOR_CONFIG={lay.config}\n",
           dry_run=dry_run, keep=True)
    _write(lay.unit, unit, dry_run=dry_run)
    _write(lay.desktop, render_desktop(exe=exe, config=lay.config), dry_run=dry_run)
    _run([*lay.systemctl, "daemon-reload"], dry_run=dry_run)
    _run([*lay.systemctl, "enable", *(["--now"] if now else []), "nscmonitor.service"], dry_run=dry_run)
    if not lay.system:
        print("note: a user service starts at boot only with lingering on: "
              f"sudo loginctl enable-linger {getpass.getuser()}")
    if not now:
        print(f"add [[watch]] folders to {lay.config}, then: {shlex.join([*lay.systemctl, 'start', 'nscmonitor'])}")
    return 0


def linux_uninstall(lay: LinuxLayout, *, dry_run: bool) -> int:
    """Removes what install wrote except the config, the database and the logs: an
    uninstall before an upgrade must not lose weeks of readouts."""
    _run([*lay.systemctl, "disable", "--now", "nscmonitor.service"], dry_run=dry_run, check=False)
    for p in (lay.unit, lay.desktop):
        if dry_run:
            print(f"would remove {p}")
        elif p.exists():
            p.unlink()
            print(f"removed {p}")
    _run([*lay.systemctl, "daemon-reload"], dry_run=dry_run, check=False)
    print(f"kept {lay.config}, {lay.env_file}, {lay.data_dir} and {lay.log_dir}")
    return 0


# --- Windows ----------------------------------------------------------------------------
def windows_root() -> Path:
    return Path(os.environ.get("PROGRAMDATA", r"C:\ProgramData")) / NAME


def render_task_xml(*, exe: str, config: Path | str, data_dir: Path | str, run_as: str,
                    task_name: str = NAME) -> str:
    """The Task Scheduler definition. Built-in service accounts log on as ``ServiceAccount``
    (no password); a named account uses ``Password`` ("run whether user is logged on or
    not"), which is also what gives it network credentials for the share."""
    from xml.sax.saxutils import escape

    logon = "ServiceAccount" if run_as.upper() in BUILTIN_WINDOWS_ACCOUNTS else "Password"
    text = template_path("windows/nscmonitor-task.xml").read_text(encoding="utf-8")
    return fill(text, {"EXEC": escape(exe), "CONFIG": escape(str(config)), "DATA_DIR": escape(str(data_dir)),
                       "RUN_AS": escape(run_as), "LOGON_TYPE": logon, "TASK_NAME": escape(task_name)})


def windows_install(*, config: Path, run_as: str, dry_run: bool, exe: str | None = None) -> int:
    root = windows_root()
    exe = exe or executable()[0]
    xml = render_task_xml(exe=exe, config=config, data_dir=root, run_as=run_as)
    if dry_run:
        print(xml)
        return 0
    (root / "logs").mkdir(parents=True, exist_ok=True)
    if not config.exists():
        _write(config, starter_config(root), dry_run=False, keep=True)
    path = root / "nscmonitor-task.xml"
    # schtasks reads UTF-16 task files reliably; UTF-8 ones fail on some Windows builds.
    path.write_text(xml.replace('encoding="UTF-8"', 'encoding="UTF-16"'), encoding="utf-16")
    cmd = ["schtasks", "/Create", "/TN", NAME, "/XML", str(path), "/F", "/RU", run_as]
    if run_as.upper() not in BUILTIN_WINDOWS_ACCOUNTS:
        cmd += ["/RP", "*"]  # schtasks asks for the password; it never appears on a command line
    _run(cmd, dry_run=False)
    print(f"registered task {NAME}; start it now with: schtasks /Run /TN {NAME}")
    return 0


# --- supervisor (the Windows task's action) -----------------------------------------------
def heartbeat_age(database_url: str, pid: int, *, host: str | None = None, now: datetime | None = None) -> float | None:
    """Seconds since the daemon with this pid last beat; None until it has written its row
    (set-up, e.g. a TensorRT build, may take minutes and must not count as a hang)."""
    from sqlalchemy import select

    from nscmonitor.store import models as m
    from nscmonitor.store.db import open_engine

    host = host or socket.gethostname()
    engine = open_engine(database_url, readonly=True)
    try:
        with engine.connect() as conn:
            beat = conn.scalar(select(m.DaemonStatus.heartbeat_at).where(
                m.DaemonStatus.pid == pid, m.DaemonStatus.host == host).order_by(m.DaemonStatus.id.desc()).limit(1))
    finally:
        engine.dispose()
    if beat is None:
        return None
    if beat.tzinfo is None:
        beat = beat.replace(tzinfo=timezone.utc)
    return ((now or datetime.now(timezone.utc)) - beat).total_seconds()


@dataclass
class Supervisor:
    """Runs the daemon as a child, restarts it when it exits with an error (back-off from
    ``base_delay_s`` doubling to ``max_delay_s``, reset after ``healthy_after_s`` of running)
    and kills it when ``age(pid)`` says its heartbeat is older than ``stall_s``.

    A child that exits 0 was asked to stop (or had nothing to do) and is not restarted."""

    cmd: Sequence[str]
    age: Callable[[int], float | None]
    stall_s: float = 600.0
    base_delay_s: float = 10.0
    max_delay_s: float = 600.0
    healthy_after_s: float = 900.0
    poll_s: float = 5.0
    max_restarts: int | None = None
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.stop_event = threading.Event()
        self.starts = 0
        self.kills = 0
        self.child: subprocess.Popen | None = None

    def run(self) -> int:
        delay = self.base_delay_s
        while not self.stop_event.is_set():
            started = self.clock()
            self.starts += 1
            self.child = subprocess.Popen(list(self.cmd))
            log.info("supervisor: started the daemon, pid %d (start %d)", self.child.pid, self.starts)
            rc = self._watch(self.child)
            if self.stop_event.is_set():
                return 0
            if rc == 0:
                log.info("supervisor: the daemon exited normally; not restarting")
                return 0
            if self.max_restarts is not None and self.starts > self.max_restarts:
                log.error("supervisor: giving up after %d starts (last exit code %s)", self.starts, rc)
                return rc
            delay = self.base_delay_s if self.clock() - started >= self.healthy_after_s else delay
            log.error("supervisor: the daemon ended with exit code %s; restarting in %.0f s", rc, delay)
            self.stop_event.wait(delay)
            delay = min(delay * 2, self.max_delay_s)
        return 0

    def _watch(self, child: subprocess.Popen) -> int:
        while True:
            try:
                return child.wait(timeout=self.poll_s)
            except subprocess.TimeoutExpired:
                pass
            if self.stop_event.is_set():
                self._end(child, "stop requested")
                return child.returncode if child.returncode is not None else 0
            try:
                age = self.age(child.pid)
            except Exception as exc:  # an unreadable database must not kill a working daemon
                log.warning("supervisor: cannot read the heartbeat: %s", exc)
                continue
            if age is not None and age > self.stall_s:
                self.kills += 1
                log.error("supervisor: no heartbeat from pid %d for %.0f s; killing it", child.pid, age)
                self._end(child, "stalled")
                return -1 if child.returncode in (None, 0) else child.returncode

    @staticmethod
    def _end(child: subprocess.Popen, why: str) -> None:
        log.info("supervisor: ending pid %d (%s)", child.pid, why)
        child.terminate()
        try:
            child.wait(timeout=120)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(timeout=30)


def cmd_supervise(args: argparse.Namespace) -> int:
    from nscmonitor.cli.args import settings_from

    s = settings_from(args)
    config = getattr(args, "config", None)
    cmd = [*executable(), *(["--config", str(config)] if config else []), "run"]
    sup = Supervisor(cmd, lambda pid: heartbeat_age(s.database_url, pid), stall_s=args.stall)

    def stop(signum, _frame) -> None:  # noqa: ANN001
        log.info("supervisor: signal %s, stopping the daemon", signum)
        sup.stop_event.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if hasattr(signal, "SIGBREAK"):
        signal.signal(signal.SIGBREAK, stop)
    return sup.run()


# --- commands -----------------------------------------------------------------------------
def _config_arg(args: argparse.Namespace) -> str | None:
    return getattr(args, "config", None)


def cmd_install(args: argparse.Namespace) -> int:
    if sys.platform == "win32":
        cfg = Path(_config_arg(args) or windows_root() / "config.toml")
        return windows_install(config=cfg, run_as=args.run_as or "NT AUTHORITY\\NETWORK SERVICE", dry_run=args.dry_run)
    lay = linux_layout(system=args.system, config=_config_arg(args), run_as=args.run_as)
    return linux_install(lay, dry_run=args.dry_run, now=args.now)


def cmd_uninstall(args: argparse.Namespace) -> int:
    if sys.platform == "win32":
        rc = _run(["schtasks", "/Delete", "/TN", NAME, "/F"], dry_run=args.dry_run, check=False)
        return 0 if rc == 0 else 1
    return linux_uninstall(linux_layout(system=args.system, config=_config_arg(args)), dry_run=args.dry_run)


def cmd_service_status(args: argparse.Namespace) -> int:
    """The service manager's view, then the daemon's own (heartbeat, queue, folders);
    the exit code is the daemon's health code, as for ``nscmonitor status``."""
    from nscmonitor.cli import main

    if sys.platform == "win32":
        _run(["schtasks", "/Query", "/TN", NAME, "/V", "/FO", "LIST"], dry_run=False, check=False)
    else:
        lay = linux_layout(system=args.system, config=_config_arg(args))
        _run([*lay.systemctl, "status", "--no-pager", "--lines", "20", "nscmonitor.service"], dry_run=False,
             check=False)
    print()
    config = _config_arg(args)
    return main([*(["--config", config] if config else []), "status"])


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("service", help="install the daemon as a system service (systemd / Task Scheduler)",
                       description="Install, remove or inspect the background service that runs 'nscmonitor run' "
                       "at boot and restarts it when it fails or hangs. See docs/install.md.")
    ssub = p.add_subparsers(dest="service_command", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--config", default=argparse.SUPPRESS, help="configuration TOML file the service uses")
        mode = q.add_mutually_exclusive_group()
        mode.add_argument("--user", dest="system", action="store_false", help="a systemd user service (default)")
        mode.add_argument("--system", dest="system", action="store_true", help="a system service (needs root)")
        q.set_defaults(system=False)

    q = ssub.add_parser("install", help="write the unit (or task) and enable it")
    common(q)
    q.add_argument("--run-as", help="account the service runs as (system unit: a user name; Windows: "
                   "DOMAIN\\user or 'NT AUTHORITY\\NETWORK SERVICE', the default)")
    q.add_argument("--now", action="store_true", help="also start it now")
    q.add_argument("--dry-run", action="store_true", help="print what would be written and run; change nothing")
    q.set_defaults(func=cmd_install)

    q = ssub.add_parser("uninstall", help="stop and remove the service (keeps config, database and logs)")
    common(q)
    q.add_argument("--dry-run", action="store_true")
    q.set_defaults(func=cmd_uninstall)

    q = ssub.add_parser("status", help="service manager status plus 'nscmonitor status' (same exit code)")
    common(q)
    q.set_defaults(func=cmd_service_status)

    q = ssub.add_parser("supervise", help="run the daemon, restart it on failure and when it hangs (Windows task)")
    q.add_argument("--config", default=argparse.SUPPRESS, help="configuration TOML file")
    q.add_argument("--stall", type=float, default=600.0, help="kill and restart after this many seconds "
                   "without a heartbeat (default 600)")
    q.set_defaults(func=cmd_supervise)
