"""Plain-column state of scheduled jobs (``schedule_state``): read and written here so
the ORM stays inside the store."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from nscmonitor.store import models as m
from nscmonitor.store.times import aware


@dataclass(frozen=True)
class ScheduleStateInfo:
    job_id: str
    schedule: str
    next_run_at: datetime | None
    last_run_at: datetime | None
    last_status: str | None


def load_schedule_state(engine: Engine, job_id: str) -> ScheduleStateInfo | None:
    with Session(engine) as s:
        r = s.get(m.ScheduleState, job_id)
        if r is None:
            return None
        return ScheduleStateInfo(r.job_id, r.schedule, aware(r.next_run_at), aware(r.last_run_at), r.last_status)


_KEEP = object()


def save_schedule_state(engine: Engine, job_id: str, *, schedule: str, next_run_at: datetime | None,
                        last_run_at: datetime | None | object = _KEEP, last_status: str | None | object = _KEEP) -> None:
    """Upsert; the last run and its outcome are kept unless given."""
    with Session(engine) as s, s.begin():
        r = s.get(m.ScheduleState, job_id)
        if r is None:
            r = m.ScheduleState(job_id=job_id)
            s.add(r)
        r.schedule, r.next_run_at = schedule, next_run_at
        if last_run_at is not _KEEP:
            r.last_run_at = last_run_at
        if last_status is not _KEEP:
            r.last_status = last_status
