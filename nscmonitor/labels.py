"""End-point labels in: validated row by row, all or nothing, versioned.

A bad row anywhere (unknown well, unknown class, fractions that do not sum to 1) rejects the
whole file with every problem and its line number: half an import would silently train
on a plate where some wells are labelled and their neighbours are not.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import sessionmaker

from nscmonitor.core.domain import BINARY, MULTICLASS, parse_well, well_name
from nscmonitor.core.errors import UserFacingError
from nscmonitor.store import models as m

KNOWN_CLASSES = tuple(dict.fromkeys(MULTICLASS + BINARY))
ALIASES = {"astro": "astrocyte", "oligo": "oligodendrocyte", "nsc": "undifferentiated", "neurons": "neuron",
           "astrocytes": "astrocyte", "oligodendrocytes": "oligodendrocyte", "undiff": "undifferentiated"}


class LabelFileError(UserFacingError):
    def __init__(self, path: Path, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"{path}: {len(problems)} problem(s); nothing was imported:\n  " + "\n  ".join(problems))


@dataclass(frozen=True)
class WellLabel:
    experiment: str
    plate: str
    well: str
    label: str
    fractions: dict[str, float] | None
    labels_version: int


def _cls(name: str) -> str:
    n = name.strip().lower()
    return ALIASES.get(n, n)


def import_labels(engine: Engine, path: Path, *, tolerance: float = 0.02) -> tuple[int, int]:
    """Returns (label set version, number of wells labelled)."""
    raw, rows = _parse(engine, Path(path), tolerance)
    return _save(engine, [(wid, label, fr) for wid, label, fr, _ in rows], source=str(path),
                 sha256=hashlib.sha256(raw).hexdigest(), what=Path(path).name)


def read_label_file(engine: Engine, path: Path, *, tolerance: float = 0.02) -> list[WellLabel]:
    """The same validation as ``import_labels``, without saving: for a one-off training run on
    a label file (``nscmonitor train --labels``) that should not become the store's labels and
    so start scheduled retraining. ``labels_version`` is 0 (not a stored label set)."""
    _, rows = _parse(engine, Path(path), tolerance)
    return [WellLabel(e, p, w, label, fr, 0) for _, label, fr, (e, p, w) in rows]


def _parse(engine: Engine, path: Path, tolerance: float
           ) -> tuple[bytes, list[tuple[int, str, dict[str, float] | None, tuple[str, str, str]]]]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserFacingError(f"cannot read {path}: {exc}") from exc
    text = raw.decode("utf-8-sig", errors="replace")
    reader = csv.DictReader(text.splitlines())
    cols = [c.strip().lower() for c in (reader.fieldnames or [])]
    problems: list[str] = []
    for need in ("experiment", "plate", "well"):
        if need not in cols:
            problems.append(f"line 1: missing column {need!r}")
    frac_cols = [c for c in cols if c.startswith("frac_")]
    if "label" not in cols and not frac_cols:
        problems.append("line 1: needs a 'label' column or frac_<class> columns")
    for c in frac_cols:
        if _cls(c[5:]) not in KNOWN_CLASSES:
            problems.append(f"line 1: unknown class in column {c!r} (known: {', '.join(KNOWN_CLASSES)})")
    if problems:
        raise LabelFileError(path, problems)
    Session = sessionmaker(engine)
    rows: list[tuple[int, str, dict[str, float] | None, tuple[str, str, str]]] = []
    seen: dict[int, int] = {}
    with Session() as s:
        wells = {(e, p, w): wid for e, p, w, wid in s.execute(
            select(m.Experiment.name, m.Plate.name, m.Well.name, m.Well.id)
            .join(m.Plate, m.Plate.experiment_id == m.Experiment.id).join(m.Well, m.Well.plate_id == m.Plate.id))}
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
                    fr = {_cls(c[5:]): float(r[c]) if r.get(c) else 0.0 for c in frac_cols}
                except ValueError:
                    problems.append(f"line {line}: fractions must be numbers")
                    continue
                if any(v < 0 for v in fr.values()) or abs(sum(fr.values()) - 1.0) > tolerance:
                    problems.append(f"line {line}: fractions sum to {sum(fr.values()):.3f}, not 1")
                    continue
            label = _cls(r.get("label", "")) if r.get("label") else (max(fr, key=fr.get) if fr else "")
            if label not in KNOWN_CLASSES:
                problems.append(f"line {line}: unknown class {r.get('label')!r} (known: {', '.join(KNOWN_CLASSES)})")
                continue
            rows.append((wid, label, fr, (exp, plate, wname)))
    if not rows and not problems:
        problems.append("the file holds no label rows")
    if problems:
        raise LabelFileError(path, problems)
    return raw, rows


def _save(engine: Engine, rows: list[tuple[int, str, dict[str, float] | None]], *, source: str, sha256: str,
          what: str) -> tuple[int, int]:
    now = datetime.now(timezone.utc)
    with sessionmaker(engine).begin() as s:
        ls = m.LabelSet(source=source, sha256=sha256, n_labels=len(rows), created_at=now)
        s.add(ls)
        s.flush()
        for wid, label, fr in rows:
            s.add(m.Label(label_set_id=ls.id, well_id=wid, label=label, fractions=fr))
        s.add(m.Event(at=now, kind="labels_imported", message=f"label set {ls.id}: {len(rows)} wells from {what}",
                      data={"labels_version": ls.id, "n": len(rows)}))
        return ls.id, len(rows)


def label_wells(engine: Engine, experiment: str, plate: str, wells: list[str], label: str,
                *, source: str = "dashboard") -> tuple[int, int]:
    """Label single wells by hand (the dashboard): one new label set, same rules as a file."""
    label = _cls(label)
    if label not in KNOWN_CLASSES:
        raise UserFacingError(f"unknown class {label!r} (known: {', '.join(KNOWN_CLASSES)})")
    if not wells:
        raise UserFacingError("select the wells to label first")
    with sessionmaker(engine)() as s:
        ids = dict(s.execute(select(m.Well.name, m.Well.id).join(m.Plate, m.Plate.id == m.Well.plate_id)
                             .join(m.Experiment, m.Experiment.id == m.Plate.experiment_id)
                             .where(m.Experiment.name == experiment, m.Plate.name == plate)).all())
    missing = [w for w in wells if w not in ids]
    if missing:
        raise UserFacingError(f"wells not in {experiment}/{plate}: {', '.join(missing)}")
    digest = hashlib.sha256(f"{experiment}/{plate}/{','.join(sorted(wells))}={label}".encode()).hexdigest()
    return _save(engine, [(ids[w], label, None) for w in wells], source=source, sha256=digest,
                 what=f"{source} ({experiment}/{plate})")


def labels_version(engine: Engine) -> int | None:
    with sessionmaker(engine)() as s:
        return s.scalar(select(func.max(m.LabelSet.id)))


def current_labels(engine: Engine, up_to: int | None = None) -> list[WellLabel]:
    """The newest label of every labelled well (later label sets override earlier ones)."""
    with sessionmaker(engine)() as s:
        q = (select(m.Label, m.Well.name, m.Plate.name, m.Experiment.name)
             .join(m.Well, m.Well.id == m.Label.well_id).join(m.Plate, m.Plate.id == m.Well.plate_id)
             .join(m.Experiment, m.Experiment.id == m.Plate.experiment_id).order_by(m.Label.label_set_id))
        if up_to is not None:
            q = q.where(m.Label.label_set_id <= up_to)
        latest: dict[int, WellLabel] = {}
        for lab, well, plate, exp in s.execute(q):
            latest[lab.well_id] = WellLabel(exp, plate, well, lab.label, lab.fractions, lab.label_set_id)
        return list(latest.values())
