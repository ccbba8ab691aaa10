"""Registry, label import and the scheduler on a real store: a SQLite file and a real PostgreSQL
server (``db_url``)."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_JOB_SUBMITTED
from sqlalchemy import select

from nscmonitor.config import parse_settings
from nscmonitor.engines.tiny import build_tiny_classifier
from nscmonitor.labels import LabelFileError, import_labels
from nscmonitor.registry.registry import Registry
from nscmonitor.store import models as m
from nscmonitor.store.db import ensure_schema, open_engine
from nscmonitor.store.labels import current_labels, labels_version
from nscmonitor.store.writer import Writer
from nscmonitor.core.domain import ImageKey
from nscmonitor.core.errors import UserFacingError


@pytest.fixture()
def engine(db_url: str):
    e = open_engine(db_url)
    ensure_schema(e)
    store = Writer(e)
    exp = store.ensure_experiment("E1")
    with store.Session.begin() as s:
        for w in ("A01", "A02", "B01"):
            store._ensure_well(s, exp, "P1", 96, ImageKey("P1", w, ord(w[0]) - 65, int(w[1:]) - 1), None)
    return e


def test_registry_register_promote_rollback(tmp_path: Path, engine) -> None:
    reg = Registry(tmp_path / "models", engine)
    a = tmp_path / "a.onnx"
    b = tmp_path / "b.onnx"
    build_tiny_classifier(a, seed=1, version="v1")
    build_tiny_classifier(b, seed=2, version="v2")
    ia = reg.register(a)
    assert ia.state == "active" and Path(ia.path).is_file() and Path(ia.path).parent.name == ia.version
    ib = reg.register(b)
    assert ib.state == "candidate" and reg.active().version == ia.version
    reg.promote(ib.version)
    assert reg.active().version == ib.version and reg.get(ia.version).state == "retired"
    back = reg.rollback()
    assert back.version == ia.version and reg.get(ib.version).state == "retired"
    with pytest.raises(UserFacingError, match="nothing to roll back"):
        reg.rollback()
    with pytest.raises(UserFacingError, match="already registered"):
        reg.register(a, version=ia.version)
    with engine.connect() as c:
        kinds = [r[0] for r in c.execute(select(m.Event.kind))]
    assert kinds.count("promoted") == 1 and kinds.count("rolled_back") == 1


def test_label_import_all_or_nothing_with_line_numbers(tmp_path: Path, engine) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("experiment,plate,well,label,frac_neuron,frac_astrocyte\n"
                   "E1,P1,A01,neuron,,\n"
                   "E1,P1,H12,neuron,,\n"
                   "E1,P1,A02,microglia,,\n"
                   "E1,P1,B01,,0.5,0.3\n")
    with pytest.raises(LabelFileError) as exc:
        import_labels(engine, bad)
    msg = str(exc.value)
    assert "line 3: unknown well" in msg and "line 4: unknown class 'microglia'" in msg
    assert "line 5: fractions sum to 0.800" in msg and "nothing was imported" in msg
    assert labels_version(engine) is None and current_labels(engine) == []
    good = tmp_path / "good.csv"
    good.write_text("experiment,plate,well,frac_neuron,frac_astrocyte,frac_oligodendrocyte\n"
                    "E1,P1,A1,0.7,0.2,0.1\nE1,P1,A2,0.1,0.8,0.1\n")
    v1, n = import_labels(engine, good)
    assert n == 2 and labels_version(engine) == v1
    labs = {lab.well: lab for lab in current_labels(engine)}
    assert labs["A01"].label == "neuron" and labs["A02"].label == "astrocyte"
    again = tmp_path / "again.csv"
    again.write_text("experiment,plate,well,label\nE1,P1,A01,oligo\n")
    v2, _ = import_labels(engine, again)
    assert v2 > v1 and {lab.well: lab.label for lab in current_labels(engine)}["A01"] == "oligodendrocyte"
    assert {lab.well: lab.label for lab in current_labels(engine, up_to=v1)}["A01"] == "neuron"


def _runs(url: str) -> list:
    e = open_engine(url)
    with e.connect() as c:
        return list(c.execute(select(m.RetrainRun.trigger, m.RetrainRun.status)))


def test_schedule_persists_and_coalesces_missed_runs(tmp_path: Path, engine) -> None:
    from nscmonitor.schedule.scheduler import JOB_ID, make_scheduler

    url = engine.url.render_as_string(hide_password=False)
    settings = parse_settings({"database_url": url, "models_dir": str(tmp_path / "models"),
                               "retrain": {"schedule": "interval:1h"}}, env={})
    sched = make_scheduler(settings)
    first = sched.get_job(JOB_ID).next_run_time
    sched.shutdown(wait=False)
    sched = make_scheduler(settings)  # a daemon restart keeps the planned time
    assert sched.get_job(JOB_ID).next_run_time == first
    # The PC was off for three scheduled runs: inject the time by moving the job's due time
    # three intervals into the past, then let the scheduler run.
    # The scheduler's own events say what it submitted and ran, so nothing waits on a clock:
    # every run it will ever start is submitted at the wake-up that found the job overdue,
    # and shutdown(wait=True) returns only after the runs it started have finished.
    submitted, executed, first_done = [], [], threading.Event()

    def record(event) -> None:
        if event.code == EVENT_JOB_SUBMITTED:
            submitted.append(list(event.scheduled_run_times))
        else:
            executed.append(event.code)
            first_done.set()

    sched.add_listener(record, EVENT_JOB_SUBMITTED | EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
    sched.get_job(JOB_ID).modify(next_run_time=datetime.now(timezone.utc) - timedelta(hours=3, minutes=1))
    sched.resume()
    assert first_done.wait(30), "the overdue job never ran"
    nxt = sched.get_job(JOB_ID).next_run_time
    sched.shutdown(wait=True)
    assert len(submitted) == 1 and len(submitted[0]) == 1, submitted  # three missed runs coalesced into one
    assert executed == [EVENT_JOB_EXECUTED]
    assert _runs(url) == [("schedule", "skipped")]  # once, not three times; no labels: skipped
    assert nxt > datetime.now(timezone.utc)
