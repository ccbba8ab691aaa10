"""Incucyte-style wide sheets: one file per plate and readout, rows = time points (date/time
and elapsed hours), columns = wells, optionally an sd and an n column after each well.

Labs keep Prism/Excel templates that paste such a sheet as it comes out of the instrument
software, so the layout follows it: a header block of ``Key: value`` lines, the plate map
(condition and every extra plate-map column) as rows under the well names, a blank line,
then the table starting with ``Date Time`` and ``Elapsed``. Tab-separated by default
(what Incucyte writes), comma-separated on request; strings are formula-escaped.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from nscmonitor.report.export import _atomic_writer, _num, attribute_columns, escape
from nscmonitor.report.tables import PlateGrid, experiment_grids, readout_label, readout_slug
from nscmonitor.store.reads import Repo

SEPARATORS = {"tab": "\t", "comma": ","}
TABLE_START = "Date Time"


def _when(dt: datetime | None) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if dt else ""


def sheet_rows(grid: PlateGrid, readout: str, *, with_sd: bool = False, with_n: bool = False,
               exported_at: datetime | None = None) -> list[list[object]]:
    """The sheet as rows of cells (pure: written by ``write_wide``, read by tests and the report)."""
    values, sd = grid.values(readout)
    names = [w.name for w in grid.wells]
    cols: list[str] = []
    for w in names:
        cols.append(w)
        if with_sd and sd is not None:
            cols.append(f"{w} (SD)")
        if with_n:
            cols.append(f"{w} (n)")

    def spread(per_well: list[str]) -> list[object]:
        """A plate-map row: the well's value under the well's column, blanks under sd/n."""
        out: list[object] = []
        for v in per_well:
            out.append(escape(v))
            out.extend([""] * ((with_sd and sd is not None) + with_n))
        return out

    rows: list[list[object]] = [
        [f"Vessel Name: {escape(grid.plate)}"],
        [f"Metric: {readout_label(readout)}"],
        [f"Experiment: {escape(grid.experiment)}"],
        [f"Model Version: {escape(grid.model_version)}"],
        ["Time Zone: UTC; Elapsed: hours since induction"],
        [f"Exported: {_when(exported_at or datetime.now(timezone.utc))}"],
        [],
        ["Plate Map", ""] + spread(names),
        ["condition", ""] + spread([w.condition or "" for w in grid.wells]),
    ]
    attrs = {(grid.plate, w.name): w.attributes for w in grid.wells}
    for a, header in attribute_columns(attrs, ["Plate Map", "condition"]):
        rows.append([escape(header), ""] + spread([w.attributes.get(a, "") for w in grid.wells]))
    rows.append([])
    rows.append([TABLE_START, "Elapsed"] + cols)
    for t in range(len(grid.time_keys)):
        row: list[object] = [_when(grid.acquired_at[t]), _num(float(grid.elapsed_h[t]))]
        for w in range(len(names)):
            row.append(_num(float(values[t, w])))
            if with_sd and sd is not None:
                row.append(_num(float(sd[t, w])))
            if with_n:
                row.append(int(grid.n_images[t, w]))
        rows.append(row)
    return rows


def wide_path(out: Path, plate: str, readout: str, n_plates: int, default_suffix: str = ".txt") -> Path:
    """``report.txt`` -> ``report_prob_neuron.txt`` (``report_<plate>_prob_neuron.txt`` for several plates)."""
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in plate)
    mid = f"_{safe}" if n_plates > 1 else ""
    return out.with_name(f"{out.stem}{mid}_{readout_slug(readout)}{out.suffix or default_suffix}")


def write_rows(rows: list[list[object]], path: Path, sep: str) -> Path:
    tmp, fh = _atomic_writer(path)
    with fh:
        csv.writer(fh, delimiter=SEPARATORS[sep], lineterminator="\r\n" if sep == "tab" else "\n").writerows(rows)
    os.replace(tmp, path)
    return path


def export_wide(repo: Repo, experiment: str, out: Path, *, readouts: list[str] | None = None, sep: str = "tab",
                with_sd: bool = False, with_n: bool = False, model_version: str | None = None,
                active: Callable[[], str | None] | None = None) -> tuple[list[Path], str | None]:
    """One sheet per plate and readout (all readouts unless ``readouts`` names some)."""
    _, version, grids = experiment_grids(repo, experiment, model_version, active)
    written = []
    now = datetime.now(timezone.utc)
    for g in grids:
        for r in readouts or g.readouts():
            written.append(write_rows(sheet_rows(g, r, with_sd=with_sd, with_n=with_n, exported_at=now),
                                      wide_path(out, g.plate, r, len(grids)), sep))
    return written, version


def table_start(lines: list[str]) -> int:
    """Index of the ``Date Time`` line: what to skip when reading a sheet back (pandas ``skiprows``)."""
    for i, line in enumerate(lines):
        if line.startswith(TABLE_START):
            return i
    raise ValueError("no 'Date Time' header line")
