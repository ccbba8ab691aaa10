"""Putting quarantined images back in the queue (``nscmonitor requeue``, the dashboard).

Quarantine is for inputs that failed; once the cause is fixed (a plate map corrected, a
codec installed, a file restored) the operator says which images to try again. Selection is
by image id, by a glob on the path as shown (``*`` crosses folders), by plate, or all of
them; each selected image goes back to ``pending`` with fresh attempts.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from nscmonitor.core.queue import QueueState
from nscmonitor.store import models as m
from nscmonitor.store.writer import Writer


def select_quarantined(engine: Engine, *, ids: Iterable[int] = (), path_glob: str | None = None,
                       plate: str | None = None, everything: bool = False) -> list[int]:
    """Ids of quarantined images matching any of the given criteria."""
    ids = {int(i) for i in ids}
    with Session(engine) as s:
        q = (select(m.Image.id, m.Image.path, m.Plate.name)
             .outerjoin(m.Well, m.Well.id == m.Image.well_id).outerjoin(m.Plate, m.Plate.id == m.Well.plate_id)
             .where(m.Image.status == QueueState.QUARANTINED).order_by(m.Image.id))
        out = []
        for image_id, path, plate_name in s.execute(q):
            if everything or image_id in ids or (plate is not None and plate_name == plate) \
                    or (path_glob is not None and fnmatch.fnmatchcase(path, path_glob)):
                out.append(image_id)
        return out


def requeue(engine: Engine, ids: Iterable[int]) -> int:
    """Back to the queue; returns how many images were quarantined (or failed) and now wait."""
    return Writer(engine).requeue(ids)
