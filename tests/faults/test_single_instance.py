"""Class 7: one daemon per database. Two real daemon processes on one real SQLite file: the
second refuses with one line naming the first's host and PID; after the first is killed
with SIGKILL (no clean-up at all) a new daemon starts at once."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL")


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nscmonitor", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _wait_serving(p: subprocess.Popen, timeout: float = 90) -> str:
    seen, end = [], time.monotonic() + timeout
    while time.monotonic() < end:
        line = p.stderr.readline()
        if not line:
            break
        seen.append(line)
        if "serving model" in line:
            return "".join(seen)
    p.kill()
    raise AssertionError("daemon did not start: " + "".join(seen) + p.stderr.read())


def test_second_daemon_refuses_and_a_killed_one_does_not_block(tmp_path: Path, tiny_model: Path) -> None:
    watch = tmp_path / "w"
    watch.mkdir()
    db = tmp_path / "nsc.db"
    args = ["run", "--db", f"sqlite:///{db}", "--watch", str(watch), "--model", str(tiny_model), "--polling",
            "--no-schedule"]
    first = _start(args)
    procs = [first]
    try:
        _wait_serving(first)
        second = subprocess.run([sys.executable, "-m", "nscmonitor", *args], capture_output=True, text=True,
                                timeout=90)
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr
        assert f"host {socket.gethostname()}, PID {first.pid}," in lines[0] and "already running" in lines[0]
        assert first.poll() is None  # the first daemon is untouched
        once = subprocess.run([sys.executable, "-m", "nscmonitor", *args, "--once"], capture_output=True, text=True,
                              timeout=90)
        assert once.returncode == 2 and f"PID {first.pid}" in once.stderr

        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        lock = db.with_name("nsc.db.daemon.lock")
        assert json.loads(lock.read_text(encoding="utf-8"))["pid"] == first.pid  # a stale record is left...
        third = _start(args)  # ...and does not block the restart
        procs.append(third)
        _wait_serving(third)
        assert json.loads(lock.read_text(encoding="utf-8"))["pid"] == third.pid
        third.send_signal(signal.SIGTERM)
        assert third.wait(timeout=60) == 0
        fourth = subprocess.run([sys.executable, "-m", "nscmonitor", *args, "--once"], capture_output=True,
                                text=True, timeout=90)
        assert fourth.returncode == 0, fourth.stderr  # a cleanly stopped daemon releases it too
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)
            p.stderr.close()


def test_lock_is_per_database(tmp_path: Path) -> None:
    from nscmonitor.store.instance import AlreadyRunning, acquire

    a = acquire(f"sqlite:///{tmp_path / 'a.db'}")
    try:
        b = acquire(f"sqlite:///{tmp_path / 'b.db'}")
        b.release()
        with pytest.raises(AlreadyRunning):
            acquire(f"sqlite:///{tmp_path / 'a.db'}")
    finally:
        a.release()
    acquire(f"sqlite:///{tmp_path / 'a.db'}").release()
