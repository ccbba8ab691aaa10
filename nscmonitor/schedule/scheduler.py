"""APScheduler set-up: the retrain job persisted in the same database as everything else.

coalesce: a daemon that was down for three scheduled runs retrains once, not three times;
max_instances=1: a long training run is never started twice; misfire grace: a run that
was due while the PC rebooted still happens when it comes back, within the grace time.
The job's arguments are plain strings (config path, database URL), so a persisted job
survives upgrades of the code it calls.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timezone

from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from nscmonitor.config import Settings

log = logging.getLogger(__name__)
JOB_ID = "nscmonitor-retrain"
MISFIRE_GRACE_S = 6 * 3600


def trigger_for(schedule: str):  # noqa: ANN201
    kind, _, spec = schedule.partition(":")
    if kind == "cron":
        return CronTrigger.from_crontab(spec, timezone=datetime.now().astimezone().tzinfo)
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", spec)
    if kind != "interval" or m is None:
        raise ValueError(f"bad schedule {schedule!r}")
    n = float(m.group(1))
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
    return IntervalTrigger(**{unit: n})


def scheduled_retrain(config_path: str | None, database_url: str) -> str:
    """Entry point of the persisted job. Logs and survives its own failures (rule 13)."""
    from nscmonitor.config import load_settings, with_overrides
    from nscmonitor.schedule.retrain import run_retrain

    try:
        settings = with_overrides(load_settings(config_path), database_url=database_url)
        out = run_retrain(settings, trigger="schedule")
        return out.status
    except Exception:
        log.exception("scheduled retrain failed")
        return "failed"


def make_scheduler(settings: Settings, *, config_path: str | None = None) -> BackgroundScheduler:
    sched = BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(url=settings.database_url, tablename="apscheduler_jobs")},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": MISFIRE_GRACE_S},
        timezone=timezone.utc,
    )
    sched.start(paused=True)
    job = sched.get_job(JOB_ID)
    trig = trigger_for(settings.retrain.schedule)
    args = [config_path, settings.database_url]
    if job is None:
        sched.add_job(scheduled_retrain, trig, id=JOB_ID, args=args, name="retrain on new labels")
    elif str(job.trigger) != str(trig) or list(job.args) != args:
        # A changed schedule re-plans the next run; an unchanged one keeps its persisted
        # next run time, so restarting the daemon neither skips nor repeats a retrain.
        job.modify(args=args)
        job.reschedule(trig)
    return sched
