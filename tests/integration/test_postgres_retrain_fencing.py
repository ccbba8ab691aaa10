"""A scheduled retrain whose daemon is cut off from the shared PostgreSQL database while the
candidate trains is not promoted: another daemon has taken the schedule over meanwhile, and
the candidate of the deposed owner stays registered but unpromoted, with the reason. Real
server, real daemon scoring, real training subprocess and engine gate."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select, text

pytest.importorskip("torch")

from nscmonitor.config import load_settings  # noqa: E402
from nscmonitor.engines.tiny import build_tiny_classifier  # noqa: E402
from nscmonitor.registry.registry import Registry  # noqa: E402
from nscmonitor.schedule.ownership import OwnedSchedule  # noqa: E402
from nscmonitor.schedule.retrain import run_retrain  # noqa: E402
from nscmonitor.simulate.microscope import Microscope  # noqa: E402
from nscmonitor.simulate.render import Camera  # noqa: E402
from nscmonitor.store import models as m  # noqa: E402
from nscmonitor.store.db import ensure_schema, open_engine  # noqa: E402

from retrain_setup import WELLS, retrain_config, scored_labelled_plate  # noqa: E402  (tests/ is on the path)


@pytest.mark.slow
def test_candidate_of_an_owner_cut_off_while_it_trains_is_not_promoted(pg_url: str, tmp_path: Path) -> None:
    cfg = retrain_config(tmp_path, tmp_path / "plate", database_url=pg_url, epochs=8, quiet_s=0.0)
    settings = load_settings(cfg, env={})
    engine = open_engine(pg_url)
    ensure_schema(engine)
    reg = Registry(settings.models_dir, engine)
    build_tiny_classifier(tmp_path / "weak.onnx", input_size=32, version="weak", pixel_size_um=2.48)
    weak = reg.register(tmp_path / "weak.onnx")
    assert weak.state == "active"
    scope = Microscope(vendor="incucyte", plate_format=96, fields=2, hours=120, interval_h=24, seed=11,
                       wells=WELLS, camera=Camera(shape=(256, 320)))
    scored_labelled_plate(settings, engine, scope, tmp_path)

    # the owner asks again only at promotion (a cut-off daemon cannot reconnect); the other
    # asks every 0.3 s and takes the schedule over once the owner's connection is gone
    owner = OwnedSchedule(settings, config_path=str(cfg), every_s=3600)
    other = OwnedSchedule(settings, config_path=str(cfg), every_s=0.3)
    out = {}
    try:
        owner.start()
        other.start()
        assert owner.owner and not other.owner
        ticket = owner.ticket()
        retrain = threading.Thread(target=lambda: out.setdefault("r", run_retrain(settings, trigger="schedule",
                                                                                    still_owner=ticket)))
        retrain.start()
        train_cfg = settings.models_dir / "retrain" / "run-0001" / "train.toml"
        end = time.monotonic() + 120
        while not train_cfg.exists():
            assert time.monotonic() < end and retrain.is_alive(), "the retrain never started training"
            time.sleep(0.05)
        with engine.connect() as c:  # the owner's lock connection ends, as a network cut ends it
            c.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE application_name LIKE 'nscmonitor retrain%' AND datname = current_database()"))
            c.commit()
        end = time.monotonic() + 30
        while not other.owner:
            assert time.monotonic() < end, "the other daemon did not take the schedule over"
            time.sleep(0.1)
        retrain.join(timeout=280)
        assert not retrain.is_alive(), "the retrain did not finish"
    finally:
        owner.stop()
        other.stop()
    outcome = out["r"]
    assert outcome.status == "rejected", outcome
    assert "lost the retrain schedule while the candidate trained" in outcome.reason
    assert outcome.candidate and outcome.candidate != weak.version
    assert reg.active().version == weak.version
    with engine.connect() as c:
        assert c.scalar(select(m.RetrainRun.status).where(m.RetrainRun.id == outcome.run_id)) == "rejected"
    engine.dispose()
