"""The model lifecycle end to end on simulator data: a weak model serves, labels come in,
the scheduler (time injected) retrains in a subprocess, the candidate beats the weak
model and is promoted, the daemon switches between batches while images keep arriving,
a worse retrain is rejected, a killed one is recorded while the daemon runs on, and
rollback restores the previous version."""

from __future__ import annotations

import csv
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, select

pytest.importorskip("torch")

from nscmonitor.config import load_settings  # noqa: E402
from nscmonitor.daemon import build_runner  # noqa: E402
from nscmonitor.engines import autobuild  # noqa: E402
from nscmonitor.engines.tiny import build_tiny_classifier  # noqa: E402
from nscmonitor.labels import import_labels  # noqa: E402
from nscmonitor.registry.registry import Registry  # noqa: E402
from nscmonitor.schedule.retrain import run_retrain  # noqa: E402
from nscmonitor.simulate.culture import default_plate_map  # noqa: E402
from nscmonitor.simulate.microscope import Microscope  # noqa: E402
from nscmonitor.simulate.render import Camera  # noqa: E402
from nscmonitor.store import models as m  # noqa: E402
from nscmonitor.store.db import open_engine  # noqa: E402

WELLS = [f"{r}{c:02d}" for r in "ABCD" for c in (1, 3, 5, 9)]  # 4 wells each of 4 fates


