"""``nscmonitor doctor``: this machine's checks (``ops.health.doctor_report``), one line each."""

from __future__ import annotations

import argparse
from pathlib import Path

from nscmonitor.cli.args import add_db_options, settings_from
from nscmonitor.config import with_overrides
from nscmonitor.ops.health import doctor_report


def cmd_doctor(args: argparse.Namespace) -> int:
    s = settings_from(args)
    if args.model:
        s = with_overrides(s, model=Path(args.model))
    checks = doctor_report(s) + _channel_checks(s)
    width = max(len(c[0]) for c in checks)
    for name, ok, note in checks:
        print(f"{'ok ' if ok else '-- '} {name:<{width}}  {note}")
    print(f"config: {s.source or 'defaults (no config file)'}")
    return 0


def _channel_checks(s) -> list[tuple[str, bool, str]]:  # config.Settings
    """Per reachable watch folder, the channels its names carry and what the setting scores
    (``intake.channel_survey``): a setting that matches none fails the check; and how its names
    are timed: names with no scan index or elapsed time in a folder without ``induction_time``
    fail it (their images would give no readout)."""
    from nscmonitor.intake.channel_survey import survey

    out = []
    for w in s.watch:
        if not w.path.is_dir():
            continue
        try:
            found = survey(w, s.custom_profiles)
        except Exception as exc:  # doctor reports, it does not crash
            out.append((f"watch {w.experiment} channels", False, f"not surveyed: {exc}"))
            continue
        out.append((f"watch {w.experiment} channels", not found.mismatch, found.note()))
        if found.time_note():
            out.append((f"watch {w.experiment} time", not found.untimed, found.time_note()))
    return out


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check backends, GPU, database, folders and model")
    add_db_options(p)
    p.add_argument("--model", help="also check this model")
    p.set_defaults(func=cmd_doctor)
