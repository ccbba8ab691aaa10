"""Command line: ``nscmonitor <command>``.

Core commands live here; the commands of the optional parts (simulate, train, engine, gui,
service) are registered by their own packages through ``add_parsers(subparsers)`` so that
their heavy imports (torch, Qt) happen only when such a command runs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from nscmonitor import __version__
from nscmonitor.core.errors import UserFacingError

log = logging.getLogger("nscmonitor")

PLUGIN_MODULES = (
    "nscmonitor.cli.run",
    "nscmonitor.cli.status",
    "nscmonitor.cli.export",
    "nscmonitor.cli.parse",
    "nscmonitor.cli.doctor",
    "nscmonitor.cli.db",
    "nscmonitor.cli.models",
    "nscmonitor.cli.requeue",
    "nscmonitor.cli.demo",
    "nscmonitor.simulate.cli",
    "nscmonitor.training.cli",
    "nscmonitor.engines.cli",
    "nscmonitor.gui.cli",
    "nscmonitor.cli.service",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nscmonitor",
        description="Early, live readouts of neural stem cell differentiation from label-free "
        "microscope images: watch folders, score images, store readouts, export CSV.",
    )
    parser.add_argument("--version", action="version", version=f"nscmonitor {__version__}")
    parser.add_argument("--config", help="configuration TOML file (default: the user config dir)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in PLUGIN_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            log.debug("commands of %s unavailable: %s", name, exc)
            continue
        module.add_parsers(sub)
    return parser


def _logging(args: argparse.Namespace) -> None:
    """Long-lived processes keep a rotating file in the log dir; one file per process kind,
    because Windows cannot rotate a file that another process holds open."""
    from nscmonitor.core.logs import setup_logging

    cmd = getattr(args, "command", None)
    log_dir = None
    if cmd in ("run", "gui", "service"):
        from nscmonitor.config import default_log_dir, load_settings

        try:
            log_dir = load_settings(getattr(args, "config", None)).log_dir
        except Exception:  # the command itself reports a bad config with the key's name
            log_dir = default_log_dir()
    setup_logging(log_dir, args.verbose,
                  filename={"gui": "nscmonitor-gui.log", "service": "nscmonitor-service.log"}.get(cmd, "nscmonitor.log"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _logging(args)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except UserFacingError as exc:
        print(f"nscmonitor: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        line = database_error_line(exc)
        if line is None:
            raise
        log.debug("database error", exc_info=True)
        print(f"nscmonitor: error: {line}", file=sys.stderr)
        return 2


def database_error_line(exc: BaseException) -> str | None:
    """A database that cannot be opened or read (not a database file, disk I/O error, locked
    for too long, server down) is the user's to fix: one line with the driver's reason and
    the URL's setting, not a traceback. Other exceptions are bugs and keep their traceback."""
    from sqlalchemy.exc import DatabaseError, OperationalError

    # OperationalError: cannot open, disk I/O, locked, server gone; a bare DatabaseError: the
    # file is not a database. Integrity or programming errors are bugs and keep the traceback.
    if not (isinstance(exc, OperationalError) or type(exc) is DatabaseError):
        return None
    return f"database: {str(exc.orig).splitlines()[0] if exc.orig is not None else exc} (check database_url)"


if __name__ == "__main__":
    sys.exit(main())
