"""``nscmonitor db copy``: a SQLite store filled by the real daemon (images, predictions,
readouts, events), labels, the registry and schedule state, copied into a real PostgreSQL
database; a copy killed part-way resumes where it stopped; both ends verified row by row."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from conftest import cells_image, stable_seed, write_tiff
from nscmonitor.cli import main
from nscmonitor.engines.tiny import build_tiny_classifier
from nscmonitor.labels import import_labels
from nscmonitor.registry.registry import Registry
from nscmonitor.store import copy as dbcopy
from nscmonitor.store.db import open_engine
from nscmonitor.store.writer import Writer

KILL_AFTER = '''
import os, signal
from sqlalchemy import event
from sqlalchemy.engine import Engine

_seen = [0]

@event.listens_for(Engine, "before_cursor_execute")
def _kill(conn, cursor, statement, parameters, context, executemany):
    if statement.lstrip().upper().startswith("INSERT INTO PREDICTIONS"):
        _seen[0] += 1
        if _seen[0] == int(os.environ["NSC_TEST_KILL_AFTER"]):
            os.kill(os.getpid(), signal.SIGKILL)
'''


@pytest.fixture()
def lab(tmp_path: Path, make_runner) -> str:
    """A lab's SQLite history written by the real daemon, registry, label import and scheduler state."""
    watch = tmp_path / "watch"
    for well in ("A1", "A2", "B1"):
        for hours in (0, 24, 48):
            write_tiff(watch / f"P1_{well}_1_{hours // 24:02d}d00h00m.tif", cells_image(stable_seed(well, hours)))
    runner = make_runner(watch)
    runner.run(once=True)
    url = runner.settings.database_url
    engine = open_engine(url)
    reg = Registry(tmp_path / "models", engine)
    build_tiny_classifier(tmp_path / "v2.onnx", seed=3, version="v2")
    reg.register(tmp_path / "v2.onnx")
    labels = tmp_path / "labels.csv"
    labels.write_text("experiment,plate,well,label\nE1,P1,A01,neuron\nE1,P1,B01,astrocyte\n")
    import_labels(engine, labels)
    from datetime import datetime, timezone

    from nscmonitor.store import models as m

    with Writer(engine).Session.begin() as s:  # what the scheduler keeps across restarts
        s.add(m.ScheduleState(job_id="retrain", schedule="interval:1h",
                              next_run_at=datetime(2026, 7, 1, 3, 0, 0, 123456, tzinfo=timezone.utc)))
    with engine.connect() as c:
        assert c.execute(text("select count(*) from predictions")).scalar() == 9
    return url


def _counts(url: str) -> dict[str, int]:
    e = open_engine(url)
    with e.connect() as c:
        return {t.name: c.execute(select(func.count()).select_from(t)).scalar() for t in dbcopy.tables()}


def test_copy_refuses_an_empty_target_then_copies_and_verifies(lab: str, pg_url: str) -> None:
    with pytest.raises(dbcopy.CopyError, match="db upgrade"):
        dbcopy.copy_database(lab, pg_url, progress=False)
    assert main(["db", "upgrade", "--db", pg_url]) == 0
    checks = dbcopy.copy_database(lab, pg_url, batch=4, progress=False)
    assert all(c.ok for c in checks) and {c.table for c in checks} == set(_counts(lab))
    assert _counts(pg_url) == _counts(lab) and _counts(lab)["images"] == 9 and _counts(lab)["labels"] == 2
    again = dbcopy.copy_database(lab, pg_url, progress=False)  # nothing left to copy; still verified
    assert sum(c.copied_now for c in again) == 0
    # the copy is a working store: sequences continue after the copied keys
    store = Writer(open_engine(pg_url))
    new = store.ensure_experiment("after-the-move")
    assert new > max(c.source_rows for c in checks if c.table == "experiments")
    with pytest.raises(dbcopy.CopyError, match="experiments holds rows that are not the source's"):
        dbcopy.copy_database(lab, pg_url, progress=False)


def test_killed_copy_resumes_where_it_stopped(lab: str, pg_url: str, tmp_path: Path) -> None:
    assert main(["db", "upgrade", "--db", pg_url]) == 0
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(KILL_AFTER, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path / "hook"),
                                                                    os.environ.get("PYTHONPATH")])),
               NSC_TEST_KILL_AFTER="2")
    killed = subprocess.run([sys.executable, "-m", "nscmonitor", "db", "copy", lab, pg_url, "--batch", "3"],
                            capture_output=True, text=True, env=env, timeout=180)
    assert killed.returncode == -9, killed.stderr
    part = _counts(pg_url)
    assert part["predictions"] == 3 and part["images"] == 9, part  # one batch of predictions committed
    done = subprocess.run([sys.executable, "-m", "nscmonitor", "db", "copy", lab, pg_url, "--batch", "3"],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert "counts and checksums match" in done.stdout
    assert re.search(r"^predictions +9 rows +\(6 copied now\)", done.stdout, re.M), done.stdout
    assert re.search(r"^images +9 rows +\(0 copied now\)", done.stdout, re.M), done.stdout
    assert _counts(pg_url) == _counts(lab)
    password = open_engine(pg_url).url.password
    assert password not in done.stdout + done.stderr + killed.stderr


def test_a_changed_row_fails_verification(lab: str, pg_url: str) -> None:
    assert main(["db", "upgrade", "--db", pg_url]) == 0
    dbcopy.copy_database(lab, pg_url, progress=False)
    with open_engine(pg_url).begin() as c:
        c.execute(text("update predictions set confidence = confidence + 1e-9 where id = (select min(id) + 1 from "
                       "predictions)"))
    with pytest.raises(dbcopy.CopyError, match=r"predictions \(9 rows in the source, 9 in the target, checksums differ"):
        dbcopy.copy_database(lab, pg_url, progress=False)


def test_copy_refuses_wrong_ends_in_one_line(tmp_path: Path, lab: str, pg_url: str) -> None:
    missing = f"sqlite:///{tmp_path / 'typo.db'}"
    for src, dst, msg in ((missing, pg_url, "does not exist"), (pg_url, pg_url, "source must be a SQLite"),
                          (lab, lab, "target must be a PostgreSQL")):
        with pytest.raises(dbcopy.CopyError, match=msg) as exc:
            dbcopy.copy_database(src, dst, progress=False)
        assert open_engine(pg_url).url.password not in str(exc.value)
    assert not (tmp_path / "typo.db").exists() and not (tmp_path / "typo.db.daemon.lock").exists()


def test_copy_refuses_while_the_source_daemon_runs(lab: str, pg_url: str) -> None:
    from nscmonitor.store.instance import AlreadyRunning, acquire

    assert main(["db", "upgrade", "--db", pg_url]) == 0
    held = acquire(lab)
    try:
        with pytest.raises(AlreadyRunning, match="already running"):
            dbcopy.copy_database(lab, pg_url, progress=False)
    finally:
        held.release()
