"""The Windows task's supervisor with real child processes: restart with back-off on a
crash, kill on a stale heartbeat, leave a clean exit alone. Portable, so it runs here too."""

from __future__ import annotations

import os
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from nscmonitor.ops.supervisor import Supervisor, heartbeat_age
from nscmonitor.store.db import ensure_schema, open_engine
from nscmonitor.store.writer import Writer

FAST = dict(base_delay_s=0.01, max_delay_s=0.05, poll_s=0.05, healthy_after_s=3600)


def test_a_crashing_daemon_is_restarted_then_given_up_on() -> None:
    sup = Supervisor([sys.executable, "-c", "raise SystemExit(3)"], age=lambda pid: None, max_restarts=2, **FAST)
    assert sup.run() == 3
    assert sup.starts == 3 and sup.kills == 0


def test_a_clean_exit_is_not_restarted() -> None:
    sup = Supervisor([sys.executable, "-c", "pass"], age=lambda pid: None, **FAST)
    assert sup.run() == 0 and sup.starts == 1


def test_a_hung_daemon_is_killed_and_restarted(tmp_path: Path) -> None:
    marker = tmp_path / "started-once"
    script = (f"import pathlib, time\np = pathlib.Path({str(marker)!r})\n"
              "if p.exists(): raise SystemExit(0)\np.touch()\ntime.sleep(120)\n")
    ages: dict[int, float] = {}

    def age(pid: int) -> float | None:
        """The first daemon's beat grows older at each look; the restarted one beats (it
        exits at once, but a loaded machine can take longer than two looks to start Python,
        and a stale beat then would have it killed too)."""
        if ages and pid not in ages:
            return 0.0
        ages[pid] = ages.get(pid, 0.0) + 400.0
        return ages[pid]

    sup = Supervisor([sys.executable, "-c", script], age=age, stall_s=600, **FAST)
    assert sup.run() == 0
    assert sup.kills == 1 and sup.starts == 2


def test_stop_event_ends_the_child(tmp_path: Path) -> None:
    import threading

    sup = Supervisor([sys.executable, "-c", "import time; time.sleep(120)"], age=lambda pid: None, **FAST)
    threading.Timer(0.5, sup.stop_event.set).start()
    assert sup.run() == 0
    assert sup.child is not None and sup.child.poll() is not None


def test_heartbeat_age_reads_the_daemon_row_of_that_pid(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nsc.db'}"
    engine = open_engine(url)
    ensure_schema(engine)
    Writer(engine).start_daemon([str(tmp_path)])
    later = datetime.now(timezone.utc) + timedelta(seconds=700)
    age = heartbeat_age(url, os.getpid(), now=later)
    assert age is not None and 690 < age < 760
    assert heartbeat_age(url, os.getpid() + 100000, now=later) is None
    engine.dispose()
