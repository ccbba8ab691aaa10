"""The stored sharpness of each claimed image's own field over time, which the focus check
(``scoring.qc.focus_check``) compares a new frame with, and the verdicts given later to frames
that had nothing to be compared with when they were scored (a field's first scan). A field
here is one series of frames: the same well, field, channel and z plane."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import literal, select, union_all, update
from sqlalchemy.orm import Session, sessionmaker

from nscmonitor.core.calibration import WellCalibration
from nscmonitor.core.queue import QueueState
from nscmonitor.store import models as m
from nscmonitor.store.readouts import recompute_for_images

SeriesKey = tuple[int, int | None, str | None, int | None]
#: range reads sent in one statement (SQLite compounds at most 500 selects)
_READS_PER_STATEMENT = 200


@dataclass(frozen=True)
class Neighbour:
    """A scored frame of the field: its position (the scan's time key, else its image id:
    names without a time still arrive in order), sharpness, and whether its focus was judged
    (False: nothing was there to judge it by when it was scored) and it passed QC."""

    id: int
    at: float
    sharpness: float
    judged: bool
    passed: bool


@dataclass(frozen=True)
class FieldSeries:
    """Where a claimed image sits in its field's series, and its scored neighbours."""

    key: SeriesKey
    at: float
    stored: tuple[Neighbour, ...]


@dataclass(frozen=True)
class LateVerdict:
    """A focus verdict for a frame scored before its field had another scan: its ratio, and
    the reason when it fails."""

    image_id: int
    ratio: float
    reason: str | None


def _position(time_key: int | None, image_id: int) -> float:
    return float(time_key if time_key is not None else image_id)


def _sharpness(qc: object) -> float | None:
    v = qc.get("sharpness") if isinstance(qc, dict) else None
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 else None


def field_series(Session: sessionmaker, ids: Iterable[int], k: int) -> dict[int, FieldSeries]:
    """Each claimed image with a well, and up to ``k`` of its field's scored frames on either
    side of it in time that carry a sharpness (frames scored before it was measured have
    none and are left out). A field of a months-long time-lapse holds hundreds of frames and
    only the nearest count, so each image's two neighbourhoods are indexed range reads
    (``ix_images_well_time``), all of a claim's sent as one statement: a claim costs two round
    trips to a PostgreSQL server whatever its size, as its store does (``Writer.complete``)."""
    i = m.Image
    with Session() as s:
        mine = s.execute(select(i.id, i.well_id, i.field, i.channel, i.z, i.time_key)
                         .where(i.id.in_(list(ids)), i.well_id.is_not(None))).all()
        reads = []
        for r in mine:
            same = (i.well_id == r.well_id, i.field.is_not_distinct_from(r.field),
                    i.channel.is_not_distinct_from(r.channel), i.z.is_not_distinct_from(r.z), i.id != r.id,
                    i.scored_at.is_not(None), i.time_key.is_not(None) if r.time_key is not None else i.time_key.is_(None))
            pos, at = (i.time_key, r.time_key) if r.time_key is not None else (i.id, r.id)
            near = select(literal(r.id).label("for_id"), i.id, i.time_key, i.qc, i.qc_passed).where(*same)
            reads += [select(near.where(pos <= at).order_by(pos.desc()).limit(k).subquery()),
                      select(near.where(pos > at).order_by(pos.asc()).limit(k).subquery())]
        found: dict[int, list] = {}
        for c in range(0, len(reads), _READS_PER_STATEMENT):
            for n in s.execute(union_all(*reads[c:c + _READS_PER_STATEMENT])):
                found.setdefault(n.for_id, []).append(n)
    out = {}
    for r in mine:
        stored = []
        for n in found.get(r.id, ()):
            v = _sharpness(n.qc)
            if v is not None:
                stored.append(Neighbour(n.id, _position(n.time_key, n.id), v, n.qc.get("focus_ratio") is not None,
                                        n.qc_passed is not False))
        out[r.id] = FieldSeries((r.well_id, r.field, r.channel, r.z), _position(r.time_key, r.id), tuple(stored))
    return out


def store_late_verdicts(s: Session, verdicts: Iterable[LateVerdict], now: datetime,
                        calibrations: Mapping[str, WellCalibration | None]) -> int:
    """Each frame's verdict written into its QC, once (a frame judged meanwhile, by another
    daemon on a shared database, keeps that verdict), and the readouts of the frames that
    fail recomputed without them. Returns how many failed."""
    verdicts = {v.image_id: v for v in verdicts}
    if not verdicts:
        return 0
    i = m.Image
    rows = s.execute(select(i.id, i.qc, i.qc_passed, i.well_id, i.time_key).where(i.id.in_(sorted(verdicts)))
                     .order_by(i.id).with_for_update()).all()
    failed = []
    for r in rows:
        qc = dict(r.qc) if isinstance(r.qc, dict) else None
        if qc is None or qc.get("focus_ratio") is not None:
            continue
        v = verdicts[r.id]
        qc["focus_ratio"] = v.ratio
        fails = v.reason is not None and r.qc_passed is not False
        if fails:
            qc["reason"] = v.reason
            failed.append(r)
        s.execute(update(i).where(i.id == r.id).values(qc=qc, qc_passed=False if fails else r.qc_passed,
                                                       updated_at=now))
    if failed:
        # as ``Writer._store`` does: the wells locked first (images, then wells, in id order), so
        # a daemon storing images of one of them meanwhile recomputes its readout after this one
        s.execute(select(m.Well.id).where(m.Well.id.in_(sorted({r.well_id for r in failed if r.well_id is not None})))
                  .order_by(m.Well.id).with_for_update())
        recompute_for_images(s, failed, now, calibrations,
                             counted=(QueueState.DONE, QueueState.RESCORE, QueueState.PROCESSING))
    return len(failed)
