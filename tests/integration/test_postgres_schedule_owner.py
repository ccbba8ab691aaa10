"""One daemon runs the retrain schedule of a shared PostgreSQL database; when it stops or is
killed, another takes over. Real schedulers running the real scheduled retrain (on a store
without labels it records a skipped run) on a real PostgreSQL server, and real daemon
processes for the kill."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from apscheduler.events import EVENT_JOB_EXECUTED
from sqlalchemy import text

from nscmonitor.config import load_settings
from nscmonitor.schedule.ownership import OwnedSchedule
from nscmonitor.store.db import ensure_schema, open_engine
from nscmonitor.store.schedule_lock import ScheduleLock, schedule_owner


def _config(tmp_path: Path, url: str, schedule: str, lease_s: float = 60.0) -> Path:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'database_url = "{url}"\nmodels_dir = "{tmp_path / "models"}"\nlog_dir = "{tmp_path / "logs"}"\n'
                   f'lease_seconds = {lease_s}\n[retrain]\nschedule = "{schedule}"\n', encoding="utf-8")
    return cfg


def _until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.1)


def _scheduled_runs(engine) -> int:
    with engine.connect() as c:
        return c.execute(text("SELECT count(*) FROM retrain_runs WHERE trigger = 'schedule'")).scalar()


def test_only_the_owner_runs_the_schedule_and_another_takes_over_when_it_stops(pg_url: str, tmp_path: Path) -> None:
    engine = open_engine(pg_url)
    ensure_schema(engine)
    cfg = _config(tmp_path, pg_url, "interval:1s")
    settings = load_settings(str(cfg))
    ran = {"a": 0, "b": 0}
    lock = threading.Lock()
    daemons = {}
    for name in ("a", "b"):
        daemons[name] = OwnedSchedule(settings, config_path=str(cfg), every_s=0.3)

        def count(_event, name=name) -> None:
            with lock:
                ran[name] += 1

        daemons[name].sched.add_listener(count, EVENT_JOB_EXECUTED)
    a, b = daemons["a"], daemons["b"]
    try:
        a.start()
        b.start()
        assert a.owner and not b.owner
        me = f"{socket.gethostname()[:30]}:{os.getpid()}"
        assert schedule_owner(engine) == me
        assert b.other == me and "is run by another daemon" in b.describe() and "takes over" in b.describe()
        _until(lambda: ran["a"] >= 2, 60, "two scheduled runs by the owner")
        assert ran["b"] == 0
        a.stop(wait=True)
        _until(lambda: b.owner, 10, "the other daemon to take the schedule over")
        assert "next run" in b.describe()
        before = ran["a"]
        _until(lambda: ran["b"] >= 1, 60, "a scheduled run by the new owner")
        assert ran["a"] == before
    finally:
        a.stop(wait=True)
        b.stop(wait=True)
    assert schedule_owner(engine) is None
    assert _scheduled_runs(engine) == ran["a"] + ran["b"]
    engine.dispose()


def test_a_lock_on_sqlite_is_always_held(tmp_path: Path) -> None:
    lock = ScheduleLock(f"sqlite:///{tmp_path / 'nsc.db'}")
    assert lock.take() and lock.take()
    lock.release()
    assert schedule_owner(open_engine(f"sqlite:///{tmp_path / 'nsc.db'}")) is None


class _Daemon:
    """``nscmonitor run --score-only`` as a real process; its stderr read by a thread."""

    def __init__(self, cfg: Path, model: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "nscmonitor", "run", "--config", str(cfg), "--score-only",
                                      "--model", str(model)], stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    def said(self, needle: str) -> bool:
        return any(needle in ln for ln in self.lines)

    def end(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._reader.join(timeout=10)


def test_a_killed_owner_daemon_hands_the_schedule_to_another(pg_url: str, tmp_path: Path, tiny_model: Path) -> None:
    engine = open_engine(pg_url)
    ensure_schema(engine)
    cfg = _config(tmp_path, pg_url, "interval:1h", lease_s=3.0)  # the others ask every lease/3 = 1 s
    first = _Daemon(cfg, tiny_model)
    second = None
    try:
        _until(lambda: first.said("retrain schedule interval:1h; next run"), 120, "the first daemon to run the schedule")
        second = _Daemon(cfg, tiny_model)
        host = socket.gethostname()[:30]
        _until(lambda: second.said(f"is run by another daemon ({host}:{first.proc.pid})"), 120,
               "the second daemon to name the first as the owner")
        status = subprocess.run([sys.executable, "-m", "nscmonitor", "status", "--db", pg_url],
                                capture_output=True, text=True, timeout=120)
        assert f"retrain schedule run by the daemon on {host}:{first.proc.pid}" in status.stdout, status.stdout
        first.end(signal.SIGKILL)
        _until(lambda: schedule_owner(engine) == f"{host}:{second.proc.pid}", 30,
               "the second daemon to take the schedule over")
    finally:
        first.end(signal.SIGKILL)
        if second is not None:
            second.end()
    assert second.proc.returncode == 0, "".join(second.lines)
    assert "Traceback" not in "".join(second.lines)
    engine.dispose()


def _cut_off_owner(engine) -> int:
    """End the schedule owner's lock connection on the server, as a network cut would."""
    with engine.connect() as c:
        n = c.execute(text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                           "WHERE application_name LIKE 'nscmonitor retrain%' AND datname = current_database()")).scalar()
        c.commit()
    return n


def test_a_cut_off_owners_ticket_no_longer_holds_even_after_it_takes_the_lock_again(pg_url: str,
                                                                                      tmp_path: Path) -> None:
    from nscmonitor.schedule.scheduler import scheduled_retrain

    engine = open_engine(pg_url)
    ensure_schema(engine)
    cfg = _config(tmp_path, pg_url, "interval:1h")
    settings = load_settings(str(cfg))
    a = OwnedSchedule(settings, config_path=str(cfg), every_s=3600)  # rounds driven by hand below
    b = OwnedSchedule(settings, config_path=str(cfg), every_s=3600)
    try:
        a.start()
        ticket = a.ticket()
        assert a.owner and ticket()
        assert _cut_off_owner(engine) == 1
        assert not ticket()
        assert scheduled_retrain(str(cfg), pg_url, a.ticket) == "not owner"
        b.start()
        assert b.owner and not a.check()
        b.stop()
        assert a.check() and a.ticket()()  # the lock again, but a new holding
        assert not ticket()
        assert _scheduled_runs(engine) == 0
    finally:
        a.stop()
        b.stop()
    engine.dispose()
