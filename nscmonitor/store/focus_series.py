"""The stored sharpness of each claimed image's own field over time, which the focus check
(``scoring.qc.focus_check``) compares a new frame with. A field here is one series of
frames: the same well, field, channel and z plane."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from nscmonitor.store import models as m

SeriesKey = tuple[int, int | None, str | None, int | None]


@dataclass(frozen=True)
class FieldSeries:
    """Where a claimed image sits in its field's series, and its scored neighbours'
    (position, sharpness); the position is the scan's time key, else the image id (names
    without a time still arrive in order)."""

    key: SeriesKey
    at: float
    stored: tuple[tuple[float, float], ...]


def _position(time_key: int | None, image_id: int) -> float:
    return float(time_key if time_key is not None else image_id)


def _sharpness(qc: object) -> float | None:
    v = qc.get("sharpness") if isinstance(qc, dict) else None
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 else None


def field_series(Session: sessionmaker, ids: Iterable[int], k: int) -> dict[int, FieldSeries]:
    """Each claimed image with a well, and the sharpness stored by up to ``k`` of its field's
    scored frames on either side of it in time (frames scored before sharpness was measured
    have none and are left out). Two indexed range reads per image (``ix_images_well_time``):
    a field of a months-long time-lapse holds hundreds of frames, and only the nearest count."""
    i = m.Image
    with Session() as s:
        mine = s.execute(select(i.id, i.well_id, i.field, i.channel, i.z, i.time_key)
                         .where(i.id.in_(list(ids)), i.well_id.is_not(None))).all()
        out = {}
        for r in mine:
            key = (r.well_id, r.field, r.channel, r.z)
            same = (i.well_id == r.well_id, i.field.is_not_distinct_from(r.field),
                    i.channel.is_not_distinct_from(r.channel), i.z.is_not_distinct_from(r.z), i.id != r.id)
            # a row's time key, or for names without a time its id (such images arrive in order)
            pos, at = (i.time_key, r.time_key) if r.time_key is not None else (i.id, r.id)
            timed = i.time_key.is_not(None) if r.time_key is not None else i.time_key.is_(None)
            near = [*s.execute(select(i.id, i.time_key, i.qc).where(*same, timed, pos <= at)
                               .order_by(pos.desc()).limit(k)),
                    *s.execute(select(i.id, i.time_key, i.qc).where(*same, timed, pos > at)
                               .order_by(pos.asc()).limit(k))]
            stored = []
            for n in near:
                v = _sharpness(n.qc)
                if v is not None:
                    stored.append((_position(n.time_key, n.id), v))
            out[r.id] = FieldSeries(key, _position(r.time_key, r.id), tuple(stored))
    return out
