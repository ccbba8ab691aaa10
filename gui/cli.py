"""``nscmonitor gui``: registered by ``nscmonitor.cli``; Qt is imported only when it runs."""

from __future__ import annotations

import argparse


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gui", help="the dashboard: plate map, time courses, images, daemon status")
    p.add_argument("--config", default=argparse.SUPPRESS, help="configuration TOML file")
    p.add_argument("--db", default=argparse.SUPPRESS, help="database URL (overrides the config)")
    p.add_argument("--experiment", help="experiment to open first (default: the first one)")
    p.add_argument("--screenshot", metavar="OUT.png",
                   help="render the main window offscreen to a PNG and exit (no display needed)")
    p.add_argument("--poll", type=float, default=2.0, metavar="SECONDS", help="how often to look for new data")
    p.set_defaults(func=_gui)


def _gui(args: argparse.Namespace) -> int:
    from nscmonitor.config import load_settings, with_overrides

    settings = load_settings(getattr(args, "config", None))
    settings = with_overrides(settings, database_url=getattr(args, "db", None))
    try:
        from nscmonitor.gui.app import run
    except ImportError as exc:
        from nscmonitor.core.errors import UserFacingError

        raise UserFacingError(f"the dashboard needs the gui extra (pip install 'nscmonitor[gui]'): {exc}") from exc
    return run(settings, experiment=args.experiment, screenshot_to=args.screenshot, poll_s=args.poll)
