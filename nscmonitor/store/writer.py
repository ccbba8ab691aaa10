"""The daemon's single writer. All inserts and updates of the ingest flow go through one
``Writer`` owned by the runner thread: SQLite allows one writer, and one owner makes the
order of state changes obvious. Its claim side (claim, release, fail, unchanged, leases) is
``store.claims``."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import Engine, bindparam, delete, insert, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from nscmonitor.core.domain import ImageKey, QCMetrics
from nscmonitor.core.names import MARK, clean, from_db, to_db
from nscmonitor.core.aggregate import ImageScore
from nscmonitor.core.calibration import WellCalibration
from nscmonitor.core.queue import PROBLEMS, QueueState
from nscmonitor.core.scans import MAX_READ_MIN, SCAN_GAP_MIN, Placed, acquisition_time_key, scan_keys, time_source
from nscmonitor.readers.formats import REF_SEP
from nscmonitor.store import models as m
from nscmonitor.store.selection_rule import SelectionApplied, apply_selection
from nscmonitor.store.claims import Claimed as Claimed, Claims  # Claimed: what the scorer gets back
from nscmonitor.store.events import add_event, record_event
from nscmonitor.store.focus_series import FieldSeries, LateVerdict as LateVerdict, field_series, store_late_verdicts
from nscmonitor.store.leases import DEFAULT_LEASE_S, is_shared, new_owner
from nscmonitor.store.places import ensure_experiment, ensure_well, ensure_wells, insert_missing
from nscmonitor.store.readouts import recompute_for_images, recompute_readouts

from nscmonitor.store.times import aware, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Discovered:
    """A ready file, parsed, about to enter the queue."""

    path: str
    relpath: str
    size: int
    mtime: float
    experiment_id: int
    profile: str | None
    key: ImageKey | None
    plate: str | None
    plate_format: int
    elapsed_h: float | None
    acquired_at: datetime | None
    condition: str | None = None
    #: the plate map's other columns for this well (dose, cell line, ...), exported beside it
    attributes: dict[str, str] | None = None
    error: str | None = None  # set for names that cannot be placed: quarantined at once
    skip_reason: str | None = None  # e.g. a channel that is not scored


@dataclass(frozen=True)
class Scored:
    image_id: int
    content_hash: str
    qc: QCMetrics
    width: int
    height: int
    score: ImageScore | None  # None when QC left no tiles to score (blank frame)
    tiles_blob: bytes | None
    model_version: str
    classes: tuple[str, ...]
    engine: str
    #: decided by the scorer from the claim (``Claimed.previous_hash``, ``Claimed.scored``) and
    #: the decoded bytes, once: the content differs from what this image was scored from, so
    #: its earlier predictions are void. Not rewritten and reaching ``complete`` means no
    #: prediction by this model exists yet (an unchanged, scored image never gets here).
    rewritten: bool = False
    #: mean tile out-of-distribution score and whether it passed the model's threshold; None
    #: when the model has no such score (the flag is unavailable)
    ood_score: float | None = None
    ood: bool | None = None
    #: the serving model's well calibration, applied to the well readouts it recomputes
    well_calibration: WellCalibration | None = None
    #: when the file's own metadata says the image was taken (``readers.decode.acquisition_time``)
    acquired_at: datetime | None = None


#: why the row of a file read whole before is set aside once the images inside it are queued
EXPANDED = "the file now opens as several images (time points, positions or scenes), each scored on its own"

#: a file's stated acquisition time replaces its mtime only this far from it: beyond any time
#: zone difference between the instrument PC and this machine (at most 14 h)
COPIED_AFTER_S = 15 * 3600.0


def _scan_keyed(s: Session, plate_id: int) -> bool:
    """Whether the plate holds images keyed by a scan index (stored before its acquisitions
    were told apart, when it has no acquisition rows yet)."""
    return s.execute(select(m.Image.id).join(m.Well, m.Well.id == m.Image.well_id)
                     .where(m.Well.plate_id == plate_id, m.Image.timepoint.is_not(None),
                            m.Image.time_key.is_not(None)).limit(1)).first() is not None


def _stored_before(s: Session, plate_id: int, names: list[str]) -> str | None:
    """Of a plate's first acquisitions met, the one whose images were stored before
    acquisitions were told apart (its folder is in their paths): it keeps ordinal 0, so a
    measurement running across the upgrade goes on with its keys."""
    for name in names:
        folder = name.split(" timeline ")[0]
        if folder and s.execute(select(m.Image.id).join(m.Well, m.Well.id == m.Image.well_id)
                                .where(m.Well.plate_id == plate_id, m.Image.timepoint.is_not(None),
                                       m.Image.relpath.contains(folder, autoescape=True)).limit(1)).first():
            return name
    return None


def _natural(name: str) -> list:
    """Sort key that orders the numbers in names by value (acquisition 84 before 1697)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def time_key(key: ImageKey | None, elapsed_h: float | None) -> int | None:
    """Images of one scan share a key: the scan index when the name has one, else elapsed
    minutes (Incucyte names carry the scan's time stamp). An image timed by its file's clock
    gets its minute here and its plate read's key from ``Writer._key_clock_timed``."""
    if key is not None and key.timepoint is not None:
        return key.timepoint
    if elapsed_h is not None:
        return int(round(elapsed_h * 60))
    return None


