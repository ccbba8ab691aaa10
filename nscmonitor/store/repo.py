"""Reads. Every function returns frozen dataclasses or plain values, never ORM rows."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from nscmonitor.core.domain import ImageRecord, WellReadout
from nscmonitor.core.queue import PROBLEMS, QueueState
from nscmonitor.store import models as m


@dataclass(frozen=True)
class ExperimentInfo:
    id: int
    name: str
    watch_path: str | None
    induction_time: datetime | None
    n_images: int
    n_done: int
    n_qc_failed: int
    n_quarantined: int
    last_image_at: datetime | None
    plates: tuple[str, ...]


@dataclass(frozen=True)
class EventInfo:
    id: int
    at: datetime
    kind: str
    level: str
    message: str
    path: str | None


@dataclass(frozen=True)
class DaemonInfo:
    id: int
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    state: str
    engine: str | None
    model_version: str | None
    watched: list
    images_per_s: float | None


@dataclass(frozen=True)
class ImageError:
    id: int
    path: str
    status: str
    error: str
    updated_at: datetime


def _aware(dt: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes even for timezone columns; all ours are UTC."""
    if dt is not None and dt.tzinfo is None:
        return dt.replace(tzinfo=timezone.utc)
    return dt


class Repo:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def session(self) -> Session:
        return Session(self.engine)

    def experiments(self) -> list[ExperimentInfo]:
        with self.session() as s:
            exps = s.scalars(select(m.Experiment).order_by(m.Experiment.name)).all()
            out = []
            for e in exps:
                counts = dict(s.execute(select(m.Image.status, func.count()).where(m.Image.experiment_id == e.id)
                                        .group_by(m.Image.status)).all())
                qc_failed = s.scalar(select(func.count()).select_from(m.Image).where(
                    m.Image.experiment_id == e.id, m.Image.qc_passed.is_(False))) or 0
                last = s.scalar(select(func.max(m.Image.discovered_at)).where(m.Image.experiment_id == e.id))
                plates = tuple(s.scalars(select(m.Plate.name).where(m.Plate.experiment_id == e.id)
                                         .order_by(m.Plate.name)).all())
                out.append(ExperimentInfo(e.id, e.name, e.watch_path, _aware(e.induction_time), sum(counts.values()),
                                          counts.get(QueueState.DONE, 0), qc_failed, counts.get(QueueState.QUARANTINED, 0),
                                          _aware(last), plates))
            return out

    def experiment_id(self, name: str) -> int | None:
        with self.session() as s:
            return s.scalar(select(m.Experiment.id).where(m.Experiment.name == name))

    def queue_counts(self) -> dict[str, int]:
        with self.session() as s:
            return dict(s.execute(select(m.Image.status, func.count()).group_by(m.Image.status)).all())

    def errors(self, limit: int = 20) -> list[ImageError]:
        with self.session() as s:
            rows = s.execute(select(m.Image.id, m.Image.path, m.Image.status, m.Image.error, m.Image.updated_at)
                             .where(m.Image.status.in_(PROBLEMS))
                             .order_by(m.Image.updated_at.desc(), m.Image.id.desc()).limit(limit)).all()
            return [ImageError(r.id, r.path, r.status, r.error or "", _aware(r.updated_at)) for r in rows]

    def events(self, limit: int = 50, since_id: int = 0) -> list[EventInfo]:
        with self.session() as s:
            rows = s.scalars(select(m.Event).where(m.Event.id > since_id).order_by(m.Event.id.desc()).limit(limit)).all()
            return [EventInfo(e.id, _aware(e.at), e.kind, e.level, e.message, e.path) for e in rows]

    def daemons(self, limit: int = 5) -> list[DaemonInfo]:
        with self.session() as s:
            rows = s.scalars(select(m.DaemonStatus).order_by(m.DaemonStatus.heartbeat_at.desc()).limit(limit)).all()
            return [DaemonInfo(d.id, d.host, d.pid, _aware(d.started_at), _aware(d.heartbeat_at), d.state, d.engine,
                               d.model_version, d.watched or [], d.images_per_s) for d in rows]

    def scored_since(self, seconds: float) -> int:
        since = datetime.now(timezone.utc).timestamp() - seconds
        with self.session() as s:
            n = s.scalar(select(func.count()).select_from(m.Image).where(
                m.Image.scored_at >= datetime.fromtimestamp(since, timezone.utc)))
            return n or 0

    def model_versions_used(self, experiment_id: int) -> list[str]:
        with self.session() as s:
            return list(s.scalars(
                select(m.WellReadout.model_version).join(m.Plate, m.Plate.id == m.WellReadout.plate_id)
                .where(m.Plate.experiment_id == experiment_id).distinct()).all())

    def readouts(self, experiment_id: int, model_version: str | None = None) -> Iterator[WellReadout]:
        with self.session() as s:
            exp = s.get(m.Experiment, experiment_id)
            q = (select(m.WellReadout, m.Well, m.Plate)
                 .join(m.Well, m.Well.id == m.WellReadout.well_id)
                 .join(m.Plate, m.Plate.id == m.WellReadout.plate_id)
                 .where(m.Plate.experiment_id == experiment_id)
                 .order_by(m.Plate.name, m.Well.row, m.Well.col, m.WellReadout.time_key))
            if model_version is not None:
                q = q.where(m.WellReadout.model_version == model_version)
            for ro, w, p in s.execute(q):
                yield WellReadout(
                    experiment=exp.name, plate=p.name, well=w.name, row=w.row, col=w.col, condition=w.condition,
                    timepoint=ro.time_key, elapsed_h=ro.elapsed_h, acquired_at=_aware(ro.acquired_at),
                    model_version=ro.model_version, classes=tuple(ro.classes), prob_mean=tuple(ro.prob_mean),
                    prob_sd=tuple(ro.prob_sd), fraction=tuple(ro.fraction), n_images=ro.n_images,
                    n_tiles=ro.n_tiles, n_qc_failed=ro.n_qc_failed, confidence=ro.confidence,
                )

    def well_attributes(self, experiment_id: int) -> dict[tuple[str, str], dict[str, str]]:
        """(plate, well) -> the plate map's extra columns (dose, cell line, ...) stored with the well."""
        with self.session() as s:
            rows = s.execute(select(m.Plate.name, m.Well.name, m.Well.attributes)
                             .join(m.Well, m.Well.plate_id == m.Plate.id)
                             .where(m.Plate.experiment_id == experiment_id)).all()
            return {(p, w): {str(k): "" if v is None else str(v) for k, v in (a or {}).items()}
                    for p, w, a in rows}

    def images(self, experiment_id: int) -> Iterator[tuple[ImageRecord, list[dict]]]:
        """Images with their predictions (all model versions), for the per-image report."""
        with self.session() as s:
            exp = s.get(m.Experiment, experiment_id)
            q = (select(m.Image, m.Well, m.Plate)
                 .outerjoin(m.Well, m.Well.id == m.Image.well_id)
                 .outerjoin(m.Plate, m.Plate.id == m.Well.plate_id)
                 .where(m.Image.experiment_id == experiment_id).order_by(m.Image.id))
            rows = s.execute(q).all()
            preds: dict[int, list[dict]] = {}
            for p in s.scalars(select(m.Prediction).join(m.Image).where(m.Image.experiment_id == experiment_id)):
                preds.setdefault(p.image_id, []).append({
                    "model_version": p.model_version, "classes": p.classes, "prob_mean": p.prob_mean,
                    "prob_sd": p.prob_sd, "fraction": p.fraction, "n_tiles": p.n_tiles, "confidence": p.confidence,
                    "engine": p.engine,
                })
            for img, w, p in rows:
                yield ImageRecord(
                    id=img.id, experiment=exp.name, path=img.path, status=img.status, error=img.error,
                    plate=p.name if p else None, well=w.name if w else None, field=img.field, channel=img.channel,
                    z=img.z, timepoint=img.timepoint, elapsed_h=img.elapsed_h, acquired_at=_aware(img.acquired_at),
                    size=img.size, mtime=img.mtime, content_hash=img.content_hash,
                    qc=dict(img.qc or {}, passed=img.qc_passed), attempts=img.attempts, rewritten=img.rewritten,
                ), preds.get(img.id, [])

    def prediction_counts(self) -> dict[tuple[str, str], int]:
        """(path, model_version) -> number of prediction rows: must never exceed 1."""
        with self.session() as s:
            rows = s.execute(select(m.Image.path, m.Prediction.model_version, func.count())
                             .join(m.Prediction, m.Prediction.image_id == m.Image.id)
                             .group_by(m.Image.path, m.Prediction.model_version)).all()
            return {(p, v): n for p, v, n in rows}
