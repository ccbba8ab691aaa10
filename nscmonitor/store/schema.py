"""The schema: its revision, creation, migrations and the repair of a half-built one.

The schema is owned by Alembic; the daemon refuses to run on an outdated schema rather than
writing rows an older layout cannot hold, and ``db upgrade`` backs the file up first
(``store.db.upgrade_with_backup``).

Schema creation and migrations run in one transaction (on SQLite through a separate engine
that emits its own ``BEGIN IMMEDIATE``: pysqlite otherwise commits before every DDL
statement), so a kill during the first start leaves an empty database, never half a schema.
A half-built schema left by an older version is repaired by ``db upgrade``: tables, columns
and indexes that the recorded revision does not have, and that hold no data, are removed
before migrating, in the same transaction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from nscmonitor.core.errors import UserFacingError
from nscmonitor.store.urls import masked, sqlite_path

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class SchemaError(UserFacingError):
    pass


def alembic_config(engine_conn):
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
    def _connect(dbapi_conn, _record) -> None:  # DB-API objects
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
            command.upgrade(alembic_config(conn), "head")
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
            command.upgrade(alembic_config(conn), revision)
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