def _before_expansion(ref: str) -> tuple[str, ...]:
    """The stored paths a container image's reference replaces: the whole file, and for a
    time point the same position or scene without it (``F|position=2,t=5`` -> ``F``,
    ``F|position=2``)."""
    path, _, spec = ref.rpartition(REF_SEP)
    parts = spec.split(",")
    kept = [p for p in parts if not p.startswith("t=")]
    if len(kept) == len(parts) or not kept:
        return (path,)
    return path, path + REF_SEP + ",".join(kept)


class Writer(Claims):
    def __init__(self, engine: Engine, *, lease_s: float = DEFAULT_LEASE_S, owner: str | None = None) -> None:
        """``owner``: this daemon's name on the images it claims (``leases.new_owner``);
        ``lease_s``: how long a claim holds without renewal (``store.leases``)."""
        self.engine = engine
        self.owner = owner or new_owner()
        self.lease_s = lease_s
        self.shared = is_shared(engine)
        self.Session = sessionmaker(engine, expire_on_commit=False)
        self._wells: dict[tuple[int, str, str], tuple[int, int]] = {}
        self._acquisitions: dict[tuple[int, str], int] = {}  # (plate id, acquisition) -> ordinal

    # --- experiments, plates, wells -------------------------------------------------
    def ensure_experiment(self, name: str, *, watch_path: str | None = None,
                          induction_time: datetime | None = None) -> int:
        with self.Session.begin() as s:
            return ensure_experiment(s, clean(name), watch_path=to_db(watch_path) if watch_path is not None else None,
                                     induction_time=induction_time)

    def _ensure_well(self, s: Session, experiment_id: int, plate: str, plate_format: int, key: ImageKey,
                     condition: str | None, attributes: dict[str, str] | None = None) -> tuple[int, int]:
        cache_key = (experiment_id, plate, key.well)
        hit = self._wells.get(cache_key)
        if hit is None:
            hit = self._wells[cache_key] = ensure_well(s, experiment_id, plate, plate_format, key, condition,
                                                       attributes)
        return hit

    def _ensure_wells(self, files: list[Discovered]) -> None:
        """The plates and wells of a batch this writer has not met yet, created in a short
        transaction of their own, in key order: another daemon meeting the same wells waits
        for it briefly instead of failing on the unique constraint or deadlocking, and the
        cached ids are of committed rows even when the batch's own transaction fails."""
        new = {}
        for f in files:
            if f.key is not None and f.error is None:
                new.setdefault((f.experiment_id, f.plate or "plate", f.key.well), f)
        todo = sorted(k for k in new if k not in self._wells)
        if not todo:
            return
        with self.Session.begin() as s:
            self._wells.update(ensure_wells(s, [(k[0], k[1], new[k].plate_format, new[k].key, new[k].condition,
                                                 new[k].attributes) for k in todo]))

    def _ensure_acquisitions(self, files: list[Discovered]) -> None:
        """The ordinals of the batch's acquisitions this writer has not met yet: a plate's new
        acquisitions get the next ordinals, in name order (the vendors' acquisition names sort
        by when they were taken), in a short transaction of their own as wells do. Another
        daemon's ordinal for the same acquisition wins (the row is read back)."""
        new: dict[int, set[str]] = {}
        for f in files:
            k = f.key
            if k is not None and f.error is None and k.acquisition and k.timepoint is not None:
                plate_id = self._wells[(f.experiment_id, f.plate or "plate", k.well)][0]
                if (plate_id, k.acquisition) not in self._acquisitions:
                    new.setdefault(plate_id, set()).add(k.acquisition)
        if not new:
            return
        acq = m.Acquisition
        with self.Session.begin() as s:
            for plate_id, names in sorted(new.items()):
                known = dict(s.execute(select(acq.name, acq.ordinal).where(acq.plate_id == plate_id)).all())
                todo = sorted(names - set(known), key=_natural)
                ordinal = max(known.values(), default=-1) + 1
                first = _stored_before(s, plate_id, todo) if not known else None
                if first is not None:  # keys stored before acquisitions were told apart are the first's
                    todo = [first] + [n for n in todo if n != first]
                elif not known and _scan_keyed(s, plate_id):
                    ordinal = 1  # ... and belong to none of these: they keep ordinal 0's keys to themselves
                rows = []
                for name in todo:
                    rows.append({"plate_id": plate_id, "name": name, "ordinal": ordinal, "first_seen": utcnow()})
                    ordinal += 1
                insert_missing(s, acq.__table__, ("plate_id", "name"), rows)
                self._acquisitions.update(
                    ((plate_id, n), o) for n, o in s.execute(select(acq.name, acq.ordinal)
                                                             .where(acq.plate_id == plate_id)).all())

    # --- the queue ------------------------------------------------------------------
    def known_files(self, roots: Iterable[str] | None = None) -> dict[str, tuple[int, float]]:
        """Path -> (size, mtime) of the stored images, for the record of known files; with
        ``roots``, only those below the folders this daemon watches: a database that has kept
        a year of finished experiments would otherwise fill the daemon's memory with their
        paths at every start (a million images: 1.6 s and 325 MiB). Paths stored escaped (not
        valid UTF-8) are always read, as their stored form does not begin with the folder's."""
        query = select(m.Image.path, m.Image.size, m.Image.mtime)
        if roots is not None:
            prefixes = [to_db(str(r).rstrip("/\\")) + os.sep for r in roots]
            query = query.where(or_(m.Image.path.startswith(MARK),
                                    *(m.Image.path.startswith(p, autoescape=True) for p in prefixes)))
        with self.Session() as s:
            return {from_db(p): (sz, mt) for p, sz, mt in s.execute(query)}

    def enqueue(self, files: Iterable[Discovered]) -> tuple[int, int]:
        """Insert new files; re-queue known ones whose size or mtime changed (the hash
        decides later whether the content really changed). Returns (new, changed).

        Paths go in in their stored form (``names.to_db``) and every other text through
        ``names.clean``: a name that is not valid UTF-8 is kept, never allowed to fail the
        insert for the whole batch."""
        now = utcnow()
        latest = {f.path: f for f in map(_storable, files)}  # a path twice in one batch: its latest state
        files = list(latest.values())
        self._ensure_wells(files)
        self._ensure_acquisitions(files)
        with self.Session.begin() as s:
            known = {}
            for start in range(0, len(files), 500):
                known.update((r.path, r) for r in s.execute(
                    select(m.Image.id, m.Image.path, m.Image.size, m.Image.mtime)
                    .where(m.Image.path.in_([f.path for f in files[start:start + 500]]))))
            queued = [(f, known.get(f.path)) for f in files]
            queued = [(f, row) for f, row in queued
                      if row is None or row.size != f.size or row.mtime != f.mtime]
            fields = [self._queue_fields(f, now) for f, _ in queued]
            self._key_clock_timed(s, [f for f, _ in queued], fields)
            added, changed = [], []
            for (f, row), fs in zip(queued, fields):
                if row is None:
                    added.append({"experiment_id": f.experiment_id, "path": f.path, "relpath": f.relpath,
                                  "discovered_at": now, **fs})
                else:
                    changed.append({"b_id": row.id, **{f"b_{k}": v for k, v in fs.items()}})
                if f.error:
                    add_event(s, "quarantined", f.error, level="warning", path=f.path, at=now)
            if added:
                s.execute(insert(m.Image.__table__), added)
            if changed:
                images = m.Image.__table__
                s.execute(update(images).where(images.c.id == bindparam("b_id"))
                          .values(**{k[2:]: bindparam(k) for k in changed[0] if k != "b_id"}), changed)
            self._retire_expanded(s, [f.path for f in files], now)
        return len(added), len(changed)

    def _retire_expanded(self, s: Session, paths: list[str], now: datetime) -> None:
        """A file queued as one image before it could be opened as a container (an ND2 whose
        directory was not written after several looks; an OME-TIFF time series whose OME-XML
        Micro-Manager writes when the acquisition ends) that now arrives as the images inside
        it (``FILE|unit``): its own row is set aside with the reason and taken out of its
        readouts, so no plane counts twice. So is a position or scene stored before its time
        points were images of their own (``FILE|position=2``, scored at its first time point
        by versions before 2026-12-05) once ``FILE|position=2,t=0`` arrives."""
        containers = sorted({legacy for p in paths if REF_SEP in p for legacy in _before_expansion(p)} - set(paths))
        if not containers:
            return
        img = m.Image
        rows = []
        for i in range(0, len(containers), 500):
            rows += s.execute(select(img.id, img.path, img.status, img.well_id, img.time_key)
                              .where(img.path.in_(containers[i:i + 500]), img.status != QueueState.SKIPPED)).all()
        if not rows:
            return
        s.execute(update(img).where(img.id.in_([r.id for r in rows])).values(
            status=QueueState.SKIPPED, error=EXPANDED, updated_at=now, lease_owner=None, lease_expires_at=None))
        recompute_for_images(s, rows, now, {}, counted=(QueueState.DONE, QueueState.RESCORE, QueueState.PROCESSING))
        for r in rows:
            add_event(s, "expanded", EXPANDED, path=r.path, at=now)

    def apply_selection(self, experiment_id: int, root: str, channel: str | None, z: str = "all", *,
                        calibrations: dict[str, WellCalibration | None] | None = None,
                        served_version: str | None = None) -> SelectionApplied:
        """A folder's ``channel`` and ``z`` settings applied to the images already seen
        (``store.selection_rule``)."""
        return apply_selection(self.engine, experiment_id, root, channel, z, calibrations=calibrations,
                               served_version=served_version)

    def _queue_fields(self, f: Discovered, now: datetime) -> dict:
        """An image row's queue columns for a file entering (or re-entering) the queue."""
        well_id, key = None, time_key(f.key, f.elapsed_h)
        if f.key is not None and f.error is None:
            plate_id, well_id = self._wells[(f.experiment_id, f.plate or "plate", f.key.well)]
            if f.key.acquisition and f.key.timepoint is not None:
                key = acquisition_time_key(self._acquisitions[(plate_id, f.key.acquisition)], f.key.timepoint)
        status = (QueueState.QUARANTINED if f.error else QueueState.SKIPPED if f.skip_reason else QueueState.PENDING)
        return dict(
            size=f.size, mtime=f.mtime, status=status, error=f.error or f.skip_reason, attempts=0,
            next_attempt_at=0.0, profile=f.profile, well_id=well_id,
            field=f.key.field if f.key else None, channel=f.key.channel if f.key else None,
            z=f.key.z if f.key else None, timepoint=f.key.timepoint if f.key else None,
            time_key=key, elapsed_h=f.elapsed_h, acquired_at=f.acquired_at,
            updated_at=now,
        )

    def _key_clock_timed(self, s: Session, files: list[Discovered], fields: list[dict]) -> None:
        """Images whose name gives neither a scan index nor the time since the first scan,
        timed by a clock (the file's, or a wall-clock stamp in the name), keyed by the plate
        read they belong to (``core.scans``) instead of each by its own minute: the plate's
        images within the scan gap of the batch are read (the batch's own rows left out: a
        changed file is placed anew) and the keys in ``fields`` replaced. Images of one
        stamped scan (Incucyte) share a minute, so they keep sharing a key; two scans under
        one stamp (a run that loops over its time points) are told apart by position."""
        by_plate: dict[int, list[int]] = {}
        for i, f in enumerate(files):
            k = f.key
            if k is not None and f.error is None and f.elapsed_h is not None and time_source(k) != "index":
                by_plate.setdefault(self._wells[(f.experiment_id, f.plate or "plate", k.well)][0], []).append(i)
        if not by_plate:
            return
        paths = {f.path for f in files}
        img, well = m.Image, m.Well
        for plate_id, idx in by_plate.items():
            lo = min(fields[i]["elapsed_h"] for i in idx) - SCAN_GAP_MIN / 60
            hi = max(fields[i]["elapsed_h"] for i in idx) + SCAN_GAP_MIN / 60
            near = s.execute(
                select(img.path, img.elapsed_h, img.time_key, img.well_id, img.field, img.channel, img.z)
                .join(well, well.id == img.well_id)
                .where(well.plate_id == plate_id, img.timepoint.is_(None),
                       img.time_key.between(math.floor(lo * 60) - MAX_READ_MIN, math.ceil(hi * 60) + MAX_READ_MIN),
                       img.elapsed_h.between(lo, hi))).all()
            placed = [Placed(r.elapsed_h * 60, r.time_key, (r.well_id, r.field, r.channel, r.z))
                      for r in near if r.path not in paths]
            taken = set(s.scalars(select(img.time_key).distinct().join(well, well.id == img.well_id)
                                  .where(well.plate_id == plate_id, img.time_key >= math.floor(lo * 60))))
            new = [(fields[i]["elapsed_h"] * 60,
                    (fields[i]["well_id"], fields[i]["field"], fields[i]["channel"], fields[i]["z"])) for i in idx]
            for i, key in zip(idx, scan_keys(placed, new, taken=taken)):
                fields[i]["time_key"] = key

    def field_series(self, ids: Iterable[int], k: int) -> dict[int, FieldSeries]:
        """Each image's field over time, ``k`` scans either side, for the focus check
        (``store.focus_series``)."""
        return field_series(self.Session, ids, k)

    def store_late_verdicts(self, verdicts: Iterable[LateVerdict],
                            calibrations: dict[str, WellCalibration | None]) -> int:
        """Focus verdicts of frames scored before their field had another scan, in one
        transaction with the readouts they change (``store.focus_series``)."""
        with self.Session.begin() as s:
            return store_late_verdicts(s, verdicts, utcnow(), calibrations)

    def requeue(self, ids: Iterable[int]) -> int:
        """Quarantined (or failed) images back to the queue with fresh attempts: the
        operator fixed the cause (``nscmonitor requeue``, the dashboard), or the file became
        readable again."""
        ids = list(ids)
        if not ids:
            return 0
        now = utcnow()
        n = 0
        with self.Session.begin() as s:
            for chunk in range(0, len(ids), 500):
                res = s.execute(update(m.Image).where(m.Image.id.in_(ids[chunk:chunk + 500]),
                                                      m.Image.status.in_(PROBLEMS))
                                .values(status=QueueState.PENDING, attempts=0, next_attempt_at=0.0, error=None,
                                        updated_at=now))
                n += res.rowcount or 0
            if n:
                add_event(s, "requeued", f"{n} image(s) back in the queue", at=now)
        return n

    def unreadable_quarantined(self) -> dict[int, str]:
        """Images quarantined because they could not be opened (permissions, a lock):
        id -> file-system path, so the runner can retry them once they can be read."""
        from nscmonitor.core.errors import UNREADABLE

        with self.Session() as s:
            rows = s.execute(select(m.Image.id, m.Image.path).where(
                m.Image.status == QueueState.QUARANTINED, m.Image.error.like(UNREADABLE + "%")))
            return {i: from_db(p) for i, p in rows}

    def complete(self, results: Iterable[Scored]) -> None:
        """Image rows, predictions and the well readouts they change: one transaction, so a
        crash leaves either all of them or none.

        Only images this writer still holds are stored (their rows are locked first, so a
        daemon reaping an expired lease waits, then finds them done); a result for an image
        whose lease was lost is dropped and logged, and a prediction is stored at most once
        per image and model version (the unique constraint holds it whatever the races).

        A batch costs a handful of statements whatever its size (each one a round trip to a
        PostgreSQL server): the rows locked and read by one, updated by one, the predictions
        inserted by one, the readouts of every (well, time) the batch touched recomputed by
        one read and one upsert (``store.readouts``)."""
        results = list(results)
        if not results:
            return
        now = utcnow()
        ids = sorted({r.image_id for r in results})
        with self.Session.begin() as s:
            rows = {row.id: row for row in s.execute(
                select(m.Image.id, m.Image.path, m.Image.status, m.Image.lease_owner, m.Image.rewritten,
                       m.Image.well_id, m.Image.time_key, m.Image.timepoint, m.Image.mtime, m.Image.acquired_at,
                       m.Image.elapsed_h, m.Image.experiment_id)
                .where(m.Image.id.in_(ids)).order_by(m.Image.id).with_for_update())}
            have = {(i, v) for i, v in s.execute(select(m.Prediction.image_id, m.Prediction.model_version)
                                                 .where(m.Prediction.image_id.in_(ids)))}
            stored = []
            for r in results:
                row = rows.pop(r.image_id, None)  # popped: a second result for one image is not stored twice
                if row is not None and self._holds(row, "storing its result"):
                    stored.append((row, r))
            if stored:
                self._store(s, stored, have, now)

    def _store(self, s: Session, stored: list[tuple], have: set[tuple[int, str]], now: datetime) -> None:
        """The held images of a batch (their locked rows and results) written: rows, new
        predictions (a rewritten file's old ones removed first), then the touched readouts."""
        rewritten = [row for row, r in stored if r.rewritten]
        if rewritten:
            s.execute(delete(m.Prediction).where(m.Prediction.image_id.in_([row.id for row in rewritten])))
            for row in rewritten:
                add_event(s, "rewritten", "file was rewritten with new content; scored again", level="warning",
                          path=row.path, at=now)
        images = m.Image.__table__
        s.execute(update(images).where(images.c.id == bindparam("b_id")).values(
            content_hash=bindparam("b_hash"), status=QueueState.DONE, error=None, qc=bindparam("b_qc"),
            qc_passed=bindparam("b_passed"), width=bindparam("b_width"), height=bindparam("b_height"),
            rewritten=bindparam("b_rewritten"), scored_at=now, updated_at=now, lease_owner=None,
            lease_expires_at=None),
            [{"b_id": row.id, "b_hash": r.content_hash, "b_qc": qc_record(r.qc), "b_passed": r.qc.passed,
              "b_width": r.width, "b_height": r.height, "b_rewritten": bool(r.rewritten or row.rewritten)}
             for row, r in stored])
        self._times_from_files(s, stored)
        new = [prediction_row(row.id, r, now) for row, r in stored
               if r.score is not None and (r.rewritten or (row.id, r.model_version) not in have)]
        if new:
            s.execute(insert(m.Prediction.__table__), new)
        touched = {(row.well_id, row.time_key, r.model_version) for row, r in stored
                   if row.well_id is not None and row.time_key is not None}
        if not touched:
            return
        wells = (select(m.Well.id, m.Well.plate_id).where(m.Well.id.in_({w for w, _, _ in touched}))
                 .order_by(m.Well.id))
        # daemons storing images of one well at once: each recomputes its readout after the
        # other committed (waiting here), so neither misses the other's images nor inserts
        # the readout row twice; in key order, so two batches never wait on each other
        plate_of = dict(s.execute(wells.with_for_update() if self.shared else wells).all())
        recompute_readouts(s, touched, plate_of, now, {r.model_version: r.well_calibration for _, r in stored})

    def _times_from_files(self, s: Session, stored: list[tuple]) -> None:
        """An image intake could only time by its file's mtime takes the acquisition time its
        file states instead (``Scored.acquired_at``), with the hours since induction that follow
        from it, before its readout is recomputed, when the two lie more than
        ``COPIED_AFTER_S`` apart: a copy that does not keep times made the mtime the copy's. A
        smaller difference is the same moment seen through two clocks (a file's time is the
        instrument PC's local wall-clock, read in this machine's zone, which may differ by up to
        14 h), and the mtime, an absolute instant, stays. Only images placed by a scan index
        (ImageXpress ``TimePoint_n``, CellVoyager ``T``, Harmony ``sk``), whose readout key does
        not depend on the time; an image timed by its name keeps the name's time."""
        fixes = [(row, r) for row, r in stored
                 if r.acquired_at is not None and row.timepoint is not None and row.acquired_at is not None
                 and abs((aware(row.acquired_at) - datetime.fromtimestamp(row.mtime, timezone.utc)).total_seconds()) < 1e-3
                 and abs((r.acquired_at - aware(row.acquired_at)).total_seconds()) > COPIED_AFTER_S]
        if not fixes:
            return
        induction = dict(s.execute(select(m.Experiment.id, m.Experiment.induction_time)
                                   .where(m.Experiment.id.in_({row.experiment_id for row, _ in fixes}))).all())
        values = []
        for row, r in fixes:
            start = induction.get(row.experiment_id)
            elapsed = row.elapsed_h
            derived = start is not None and (elapsed is None or abs(
                elapsed - (aware(row.acquired_at) - aware(start)).total_seconds() / 3600.0) < 1e-6)
            if derived:  # hours a name gave stay the name's
                elapsed = (r.acquired_at - aware(start)).total_seconds() / 3600.0
            values.append({"b_id": row.id, "b_acq": r.acquired_at, "b_elapsed": elapsed})
        images = m.Image.__table__
        s.execute(update(images).where(images.c.id == bindparam("b_id"))
                  .values(acquired_at=bindparam("b_acq"), elapsed_h=bindparam("b_elapsed")), values)

    # --- health ---------------------------------------------------------------------
    def start_daemon(self, watched: list[dict]) -> int:
        now = utcnow()
        with self.Session.begin() as s:
            row = m.DaemonStatus(host=socket.gethostname(), pid=os.getpid(), started_at=now, heartbeat_at=now,
                                 state="starting", watched=watched)
            s.add(row)
            s.flush()
            return row.id

    def heartbeat(self, daemon_id: int, *, state: str, engine: str | None = None, model_version: str | None = None,
                  images_per_s: float | None = None, watched: list | None = None) -> None:
        with self.Session.begin() as s:
            row = s.get(m.DaemonStatus, daemon_id)
            if row is None:
                return
            row.heartbeat_at = utcnow()
            row.state = state
            if engine is not None:
                row.engine = engine
            if model_version is not None:
                row.model_version = model_version
            if images_per_s is not None:
                row.images_per_s = images_per_s
            if watched is not None:
                row.watched = watched
            if state == "stopped":
                row.stopped_at = row.heartbeat_at

    def event(self, kind: str, message: str, *, level: str = "info", path: str | None = None,
              data: dict | None = None) -> None:
        record_event(self.engine, kind, clean(message), level=level, path=to_db(path) if path is not None else None,
                     data=json.loads(json.dumps(data, default=str)) if data else None)


