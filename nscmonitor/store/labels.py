"""Label sets and labels (``label_sets``, ``labels``): the store side of ``nscmonitor.labels``.

Validation of label files lives in ``nscmonitor.labels``; here are the wells a label may name,
the all-or-nothing save of one label set, and the current labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import sessionmaker

from nscmonitor.store import models as m
from nscmonitor.store.events import add_event


@dataclass(frozen=True)
class WellLabel:
    experiment: str
    plate: str
    well: str
    label: str
    fractions: dict[str, float] | None
    labels_version: int


@dataclass(frozen=True)
class NewLabel:
    well_id: int
    label: str
    fractions: dict[str, float] | None


def well_ids(engine: Engine) -> dict[tuple[str, str, str], int]:
    """(experiment, plate, well) -> well id, for every well in the store."""
    with sessionmaker(engine)() as s:
        return {(e, p, w): wid for e, p, w, wid in s.execute(
            select(m.Experiment.name, m.Plate.name, m.Well.name, m.Well.id)
            .join(m.Plate, m.Plate.experiment_id == m.Experiment.id).join(m.Well, m.Well.plate_id == m.Plate.id))}


def plate_well_ids(engine: Engine, experiment: str, plate: str) -> dict[str, int]:
    """Well name -> well id on one plate."""
    with sessionmaker(engine)() as s:
        return dict(s.execute(select(m.Well.name, m.Well.id).join(m.Plate, m.Plate.id == m.Well.plate_id)
                              .join(m.Experiment, m.Experiment.id == m.Plate.experiment_id)
                              .where(m.Experiment.name == experiment, m.Plate.name == plate)).all())


def save_label_set(engine: Engine, labels: list[NewLabel], *, source: str, sha256: str, what: str) -> tuple[int, int]:
    """One new label set with all its labels and the event that reports it, in one
    transaction. Returns (label set version, number of labels)."""
    now = datetime.now(timezone.utc)
    with sessionmaker(engine).begin() as s:
        ls = m.LabelSet(source=source, sha256=sha256, n_labels=len(labels), created_at=now)
        s.add(ls)
        s.flush()
        for lab in labels:
            s.add(m.Label(label_set_id=ls.id, well_id=lab.well_id, label=lab.label, fractions=lab.fractions))
        add_event(s, "labels_imported", f"label set {ls.id}: {len(labels)} wells from {what}", at=now,
                  data={"labels_version": ls.id, "n": len(labels)})
        return ls.id, len(labels)


def labels_version(engine: Engine) -> int | None:
    """The newest label set, or None before the first import."""
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
