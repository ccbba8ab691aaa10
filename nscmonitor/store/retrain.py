"""Retraining's rows: its runs (``retrain_runs``), the scored images it trains on, and the
rescoring it queues after a promotion."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import sessionmaker

from nscmonitor.core.names import from_db
from nscmonitor.core.queue import QueueState
from nscmonitor.store import models as m


@dataclass(frozen=True)
class ScoredImage:
    """A scored image that passed QC, placed on its well."""

    path: str  # as on the file system (``names.from_db``)
    field: int | None
    timepoint: int | None
    elapsed_h: float | None
    channel: str | None
    well: str
    plate: str
    experiment: str


def scored_images(engine: Engine) -> list[ScoredImage]:
    """Every scored, QC-passed image on a well, in a fixed order (experiment, plate, well, time
    point, field, path) rather than the order they were queued: the watcher queues files in
    whatever order the file system reports them, and a training set built in queue order
    shuffled differently on every run, so the same labels trained a different candidate."""
    with sessionmaker(engine)() as s:
        rows = s.execute(
            select(m.Image.path, m.Image.field, m.Image.timepoint, m.Image.elapsed_h, m.Image.channel, m.Well.name,
                   m.Plate.name, m.Experiment.name)
            .join(m.Well, m.Well.id == m.Image.well_id).join(m.Plate, m.Plate.id == m.Well.plate_id)
            .join(m.Experiment, m.Experiment.id == m.Plate.experiment_id)
            .where(m.Image.status == QueueState.DONE, m.Image.qc_passed.is_(True))
            .order_by(m.Experiment.name, m.Plate.name, m.Well.name, m.Image.timepoint, m.Image.field,
                      m.Image.path)).all()
    return [ScoredImage(from_db(path), *rest) for path, *rest in rows]


def start_run(engine: Engine, *, trigger: str, labels_version: int | None, baseline_version: str | None) -> int:
    """A new run, ``running``; returns its id."""
    with sessionmaker(engine).begin() as s:
        run = m.RetrainRun(started_at=datetime.now(timezone.utc), trigger=trigger, labels_version=labels_version,
                           status="running", baseline_version=baseline_version)
        s.add(run)
        s.flush()
        return run.id


def finish_run(engine: Engine, run_id: int, *, status: str, reason: str, candidate_version: str | None = None,
               numbers: dict | None = None, run_dir: str | None = None) -> None:
    with sessionmaker(engine).begin() as s:
        r = s.get(m.RetrainRun, run_id)
        r.status, r.reason, r.finished_at = status, reason, datetime.now(timezone.utc)
        r.candidate_version, r.numbers, r.run_dir = candidate_version, numbers, run_dir


def ended_runs(engine: Engine) -> list[tuple[int, str, str | None]]:
    """(id, status, run folder) of every run no longer running, oldest first."""
    with sessionmaker(engine)() as s:
        return [(i, st, d) for i, st, d in s.execute(select(m.RetrainRun.id, m.RetrainRun.status, m.RetrainRun.run_dir)
                                                     .where(m.RetrainRun.status != "running")
                                                     .order_by(m.RetrainRun.id))]


def mark_for_rescore(engine: Engine, *, acquiring_since: datetime) -> int:
    """Queue the scored images of experiments that received an image since ``acquiring_since``
    for rescoring, with fresh attempts (a new piece of work). Returns how many."""
    with sessionmaker(engine).begin() as s:
        running = select(m.Image.experiment_id).group_by(m.Image.experiment_id) \
            .having(func.max(m.Image.discovered_at) >= acquiring_since)
        res = s.execute(update(m.Image).where(m.Image.status == QueueState.DONE, m.Image.qc_passed.is_(True),
                                              m.Image.experiment_id.in_(running))
                        .values(status=QueueState.RESCORE, attempts=0))
        return res.rowcount or 0