def qc_record(qc: QCMetrics) -> dict:
    """The image's QC as stored (``images.qc``)."""
    return {"focus": qc.focus, "saturation": qc.saturation, "blank": qc.blank, "dtype": qc.dtype, "min": qc.min,
            "max": qc.max, "p_low": qc.p_low, "p_high": qc.p_high, "reason": qc.reason,
            **({"nonfinite": qc.nonfinite} if qc.nonfinite else {}),
            **({"sharpness": qc.sharpness} if qc.sharpness > 0.0 else {}),
            **({"focus_ratio": qc.focus_ratio} if qc.focus_ratio is not None else {})}


def prediction_row(image_id: int, r: Scored, now: datetime) -> dict:
    """A ``predictions`` row of a scored image."""
    return {"image_id": image_id, "model_version": r.model_version, "classes": list(r.classes),
            "prob_mean": [float(v) for v in r.score.prob_mean], "prob_sd": [float(v) for v in r.score.prob_sd],
            "fraction": [float(v) for v in r.score.fraction], "n_tiles": r.score.n_tiles,
            "confidence": r.score.confidence, "tiles": r.tiles_blob, "engine": r.engine, "created_at": now,
            "ood_score": r.ood_score, "ood": r.ood}


def _storable(f: Discovered) -> Discovered:
    """``f`` with its path in the stored form and every other text clean (``names``)."""
    from dataclasses import replace

    key = f.key
    if key is not None:
        key = replace(key, plate=clean(key.plate) if key.plate else key.plate,
                      channel=clean(key.channel) if key.channel else key.channel,
                      acquisition=clean(key.acquisition)[:500] if key.acquisition else key.acquisition)
    return replace(f, path=to_db(f.path), relpath=to_db(f.relpath), key=key,
                   plate=clean(f.plate) if f.plate else f.plate,
                   profile=clean(f.profile) if f.profile else f.profile,
                   condition=clean(f.condition) if f.condition else f.condition,
                   attributes={clean(k): clean(v) for k, v in f.attributes.items()} if f.attributes else None,
                   error=clean(f.error) if f.error else f.error,
                   skip_reason=clean(f.skip_reason) if f.skip_reason else f.skip_reason)
