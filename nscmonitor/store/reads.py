"""The store's read model: what the command line, the exports and reports and the
dashboard read, as frozen dataclasses or plain values, never ORM rows.

``Repo`` reads records (experiments, the queue, errors, daemons, readouts, images);
``plate_reads`` reads one plate's readouts as numpy columns for the dashboard's plate view,
where one object per row would be too slow. Both share the dataclasses defined here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import Engine, case, func, or_, select, text, tuple_
from sqlalchemy.orm import Session

from nscmonitor.core.domain import OUT_OF_FOCUS, ImageRecord, WellReadout
from nscmonitor.core.names import from_db, shown
from nscmonitor.core.queue import PROBLEMS, QueueState
from nscmonitor.core.scans import acquisition_and_scan
from nscmonitor.store import models as m
from nscmonitor.store.times import aware, from_sql


@dataclass(frozen=True)
class PlateInfo:
    id: int
    name: str
    plate_format: int
    n_wells: int


@dataclass(frozen=True)
class ExperimentOverview:
    id: int
    name: str
    watch_path: str | None
    n_images: int
    n_done: int
    n_qc_failed: int
    n_quarantined: int
    n_pending: int
    last_image_at: datetime | None
    plates: tuple[PlateInfo, ...]




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


def overview(engine: Engine) -> list[ExperimentOverview]:
    """Every experiment with its image counts and plates, in three queries whatever their number."""
    with engine.connect() as c:
        exps = c.execute(text("SELECT id, name, watch_path FROM experiments ORDER BY name")).all()
        counts = {r[0]: r[1:] for r in c.execute(text(
            # CASE, not SUM(condition): PostgreSQL does not sum booleans
            "SELECT experiment_id, COUNT(*), SUM(CASE WHEN status = :done THEN 1 ELSE 0 END),"
            " SUM(CASE WHEN NOT qc_passed THEN 1 ELSE 0 END), SUM(CASE WHEN status = :quarantined THEN 1 ELSE 0 END),"
            " SUM(CASE WHEN status IN (:pending, :processing, :failed) THEN 1 ELSE 0 END), MAX(discovered_at)"
            " FROM images GROUP BY experiment_id"), {s.name.lower(): s.value for s in QueueState})}
        plates: dict[int, list[PlateInfo]] = {}
        for r in c.execute(text(
                "SELECT p.experiment_id, p.id, p.name, p.plate_format, COUNT(w.id) FROM plates p"
                " LEFT JOIN wells w ON w.plate_id = p.id GROUP BY p.id ORDER BY p.name")):
            plates.setdefault(r[0], []).append(PlateInfo(r[1], r[2], r[3] or 96, r[4]))
    out = []
    for eid, name, watch in exps:
        n, done, qcf, quar, pend, last = counts.get(eid, (0, 0, 0, 0, 0, None))
        out.append(ExperimentOverview(eid, name, watch, int(n or 0), int(done or 0), int(qcf or 0), int(quar or 0),
                                      int(pend or 0), from_sql(last), tuple(plates.get(eid, ()))))
    return out


def first_plate(engine: Engine, experiment: str | None) -> tuple[ExperimentOverview, PlateInfo] | None:
    """The plate to open first, without the image counts: a cheap query, so the plate's load
    starts while the (slower) overview is still counting images."""
    q = ("SELECT e.id, e.name, e.watch_path, p.id, p.name, p.plate_format FROM experiments e"
         " JOIN plates p ON p.experiment_id = e.id" + (" WHERE e.name = :n" if experiment else "")
         + " ORDER BY e.name, p.name LIMIT 1")
    with engine.connect() as c:
        r = c.execute(text(q), {"n": experiment} if experiment else {}).first()
    if r is None:
        return None
    plate = PlateInfo(r[3], r[4], r[5] or 96, 0)
    return ExperimentOverview(r[0], r[1], r[2], 0, 0, 0, 0, 0, None, (plate,)), plate


def backlog_facts(engine: Engine, now: datetime) -> tuple[int, datetime | None, datetime | None]:
    """(images waiting now, oldest discovery among them, last scoring), for the stall check.
    'Waiting' excludes failed images whose retry is not due yet: back-off is not a stall."""
    due = or_(m.Image.status.in_((QueueState.PENDING, QueueState.PROCESSING)),
              (m.Image.status == QueueState.FAILED) & (m.Image.next_attempt_at <= now.timestamp()))
    with engine.connect() as c:
        n, oldest = c.execute(select(func.count(), func.min(m.Image.discovered_at)).where(due)).one()
        last = c.scalar(select(func.max(m.Image.scored_at)))
    return int(n or 0), aware(oldest), aware(last)


def last_heartbeat(engine: Engine, pid: int, host: str) -> datetime | None:
    """When the newest daemon row of this host and pid last beat; None before it wrote one."""
    with engine.connect() as conn:
        return aware(conn.scalar(select(m.DaemonStatus.heartbeat_at).where(
            m.DaemonStatus.pid == pid, m.DaemonStatus.host == host).order_by(m.DaemonStatus.id.desc()).limit(1)))


@dataclass(frozen=True)
class Outcomes:
    """What became of an experiment's newest images (``Repo.recent_outcomes``)."""

    scored: int  # scored with QC passed
    qc_failed: int
    skipped: int
    skip_reason: str | None  # the newest
    qc_reason: str | None  # the newest
    channels: tuple[str, ...]  # of its scored images, sorted
    #: z planes of its scored images, sorted, -1 for images whose name gives none (a projection)
    planes: tuple[int, ...] = ()
    #: scored images with no time key (no scan index, no hours): they give no readout
    untimed: int = 0
    #: newest scored images whose well, field, channel, plane and time point another scored
    #: image has too (two reads of a plate under one time point), and one such pair's paths
    repeated: int = 0
    repeated_example: tuple[str, str] | None = None
    #: of ``qc_failed``: frames that failed as out of focus against their field's nearest scans
    out_of_focus: int = 0


