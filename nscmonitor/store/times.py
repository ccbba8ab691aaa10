"""Timestamps as they come back from the databases, made timezone-aware.

Every time the store writes is UTC, but SQLite hands back naive datetimes even for timezone
columns, and through raw SQL it hands back text.
"""

from __future__ import annotations

from datetime import datetime, timezone


def aware(dt: datetime | None) -> datetime | None:
    """A naive datetime from SQLite as the UTC time it was written as."""
    if dt is not None and dt.tzinfo is None:
        return dt.replace(tzinfo=timezone.utc)
    return dt


def from_sql(value: object) -> datetime | None:
    """A timestamp read by raw SQL: text on SQLite, a datetime on PostgreSQL."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return aware(value)  # type: ignore[arg-type]


def utcnow() -> datetime:
    """Now, timezone-aware UTC: every time the store writes."""
    return datetime.now(timezone.utc)
