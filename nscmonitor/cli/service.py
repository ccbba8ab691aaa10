"""``nscmonitor service``: install the daemon once on the instrument PC and leave it running.

The installers (systemd unit, Task Scheduler task) live in ``nscmonitor.installer``, the
supervisor that the Windows task runs in ``nscmonitor.ops.supervisor``; this module only
parses the sub-commands and hands over.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from types import FrameType

from nscmonitor.cli.args import settings_from
from nscmonitor.cli.status import cmd_status
from nscmonitor.installer.common import NAME, executable, run_command
from nscmonitor.installer.systemd import linux_install, linux_layout, linux_uninstall
from nscmonitor.installer.task_scheduler import windows_install, windows_root, windows_uninstall
from nscmonitor.ops.supervisor import Supervisor, heartbeat_age

log = logging.getLogger(__name__)


def cmd_supervise(args: argparse.Namespace) -> int:
    s = settings_from(args)
    config = getattr(args, "config", None)
    cmd = [*executable(), *(["--config", str(config)] if config else []), "run"]
    sup = Supervisor(cmd, lambda pid: heartbeat_age(s.database_url, pid), stall_s=args.stall)

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("supervisor: signal %s, stopping the daemon", signum)
        sup.stop_event.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if hasattr(signal, "SIGBREAK"):
        signal.signal(signal.SIGBREAK, stop)
    return sup.run()


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
        return windows_uninstall(dry_run=args.dry_run)
    return linux_uninstall(linux_layout(system=args.system, config=_config_arg(args)), dry_run=args.dry_run)


def cmd_service_status(args: argparse.Namespace) -> int:
    """The service manager's view, then the daemon's own (heartbeat, queue, folders);
    the exit code is the daemon's health code, as for ``nscmonitor status``."""
    if sys.platform == "win32":
        run_command(["schtasks", "/Query", "/TN", NAME, "/V", "/FO", "LIST"], dry_run=False, check=False)
    else:
        lay = linux_layout(system=args.system, config=_config_arg(args))
        run_command([*lay.systemctl, "status", "--no-pager", "--lines", "20", "nscmonitor.service"], dry_run=False,
                    check=False)
    print()
    return cmd_status(argparse.Namespace(config=_config_arg(args), json=False))


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
