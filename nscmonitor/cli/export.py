"""``nscmonitor export`` (tidy CSV, wide sheets, Prism tables) and ``nscmonitor report`` (HTML, PDF)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from nscmonitor.cli.args import add_db_options, bounded, hours_arg, settings_from
from nscmonitor.config import Settings
from nscmonitor.ops.health import active_version


def cmd_export(args: argparse.Namespace) -> int:
    from nscmonitor.report.export import default_images_path, export_images, export_readouts
    from nscmonitor.store.db import open_readonly
    from nscmonitor.store.reads import Repo

    s = settings_from(args)
    repo = Repo(open_readonly(s.database_url))
    out = Path(args.output)
    if args.format != "tidy":
        return _export_sheets(args, s, repo, out)
    n, version = export_readouts(repo, args.experiment, out, model_version=args.model_version,
                                 active=active_version(s))
    per_image = Path(args.per_image) if args.per_image else default_images_path(out)
    k = export_images(repo, args.experiment, per_image)
    print(f"wrote {n} readout rows (model {version or 'none'}) to {out}")
    print(f"wrote {k} image rows to {per_image}")
    from nscmonitor.report.forecasts_csv import default_forecasts_path, export_forecasts

    forecasts = default_forecasts_path(out)
    f = export_forecasts(repo.engine, args.experiment, forecasts)
    if f is not None:
        print(f"wrote {f} well forecast rows to {forecasts}")
    return 0


def _export_sheets(args: argparse.Namespace, s: Settings, repo: Any, out: Path) -> int:
    from nscmonitor.report.prism import export_prism
    from nscmonitor.report.wide import export_wide

    readouts = args.readout or None
    sep = args.sep or ("tab" if args.format == "wide" else "comma")
    if args.format == "wide":
        paths, version = export_wide(repo, args.experiment, out, readouts=readouts, sep=sep, with_sd=args.sd,
                                     with_n=args.n, model_version=args.model_version, active=active_version(s))
    else:
        paths, version = export_prism(repo, args.experiment, out, readouts=readouts, sep=sep,
                                      model_version=args.model_version, active=active_version(s))
    for p in paths:
        print(f"wrote {p}")
    print(f"{len(paths)} {args.format} sheet(s), model {version or 'none'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from nscmonitor.report.browser import NO_BROWSER, find_browser, print_pdf
    from nscmonitor.report.html import write_report
    from nscmonitor.store.db import open_readonly
    from nscmonitor.store.reads import Repo

    s = settings_from(args)
    repo = Repo(open_readonly(s.database_url))
    out = Path(args.output)
    _, version = write_report(repo, args.experiment, out, times=args.times, model_version=args.model_version,
                              active=active_version(s), threshold=args.threshold)
    print(f"wrote {out} (model {version or 'none'})")
    if args.pdf:
        if find_browser() is None:
            print(f"nscmonitor: {NO_BROWSER}", file=sys.stderr)
            return 1
        print(f"wrote {print_pdf(out, out.with_suffix('.pdf'))}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write the experiment's readouts: tidy CSV (and the per-image CSV), "
                       "Incucyte-style wide sheets or Prism tables",
                       description="tidy: one row per well x timepoint x class, plus the per-image CSV. "
                       "wide: Incucyte-style sheets, one per plate and readout (rows = time points with date/time "
                       "and elapsed hours, columns = wells), written as <output stem>_<readout><suffix>. "
                       "prism: per-condition tables with the replicate wells side by side, one per plate and "
                       "readout. Every format carries the plate map's extra columns; strings are formula-escaped.")
    add_db_options(p)
    p.add_argument("--experiment", required=True)
    p.add_argument("-o", "--output", required=True, help="report file (tidy) or the name the sheets are derived from")
    p.add_argument("--format", choices=("tidy", "wide", "prism"), default="tidy", help="default: tidy")
    p.add_argument("--sep", choices=("tab", "comma"),
                   help="separator of wide/prism sheets (default: tab for wide, comma for prism; tidy is always comma)")
    p.add_argument("--readout", action="append", metavar="KIND:CLASS",
                   help="wide/prism: only this readout, e.g. prob:neuron or fraction:astrocyte (repeatable; "
                   "default: all)")
    p.add_argument("--sd", action="store_true", help="wide: an sd column (across fields) after each well")
    p.add_argument("--n", action="store_true", help="wide: an n column (images scored) after each well")
    p.add_argument("--per-image", help="per-image CSV (default: <report>_images.csv)")
    p.add_argument("--model-version", help="readouts of this model version (default: the active one)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="write the experiment's report: one self-contained HTML file (and its PDF)",
                       description="One HTML file to send: plate maps at chosen times, time courses per condition "
                       "(mean ± sd across replicate wells) with the earliest confident calls, the calls per well, "
                       "QC and quarantine, and the provenance (model version, its validation numbers by hours since "
                       "induction, engines). Figures are inline SVG, each with a save link. --pdf prints it with a "
                       "headless Chromium (apt-get install chromium) to the same name with .pdf.")
    add_db_options(p)
    p.add_argument("--experiment", required=True)
    p.add_argument("-o", "--output", required=True, help="the HTML file to write")
    p.add_argument("--pdf", action="store_true", help="also write <output>.pdf (needs Chromium or Chrome)")
    p.add_argument("--times", type=hours_arg, metavar="H1,H2,...",
                   help="plate maps at these hours since induction (nearest time point; default: first, middle, last)")
    p.add_argument("--threshold", type=bounded(float, 0.0, 1.0, "a probability"), default=None,
                   help="top-class probability a confident call needs (default: the call rule the model "
                        "carries, chosen on its validation wells; 0.6 over 2 time points for a model without one)")
    p.add_argument("--model-version", help="readouts of this model version (default: the active one)")
    p.set_defaults(func=cmd_report)
