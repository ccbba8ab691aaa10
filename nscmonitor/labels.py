"""End-point labels in: validated row by row, all or nothing, versioned.

A bad row anywhere (unknown well, unknown class, fractions that do not sum to 1) rejects the
whole file with every problem and its line number: half an import would silently train
on a plate where some wells are labelled and their neighbours are not.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

from sqlalchemy import Engine

from nscmonitor.core.domain import BINARY, MULTICLASS, parse_well, well_name
from nscmonitor.core.errors import UserFacingError
from nscmonitor.store.labels import NewLabel, WellLabel, plate_well_ids, save_label_set, well_ids

KNOWN_CLASSES = tuple(dict.fromkeys(MULTICLASS + BINARY))
ALIASES = {"astro": "astrocyte", "oligo": "oligodendrocyte", "nsc": "undifferentiated", "neurons": "neuron",
           "astrocytes": "astrocyte", "oligodendrocytes": "oligodendrocyte", "undiff": "undifferentiated"}


class LabelFileError(UserFacingError):
    def __init__(self, path: Path, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"{path}: {len(problems)} problem(s); nothing was imported:\n  " + "\n  ".join(problems))


def _class_name(name: str) -> str:
    n = name.strip().lower()
    return ALIASES.get(n, n)


def import_labels(engine: Engine, path: Path, *, tolerance: float = 0.02) -> tuple[int, int]:
    """Returns (label set version, number of wells labelled)."""
    raw, rows = _parse(engine, Path(path), tolerance)
    return save_label_set(engine, [NewLabel(wid, label, fr) for wid, label, fr, _ in rows], source=str(path),
                          sha256=hashlib.sha256(raw).hexdigest(), what=Path(path).name)


def read_label_file(engine: Engine, path: Path, *, tolerance: float = 0.02) -> list[WellLabel]:
    """The same validation as ``import_labels``, without saving: for a one-off training run on
    a label file (``nscmonitor train --labels``) that should not become the store's labels and
    so start scheduled retraining. ``labels_version`` is 0 (not a stored label set)."""
    _, rows = _parse(engine, Path(path), tolerance)
    return [WellLabel(e, p, w, label, fr, 0) for _, label, fr, (e, p, w) in rows]


def _header_problems(cols: list[str], frac_cols: list[str]) -> list[str]:
    problems = [f"line 1: missing column {need!r}" for need in ("experiment", "plate", "well") if need not in cols]
    if "label" not in cols and not frac_cols:
        problems.append("line 1: needs a 'label' column or frac_<class> columns")
    problems += [f"line 1: unknown class in column {c!r} (known: {', '.join(KNOWN_CLASSES)})"
                 for c in frac_cols if _class_name(c[5:]) not in KNOWN_CLASSES]
    return problems


def _parse(engine: Engine, path: Path, tolerance: float
           ) -> tuple[bytes, list[tuple[int, str, dict[str, float] | None, tuple[str, str, str]]]]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserFacingError(f"cannot read {path}: {exc}") from exc
    text = raw.decode("utf-8-sig", errors="replace")
    reader = csv.DictReader(text.splitlines())
    cols = [c.strip().lower() for c in (reader.fieldnames or [])]
    frac_cols = [c for c in cols if c.startswith("frac_")]
    problems = _header_problems(cols, frac_cols)
    if problems:
        raise LabelFileError(path, problems)
    rows: list[tuple[int, str, dict[str, float] | None, tuple[str, str, str]]] = []
    seen: dict[int, int] = {}
    wells = well_ids(engine)
    experiments = {e for e, _, _ in wells}
    for line, row in enumerate(reader, start=2):
        r = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k is not None}
        exp, plate, well = r.get("experiment", ""), r.get("plate", ""), r.get("well", "")
        try:
            wname = well_name(*parse_well(well))
        except ValueError:
            problems.append(f"line {line}: {well!r} is not a well name")
            continue
        wid = wells.get((exp, plate, wname))
        if wid is None:
            where = "unknown experiment" if exp not in experiments else "unknown well"
            problems.append(f"line {line}: {where}: experiment {exp!r}, plate {plate!r}, well {wname} "
                            "is not in the database")
            continue
        if wid in seen:
            problems.append(f"line {line}: well {wname} of {exp}/{plate} already labelled on line {seen[wid]}")
            continue
        seen[wid] = line
        fr = None
        if frac_cols and any(r.get(c) for c in frac_cols):
            try:
                fr = {_class_name(c[5:]): float(r[c]) if r.get(c) else 0.0 for c in frac_cols}
            except ValueError:
                problems.append(f"line {line}: fractions must be numbers")
                continue
            if any(v < 0 for v in fr.values()) or abs(sum(fr.values()) - 1.0) > tolerance:
                problems.append(f"line {line}: fractions sum to {sum(fr.values()):.3f}, not 1")
                continue
        label = _class_name(r.get("label", "")) if r.get("label") else (max(fr, key=fr.get) if fr else "")
        if label not in KNOWN_CLASSES:
            problems.append(f"line {line}: unknown class {r.get('label')!r} (known: {', '.join(KNOWN_CLASSES)})")
            continue
        rows.append((wid, label, fr, (exp, plate, wname)))
    if not rows and not problems:
        problems.append("the file holds no label rows")
    if problems:
        raise LabelFileError(path, problems)
    return raw, rows


def label_wells(engine: Engine, experiment: str, plate: str, wells: list[str], label: str,
                *, source: str = "dashboard") -> tuple[int, int]:
    """Label single wells by hand (the dashboard): one new label set, same rules as a file."""
    label = _class_name(label)
    if label not in KNOWN_CLASSES:
        raise UserFacingError(f"unknown class {label!r} (known: {', '.join(KNOWN_CLASSES)})")
    if not wells:
        raise UserFacingError("select the wells to label first")
    ids = plate_well_ids(engine, experiment, plate)
    missing = [w for w in wells if w not in ids]
    if missing:
        raise UserFacingError(f"wells not in {experiment}/{plate}: {', '.join(missing)}")
    digest = hashlib.sha256(f"{experiment}/{plate}/{','.join(sorted(wells))}={label}".encode()).hexdigest()
    return save_label_set(engine, [NewLabel(ids[w], label, None) for w in wells], source=source, sha256=digest,
                          what=f"{source} ({experiment}/{plate})")