def _repeated_positions(s: Session, scored: list) -> list[tuple[object, tuple[str, str]]]:
    """Of the newest scored images (rows with well, time key, field, channel, z, path, id), those
    another scored image shares all five with, each with the pair's paths (shown form): a bounded
    read of the stored images of their wells and time points."""
    pairs = sorted({(r.well_id, r.time_key) for r in scored if r.well_id is not None and r.time_key is not None})
    if not pairs:
        return []
    by_place: dict[tuple, list[tuple[int, str]]] = {}
    for i in range(0, len(pairs), 500):
        for r in s.execute(select(m.Image.id, m.Image.path, m.Image.well_id, m.Image.time_key, m.Image.field,
                                  m.Image.channel, m.Image.z)
                           .where(tuple_(m.Image.well_id, m.Image.time_key).in_(pairs[i:i + 500]),
                                  m.Image.status == QueueState.DONE)):
            by_place.setdefault((r.well_id, r.time_key, r.field, r.channel, r.z), []).append((r.id, r.path))
    out = []
    for r in scored:
        same = by_place.get((r.well_id, r.time_key, r.field, r.channel, r.z), [])
        other = next((p for i, p in same if i != r.id), None)
        if other is not None:
            out.append((r, (shown(from_db(r.path)), shown(from_db(other)))))
    return out


