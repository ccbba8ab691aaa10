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
from nscmonitor.errors import UserFacingError

log = logging.getLogger("nscmonitor")

PLUGIN_MODULES = (
    "nscmonitor.commands",
    "nscmonitor.commands_models",
    "nscmonitor.simulate.cli",
    "nscmonitor.training.cli",
    "nscmonitor.engines.cli",
    "nscmonitor.gui.cli",
    "nscmonitor.service",
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * args.verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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


if __name__ == "__main__":
    sys.exit(main())
