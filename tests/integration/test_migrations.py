"""An old database: the daemon refuses it, ``db upgrade`` backs it up and migrates it with
its rows intact, and the migrated schema equals the one the models declare."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from nscmonitor.store.db import open_engine
from nscmonitor.store.schema import alembic_config, current_revision, head_revision
from nscmonitor.store.models import Base


def test_old_schema_refused_then_upgraded_with_backup(tmp_path: Path, tiny_model: Path) -> None:
    db = tmp_path / "old.db"
    url = f"sqlite:///{db}"
    engine = open_engine(url)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0001")
    with sqlite3.connect(db) as c:
        c.execute("insert into experiments (name, created_at) values ('kept', '2026-01-01 00:00:00')")
    (tmp_path / "w").mkdir()
    run = subprocess.run([sys.executable, "-m", "nscmonitor", "run", "--db", url, "--watch", str(tmp_path / "w"),
                          "--model", str(tiny_model), "--once"], capture_output=True, text=True)
    assert run.returncode == 2 and "nscmonitor db upgrade" in run.stderr and "0001" in run.stderr
    up = subprocess.run([sys.executable, "-m", "nscmonitor", "db", "upgrade", "--db", url],
                        capture_output=True, text=True)
    assert up.returncode == 0, up.stderr
    backups = list(tmp_path.glob("old.backup-*.db"))
    assert len(backups) == 1 and "backup" in up.stdout
    with sqlite3.connect(backups[0]) as c:
        assert c.execute("select version_num from alembic_version").fetchone()[0] == "0001"
    assert current_revision(engine) == head_revision()
    with sqlite3.connect(db) as c:
        assert c.execute("select name from experiments").fetchall() == [("kept",)]
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], f"models and migrations disagree: {diff}"
    again = subprocess.run([sys.executable, "-m", "nscmonitor", "run", "--db", url, "--watch", str(tmp_path / "w"),
                            "--model", str(tiny_model), "--once"], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
