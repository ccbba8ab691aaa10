"""CSV of the time-aware well model's forecasts: one row per well, time and forecast model,
one probability column per class (``p_<class>``), the predicted class, and what the forecast
read (time points and images up to that time, the plate normalisation), and the forecast's
own out-of-distribution flag: ``ood`` 1 when the forecast rests on frames unlike its
training images (left out of confident calls), ``n_ood`` the well's frames up to that time it
flagged; both empty where the forecast model has no such score. Written beside the readouts
by ``nscmonitor export`` when the database holds forecasts."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from nscmonitor.report.export import escape
from nscmonitor.store.forecasts import ForecastRow, forecasts_of


def default_forecasts_path(report: Path) -> Path:
    return report.with_name(f"{report.stem}_forecasts{report.suffix or '.csv'}")


def write_forecasts(rows: list[ForecastRow], out: Path) -> int:
    classes: list[str] = []
    for r in rows:
        classes += [c for c in r.classes if c not in classes]
    cols = ["experiment", "plate", "well", "elapsed_h", "forecast_model", "normalisation", "n_timepoints",
            "n_images", "ood", "n_ood", "predicted"] + [f"p_{c}" for c in classes]
    tmp = out.with_name(out.name + ".part")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for r in rows:
            p = dict(zip(r.classes, r.probs))
            w.writerow([escape(r.experiment), escape(r.plate), r.well,
                        "" if r.elapsed_h is None else f"{r.elapsed_h:g}", escape(r.model_version), r.normalisation,
                        r.n_timepoints, r.n_images, "" if r.ood is None else int(r.ood),
                        "" if r.n_ood is None else r.n_ood, escape(max(p, key=p.get)) if p else ""]
                       + ["" if c not in p else f"{p[c]:.6f}" for c in classes])
    os.replace(tmp, out)
    return len(rows)


def export_forecasts(engine, experiment: str, out: Path) -> int | None:  # noqa: ANN001 (an SQLAlchemy engine)
    """Rows written, or None (no file) when the experiment has no forecasts."""
    rows = forecasts_of(engine, experiment)
    return write_forecasts(rows, out) if rows else None
