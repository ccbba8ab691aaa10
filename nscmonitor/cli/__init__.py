"""Command line: ``nscmonitor <command>``, one module per command in this package.

The commands of the optional parts (simulate, train, engine, gui) are registered by their
own packages through ``add_parsers(subparsers)``, imported by name so that a part that is not
installed only loses its commands, and their heavy imports (torch, Qt) happen only when such a
command runs. The core commands are imported directly: a broken one is an error, not a
command that silently disappears.
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

OPTIONAL_MODULES = (
    "nscmonitor.simulate.cli",
    "nscmonitor.training.cli",
    "nscmonitor.engines.cli",
    "nscmonitor.gui.cli",
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
    from nscmonitor.cli import db, demo, doctor, export, models, parse, requeue, run, service, status

    for module in (run, status, export, parse, doctor, db, models, requeue, demo):
        module.add_parsers(sub)
    for name in OPTIONAL_MODULES:
        try:
            optional = importlib.import_module(name)
        except ImportError as exc:
            log.debug("commands of %s unavailable: %s", name, exc)
            continue
        optional.add_parsers(sub)
    service.add_parsers(sub)
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
