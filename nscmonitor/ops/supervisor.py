"""The supervisor (the Windows task's action, ``nscmonitor service supervise``): runs the
daemon as a child and restarts it when it exits with an error or its heartbeat stops.

systemd does this itself (``Restart=on-failure``, ``WatchdogSec``); Task Scheduler's
RestartOnFailure acts only when the task cannot be launched, so on Windows this loop does it.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

log = logging.getLogger(__name__)


def heartbeat_age(database_url: str, pid: int, *, host: str | None = None, now: datetime | None = None) -> float | None:
    """Seconds since the daemon with this pid last beat; None until it has written its row
    (set-up, e.g. a TensorRT build, may take minutes and must not count as a hang)."""
    from nscmonitor.store.db import open_engine
    from nscmonitor.store.reads import last_heartbeat

    engine = open_engine(database_url, readonly=True)
    try:
        beat = last_heartbeat(engine, pid, host or socket.gethostname())
    finally:
        engine.dispose()
    if beat is None:
        return None
    return ((now or datetime.now(timezone.utc)) - beat).total_seconds()


@dataclass
class Supervisor:
    """Runs the daemon as a child, restarts it when it exits with an error (back-off from
    ``base_delay_s`` doubling to ``max_delay_s``, reset after ``healthy_after_s`` of running)
    and kills it when ``age(pid)`` says its heartbeat is older than ``stall_s``.

    A child that exits 0 was asked to stop (or had nothing to do) and is not restarted."""

    cmd: Sequence[str]
    age: Callable[[int], float | None]
    stall_s: float = 600.0
    base_delay_s: float = 10.0
    max_delay_s: float = 600.0
    healthy_after_s: float = 900.0
    poll_s: float = 5.0
    max_restarts: int | None = None
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.stop_event = threading.Event()
        self.starts = 0
        self.kills = 0
        self.child: subprocess.Popen | None = None

    def run(self) -> int:
        delay = self.base_delay_s
        while not self.stop_event.is_set():
            started = self.clock()
            self.starts += 1
            self.child = subprocess.Popen(list(self.cmd))
            log.info("supervisor: started the daemon, pid %d (start %d)", self.child.pid, self.starts)
            rc = self._watch(self.child)
            if self.stop_event.is_set():
                return 0
            if rc == 0:
                log.info("supervisor: the daemon exited normally; not restarting")
                return 0
            if self.max_restarts is not None and self.starts > self.max_restarts:
                log.error("supervisor: giving up after %d starts (last exit code %s)", self.starts, rc)
                return rc
            delay = self.base_delay_s if self.clock() - started >= self.healthy_after_s else delay
            log.error("supervisor: the daemon ended with exit code %s; restarting in %.0f s", rc, delay)
            self.stop_event.wait(delay)
            delay = min(delay * 2, self.max_delay_s)
        return 0

    def _watch(self, child: subprocess.Popen) -> int:
        while True:
            try:
                return child.wait(timeout=self.poll_s)
            except subprocess.TimeoutExpired:
                pass
            if self.stop_event.is_set():
                self._end(child, "stop requested")
                return child.returncode if child.returncode is not None else 0
            try:
                age = self.age(child.pid)
            except Exception as exc:  # an unreadable database must not kill a working daemon
                log.warning("supervisor: cannot read the heartbeat: %s", exc)
                continue
            if age is not None and age > self.stall_s:
                self.kills += 1
                log.error("supervisor: no heartbeat from pid %d for %.0f s; killing it", child.pid, age)
                self._end(child, "stalled")
                return -1 if child.returncode in (None, 0) else child.returncode

    @staticmethod
    def _end(child: subprocess.Popen, why: str) -> None:
        log.info("supervisor: ending pid %d (%s)", child.pid, why)
        child.terminate()
        try:
            child.wait(timeout=120)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(timeout=30)
