"""Plate maps: which condition (inducer, dose, cell line...) is in which well.

CSV with a ``well`` column and a ``condition`` column; any other columns (dose, cell_line,
passage, is_control...) are kept as the well's attributes and joined into exports.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from nscmonitor.domain import parse_well, well_name
from nscmonitor.errors import ConfigError


@dataclass(frozen=True)
class PlateMap:
    conditions: dict[str, str]
    attributes: dict[str, dict[str, str]]

    def condition(self, well: str) -> str | None:
        return self.conditions.get(well)


EMPTY = PlateMap({}, {})


def load_plate_map(path: Path | None) -> PlateMap:
    if path is None:
        return EMPTY
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"plate_map: cannot read {path}: {exc}") from exc
    reader = csv.DictReader(text.splitlines())
    cols = {c.lower().strip(): c for c in (reader.fieldnames or [])}
    if "well" not in cols or "condition" not in cols:
        raise ConfigError(f"plate_map {path}: needs the columns 'well' and 'condition' (has {reader.fieldnames})")
    conditions, attrs = {}, {}
    for line, row in enumerate(reader, start=2):
        raw = (row[cols["well"]] or "").strip()
        try:
            well = well_name(*parse_well(raw))
        except ValueError as exc:
            raise ConfigError(f"plate_map {path} line {line}: {exc}") from exc
        conditions[well] = (row[cols["condition"]] or "").strip()
        attrs[well] = {k: v for k, v in row.items() if k not in (cols["well"], cols["condition"]) and v}
    return PlateMap(conditions, attrs)
