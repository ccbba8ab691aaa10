"""Leases on claimed images, for daemons that share one PostgreSQL database.

A claim writes who holds each image (``Writer.owner``: host, PID and a random part, so a
restarted daemon with a recycled PID is somebody else) and until when. The holder renews
its leases while it lives (``renew``, from the daemon's lease keeper); any daemon puts
images whose lease ran out back in the queue (``reap_expired``): their holder was killed,
hung up or cut off from the server. A holder whose lease was taken away finds out when it
stores its result (``Writer.complete``): the result is dropped, since the image is someone
else's now.

Times are wall-clock seconds (``time.time()``), like ``next_attempt_at``: the hosts of one
facility keep their clocks in step (NTP), and a lease is many seconds long.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from datetime import datetime, timezone

from sqlalchemy import Engine, select, update

from nscmonitor.core.queue import QueueState
from nscmonitor.store import models as m
from nscmonitor.store.events import add_event

log = logging.getLogger(__name__)

#: how long a claim is held without renewal, when the configuration does not say
DEFAULT_LEASE_S = 60.0


def new_owner() -> str:
    """This process's name on the leases it holds."""
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def is_shared(engine: Engine) -> bool:
    """Several daemons may share a PostgreSQL database; a SQLite file has one daemon."""
    return engine.dialect.name == "postgresql"


def _locked_in_key_order(*where):
    """The ids of the images matching ``where``, locked in key order: storing a batch locks its
    rows in that order too, so a renewal or a reap running at the same moment waits for it
    instead of deadlocking with it."""
    return m.Image.id.in_(select(m.Image.id).where(*where).order_by(m.Image.id).with_for_update()
                          .scalar_subquery())


def renew(engine: Engine, owner: str, now_ts: float, lease_s: float) -> int:
    """Push the expiry of every image ``owner`` holds to ``now_ts + lease_s``."""
    with engine.begin() as conn:
        res = conn.execute(update(m.Image.__table__)
                           .where(_locked_in_key_order(m.Image.lease_owner == owner,
                                                       m.Image.status == QueueState.PROCESSING))
                           .values(lease_expires_at=now_ts + lease_s))
        return res.rowcount or 0


def reap_expired(engine: Engine, now_ts: float) -> int:
    """Images whose lease ran out go back to the queue (their attempt stays counted: a
    worker that dies during the same image every time still ends in quarantine)."""
    from sqlalchemy.orm import Session

    with Session(engine) as s, s.begin():
        res = s.execute(update(m.Image)
                        .where(_locked_in_key_order(m.Image.status == QueueState.PROCESSING,
                                                    m.Image.lease_expires_at < now_ts))
                        .values(status=QueueState.PENDING, lease_owner=None, lease_expires_at=None,
                                updated_at=datetime.now(timezone.utc)))
        n = res.rowcount or 0
        if n:
            add_event(s, "requeued", f"{n} image(s) whose lease ran out (their daemon died or was cut off) back "
                      "in the queue", level="warning")
    if n:
        log.warning("%d image(s) whose lease ran out back in the queue (their daemon died or was cut off)", n)
    return n
