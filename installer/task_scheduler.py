"""Windows: a Task Scheduler task rendered from ``windows/nscmonitor-task.xml`` whose action
is ``nscmonitor service supervise`` (see docs/install.md for why a task and not a pywin32
service): Task Scheduler's own RestartOnFailure acts only when the task cannot be launched,
so the supervisor (``nscmonitor.ops.supervisor``) restarts a daemon that exits or stops beating.
"""

from __future__ import annotations

import os
from pathlib import Path

from nscmonitor.installer.common import NAME, executable, fill, run_command, starter_config, template_path, write_file

BUILTIN_WINDOWS_ACCOUNTS = {"SYSTEM", "NT AUTHORITY\\SYSTEM", "LOCAL SERVICE", "NT AUTHORITY\\LOCAL SERVICE",
                            "NETWORK SERVICE", "NT AUTHORITY\\NETWORK SERVICE"}


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
        write_file(config, starter_config(root), dry_run=False, keep=True)
    path = root / "nscmonitor-task.xml"
    # schtasks reads UTF-16 task files reliably; UTF-8 ones fail on some Windows builds.
    path.write_text(xml.replace('encoding="UTF-8"', 'encoding="UTF-16"'), encoding="utf-16")
    cmd = ["schtasks", "/Create", "/TN", NAME, "/XML", str(path), "/F", "/RU", run_as]
    if run_as.upper() not in BUILTIN_WINDOWS_ACCOUNTS:
        cmd += ["/RP", "*"]  # schtasks asks for the password; it never appears on a command line
    run_command(cmd, dry_run=False)
    print(f"registered task {NAME}; start it now with: schtasks /Run /TN {NAME}")
    return 0


def windows_uninstall(*, dry_run: bool) -> int:
    """Removes the task; the config, the database and the logs under ProgramData stay."""
    rc = run_command(["schtasks", "/Delete", "/TN", NAME, "/F"], dry_run=dry_run, check=False)
    return 0 if rc == 0 else 1
