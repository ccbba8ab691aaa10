"""APScheduler set-up: the retrain job is rebuilt from the configuration at every start.

The job lives in APScheduler's in-memory store, never in a database job store: those
unpickle their rows, so anyone able to write the database could run code as the daemon
and one garbage row stopped it from starting. What must survive a restart (the planned
next run, the last run and its outcome) is kept in plain columns of ``schedule_state``.

coalesce: a daemon that was down for three scheduled runs retrains once, not three times;
max_instances=1: a long training run is never started twice; misfire grace: a run that
was due while the PC rebooted still happens when it comes back, within the grace time.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import datetime, timezone

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from nscmonitor.config import Settings
from nscmonitor.store.db import open_engine
from nscmonitor.store.schedule import load_schedule_state, save_schedule_state

log = logging.getLogger(__name__)
JOB_ID = "nscmonitor-retrain"
MISFIRE_GRACE_S = 6 * 3600


def trigger_for(schedule: str):
    kind, _, spec = schedule.partition(":")
    if kind == "cron":
        return CronTrigger.from_crontab(spec, timezone=datetime.now().astimezone().tzinfo)
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", spec)
    if kind != "interval" or m is None:
        raise ValueError(f"bad schedule {schedule!r}")
    n = float(m.group(1))
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
    return IntervalTrigger(**{unit: n})


def scheduled_retrain(config_path: str | None, database_url: str,
                      ticket: Callable[[], Callable[[], bool]] | None = None) -> str:
    """Entry point of the scheduled job. Logs and survives its own failures (rule 13).
    ``ticket``: on a shared database, hands out the check that this daemon still owns the
    schedule as it did when the run started (``ownership.OwnedSchedule.ticket``)."""
    from nscmonitor.config import load_settings, with_overrides
    from nscmonitor.schedule.retrain import run_retrain

    try:
        owns = ticket() if ticket is not None else None
        if owns is not None and not owns():
            log.warning("scheduled retrain not started: this daemon no longer runs the retrain schedule")
            return "not owner"
        settings = with_overrides(load_settings(config_path), database_url=database_url)
        out = run_retrain(settings, trigger="schedule", still_owner=owns)
        return out.status
    except Exception:
        log.exception("scheduled retrain failed")
        return "failed"


def make_scheduler(settings: Settings, *, config_path: str | None = None,
                   ticket: Callable[[], Callable[[], bool]] | None = None) -> BackgroundScheduler:
    """A paused scheduler holding the retrain job. An unchanged schedule keeps the next run
    time planned before the restart, so restarting the daemon neither skips nor repeats a
    retrain; a changed schedule plans afresh."""
    engine = open_engine(settings.database_url)
    sched = BackgroundScheduler(
        jobstores={"default": MemoryJobStore()},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": MISFIRE_GRACE_S},
        timezone=timezone.utc,
    )
    schedule = settings.retrain.schedule
    state = load_schedule_state(engine, JOB_ID)
    planned = state.next_run_at if state is not None and state.schedule == schedule else None
    sched.start(paused=True)
    extra = {"next_run_time": planned} if planned is not None else {}
    job = sched.add_job(scheduled_retrain, trigger_for(schedule), id=JOB_ID,
                        args=[config_path, settings.database_url, ticket], name="retrain on new labels", **extra)
    save_schedule_state(engine, JOB_ID, schedule=schedule, next_run_at=job.next_run_time)

    def remember(event: JobExecutionEvent) -> None:
        if event.job_id != JOB_ID:
            return
        # the next run from the trigger, not sched.get_job(): listeners run in the job's
        # thread, and get_job waits for the job store's lock, which shutdown(wait=True) holds
        # while it waits for this very thread
        now = datetime.now(timezone.utc)
        next_run = job.trigger.get_next_fire_time(event.scheduled_run_time, now)
        while next_run is not None and next_run <= now:  # a long run outlasted later fire times
            next_run = job.trigger.get_next_fire_time(next_run, now)
        status = ("missed" if event.code == EVENT_JOB_MISSED else
                  "failed" if event.exception is not None else str(event.retval or "done"))
        try:
            save_schedule_state(engine, JOB_ID, schedule=schedule, next_run_at=next_run,
                                last_run_at=event.scheduled_run_time, last_status=status[:20])
        except Exception:  # the schedule goes on; the next restart plans afresh
            log.exception("could not record the retrain schedule's state in the database")

    sched.add_listener(remember, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED)
    return sched
