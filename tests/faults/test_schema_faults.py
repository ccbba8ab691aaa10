"""Class 4: a kill during the first schema creation, or a half-built schema left by an older
version, never stops the daemon for good. Real processes, real SQLite files.

The kill is a real SIGKILL of a real ``nscmonitor`` process, delivered by the process itself
at a chosen DDL statement (a SQLAlchemy cursor hook installed through ``sitecustomize`` in
the child only), so it lands inside schema creation every time instead of by luck."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from nscmonitor.store.db import open_engine
from nscmonitor.store.schema import alembic_config, current_revision, head_revision
from nscmonitor.store.models import Base

KILLER = '''
import os, signal
from sqlalchemy import event
from sqlalchemy.engine import Engine

_AT = os.environ.get("NSC_TEST_KILL_AT", "")

@event.listens_for(Engine, "before_cursor_execute")
def _kill(conn, cursor, statement, parameters, context, executemany):
    if _AT and statement.lstrip().upper().startswith(_AT.upper()):
        os.kill(os.getpid(), signal.SIGKILL)
'''


def _nsc(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nscmonitor", *args], capture_output=True, text=True,
                          timeout=180, env=env)


def _tables(db: Path) -> set[str]:
    with sqlite3.connect(db) as c:
        return {r[0] for r in c.execute("select name from sqlite_master where type='table'")}


def _at_head_matching_models(url: str) -> None:
    engine = open_engine(url)
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


@pytest.mark.parametrize(("command_line", "kill_at"), [("db upgrade", "CREATE TABLE wells"),
                                                       ("run --once", "CREATE TABLE schedule_state")])
def test_sigkill_during_first_schema_creation_leaves_nothing_half_built(
        tmp_path: Path, tiny_model: Path, command_line: str, kill_at: str) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILLER, encoding="utf-8")
    db, watch = tmp_path / "nsc.db", tmp_path / "w"
    watch.mkdir()
    url = f"sqlite:///{db}"
    args = command_line.split() + ["--db", url]
    if command_line.startswith("run"):
        args += ["--watch", str(watch), "--model", str(tiny_model)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])),
               NSC_TEST_KILL_AT=kill_at)
    killed = _nsc(*args, env=env)
    assert killed.returncode == -9, killed.stderr  # it really died mid-creation
    assert _tables(db) - {"sqlite_sequence"} == set(), "a kill left part of the schema behind"
    status = _nsc("status", "--db", url)
    assert status.returncode == 2 and "Traceback" not in status.stderr
    assert "database is empty" in status.stderr
    again = _nsc(*args)  # no hook: the next start creates the whole schema
    assert again.returncode == 0, again.stderr
    _at_head_matching_models(url)


def _half_schema_by_hand(db: Path, revision: str | None, extra_tables: int) -> None:
    """What an older version (DDL committed statement by statement) left when killed: the
    tables of ``revision`` stamped, then some tables of the next revision, unstamped."""
    scratch = tmp_db = db.with_name("scratch.db")
    with open_engine(f"sqlite:///{tmp_db}").begin() as conn:
        command.upgrade(alembic_config(conn), "head")
    with sqlite3.connect(scratch) as c:
        ddl = dict(c.execute("select name, sql from sqlite_master where type='table' and name != 'alembic_version'"
                             " order by rowid"))
    if revision is not None:
        with open_engine(f"sqlite:///{db}").begin() as conn:
            command.upgrade(alembic_config(conn), revision)
    have = _tables(db) if db.exists() else set()
    with sqlite3.connect(db) as c:
        c.execute("create table if not exists alembic_version (version_num varchar(32) not null primary key)")
        for name in [n for n in ddl if n not in have][:extra_tables]:
            c.execute(ddl[name])
    scratch.unlink()


def test_half_built_first_schema_is_repaired_by_db_upgrade(tmp_path: Path, tiny_model: Path) -> None:
    db, watch = tmp_path / "nsc.db", tmp_path / "w"
    watch.mkdir()
    url = f"sqlite:///{db}"
    _half_schema_by_hand(db, None, extra_tables=3)
    assert len(_tables(db)) == 4
    run = _nsc("run", "--db", url, "--watch", str(watch), "--model", str(tiny_model), "--once")
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.count("\n") == 1 and "half-built" in run.stderr and "nscmonitor db upgrade" in run.stderr
    up = _nsc("db", "upgrade", "--db", url)
    assert up.returncode == 0, up.stderr
    assert "backup" in up.stdout and list(tmp_path.glob("nsc.backup-*.db"))
    _at_head_matching_models(url)
    again = _nsc("run", "--db", url, "--watch", str(watch), "--model", str(tiny_model), "--once")
    assert again.returncode == 0, again.stderr


def test_half_applied_migration_is_repaired_with_rows_kept(tmp_path: Path) -> None:
    db = tmp_path / "nsc.db"
    url = f"sqlite:///{db}"
    _half_schema_by_hand(db, "0001", extra_tables=2)  # 0002's new tables, 0002 not stamped
    with sqlite3.connect(db) as c:
        c.execute("insert into experiments (name, created_at) values ('kept', '2026-01-01 00:00:00')")
        c.execute("create index ix_stray on experiments (created_at)")
    before = _nsc("status", "--db", url)
    assert before.returncode == 2 and "0001" in before.stderr and "db upgrade" in before.stderr
    up = _nsc("db", "upgrade", "--db", url)
    assert up.returncode == 0, up.stderr
    _at_head_matching_models(url)
    with sqlite3.connect(db) as c:
        assert c.execute("select name from experiments").fetchall() == [("kept",)]


def test_foreign_table_with_rows_is_refused_not_dropped(tmp_path: Path) -> None:
    db = tmp_path / "nsc.db"
    url = f"sqlite:///{db}"
    _half_schema_by_hand(db, "0003", extra_tables=0)
    with sqlite3.connect(db) as c:
        c.execute("create table notes (id integer primary key, text varchar)")
        c.execute("insert into notes (text) values ('someone else''s data')")
    up = _nsc("db", "upgrade", "--db", url)
    assert up.returncode == 2 and "Traceback" not in up.stderr, up.stderr
    assert "notes" in up.stderr and up.stderr.count("\n") == 1
    with sqlite3.connect(db) as c:
        assert c.execute("select text from notes").fetchall() == [("someone else's data",)]
        assert c.execute("select version_num from alembic_version").fetchall() == [("0003",)]
