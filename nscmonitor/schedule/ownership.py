"""The retrain schedule runs in one daemon per database.

Every daemon started without ``--no-schedule`` builds the schedule (``make_scheduler``, kept
paused) and asks for it (``store.schedule_lock``). The one that gets it runs it; the others
say who does and ask again every ``every_s`` seconds, so when the owner stops, is killed or
loses the server, one of them takes over: it plans the next run from what the owner recorded
in ``schedule_state`` (a run that was due meanwhile happens at once, within the misfire grace)
and resumes its scheduler. An owner that finds its lock gone pauses its scheduler until it
holds the lock again. On SQLite the one daemon always owns its schedule.

A retrain started by the schedule takes a ticket (``ticket``): the holding of the lock it
started under. An owner cut off from the server while its candidate trains loses the lock,
and another daemon may take the schedule over and retrain too; the cut-off one's candidate is
then registered but never promoted, because its ticket no longer holds when it asks just
before promotion (a fencing check: two retrains may overlap, two promotions from the same
schedule cannot both come from owners that were deposed).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from apscheduler.schedulers.background import BackgroundScheduler

from nscmonitor.config import Settings
from nscmonitor.schedule.scheduler import JOB_ID, make_scheduler
from nscmonitor.store.db import open_engine
from nscmonitor.store.schedule import load_schedule_state
from nscmonitor.store.schedule_lock import ScheduleLock, schedule_owner

log = logging.getLogger(__name__)


class OwnedSchedule:
    def __init__(self, settings: Settings, *, config_path: str | None = None, every_s: float = 20.0) -> None:
        """``every_s``: how often a daemon that does not run the schedule asks for it again
        (and the owner checks that it still holds it)."""
        self.schedule = settings.retrain.schedule
        self.engine = open_engine(settings.database_url)
        self.sched: BackgroundScheduler = make_scheduler(settings, config_path=config_path, ticket=self.ticket)
        self.lock = ScheduleLock(settings.database_url)
        self.every_s = every_s
        self.owner = False
        self.other: str | None = None  # who runs it when this daemon does not
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Ask for the schedule now (so the caller can say who runs it), then keep asking."""
        self.check()
        self._thread = threading.Thread(target=self._loop, name="nscmonitor-schedule-owner", daemon=True)
        self._thread.start()

    def check(self) -> bool:
        """One round: take or keep the schedule, or learn who has it. True when this daemon runs it."""
        holds = self.lock.take()
        if holds and not self.owner:
            self._take_over()
        elif not holds and self.owner:
            self.sched.pause()
            self.owner = False
            log.warning("this daemon lost the retrain schedule (its database connection ended); paused")
        if not holds:
            other = schedule_owner(self.engine)
            if other != self.other:
                log.info("the retrain schedule is run by another daemon (%s); this one takes over if it stops",
                         other or "none at this moment")
            self.other = other
        return self.owner

    def ticket(self) -> Callable[[], bool]:
        """A check that this daemon still holds the schedule as it does now, without a gap."""
        generation = self.lock.generation
        return lambda: self.owner and self.lock.holds(generation)

    def describe(self) -> str:
        """One line for the daemon's start: the schedule and who runs it."""
        if self.owner:
            job = self.sched.get_job(JOB_ID)
            return f"retrain schedule {self.schedule}; next run {job.next_run_time if job else 'none'}"
        return (f"retrain schedule {self.schedule} is run by another daemon ({self.other or 'none at this moment'}); "
                "this one takes over if it stops")

    def stop(self, *, wait: bool = False) -> None:
        """Stop asking and hand the schedule back. ``wait``: for a retrain in progress to end
        (the daemon does not: its retrain runs in a child process with a time limit)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        self.sched.shutdown(wait=wait)
        self.lock.release()
        self.engine.dispose()

    def _take_over(self) -> None:
        """Plan the next run from what the last owner recorded, then run the schedule here."""
        state = load_schedule_state(self.engine, JOB_ID)
        if state is not None and state.schedule == self.schedule and state.next_run_at is not None:
            self.sched.modify_job(JOB_ID, next_run_time=state.next_run_at)
        self.sched.resume()
        self.owner, self.other = True, None
        log.info("this daemon runs the retrain schedule %s", self.schedule)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.check()
            except Exception:  # the server is away: the next round asks again
                log.exception("could not check who runs the retrain schedule; retrying in %.0f s", self.every_s)
