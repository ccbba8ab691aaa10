"""What the command modules share: ``--config``/``--db`` after a command, bounded numbers, and
the settings a command's arguments select (checked here, at the edge, once)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from nscmonitor.config import Settings, check_database_url, load_settings, with_overrides
from nscmonitor.report.times import parse_hours


def bounded(kind: type, lo: float, hi: float, what: str) -> Callable[[str], float]:
    """argparse type for a bounded, finite number: 'nan', 'inf' and out-of-range values are
    refused with the allowed range instead of being accepted and silently misbehaving."""
    def parse(text: str) -> float:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} ({lo:g}..{hi:g}), got {text!r}") from None
        if not (math.isfinite(v) and lo <= v <= hi):
            raise argparse.ArgumentTypeError(f"expected {what} ({lo:g}..{hi:g}), got {text!r}")
        return v

    return parse


def hours_arg(text: str) -> list[float]:
    """``24,48,72`` -> hours since induction (the report's ``--times``)."""
    try:
        return parse_hours(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def settings_from(args: argparse.Namespace) -> Settings:
    s = load_settings(getattr(args, "config", None))
    db = getattr(args, "db", None)
    return with_overrides(s, database_url=None if db is None else check_database_url(db))


def add_db_options(p: argparse.ArgumentParser) -> None:
    """--config/--db after the command too; SUPPRESS keeps a top-level --config intact."""
    p.add_argument("--config", default=argparse.SUPPRESS, help="configuration TOML file")
    p.add_argument("--db", default=argparse.SUPPRESS, help="database URL (overrides the config)")
