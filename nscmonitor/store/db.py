"""Database engine, pragmas, schema version and backups.

SQLite gets WAL (readers such as the dashboard never block the daemon's writes), foreign
keys, a busy timeout and NORMAL sync on every connection (house rule 6). The schema is
owned by Alembic; the daemon refuses to run on an outdated schema rather than writing rows
an older layout cannot hold, and ``db upgrade`` backs the file up first.

Schema creation and migrations run in one transaction (on SQLite through a separate engine
that emits its own ``BEGIN IMMEDIATE``: pysqlite otherwise commits before every DDL
statement), so a kill during the first start leaves an empty database, never half a schema.
A half-built schema left by an older version is repaired by ``db upgrade``: tables, columns
and indexes that the recorded revision does not have, and that hold no data, are removed
before migrating, in the same transaction.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError
from sqlalchemy.pool import NullPool

from nscmonitor.core.errors import UserFacingError

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class SchemaError(UserFacingError):
    pass


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


def create_engine_checked(url: str, **kw) -> Engine:  # noqa: ANN003
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


def _readonly_connect(path: Path):  # noqa: ANN202
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
        def _pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001 - DB-API objects
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


#: 64-bit key of the PostgreSQL advisory lock that serialises schema creation and migrations ("nscmigr8")
MIGRATION_LOCK_KEY = 0x6E73636D69677238

#: tables that are not part of any revision's schema and are left alone by the repair
#: (``apscheduler_jobs`` is dropped by migration 0004, whatever it holds)
NOT_SCHEMA = frozenset({"alembic_version", "sqlite_sequence", "apscheduler_jobs"})


def migration_engine(url: str) -> Engine:
    """Engine whose transactions really enclose DDL. On SQLite the pysqlite driver's own
    transaction handling is switched off and ``BEGIN IMMEDIATE`` is emitted instead
    (SQLAlchemy's documented recipe): the write lock is taken before the revision is read, so
    two processes starting on a new database at once migrate one after the other."""
    if sqlite_path(url) is None:
        return create_engine(url, pool_pre_ping=True, poolclass=NullPool)
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, poolclass=NullPool)

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record) -> None:  # noqa: ANN001 - DB-API objects
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def upgrade(engine: Engine) -> list[str]:
    """Repair what an interrupted older version left, then migrate to head, all in one
    transaction. Returns what the repair removed."""
    from alembic import command

    meng = migration_engine(_url(engine))
    try:
        with meng.begin() as conn:
            if conn.dialect.name == "postgresql":
                # two first starts at once: the second waits here, then finds the schema at head
                # (without it one dies on a UniqueViolation in pg_type when both create a table)
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
            removed = repair_half_built(conn)
            command.upgrade(_alembic_config(conn), "head")
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) == "42501":  # insufficient_privilege: a daemon or reader role
            raise SchemaError(f"the role {engine.url.username!r} may not create or change the schema of "
                              f"{masked(_url(engine))}: run 'nscmonitor db upgrade' as the owner role "
                              "(see docs/scale.md)") from exc
        raise
    finally:
        meng.dispose()
    for what in removed:
        log.warning("removed %s left by an interrupted schema creation or migration", what)
    return removed


@dataclass(frozen=True)
class _Layout:
    columns: dict[str, set[str]]
    indexes: dict[str, set[str]]


def _layout(conn: Connection) -> _Layout:
    insp = inspect(conn)
    tables = [t for t in insp.get_table_names() if t not in NOT_SCHEMA]
    return _Layout({t: {c["name"] for c in insp.get_columns(t)} for t in tables},
                   {t: {i["name"] for i in insp.get_indexes(t)
                        # PostgreSQL reports the index behind each unique constraint too; the
                        # constraint is part of its table, not an index a migration added
                        if i.get("name") and not i.get("duplicates_constraint")} for t in tables})


def _layout_at(revision: str | None) -> _Layout:
    """The schema as Alembic builds it up to ``revision``, on a scratch in-memory database."""
    from alembic import command

    if revision is None:
        return _Layout({}, {})
    scratch = create_engine("sqlite://")
    try:
        with scratch.begin() as conn:
            command.upgrade(_alembic_config(conn), revision)
            return _layout(conn)
    finally:
        scratch.dispose()


def _has_rows(conn: Connection, table: str, where: str = "") -> bool:
    q = conn.dialect.identifier_preparer.quote(table)
    return conn.execute(text(f"SELECT 1 FROM {q} {where} LIMIT 1")).first() is not None


def repair_half_built(conn: Connection) -> list[str]:
    """Remove the tables, columns and indexes beyond the schema of the recorded revision (what
    an interrupted creation or migration left), provided they hold no data; anything holding
    data is refused with a one-line reason (that is not a half-built schema, it is something
    else)."""
    from alembic.runtime.migration import MigrationContext

    cur = MigrationContext.configure(conn).get_current_revision()
    want = _layout_at(cur)
    have = _layout(conn)
    missing = [t for t in want.columns if t not in have.columns]
    if missing:
        raise SchemaError(f"the database is recorded at schema revision {cur} but lacks its table(s) "
                          f"{', '.join(missing)}; restore a backup ('nscmonitor db backup' writes them)")
    prep = conn.dialect.identifier_preparer
    removed: list[str] = []
    extra_tables = [t for t in have.columns if t not in want.columns]
    for t in extra_tables:
        if _has_rows(conn, t):
            raise SchemaError(f"table {t} holds rows but is not part of schema revision {cur or '(none)'}: this "
                              "is not a half-built nscmonitor schema; move the database aside or restore a backup")
    for t, cols in have.columns.items():
        if t in extra_tables:
            continue
        for c in sorted(cols - want.columns[t]):
            if _has_rows(conn, t, f"WHERE {prep.quote(c)} IS NOT NULL"):
                raise SchemaError(f"column {t}.{c} holds values but is not part of schema revision {cur}; "
                                  "move the database aside or restore a backup")
    for t, idx in have.indexes.items():
        if t not in extra_tables:
            for i in sorted(idx - want.indexes[t]):
                conn.execute(text(f"DROP INDEX {prep.quote(i)}"))
                removed.append(f"index {i}")
    for t, cols in have.columns.items():
        if t not in extra_tables:
            for c in sorted(cols - want.columns[t]):
                conn.execute(text(f"ALTER TABLE {prep.quote(t)} DROP COLUMN {prep.quote(c)}"))
                removed.append(f"column {t}.{c}")
    for t in _drop_order(conn, extra_tables):
        conn.execute(text(f"DROP TABLE {prep.quote(t)}"))
        removed.append(f"table {t}")
    return removed


def _drop_order(conn: Connection, tables: list[str]) -> list[str]:
    """Referencing tables before the tables they reference."""
    insp = inspect(conn)
    refs = {t: {fk["referred_table"] for fk in insp.get_foreign_keys(t)} & set(tables) for t in tables}
    order: list[str] = []
    while refs:
        leaves = sorted(t for t in refs if not any(t in r for u, r in refs.items() if u != t))
        if not leaves:
            leaves = sorted(refs)
        for t in leaves:
            order.append(t)
            refs.pop(t)
    return order


def ensure_schema(engine: Engine, *, create: bool = True) -> None:
    """A new database is created at head; an existing one must already be at head."""
    cur = current_revision(engine)
    head = head_revision()
    if cur == head:
        return
    tables = [t for t in inspect(engine).get_table_names() if t not in NOT_SCHEMA]
    if cur is None and not tables:
        if not create:
            raise SchemaError("the database is empty; start the daemon once or run 'nscmonitor db upgrade'")
        upgrade(engine)
        return
    if cur is None:
        raise SchemaError(
            f"the database holds a half-built schema ({len(tables)} tables, no schema revision), left by an "
            "interrupted first start; run 'nscmonitor db upgrade' to repair it (it backs the database up first)")
    raise SchemaError(
        f"the database schema is at revision {cur} but this nscmonitor needs {head}; "
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
