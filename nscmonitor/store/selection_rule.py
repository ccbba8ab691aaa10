"""A watch folder's ``channel`` and ``z`` settings applied again to the images the store
already holds.

Intake decides whether an image is scored once, when the file is new, and never looks at a
known file again. So when an operator follows the advice of ``status`` (set the folder's channel to the
label-free one; or correct a channel setting that skipped every image) and restarts the
daemon, the images already seen kept the old decision: a plate whose whole backlog was
skipped stayed empty, and the readouts kept averaging the stains' frames (or every z plane
with the projection) scored before. At each start the daemon hands every folder's settings to
``apply_selection``:

* images of a channel or z plane the folder no longer scores (scored, waiting or failed) are
  skipped with the reason, and the readouts of their wells and times recomputed without them
  (a readout left with no image is removed);
* images skipped for their channel or plane that the folder now scores go back to the queue,
  or, when they were scored before (a setting changed and changed back), straight back into
  their readouts with the predictions they have (and, scored by an older model than the one
  served, into the rescore queue as after a promotion).

Images skipped for another reason (a symbolic link), quarantined, or held by a daemon are
left as they are. Predictions are never deleted: the images keep them, only the readouts
change. Well forecasts already made stay as made; the next ones read only scored images.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import Engine, and_, bindparam, case, or_, select, true, update
from sqlalchemy.orm import sessionmaker

from nscmonitor.core.calibration import WellCalibration
from nscmonitor.core.selection import Z_ALL, is_selection_skip, skip_reason
from nscmonitor.core.names import from_db
from nscmonitor.core.queue import QueueState
from nscmonitor.store import models as m
from nscmonitor.store.events import add_event
from nscmonitor.store.readouts import recompute_for_images
from nscmonitor.store.times import utcnow

#: states an image leaves for ``skipped`` when its channel is no longer scored
_LEAVES = (QueueState.DONE, QueueState.PENDING, QueueState.FAILED, QueueState.RESCORE)
_CHUNK = 500
#: images whose predictions count in a recomputed readout: scored, and scored but waiting for
#: (or in) a rescore by a newer model, whose older versions' readouts still hold them
_COUNTED = (QueueState.DONE, QueueState.RESCORE, QueueState.PROCESSING)


@dataclass(frozen=True)
class SelectionApplied:
    experiment: str
    channel: str | None
    z: str = Z_ALL
    #: images of channels or planes the folder no longer scores, now skipped
    set_aside: int = 0
    #: images skipped for their channel or plane that the folder now scores: queued, or back
    #: in their readouts
    queued: int = 0
    restored: int = 0
    #: readouts recomputed or removed
    readouts: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.set_aside or self.queued or self.restored)

    def summary(self) -> str:
        parts = []
        if self.set_aside:
            parts.append(f"{self.set_aside} images of other channels or planes skipped and taken out of the readouts")
        if self.queued:
            parts.append(f"{self.queued} images skipped before for their channel or plane queued to be scored")
        if self.restored:
            parts.append(f"{self.restored} images scored before put back into the readouts")
        return (f"experiment {self.experiment}: channel {self.channel or '(every channel)'}, z {self.z} applied to "
                f"the images already seen: {'; '.join(parts)} ({self.readouts} readouts recomputed)")


def apply_selection(engine: Engine, experiment_id: int, root: str, channel: str | None, z: str = Z_ALL, *,
                    calibrations: Mapping[str, WellCalibration | None] | None = None,
                    served_version: str | None = None) -> SelectionApplied:
    """Apply the folder's ``channel`` and ``z`` settings to the images of ``experiment_id``
    under ``root``, in one transaction. ``calibrations``: model version -> well calibration, for
    versions the registry does not hold (the served model file); registered versions' come
    from their metadata. ``served_version``: an image put back that this version has not
    scored (only an older one) waits for a rescore, as after a promotion; None: any
    prediction will do (a daemon that does not score)."""
    Session = sessionmaker(engine)
    prefix = root.rstrip("/\\")
    now = utcnow()
    with Session.begin() as s:
        name = s.scalar(select(m.Experiment.name).where(m.Experiment.id == experiment_id)) or str(experiment_id)
        rows = _changing_rows(s, experiment_id, channel, z)
        aside, back, reworded = [], [], []
        for r in rows:
            path = from_db(r.path)
            if not (path.startswith(prefix + os.sep) or path.startswith(prefix + "/")):
                continue
            reason = skip_reason(channel, z, r.channel, r.z)
            if r.status != QueueState.SKIPPED:
                aside.append((r, reason))
            elif reason is not None:
                reworded.append((r, reason))
            else:
                back.append(r)
        if not (aside or back or reworded):
            return SelectionApplied(name, channel, z)
        images = m.Image.__table__
        # each row only if it is still in the state read above: on a shared database another
        # daemon may have claimed a waiting image since (its claim then stands)
        for chunk in _chunks(aside + reworded):
            s.execute(update(images).where(images.c.id == bindparam("b_id"), images.c.status == bindparam("b_status"))
                      .values(status=QueueState.SKIPPED, error=bindparam("b_error"), updated_at=now),
                      [{"b_id": r.id, "b_status": r.status, "b_error": reason} for r, reason in chunk])
        versions_of: dict[int, set[str]] = {}
        back_ids = [r.id for r in back]
        for i in range(0, len(back_ids), _CHUNK):
            for image_id, version in s.execute(select(m.Prediction.image_id, m.Prediction.model_version)
                                               .where(m.Prediction.image_id.in_(back_ids[i:i + _CHUNK]))):
                versions_of.setdefault(image_id, set()).add(version)
        restored = [r for r in back if r.id in versions_of]
        queued = [r for r in back if r.id not in versions_of]
        current = [r.id for r in restored if served_version is None or served_version in versions_of[r.id]]
        older = [r.id for r in restored if not (served_version is None or served_version in versions_of[r.id])]
        for ids, values in ((current, {"status": QueueState.DONE}),
                            (older, {"status": QueueState.RESCORE, "attempts": 0}),
                            ([r.id for r in queued], {"status": QueueState.PENDING, "attempts": 0,
                                                      "next_attempt_at": 0.0})):
            for i in range(0, len(ids), _CHUNK):
                s.execute(update(m.Image).where(m.Image.id.in_(ids[i:i + _CHUNK]),
                                                m.Image.status == QueueState.SKIPPED)
                          .values(error=None, updated_at=now, **values))
        n_readouts = recompute_for_images(s, [r for r, _ in aside] + restored, now, calibrations or {}, counted=_COUNTED)
        result = SelectionApplied(name, channel, z, set_aside=len(aside), queued=len(queued),
                                  restored=len(restored), readouts=n_readouts)
        if result.changed:
            add_event(s, "selection_applied", result.summary(), level="warning", at=now,
                      data={"experiment": name, "channel": channel, "z": z, "set_aside": result.set_aside,
                            "queued": result.queued, "restored": result.restored, "readouts": n_readouts})
        return result


def _changing_rows(s, experiment_id: int, channel: str | None, z: str) -> list:  # noqa: ANN001
    """The experiment's images the settings move: first one grouped read (channel, plane,
    state and, for a skip, its reason: a few rows whatever the experiment's size, since most
    starts change nothing), then the rows of the groups that change only."""
    img = m.Image
    reason_col = case((img.status == QueueState.SKIPPED.value, img.error), else_=None)
    groups = s.execute(select(img.channel, img.z, img.status, reason_col).distinct()
                       .where(img.experiment_id == experiment_id,
                              img.status.in_([*_LEAVES, QueueState.SKIPPED]))).all()
    wanted = []
    for ch, plane, status, error in groups:
        reason = skip_reason(channel, z, ch, plane)
        if status != QueueState.SKIPPED:
            changes = reason is not None
        else:  # only this rule's own skips move (to their new reason, or back)
            changes = is_selection_skip(error) and error != reason
        if changes:
            wanted.append(and_(img.channel.is_(None) if ch is None else img.channel == ch,
                               img.z.is_(None) if plane is None else img.z == plane, img.status == status,
                               img.error == error if status == QueueState.SKIPPED else true()))
    if not wanted:
        return []
    return s.execute(select(img.id, img.path, img.channel, img.z, img.status, img.error, img.well_id, img.time_key)
                     .where(img.experiment_id == experiment_id, or_(*wanted))).all()


def _chunks(items: list) -> list[list]:
    return [items[i:i + _CHUNK] for i in range(0, len(items), _CHUNK)]
