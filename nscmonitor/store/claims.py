"""Claims on the queue (the ``images`` table): what a scorer takes, gives back, fails or
finds unchanged. Split from ``store.writer`` (``Writer`` inherits ``Claims``) so each module
keeps one concern; several daemons claim at once on PostgreSQL (``store.leases``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import sessionmaker

from nscmonitor.core.names import clean, from_db
from nscmonitor.core.queue import MAX_ATTEMPTS, QueueState
from nscmonitor.store import models as m
from nscmonitor.store.events import add_event
from nscmonitor.store.leases import reap_expired

from nscmonitor.store.times import utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Claimed:
    id: int
    path: str
    relpath: str
    experiment_id: int
    well_id: int | None
    time_key: int | None
    attempts: int
    previous_hash: str | None
    channel: str | None
    scored: bool  # a prediction by the serving model version exists already


class Claims:
    """The claim side of the queue, part of ``Writer`` (which provides ``Session``, ``engine``,
    ``owner``, ``lease_s`` and ``shared``): take due images, hand them back, fail them or
    mark them unchanged, only while this writer still holds them."""

    Session: sessionmaker
    engine: Engine
    owner: str
    lease_s: float
    shared: bool

    def requeue_stale(self, now_ts: float | None = None) -> int:
        """Rows a crashed daemon left 'processing' go back to the queue. On a shared
        (PostgreSQL) database the other daemons' claims are live: only leases that ran out
        are taken back (and claims without a lease, from before leases existed)."""
        if self.shared:
            with self.Session.begin() as s:
                res = s.execute(update(m.Image).where(m.Image.status == QueueState.PROCESSING,
                                                      m.Image.lease_expires_at.is_(None))
                                .values(status=QueueState.PENDING, lease_owner=None))
            return (res.rowcount or 0) + reap_expired(self.engine, time.time() if now_ts is None else now_ts)
        with self.Session.begin() as s:
            res = s.execute(update(m.Image).where(m.Image.status == QueueState.PROCESSING)
                            .values(status=QueueState.PENDING, lease_owner=None, lease_expires_at=None))
            return res.rowcount or 0

    def claim(self, n: int, now_ts: float, model_version: str = "", *,
              max_attempts: int = MAX_ATTEMPTS) -> list[Claimed]:
        """Take up to ``n`` due images. A row whose attempts are used up is quarantined here
        instead of being handed out: attempts count claims, so an image during which the
        daemon dies every time (a crash in a native library, the OOM killer) stops after
        ``max_attempts`` starts instead of looping for ever.

        Several daemons may claim at once on PostgreSQL: rows another claim has locked are
        skipped (``FOR UPDATE SKIP LOCKED``), so no image is handed out twice, and each
        claimed row carries this writer's lease until ``now_ts + lease_s``."""
        now = utcnow()
        scored = (select(m.Prediction.id).where(m.Prediction.image_id == m.Image.id,
                                                m.Prediction.model_version == model_version).exists())
        fields = (m.Image.id, m.Image.path, m.Image.relpath, m.Image.experiment_id, m.Image.well_id,
                  m.Image.time_key, m.Image.attempts, m.Image.content_hash, m.Image.channel, m.Image.error,
                  scored.label("scored"))
        with self.Session.begin() as s:
            while True:
                rows = s.execute(
                    select(*fields).where(m.Image.status.in_((QueueState.PENDING, QueueState.FAILED)),
                                          m.Image.next_attempt_at <= now_ts)
                    .order_by(m.Image.id).limit(n).with_for_update(skip_locked=True, of=m.Image)).all()
                spent = [r for r in rows if r.attempts >= max_attempts]
                for r in spent:
                    self._give_up(s, r, now)
                if not spent:
                    break
            if not rows:  # rescoring for a newly promoted model only when nothing new waits
                rows = s.execute(select(*fields).where(m.Image.status == QueueState.RESCORE)
                                 .order_by(m.Image.id.desc()).limit(n)
                                 .with_for_update(skip_locked=True, of=m.Image)).all()
            if rows:
                s.execute(update(m.Image.__table__).where(m.Image.__table__.c.id.in_([r.id for r in rows]))
                          .values(status=QueueState.PROCESSING, attempts=m.Image.__table__.c.attempts + 1,
                                  lease_owner=self.owner, lease_expires_at=now_ts + self.lease_s))
            return [Claimed(r.id, from_db(r.path), r.relpath, r.experiment_id, r.well_id, r.time_key, r.attempts + 1,
                            r.content_hash, r.channel, bool(r.scored)) for r in rows]

    def _give_up(self, s, r, now) -> None:
        """A claimable image whose attempts are used up: quarantined with the reason."""
        last = f" (last error: {r.error})" if r.error else ""
        error = (f"gave up after {r.attempts} attempts: processing this image never finished, "
                 f"the daemon stopped during it{last}")
        s.execute(update(m.Image.__table__).where(m.Image.__table__.c.id == r.id)
                  .values(status=QueueState.QUARANTINED, error=error, updated_at=now))
        add_event(s, "quarantined", error, level="warning", path=r.path, at=now)
        log.warning("%s: %s", r.path, error)

    def unchanged(self, image_id: int) -> None:
        """Touched but identical content, already scored by this model: nothing to redo."""
        with self.Session.begin() as s:
            row = s.get(m.Image, image_id, with_for_update=True)
            if row is not None and self._holds(row, "marking it unchanged"):
                row.status, row.error, row.updated_at = QueueState.DONE, None, utcnow()
                row.lease_owner = row.lease_expires_at = None

    def release(self, ids: Iterable[int]) -> None:
        """Graceful stop: the batch in hand goes back to pending, attempts not counted."""
        ids = list(ids)
        if not ids:
            return
        with self.Session.begin() as s:
            s.execute(update(m.Image).where(m.Image.id.in_(ids), m.Image.status == QueueState.PROCESSING,
                                            m.Image.lease_owner == self.owner)
                      .values(status=QueueState.PENDING, attempts=m.Image.attempts - 1, lease_owner=None,
                              lease_expires_at=None))

    def fail(self, image_id: int, reason: str, *, permanent: bool, retry_at: float, max_attempts: int) -> str:
        now = utcnow()
        with self.Session.begin() as s:
            row = s.get(m.Image, image_id, with_for_update=True)
            if row is None:
                return "missing"
            if not self._holds(row, "recording its failure"):
                return "lease lost"
            row.lease_owner = row.lease_expires_at = None
            reason = clean(reason)
            if permanent or row.attempts >= max_attempts:
                row.status = QueueState.QUARANTINED
                row.error = reason if permanent else f"{reason} (gave up after {row.attempts} attempts)"
                add_event(s, "quarantined", row.error, level="warning", path=row.path, at=now)
            else:
                row.status = QueueState.FAILED
                row.error = reason
                row.next_attempt_at = retry_at
            row.updated_at = now
            return row.status

    def _holds(self, row: m.Image, doing: str) -> bool:
        """The image is still this writer's claim; if not (its lease ran out and it went back
        to the queue, maybe to another daemon), what this writer did with it is dropped."""
        if row.status == QueueState.PROCESSING and row.lease_owner == self.owner:
            return True
        log.warning("%s: dropped %s: this daemon's claim on it was lost (its lease ran out; now %s, held by %s)",
                    from_db(row.path), doing, row.status, row.lease_owner or "nobody")
        return False
