"""``nscmonitor parse``: how the daemon's own parser reads file names, to check a profile."""

from __future__ import annotations

import argparse
import json

from nscmonitor.core.domain import PLATE_SHAPES
from nscmonitor.core.errors import UserFacingError


def parse_record(path: str, profile: str, plate_format: int | None) -> dict:
    from nscmonitor.intake.filenames import parse_path

    r = parse_path(path, profile, plate_format=plate_format)
    k = r.key
    return {
        "path": path, "kind": r.kind, "profile": r.profile,
        "plate": k.plate if k else None, "well": k.well if k else None, "field": k.field if k else None,
        "channel": k.channel if k else None, "z": k.z if k else None, "timepoint": k.timepoint if k else None,
        "elapsed_h": k.elapsed_h if k else None,
        "acquired_at": k.acquired_at.isoformat() if k and k.acquired_at else None,
        "acquisition": k.acquisition if k else None, "reason": r.reason,
    }


def cmd_parse(args: argparse.Namespace) -> int:
    for p in args.paths:
        try:
            rec = parse_record(p, args.profile, args.plate_format)
        except ValueError as exc:
            raise UserFacingError(str(exc)) from exc
        if args.json:
            print(json.dumps(rec))
        else:
            fields = ("plate", "well", "field", "channel", "z", "timepoint", "elapsed_h", "acquired_at", "acquisition")
            where = " ".join(f"{k}={rec[k]}" for k in fields if rec[k] is not None)
            print(f"{rec['kind']:8} {rec['profile'] or '-':12} {p}  {where}{'  ' + rec['reason'] if rec['reason'] else ''}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("parse", help="show how file names parse (the daemon's own parser)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="paths relative to the watched folder")
    p.add_argument("--profile", default="auto")
    p.add_argument("--plate-format", type=int, choices=sorted(PLATE_SHAPES), metavar="WELLS",
                   help="needed for names with sequential well numbers: "
                   f"{', '.join(map(str, sorted(PLATE_SHAPES)))}")
    p.add_argument("--json", action="store_true", help="one JSON object per path")
    p.set_defaults(func=cmd_parse)
