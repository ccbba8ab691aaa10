"""The event log (``events`` table): what the dashboard's log and ``status`` show.

Every writer of events (the daemon's writer, notifications, the registry) adds its row here,
so the row's shape is decided in one place.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from nscmonitor.store import models as m


def event_row(kind: str, message: str, *, level: str = "info", path: str | None = None, data: dict | None = None,
              at: datetime | None = None) -> m.Event:
    """An event to add inside the caller's transaction (so it commits with the change it reports)."""
    return m.Event(at=at or datetime.now(timezone.utc), kind=kind, level=level, message=message, path=path, data=data)


def add_event(session: Session, kind: str, message: str, **kw) -> None:  # event_row's options
    session.add(event_row(kind, message, **kw))


def record_event(engine: Engine, kind: str, message: str, *, level: str = "info", path: str | None = None,
                 data: dict | None = None, at: datetime | None = None) -> None:
    """One event in its own transaction."""
    with sessionmaker(engine).begin() as s:
        add_event(s, kind, message, level=level, path=path, data=data, at=at)
