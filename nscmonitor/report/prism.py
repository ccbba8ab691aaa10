"""Prism-friendly per-condition tables: one file per plate and readout, X = hours since
induction, then for each condition its replicate wells side by side (Prism's grouped / XY
table with replicate sub-columns, pasted as it is).

Header rows above the numbers: the condition of each column, one row per extra plate-map
column (dose, cell line, ...), then ``Elapsed (h)`` and the well names. Reading back with
pandas: ``header=list(range(header_rows(grid)))``. Strings are formula-escaped.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from nscmonitor.report.export import _num, attribute_columns, escape
from nscmonitor.report.tables import PlateGrid, experiment_grids
from nscmonitor.report.wide import wide_path, write_rows
from nscmonitor.store.reads import Repo

NO_CONDITION = "(no condition)"
X_LABEL = "Elapsed (h)"


def condition_columns(grid: PlateGrid) -> list[tuple[str, list[int]]]:
    """(condition, well indices) in the order conditions first appear on the plate."""
    groups: dict[str, list[int]] = {}
    for i, w in enumerate(grid.wells):
        groups.setdefault(w.condition or NO_CONDITION, []).append(i)
    return list(groups.items())


def prism_rows(grid: PlateGrid, readout: str) -> list[list[object]]:
    values, _ = grid.values(readout)
    groups = condition_columns(grid)
    order = [i for _, idx in groups for i in idx]
    rows: list[list[object]] = [["condition"] + [escape(c) for c, idx in groups for _ in idx]]
    attrs = {(grid.plate, w.name): w.attributes for w in grid.wells}
    for a, header in attribute_columns(attrs, ["condition", X_LABEL]):
        rows.append([escape(header)] + [escape(grid.wells[i].attributes.get(a, "")) for i in order])
    rows.append([X_LABEL] + [grid.wells[i].name for i in order])
    for t in range(len(grid.time_keys)):
        rows.append([_num(float(grid.elapsed_h[t]))] + [_num(float(values[t, i])) for i in order])
    return rows


def header_rows(grid: PlateGrid) -> int:
    return 2 + len(grid.attribute_names)


def export_prism(repo: Repo, experiment: str, out: Path, *, readouts: list[str] | None = None, sep: str = "comma",
                 model_version: str | None = None,
                 active: Callable[[], str | None] | None = None) -> tuple[list[Path], str | None]:
    _, version, grids = experiment_grids(repo, experiment, model_version, active)
    written = []
    for g in grids:
        for r in readouts or g.readouts():
            written.append(write_rows(prism_rows(g, r), wide_path(out, g.plate, r, len(grids), ".csv"), sep))
    return written, version
