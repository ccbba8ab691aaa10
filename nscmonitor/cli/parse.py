"""``nscmonitor parse``: how the daemon's own parser reads file names, to check a profile."""

from __future__ import annotations

import argparse
import json

from nscmonitor.core.domain import PLATE_SHAPES
from nscmonitor.core.errors import UserFacingError


def parse_record(path: str, profile: str, plate_format: int | None) -> dict:
    from nscmonitor.intake.filenames import parse_path

    return record(path, parse_path(path, profile, plate_format=plate_format))


def contents(path: str, profile: str, plate_format: int | None) -> list[dict] | None:
    """The images the daemon finds inside an existing file (an ND2's positions and time
    points, a CZI's scenes, an OME-TIFF's time points), each placed as the daemon places it;
    None for a file that is one image."""
    from nscmonitor.intake.describe import place
    from nscmonitor.intake.filenames import parse_path
    from nscmonitor.readers import formats

    try:
        found = formats.units(path)
    except formats.NotReady as exc:
        raise UserFacingError(f"{path}: cannot be opened (yet): {exc}") from exc
    only = found[0] if found and len(found) == 1 else None
    if not found or (only is not None and only.ref == path and only.error is None and only.acquired_at is None):
        return None  # the file is one image, placed and timed by its name
    named = parse_path(path, profile, plate_format=plate_format)
    return [record(u.ref, place(named, u.ref, u)) for u in found]


def record(path: str, r) -> dict:  # r: core.domain.ParseResult
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
            recs = (contents(p, args.profile, args.plate_format) if args.contents else None) \
                or [parse_record(p, args.profile, args.plate_format)]
        except ValueError as exc:
            raise UserFacingError(str(exc)) from exc
        for rec in recs:
            if args.json:
                print(json.dumps(rec))
            else:
                fields = ("plate", "well", "field", "channel", "z", "timepoint", "elapsed_h", "acquired_at",
                          "acquisition")
                where = " ".join(f"{k}={rec[k]}" for k in fields if rec[k] is not None)
                reason = "  " + rec["reason"] if rec["reason"] else ""
                print(f"{rec['kind']:8} {rec['profile'] or '-':12} {rec['path']}  {where}{reason}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("parse", help="show how file names parse (the daemon's own parser)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="paths relative to the watched folder")
    p.add_argument("--profile", default="auto")
    p.add_argument("--plate-format", type=int, choices=sorted(PLATE_SHAPES), metavar="WELLS",
                   help="needed for names with sequential well numbers: "
                   f"{', '.join(map(str, sorted(PLATE_SHAPES)))}")
    p.add_argument("--json", action="store_true", help="one JSON object per path")
    p.add_argument("--contents", action="store_true",
                   help="open each existing file and show the images the daemon finds inside it (ND2 "
                   "positions and time points, CZI scenes, OME-TIFF time points), placed as it places them")
    p.set_defaults(func=cmd_parse)
