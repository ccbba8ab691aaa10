"""Database engine, pragmas, schema version and backups.

SQLite gets WAL (readers such as the dashboard never block the daemon's writes), foreign
keys, a busy timeout and NORMAL sync on every connection (house rule 6). The schema is
owned by Alembic; the daemon refuses to run on an outdated schema rather than writing rows
an older layout cannot hold, and ``db upgrade`` backs the file up first.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url

from nscmonitor.errors import UserFacingError

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class SchemaError(UserFacingError):
    pass


def sqlite_path(url: str) -> Path | None:
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def make_engine(url: str, *, readonly: bool = False) -> Engine:
    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001 - DB-API objects
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA synchronous=NORMAL")
            if readonly:
                cur.execute("PRAGMA query_only=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def open_readonly(url: str) -> Engine:
    """Read-only engine (``query_only``) on an existing database at the current schema, for
    readers (the dashboard, training from the store): a reader never holds the write lock the
    daemon needs, and a missing SQLite file is an error, not a new empty database."""
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        raise UserFacingError(f"database not found: {path}. Start 'nscmonitor run' first, or pass --db URL")
    engine = make_engine(url, readonly=True)
    ensure_schema(engine, create=False)
    return engine


def _alembic_config(engine_conn):  # noqa: ANN001
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = engine_conn
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(cfg).get_current_head()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine) -> None:
    from alembic import command

    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn), "head")


def ensure_schema(engine: Engine, *, create: bool = True) -> None:
    """A new database is created at head; an existing one must already be at head."""
    cur = current_revision(engine)
    head = head_revision()
    if cur == head:
        return
    if cur is None and not inspect(engine).get_table_names():
        if not create:
            raise SchemaError("the database is empty; start the daemon once or run 'nscmonitor db upgrade'")
        upgrade(engine)
        return
    raise SchemaError(
        f"the database schema is at revision {cur or 'unknown'} but this nscmonitor needs {head}; "
        "run 'nscmonitor db upgrade' (it backs the database up first)"
    )


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
    c = sqlite3.connect(f"file:{src}?mode=ro", uri=True, timeout=30)
    try:
        return [r[0] for r in c.execute("PRAGMA integrity_check").fetchall()]
    finally:
        c.close()


def upgrade_with_backup(url: str) -> tuple[str | None, str, Path | None]:
    engine = make_engine(url)
    before = current_revision(engine)
    saved = None
    if before is not None and before != head_revision() and sqlite_path(url) is not None:
        saved = backup(url)
        log.info("backed up %s to %s before migrating", sqlite_path(url), saved)
    upgrade(engine)
    return before, head_revision(), saved
