"""Class 2: nothing in the database can make the daemon unpickle (run) anything.

The pickled rows are real exploit payloads: unpickling one creates a marker file. The
daemon runs as a real process on a real SQLite file."""

from __future__ import annotations

import pickle
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from alembic import command

from nscmonitor.config import parse_settings
from nscmonitor.store.db import open_engine
from nscmonitor.store.schema import alembic_config, current_revision, head_revision
from nscmonitor.store.schedule import load_schedule_state


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # what an attacker would store
        return (open, (self.marker, "w"))


def _plant_job_table(db: Path, marker: Path) -> None:
    with sqlite3.connect(db) as c:
        c.execute("create table if not exists apscheduler_jobs (id varchar(191) primary key, "
                  "next_run_time float, job_state blob not null)")
        c.execute("insert into apscheduler_jobs values (?, ?, ?)",
                  ("nscmonitor-retrain", time.time() - 10, pickle.dumps(_Payload(marker))))
        c.execute("insert into apscheduler_jobs values (?, ?, ?)", ("garbage", time.time(), b"\x80\x05not a pickle"))


def _run_until(args: list[str], needle: str, timeout: float = 60.0) -> tuple[int, str]:
    """Start the daemon, wait for a line of its stderr, stop it with SIGTERM."""
    p = subprocess.Popen([sys.executable, "-m", "nscmonitor", *args], stderr=subprocess.PIPE, text=True)
    seen, end = [], time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            line = p.stderr.readline()
            if not line:
                break
            seen.append(line)
            if needle in line:
                break
        p.send_signal(signal.SIGTERM)
        rest = p.communicate(timeout=30)[1]
    finally:
        if p.poll() is None:
            p.kill()
    return p.returncode, "".join(seen) + rest


def test_upgrade_drops_pickled_job_table_without_reading_it(tmp_path: Path) -> None:
    db, marker = tmp_path / "old.db", tmp_path / "pwned"
    url = f"sqlite:///{db}"
    with open_engine(url).begin() as conn:
        command.upgrade(alembic_config(conn), "0003")
    _plant_job_table(db, marker)
    up = subprocess.run([sys.executable, "-m", "nscmonitor", "db", "upgrade", "--db", url],
                        capture_output=True, text=True, timeout=120)
    assert up.returncode == 0, up.stderr
    assert current_revision(open_engine(url)) == head_revision()
    with sqlite3.connect(db) as c:
        tables = {r[0] for r in c.execute("select name from sqlite_master where type='table'")}
    assert "apscheduler_jobs" not in tables and "schedule_state" in tables
    assert not marker.exists()


def test_daemon_with_planted_job_rows_starts_and_never_unpickles(tmp_path: Path, tiny_model: Path) -> None:
    db, marker, watch = tmp_path / "nsc.db", tmp_path / "pwned", tmp_path / "w"
    watch.mkdir()
    url = f"sqlite:///{db}"
    first = subprocess.run([sys.executable, "-m", "nscmonitor", "db", "upgrade", "--db", url],
                           capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    _plant_job_table(db, marker)  # someone with write access to the database file
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'database_url = "{url}"\nmodels_dir = "{tmp_path / "models"}"\n'
                   f'log_dir = "{tmp_path / "logs"}"\n[retrain]\nschedule = "interval:1h"\n', encoding="utf-8")
    rc, err = _run_until(["run", "--config", str(cfg), "--watch", str(watch), "--model", str(tiny_model),
                          "--polling"], "retrain schedule")
    assert "retrain schedule interval:1h; next run" in err, err
    assert rc == 0, err
    assert "Traceback" not in err
    assert not marker.exists()
    state = load_schedule_state(open_engine(url), "nscmonitor-retrain")
    assert state is not None and state.schedule == "interval:1h"
    assert timedelta(minutes=50) < state.next_run_at - datetime.now(timezone.utc) <= timedelta(hours=1)


def test_planned_time_survives_restart_and_changed_schedule_replans(tmp_path: Path) -> None:
    from nscmonitor.schedule.scheduler import JOB_ID, make_scheduler

    url = f"sqlite:///{tmp_path / 'nsc.db'}"
    subprocess.run([sys.executable, "-m", "nscmonitor", "db", "upgrade", "--db", url], check=True,
                   capture_output=True, timeout=120)

    def settings(schedule: str):
        return parse_settings({"database_url": url, "models_dir": str(tmp_path / "m"),
                               "retrain": {"schedule": schedule}}, env={})

    s1 = make_scheduler(settings("interval:2h"))
    planned = s1.get_job(JOB_ID).next_run_time
    s1.shutdown(wait=False)
    time.sleep(0.05)
    s2 = make_scheduler(settings("interval:2h"))
    assert s2.get_job(JOB_ID).next_run_time == planned
    s2.shutdown(wait=False)
    s3 = make_scheduler(settings("interval:10h"))
    replanned = s3.get_job(JOB_ID).next_run_time
    s3.shutdown(wait=False)
    assert replanned - planned > timedelta(hours=7)
    assert load_schedule_state(open_engine(url), JOB_ID).schedule == "interval:10h"
