"""Plate maps: which condition (inducer, dose, cell line...) is in which well.

CSV with a ``well`` column and a ``condition`` column; any other columns (dose, cell_line,
passage, is_control...) are kept as the well's attributes and joined into exports.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from nscmonitor.core.domain import parse_well, well_name
from nscmonitor.core.errors import ConfigError


@dataclass(frozen=True)
class PlateMap:
    conditions: dict[str, str]
    attributes: dict[str, dict[str, str]]

    def condition(self, well: str) -> str | None:
        return self.conditions.get(well)


EMPTY = PlateMap({}, {})


def load_plate_map(path: Path | None) -> PlateMap:
    """Read with the csv module over the whole text (``newline=""``), never line by line: a
    quoted condition may hold line breaks and commas, and must come back exactly."""
    if path is None:
        return EMPTY
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"plate_map: cannot read {path}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"plate_map {path}: not UTF-8 text (byte {exc.start}); save it as UTF-8 CSV") from exc
    reader = csv.DictReader(io.StringIO(text, newline=""), restkey=_EXTRA)
    try:
        fields = reader.fieldnames or []
    except csv.Error as exc:
        raise ConfigError(f"plate_map {path}: not a CSV file: {exc}") from exc
    cols = {c.lower().strip(): c for c in fields}
    if "well" not in cols or "condition" not in cols:
        raise ConfigError(f"plate_map {path}: needs the columns 'well' and 'condition' (has {fields})")
    conditions, attrs = {}, {}
    try:
        for row in reader:
            line = reader.line_num
            if row.get(_EXTRA):
                raise ConfigError(f"plate_map {path} line {line}: more values than the {len(fields)} columns")
            raw = (row[cols["well"]] or "").strip()
            if not raw and not any((v or "").strip() for k, v in row.items() if k != _EXTRA):
                continue  # a blank line
            try:
                well = well_name(*parse_well(raw))
            except ValueError as exc:
                raise ConfigError(f"plate_map {path} line {line}: {exc}") from exc
            conditions[well] = _text(row[cols["condition"]])
            attrs[well] = {k.strip(): _text(v) for k, v in row.items()
                           if k not in (cols["well"], cols["condition"], _EXTRA) and v and v.strip()}
    except csv.Error as exc:
        raise ConfigError(f"plate_map {path} line {reader.line_num}: {exc}") from exc
    return PlateMap(conditions, attrs)


_EXTRA = "\0extra"


def _text(v: str | None) -> str:
    """Line breaks inside a quoted cell kept, as LF whichever system saved the file (a
    condition is an identity: the same text must not become two conditions)."""
    return (v or "").replace("\r\n", "\n").replace("\r", "\n").strip()