def wait_until(cond, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def write_config(tmp: Path, watch: Path, epochs: int, extra: str = "") -> Path:
    cfg = tmp / "config.toml"
    cfg.write_text(f'''
database_url = "sqlite:///{tmp / 'nsc.db'}"
models_dir = "{tmp / 'models'}"
log_dir = "{tmp / 'logs'}"
[[watch]]
path = "{watch}"
experiment = "E2E"
profile = "incucyte"
quiet_seconds = 0.2
rescan_interval = 1.0
[retrain]
schedule = "interval:1h"
threads = 1
epochs = {epochs}
[retrain.train]
arch = "tiny"
image_size = 64
tile_size = 64
batch_size = 64
lr = 0.003
min_train_h = 48.0
seed = 1
{extra}
''')
    return cfg


def test_lifecycle_weak_model_retrained_promoted_rejected_failed_rolled_back(tmp_path: Path) -> None:
    from nscmonitor.schedule.scheduler import JOB_ID, make_scheduler

    watch = tmp_path / "plate"
    watch.mkdir()
    cfg = write_config(tmp_path, watch, epochs=12)
    settings = load_settings(cfg, env={})
    engine = open_engine(settings.database_url)
    reg = Registry(settings.models_dir, engine)
    from nscmonitor.store.db import ensure_schema

    ensure_schema(engine)
    weak = build_tiny_classifier(tmp_path / "weak.onnx", input_size=32, version="weak", pixel_size_um=2.48)
    assert weak.version == "weak"
    weak_info = reg.register(tmp_path / "weak.onnx")
    assert weak_info.state == "active"

    scope = Microscope(vendor="incucyte", plate_format=96, fields=3, hours=120, interval_h=24, seed=11,
                       wells=WELLS, camera=Camera(shape=(256, 320)))
    frames = list(scope.frames())
    early = [f for f in frames if f.shot.elapsed_h <= 96]
    late = [f for f in frames if f.shot.elapsed_h > 96]
    from nscmonitor.simulate.microscope import tiff_bytes

    def drop(fs) -> None:
        for f in fs:
            p = watch / f.relpath
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_name(p.name + ".tmp")
            tmp.write_bytes(tiff_bytes(f.image, scope.camera.px_um))
            tmp.replace(p)

    drop(early)
    runner = build_runner(settings, retry_base_s=0.1, poll_interval=0.2, heartbeat_s=0.5)
    runner.setup()
    daemon = threading.Thread(target=runner.run, daemon=True)
    daemon.start()
    try:
        def n_done() -> int:
            with engine.connect() as c:
                return c.scalar(select(func.count()).select_from(m.Image).where(m.Image.status == "done"))

        wait_until(lambda: n_done() == len(early), 60, "the early images to be scored by the weak model")
        assert runner.model.version == weak_info.version
        weak_engine = runner.model.engine.name  # fp32: the weak model came without a calibration set
        assert weak_engine == "ort-fp32"
        assert autobuild.read_status(weak_info.path).state == "no-calibration"
        version, n = import_labels(engine, labels_csv(tmp_path, engine))
        assert n == len(WELLS)

        sched = make_scheduler(settings, config_path=str(cfg))
        sched.get_job(JOB_ID).modify(next_run_time=datetime.now(timezone.utc) - timedelta(seconds=1))
        sched.resume()
        def feed() -> None:
            """Images keep arriving while the candidate trains, and after it takes over. The
            first waits for the training set to be written, so the candidate (and the test)
            are the same on every run."""
            end = time.monotonic() + 120
            cfg_written = settings.models_dir / "retrain" / "run-0001" / "train.toml"
            while not cfg_written.exists() and time.monotonic() < end:
                time.sleep(0.05)
            half = len(late) // 2
            for f in late[:half]:
                drop([f])
                time.sleep(0.3)
            end = time.monotonic() + 240
            while reg.active().version == weak_info.version and time.monotonic() < end:
                time.sleep(0.1)
            for f in late[half:]:
                drop([f])
                time.sleep(0.1)

        feeder = threading.Thread(target=feed)
        feeder.start()
        try:
            def outcome():
                with engine.connect() as c:
                    return c.execute(select(m.RetrainRun.status, m.RetrainRun.reason, m.RetrainRun.candidate_version)
                                     .where(m.RetrainRun.status != "running")).first()

            wait_until(lambda: outcome() is not None, 240, "the scheduled retrain to finish")
        finally:
            sched.shutdown(wait=False)
            feeder.join()
        status, reason, candidate = outcome()
        assert status == "promoted", reason
        assert reg.active().version == candidate and reg.active().labels_version == version
        # the candidate's engine was built and gated before promotion: model and engine switch together
        built = autobuild.read_status(reg.active().path)
        assert built.state == "ready" and built.engine.endswith("-int8") and built.gate["passed"], built
        wait_until(lambda: runner.model.version == candidate, 30, "the daemon to switch models")
        assert runner.model.engine.name == built.engine
        wait_until(lambda: n_done() == len(frames), 60, "every image to be scored")
        with engine.connect() as c:
            per = c.execute(select(m.Prediction.image_id, m.Prediction.model_version, func.count())
                            .group_by(m.Prediction.image_id, m.Prediction.model_version)).all()
            n_images = c.scalar(select(func.count()).select_from(m.Image))
        assert n_images == len(frames)
        assert all(k == 1 for _, _, k in per), "an image was scored twice by one version"
        scored = {}
        for image_id, v, _ in per:
            scored.setdefault(image_id, set()).add(v)
        assert len(scored) == n_images, "an image was never scored"
        assert all(len(vs) == 1 for vs in scored.values()), "without rescore, each image has one version"
        versions = [next(iter(v)) for v in scored.values()]
        assert versions.count(candidate) >= 1 and versions.count(weak_info.version) >= len(early)
        with engine.connect() as c:
            engines = dict(c.execute(select(m.Prediction.model_version, func.group_concat(m.Prediction.engine.distinct()))
                                     .group_by(m.Prediction.model_version)).all())
        assert engines == {weak_info.version: weak_engine, candidate: built.engine}

        # A retrain that makes the model worse (learning rate 0: an untrained candidate) is
        # rejected with its numbers; one that is killed is recorded; the daemon runs on.
        worse = run_retrain(_with(settings, lr=0.0, epochs=1), trigger="manual", force=True)
        assert worse.status == "rejected" and reg.active().version == candidate, worse
        assert worse.numbers["candidate"]["balanced_accuracy"] < worse.numbers["active"]["balanced_accuracy"]
        crash = run_retrain(_with(settings, epochs=50), trigger="manual", force=True, timeout=1.0)
        assert crash.status == "failed" and "killed" in crash.reason and reg.active().version == candidate
        with engine.connect() as c:
            kinds = [k for (k,) in c.execute(select(m.Event.kind))]
        assert {"retrain_promoted", "retrain_rejected", "retrain_failed"} <= set(kinds)
        assert daemon.is_alive()
        extra = Microscope(vendor="incucyte", plate_format=96, fields=1, hours=0, interval_h=24, seed=11,
                           wells=["D12"], camera=Camera(shape=(256, 320)))
        drop(list(extra.frames()))
        wait_until(lambda: n_done() == len(frames) + 1, 30, "the daemon to keep scoring after a failed retrain")

        out = subprocess.run([sys.executable, "-m", "nscmonitor", "--config", str(cfg), "models", "rollback"],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert reg.active().version == weak_info.version
        wait_until(lambda: runner.model.version == weak_info.version, 30, "the daemon to roll back")
        assert runner.model.engine.name == weak_engine  # the previous pair: model and its engine
    finally:
        runner.stop_event.set()
        daemon.join(30)


def _with(settings, **train):
    from dataclasses import replace

    epochs = train.pop("epochs", settings.retrain.epochs)
    return replace(settings, retrain=replace(settings.retrain, epochs=epochs, train={**settings.retrain.train, **train}))


def labels_csv(tmp: Path, engine) -> Path:
    """End-point labels of the simulated wells, under the plate name the store knows."""
    with engine.connect() as c:
        plate = c.scalar(select(m.Plate.name))
    pm = default_plate_map(96)
    labels = tmp / "labels.csv"
    with labels.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["experiment", "plate", "well", "label"])
        for well in WELLS:
            w.writerow(["E2E", plate, well, pm.condition(well).label])
    return labels
