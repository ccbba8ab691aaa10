"""What a database URL names: the SQLite file behind it, and the URL as it may be shown."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError


def masked(url: str) -> str:
    """The URL as it may be printed or logged: the password replaced by ``***``."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:  # unparsable: print only what follows the credentials
        return url.split("@")[-1] if "@" in url else url


def sqlite_path(url: str) -> Path | None:
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)