class Repo:
    """Record-shaped reads of one database, for the command line, the exports and reports and
    the dashboard's status panel."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _session(self) -> Session:
        return Session(self.engine)

    def experiments(self) -> list[ExperimentOverview]:
        return overview(self.engine)

    def experiment_id(self, name: str) -> int | None:
        with self._session() as s:
            return s.scalar(select(m.Experiment.id).where(m.Experiment.name == name))

    def queue_counts(self) -> dict[str, int]:
        with self._session() as s:
            return dict(s.execute(select(m.Image.status, func.count()).group_by(m.Image.status)).all())

    def errors(self, limit: int = 20) -> list[ImageError]:
        with self._session() as s:
            rows = s.execute(select(m.Image.id, m.Image.path, m.Image.status, m.Image.error, m.Image.updated_at)
                             .where(m.Image.status.in_(PROBLEMS))
                             .order_by(m.Image.updated_at.desc(), m.Image.id.desc()).limit(limit)).all()
            return [ImageError(r.id, r.path, r.status, r.error or "", aware(r.updated_at)) for r in rows]

    def events(self, limit: int = 50, since_id: int = 0) -> list[EventInfo]:
        with self._session() as s:
            rows = s.scalars(select(m.Event).where(m.Event.id > since_id).order_by(m.Event.id.desc()).limit(limit)).all()
            return [EventInfo(e.id, aware(e.at), e.kind, e.level, e.message, e.path) for e in rows]

    def recent_outcomes(self, limit: int = 500) -> dict[str, Outcomes]:
        """Experiment name -> what became of its images among the newest ``limit`` that were
        scored or skipped (by key: a bounded read)."""
        states = (QueueState.DONE.value, QueueState.SKIPPED.value)
        with self._session() as s:
            newest = (select(m.Image.id, m.Image.experiment_id, m.Image.status, m.Image.error, m.Image.qc_passed,
                             m.Image.qc, m.Image.channel, m.Image.z, m.Image.time_key, m.Image.well_id,
                             m.Image.field, m.Image.path)
                      .where(m.Image.status.in_(states)).order_by(m.Image.id.desc()).limit(limit).subquery())
            rows = s.execute(select(m.Experiment.name, newest.c.status, newest.c.error, newest.c.qc_passed,
                                    newest.c.qc, newest.c.channel, newest.c.z, newest.c.time_key, newest.c.well_id,
                                    newest.c.field, newest.c.path, newest.c.id)
                             .join(m.Experiment, m.Experiment.id == newest.c.experiment_id)
                             .order_by(newest.c.id.desc())).all()
            repeats = _repeated_positions(s, [r for r in rows if r.status == QueueState.DONE.value])
        # scored, QC failed, skipped, newest skip reason, newest QC reason, channels, planes, untimed,
        # out of focus
        counts: dict[str, list] = {}
        for name, status, error, qc_passed, qc, channel, z, tkey, *_ in rows:
            c = counts.setdefault(name, [0, 0, 0, None, None, set(), set(), 0, 0])
            if status != QueueState.DONE.value:
                c[2] += 1
                c[3] = c[3] or error
                continue
            if channel is not None:
                c[5].add(channel)
            c[6].add(-1 if z is None else z)
            c[7] += tkey is None
            if qc_passed is False:
                reason = qc.get("reason") if isinstance(qc, dict) else None
                c[1] += 1
                c[4] = c[4] or reason
                c[8] += isinstance(reason, str) and reason.startswith(OUT_OF_FOCUS)
            else:
                c[0] += 1
        out = {}
        for name, c in counts.items():
            mine = [pair for r, pair in repeats if r.name == name]
            out[name] = Outcomes(*c[:5], tuple(sorted(c[5])), tuple(sorted(c[6])), c[7], len(mine),
                                 mine[0] if mine else None, c[8])
        return out

    def last_event_of(self, kinds: tuple[str, ...]) -> EventInfo | None:
        """The newest event of one of ``kinds``, or None."""
        with self._session() as s:
            e = s.scalars(select(m.Event).where(m.Event.kind.in_(kinds)).order_by(m.Event.id.desc()).limit(1)).first()
            return None if e is None else EventInfo(e.id, aware(e.at), e.kind, e.level, e.message, e.path)

    def daemons(self, limit: int = 5) -> list[DaemonInfo]:
        with self._session() as s:
            rows = s.scalars(select(m.DaemonStatus).order_by(m.DaemonStatus.heartbeat_at.desc()).limit(limit)).all()
            return [DaemonInfo(d.id, d.host, d.pid, aware(d.started_at), aware(d.heartbeat_at), d.state, d.engine,
                               d.model_version, d.watched or [], d.images_per_s) for d in rows]

    def scored_since(self, seconds: float) -> int:
        since = datetime.now(timezone.utc).timestamp() - seconds
        with self._session() as s:
            n = s.scalar(select(func.count()).select_from(m.Image).where(
                m.Image.scored_at >= datetime.fromtimestamp(since, timezone.utc)))
            return n or 0

    def recent_ood(self, limit: int = 200) -> tuple[int, int]:
        """(flagged, judged): of the newest ``limit`` predictions, how many carry an
        out-of-distribution flag (a model without the score gives none) and how many of those
        are flagged. The newest by primary key, whatever their flag, so the daemon's heartbeat
        reads ``limit`` rows, never the whole table."""
        with self._session() as s:
            newest = (select(m.Prediction.ood, m.Prediction.image_id).order_by(m.Prediction.id.desc())
                      .limit(limit).subquery())
            # an image set aside since (its channel or plane no longer scored) keeps its
            # prediction but no longer counts, as in the readouts
            judged, flagged = s.execute(select(func.count(newest.c.ood),
                                               func.sum(case((newest.c.ood.is_(True), 1), else_=0)))
                                        .select_from(newest).join(m.Image, m.Image.id == newest.c.image_id)
                                        .where(m.Image.status != QueueState.SKIPPED.value)).one()
            return int(flagged or 0), int(judged or 0)

    def model_versions_used(self, experiment_id: int) -> list[str]:
        with self._session() as s:
            return list(s.scalars(
                select(m.WellReadout.model_version).join(m.Plate, m.Plate.id == m.WellReadout.plate_id)
                .where(m.Plate.experiment_id == experiment_id).distinct()).all())

    def readouts(self, experiment_id: int, model_version: str | None = None) -> Iterator[WellReadout]:
        with self._session() as s:
            exp = s.get(m.Experiment, experiment_id)
            q = (select(m.WellReadout, m.Well, m.Plate)
                 .join(m.Well, m.Well.id == m.WellReadout.well_id)
                 .join(m.Plate, m.Plate.id == m.WellReadout.plate_id)
                 .where(m.Plate.experiment_id == experiment_id)
                 .order_by(m.Plate.name, m.Well.row, m.Well.col, m.WellReadout.time_key))
            if model_version is not None:
                q = q.where(m.WellReadout.model_version == model_version)
            counted = set(s.scalars(select(m.Acquisition.plate_id).join(m.Plate, m.Plate.id == m.Acquisition.plate_id)
                                    .where(m.Plate.experiment_id == experiment_id)))
            for ro, w, p in s.execute(q):
                acq = acquisition_and_scan(ro.time_key) if p.id in counted and ro.time_key is not None else (None, None)
                yield WellReadout(
                    experiment=exp.name, plate=p.name, well=w.name, row=w.row, col=w.col, condition=w.condition,
                    timepoint=ro.time_key, elapsed_h=ro.elapsed_h, acquired_at=aware(ro.acquired_at),
                    model_version=ro.model_version, classes=tuple(ro.classes), prob_mean=tuple(ro.prob_mean),
                    prob_sd=tuple(ro.prob_sd), fraction=tuple(ro.fraction), n_images=ro.n_images,
                    n_tiles=ro.n_tiles, n_qc_failed=ro.n_qc_failed, confidence=ro.confidence, n_ood=ro.n_ood,
                    acquisition=acq[0], scan=acq[1],
                )

    def well_attributes(self, experiment_id: int) -> dict[tuple[str, str], dict[str, str]]:
        """(plate, well) -> the plate map's extra columns (dose, cell line, ...) stored with the well."""
        with self._session() as s:
            rows = s.execute(select(m.Plate.name, m.Well.name, m.Well.attributes)
                             .join(m.Well, m.Well.plate_id == m.Plate.id)
                             .where(m.Plate.experiment_id == experiment_id)).all()
            return {(p, w): {str(k): "" if v is None else str(v) for k, v in (a or {}).items()}
                    for p, w, a in rows}

    def images(self, experiment_id: int) -> Iterator[tuple[ImageRecord, list[dict]]]:
        """Images with their predictions (all model versions), for the per-image report."""
        with self._session() as s:
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
                    "engine": p.engine, "ood_score": p.ood_score, "ood": p.ood,
                })
            for img, w, p in rows:
                yield ImageRecord(
                    id=img.id, experiment=exp.name, path=img.path, status=img.status, error=img.error,
                    plate=p.name if p else None, well=w.name if w else None, field=img.field, channel=img.channel,
                    z=img.z, timepoint=img.timepoint, elapsed_h=img.elapsed_h, acquired_at=aware(img.acquired_at),
                    size=img.size, mtime=img.mtime, content_hash=img.content_hash,
                    qc=dict(img.qc or {}, passed=img.qc_passed), attempts=img.attempts, rewritten=img.rewritten,
                ), preds.get(img.id, [])

    def prediction_counts(self) -> dict[tuple[str, str], int]:
        """(path, model_version) -> number of prediction rows: must never exceed 1."""
        with self._session() as s:
            rows = s.execute(select(m.Image.path, m.Prediction.model_version, func.count())
                             .join(m.Prediction, m.Prediction.image_id == m.Image.id)
                             .group_by(m.Image.path, m.Prediction.model_version)).all()
            return {(p, v): n for p, v, n in rows}
