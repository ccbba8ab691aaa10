"""Opening a database: engines, SQLite pragmas, read-only readers, backups.

SQLite gets WAL (readers such as the dashboard never block the daemon's writes), foreign
keys, a busy timeout and NORMAL sync on every connection (house rule 6). The schema itself
(revision, creation, migrations, repair) is ``store.schema``.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import NoSuchModuleError, OperationalError

from nscmonitor.core.errors import UserFacingError
from nscmonitor.store.schema import current_revision, ensure_schema, head_revision, upgrade
from nscmonitor.store.urls import masked, sqlite_path

log = logging.getLogger(__name__)

#: what callers open a database with; the schema check and the URL helpers come along from
#: ``store.schema`` and ``store.urls``, since opening a database means both
__all__ = ["backup", "check_database_path", "create_engine_checked", "current_revision", "ensure_schema",
           "head_revision", "integrity_check", "masked", "open_engine", "open_readonly", "sqlite_path",
           "upgrade_with_backup"]


def check_database_path(path: Path) -> None:
    """One line naming ``database_url`` instead of SQLite's 'unable to open database file'
    several calls later. The folder must be writable too: SQLite creates the -wal and -shm
    files (and the daemon's lock file) beside the database."""
    if path.is_dir():
        raise UserFacingError(f"database_url: {path} is a folder; give a file, e.g. sqlite:///{path / 'nscmonitor.db'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserFacingError(f"database_url: cannot create the folder {path.parent}: {exc.strerror or exc}") from exc
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise UserFacingError(f"database_url: {path} is read-only for this user; the daemon needs to write it "
                              "(readers such as status and export do not)")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise UserFacingError(f"database_url: the folder {path.parent} is not writable for this user; SQLite "
                              "writes its -wal and -shm files beside the database")


def create_engine_checked(url: str, **kw) -> Engine:
    """A URL whose driver is not installed fails here with the package to install."""
    try:
        return create_engine(url, **kw)
    except ModuleNotFoundError as exc:
        name = make_url(url).drivername
        raise UserFacingError(f"database_url: the driver for {name!r} is not installed ({exc.name} missing); "
                              "for PostgreSQL install psycopg (pip install 'psycopg[binary]') and use "
                              "postgresql+psycopg://") from exc
    except NoSuchModuleError as exc:
        raise UserFacingError(f"database_url: unknown database dialect in {make_url(url).drivername!r} "
                              "(allowed: sqlite, postgresql)") from exc


def _readonly_connect(path: Path):
    """Connections opened with SQLite's ``mode=ro``: a reader never creates a missing database
    (a mistyped path is an error, not a new empty file) and never needs write access to it.
    The URI is built by pathlib (exact percent-encoding), not passed through an SQLAlchemy URL."""
    uri = path.resolve().as_uri() + "?mode=ro"
    return lambda: sqlite3.connect(uri, uri=True, timeout=30, check_same_thread=False)


def open_engine(url: str, *, readonly: bool = False) -> Engine:
    path = sqlite_path(url)
    if path is not None:
        if readonly:
            if path.is_dir():
                raise UserFacingError(f"database_url: {path} is a folder, not a database file")
            engine = create_engine_checked(url, creator=_readonly_connect(path))  # the URL names the file for messages
        else:
            check_database_path(path)
            engine = create_engine_checked(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # DB-API objects
            cur = dbapi_conn.cursor()
            if not readonly:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA synchronous=NORMAL")
            if readonly:
                cur.execute("PRAGMA query_only=ON")
            cur.close()

        return engine
    if readonly:
        # every transaction read-only on the server: a reader cannot write even with a writable role
        return create_engine_checked(url, pool_pre_ping=True,
                                     connect_args={"options": "-c default_transaction_read_only=on"})
    return create_engine_checked(url, pool_pre_ping=True)


def open_readonly(url: str) -> Engine:
    """Read-only engine (SQLite's ``query_only``; on PostgreSQL every transaction is read-only,
    ``default_transaction_read_only``) on an existing database at the current schema, for
    readers (the dashboard, training from the store): a reader never holds the write lock the
    daemon needs, and a missing SQLite file is an error, not a new empty database."""
    path = sqlite_path(url)
    if path is not None and path.is_dir():
        raise UserFacingError(f"database_url: {path} is a folder, not a database file")
    if path is not None and not path.is_file():
        raise UserFacingError(f"database not found: {path}. Start 'nscmonitor run' first, or pass --db URL")
    engine = open_engine(url, readonly=True)
    try:
        ensure_schema(engine, create=False)
    except OperationalError as exc:
        hint = ""
        if path is not None and not os.access(path.parent, os.W_OK) and not path.with_name(path.name + "-shm").exists():
            hint = ("; its folder is read-only for this user and the daemon is not running (SQLite reads a WAL "
                    "database through the -shm file the daemon keeps beside it)")
        raise UserFacingError(f"cannot read the database {path or masked(url)}: {exc.orig}{hint}") from exc
    return engine


def backup(url: str, dest: Path | None = None) -> Path:
    """Consistent copy while the daemon writes: SQLite's online backup API, not a file copy
    (a plain copy of a WAL database can miss committed pages or catch a torn one)."""
    src = sqlite_path(url)
    if src is None:
        raise UserFacingError("backup works on SQLite databases; use pg_dump for PostgreSQL")
    if not src.exists():
        raise UserFacingError(f"database not found: {src}")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    dest = dest or src.with_name(f"{src.stem}.backup-{stamp}{src.suffix}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    s = sqlite3.connect(str(src), timeout=30)
    d = sqlite3.connect(str(part))
    try:
        s.backup(d)
    finally:
        d.close()
        s.close()  # both closed before the move: Windows cannot rename an open file
    shutil.move(str(part), str(dest))
    return dest


def integrity_check(url: str) -> list[str]:
    """'ok' as a one-item list when healthy; otherwise SQLite's list of problems."""
    src = sqlite_path(url)
    if src is None:
        return ["ok"]
    if not src.is_file():
        raise UserFacingError(f"database not found: {src}")
    c = sqlite3.connect(f"file:{src}?mode=ro", uri=True, timeout=30)
    try:
        return [r[0] for r in c.execute("PRAGMA integrity_check").fetchall()]
    finally:
        c.close()


def upgrade_with_backup(url: str) -> tuple[str | None, str, Path | None]:
    engine = open_engine(url)
    before = current_revision(engine)
    saved = None
    if before != head_revision() and sqlite_path(url) is not None and inspect(engine).get_table_names():
        saved = backup(url)
        log.info("backed up %s to %s before migrating", sqlite_path(url), saved)
    upgrade(engine)
    return before, head_revision(), saved
