"""The database URL and its password file, checked when the settings are read."""

from __future__ import annotations

import os
from pathlib import Path

from nscmonitor.core.errors import ConfigError

DIALECTS = ("sqlite", "postgresql")


def check_database_url(db: str) -> str:
    """The dialect is checked here, once; whether its driver is installed is checked when the
    engine is made (``store.db.open_engine``), where the import happens."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if "://" not in db:
        raise ConfigError(f"database_url: expected an SQLAlchemy URL like sqlite:///path.db, got {db!r}")
    try:
        backend = make_url(db).get_backend_name()
    except ArgumentError as exc:
        raise ConfigError(f"database_url: not a database URL ({exc}); expected e.g. sqlite:///path.db") from exc
    if backend not in DIALECTS:
        raise ConfigError(f"database_url: unsupported database {backend!r} (allowed: {', '.join(DIALECTS)}, "
                          "e.g. sqlite:///path.db or postgresql+psycopg://user@host/db)")
    return db


def with_password_file(db: str, pw_file: Path) -> str:
    """The PostgreSQL password read from a file the config names, so it lives neither in the
    config nor in the process's arguments; the file must be private to its owner (as libpq
    demands of ``.pgpass``). The password only ever travels inside the URL, which is masked
    wherever it is printed (``store.db.masked``)."""
    from sqlalchemy.engine import make_url

    url = make_url(db)
    if url.get_backend_name() != "postgresql":
        raise ConfigError("database_password_file: only for postgresql URLs (SQLite has no password)")
    if url.password is not None:
        raise ConfigError("database_password_file: database_url already holds a password; keep it in one place")
    try:
        st = pw_file.stat()
        lines = pw_file.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"database_password_file: cannot read {pw_file}: {exc.strerror or exc}") from exc
    if os.name == "posix" and st.st_mode & 0o077:
        raise ConfigError(f"database_password_file: {pw_file} is readable by other users; chmod 600 it")
    pw = lines[0].strip() if lines else ""
    if not pw:
        raise ConfigError(f"database_password_file: {pw_file} is empty (the first line is the password)")
    return url.set(password=pw).render_as_string(hide_password=False)
