"""The store's PostgreSQL paths on a real server: the schema Alembic builds there equals the
SQLite one, migrations keep rows, concurrent first starts, a kill during creation, repair of a
half-built schema, the single-instance advisory lock and read-only opens. Each test gets its
own fresh database (``pg_url``); without a server they skip with the reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import DBAPIError

from nscmonitor.cli import main
from nscmonitor.store.db import open_engine, open_readonly
from nscmonitor.store.schema import SchemaError, alembic_config, current_revision, ensure_schema, head_revision, upgrade
from nscmonitor.store.instance import AlreadyRunning, acquire
from nscmonitor.store.models import Base

KILLER = '''
import os, signal
from sqlalchemy import event
from sqlalchemy.engine import Engine

@event.listens_for(Engine, "before_cursor_execute")
def _kill(conn, cursor, statement, parameters, context, executemany):
    if statement.lstrip().upper().startswith(os.environ["NSC_TEST_KILL_AT"]):
        os.kill(os.getpid(), signal.SIGKILL)
'''


def _nsc(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nscmonitor", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


GENERIC = {"Double": "Float"}


def _shape(url: str) -> dict:
    """Tables, columns (generic type, nullability), primary keys, indexes, unique constraints and
    foreign keys, in a form that does not depend on the dialect."""
    engine = open_engine(url)
    insp = inspect(engine)
    out = {}
    for t in sorted(set(insp.get_table_names()) - {"sqlite_sequence"}):
        # FLOAT is an 8-byte float on both (SQLite REAL, PostgreSQL double precision)
        cols = {c["name"]: (GENERIC.get(type(c["type"].as_generic()).__name__, type(c["type"].as_generic()).__name__),
                            bool(c["nullable"]),
                            getattr(c["type"], "length", None)) for c in insp.get_columns(t)}
        out[t] = {
            "columns": cols,
            "pk": tuple(insp.get_pk_constraint(t)["constrained_columns"]),
            "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in insp.get_indexes(t)
                              if not i.get("duplicates_constraint")),  # PostgreSQL's unique-constraint indexes
            "unique": sorted(tuple(u["column_names"]) for u in insp.get_unique_constraints(t)),
            "fks": sorted((tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]))
                          for f in insp.get_foreign_keys(t)),
        }
    engine.dispose()
    return out


def test_upgraded_schema_is_the_same_on_sqlite_and_postgresql(tmp_path: Path, pg_url: str) -> None:
    lite = f"sqlite:///{tmp_path / 'nsc.db'}"
    for url in (lite, pg_url):
        assert main(["db", "upgrade", "--db", url]) == 0
        assert current_revision(open_engine(url)) == head_revision()
    a, b = _shape(lite), _shape(pg_url)
    assert set(a) == set(b) and len(a) >= 14
    for t in a:
        assert a[t] == b[t], (t, a[t], b[t])
    with open_engine(pg_url).connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


def test_migration_keeps_rows_on_postgresql(pg_url: str) -> None:
    engine = open_engine(pg_url)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0001")
        conn.execute(text("insert into experiments (name, created_at) values ('kept', now())"))
    with pytest.raises(SchemaError, match="0001"):
        ensure_schema(engine)
    assert main(["db", "upgrade", "--db", pg_url]) == 0
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        assert conn.execute(text("select name from experiments")).scalars().all() == ["kept"]


def test_three_first_starts_at_once_create_one_schema(pg_url: str) -> None:
    procs = [_nsc("db", "upgrade", "--db", pg_url) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [o[1] for o in outs]
    assert current_revision(open_engine(pg_url)) == head_revision()


def test_kill_during_creation_leaves_an_empty_database(tmp_path: Path, pg_url: str) -> None:
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(KILLER, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path / "hook"),
                                                                    os.environ.get("PYTHONPATH")])),
               NSC_TEST_KILL_AT="CREATE TABLE WELLS")
    p = _nsc("db", "upgrade", "--db", pg_url, env=env)
    p.communicate(timeout=120)
    assert p.returncode == -9
    assert inspect(open_engine(pg_url)).get_table_names() == []
    assert main(["db", "upgrade", "--db", pg_url]) == 0
    assert current_revision(open_engine(pg_url)) == head_revision()


def test_half_built_schema_is_repaired_and_data_is_refused(pg_url: str) -> None:
    engine = open_engine(pg_url)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0001")
        conn.execute(text("create table label_sets (id integer primary key)"))  # 0002's, half made
        conn.execute(text("alter table experiments add column half_done integer"))
        conn.execute(text("create index ix_half on experiments (half_done)"))
    removed = upgrade(engine)
    assert set(removed) == {"table label_sets", "column experiments.half_done", "index ix_half"}
    assert current_revision(engine) == head_revision()
    with engine.begin() as conn:
        conn.execute(text("create table stray (id integer)"))
        conn.execute(text("insert into stray values (1)"))
        conn.execute(text("update alembic_version set version_num = '0003'"))
    with pytest.raises(SchemaError, match="table stray holds rows"):
        upgrade(engine)


def test_advisory_lock_admits_one_daemon(pg_url: str) -> None:
    ensure_schema(open_engine(pg_url))
    first = acquire(pg_url)
    with pytest.raises(AlreadyRunning, match="already running") as exc:
        acquire(pg_url)
    password = open_engine(pg_url).url.password
    assert password and password not in str(exc.value)
    first.release()
    acquire(pg_url).release()


def test_readonly_open_refuses_writes_and_empty_databases(pg_url: str) -> None:
    with pytest.raises(SchemaError, match="database is empty"):
        open_readonly(pg_url)
    ensure_schema(open_engine(pg_url))
    ro = open_readonly(pg_url)
    with ro.connect() as conn:
        assert conn.execute(text("select count(*) from experiments")).scalar() == 0
        with pytest.raises(DBAPIError, match="read-only transaction"):
            conn.execute(text("insert into experiments (name, created_at) values ('x', now())"))
