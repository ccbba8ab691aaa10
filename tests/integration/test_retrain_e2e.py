"""The model lifecycle end to end on simulator data: a weak model serves, labels come in,
the scheduler (time injected) retrains in a subprocess, the candidate beats the weak
model and is promoted, the daemon switches between batches while images keep arriving,
a worse retrain is rejected, a killed one is recorded while the daemon runs on, and
rollback restores the previous version.

The scenarios share one simulated experiment (module fixtures: ``served`` has the weak
model serving the first images, ``promoted`` adds the scheduled retrain); each is its own
test. The rollback test changes the active model and runs last."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED
from sqlalchemy import func, select

pytest.importorskip("torch")

from nscmonitor.config import load_settings  # noqa: E402
from nscmonitor.daemon import build_runner  # noqa: E402
from nscmonitor.engines import autobuild  # noqa: E402
from nscmonitor.engines.tiny import build_tiny_classifier  # noqa: E402
from nscmonitor.labels import import_labels  # noqa: E402
from nscmonitor.registry.registry import Registry  # noqa: E402
from nscmonitor.schedule.retrain import run_retrain  # noqa: E402
from nscmonitor.simulate.microscope import Microscope, tiff_bytes  # noqa: E402
from nscmonitor.simulate.render import Camera  # noqa: E402
from nscmonitor.store import models as m  # noqa: E402
from nscmonitor.store.db import ensure_schema, open_engine  # noqa: E402

from retrain_setup import WELLS, cpu_int8, labels_csv, retrain_config  # noqa: E402  (tests/ is on the path)



def wait_until(cond, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def write_config(tmp: Path, watch: Path, epochs: int, extra: str = "") -> Path:
    return retrain_config(tmp, watch, database_url=f"sqlite:///{tmp / 'nsc.db'}", epochs=epochs, extra=extra,
                          engine=cpu_int8())


@dataclass
class Lifecycle:
    """The experiment the scenarios share: its config, store, registry and running daemon."""

    tmp: Path
    cfg: Path
    settings: object
    engine: object
    reg: Registry
    weak: object
    scope: Microscope
    runner: object = None
    daemon: threading.Thread | None = None
    frames: list = field(default_factory=list)
    early: list = field(default_factory=list)
    late: list = field(default_factory=list)

    @property
    def watch(self) -> Path:
        return self.tmp / "plate"

    def drop(self, frames: list) -> None:
        """Written under a temporary name, then renamed, as the Incucyte does."""
        for f in frames:
            p = self.watch / f.relpath
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_name(p.name + ".tmp")
            tmp.write_bytes(tiff_bytes(f.image, self.scope.camera.px_um))
            tmp.replace(p)

    def paths(self, frames: list) -> list[str]:
        return [str(self.watch / f.relpath) for f in frames]

    def n_done(self, frames: list | None = None) -> int:
        q = select(func.count()).select_from(m.Image).where(m.Image.status == "done")
        if frames is not None:
            q = q.where(m.Image.path.in_(self.paths(frames)))
        with self.engine.connect() as c:
            return c.scalar(q)

    def events(self) -> list[str]:
        with self.engine.connect() as c:
            return [k for (k,) in c.execute(select(m.Event.kind))]


@dataclass
class Promotion:
    status: str
    reason: str
    candidate: str
    labels_version: int


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lifecycle]:
    """A weak model (fp32: it came without a calibration set) serving the first four days of
    a plate, the daemon running in a thread until the module's scenarios are done."""
    tmp = tmp_path_factory.mktemp("lifecycle")
    (tmp / "plate").mkdir()
    cfg = write_config(tmp, tmp / "plate", epochs=12)
    settings = load_settings(cfg, env={})
    engine = open_engine(settings.database_url)
    ensure_schema(engine)
    reg = Registry(settings.models_dir, engine)
    assert build_tiny_classifier(tmp / "weak.onnx", input_size=32, version="weak", pixel_size_um=2.48).version == "weak"
    weak = reg.register(tmp / "weak.onnx")
    assert weak.state == "active"
    scope = Microscope(vendor="incucyte", plate_format=96, fields=3, hours=120, interval_h=24, seed=11,
                       wells=WELLS, camera=Camera(shape=(256, 320)))
    lc = Lifecycle(tmp, cfg, settings, engine, reg, weak, scope)
    lc.frames = list(scope.frames())
    lc.early = [f for f in lc.frames if f.shot.elapsed_h <= 96]
    lc.late = [f for f in lc.frames if f.shot.elapsed_h > 96]
    lc.drop(lc.early)
    lc.runner = build_runner(settings, retry_base_s=0.1, poll_interval=0.2, heartbeat_s=0.5)
    lc.runner.setup()
    lc.daemon = threading.Thread(target=lc.runner.run, daemon=True)
    lc.daemon.start()
    try:
        wait_until(lambda: lc.n_done() == len(lc.early), 60, "the early images to be scored by the weak model")
        yield lc
    finally:
        lc.runner.stop_event.set()
        lc.daemon.join(30)
    assert not lc.daemon.is_alive(), "the daemon did not stop"


@pytest.fixture(scope="module")
def promoted(served: Lifecycle) -> Promotion:
    """Labels come in; the scheduler's run (its due time injected) trains a candidate in a
    subprocess while images keep arriving, and its outcome is recorded."""
    from nscmonitor.schedule.scheduler import JOB_ID, make_scheduler

    lc = served
    version, n = import_labels(lc.engine, labels_csv(lc.tmp, lc.engine))
    assert n == len(WELLS)
    sched = make_scheduler(lc.settings, config_path=str(lc.cfg))
    # Registered after the scheduler's own listener (which records the run's state): once this
    # one has fired, the job and its bookkeeping are over and shutdown(wait=True) cannot block.
    job_over = threading.Event()
    sched.add_listener(lambda _e: job_over.set(), EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
    sched.get_job(JOB_ID).modify(next_run_time=datetime.now(timezone.utc) - timedelta(seconds=1))
    sched.resume()

    def feed() -> None:
        """Images keep arriving while the candidate trains, and after it takes over. The
        first waits for the training set to be written, so the candidate (and the test)
        are the same on every run."""
        end = time.monotonic() + 120
        cfg_written = lc.settings.models_dir / "retrain" / "run-0001" / "train.toml"
        while not cfg_written.exists() and time.monotonic() < end:
            time.sleep(0.05)
        half = len(lc.late) // 2
        for f in lc.late[:half]:
            lc.drop([f])
            time.sleep(0.3)
        end = time.monotonic() + 240
        while lc.reg.active().version == lc.weak.version and time.monotonic() < end:
            time.sleep(0.1)
        for f in lc.late[half:]:
            lc.drop([f])
            time.sleep(0.1)

    def outcome():
        with lc.engine.connect() as c:
            return c.execute(select(m.RetrainRun.status, m.RetrainRun.reason, m.RetrainRun.candidate_version)
                             .where(m.RetrainRun.status != "running")).first()

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        assert job_over.wait(240), "the scheduled retrain did not finish"
    finally:
        sched.shutdown(wait=job_over.is_set())  # a run that overran the wait is not waited for
        feeder.join()
    # The daemon drains what the feeder dropped before the scenarios look: a batch it began
    # during a scenario would outlive that scenario's teardown check on a loaded machine.
    wait_until(lambda: lc.n_done(lc.frames) == len(lc.frames), 60, "every image to be scored")
    return Promotion(*outcome(), labels_version=version)


def test_weak_model_serves_the_first_images(served: Lifecycle) -> None:
    lc = served
    with lc.engine.connect() as c:
        served_by = set(c.execute(select(m.Prediction.model_version, m.Prediction.engine)
                                  .join(m.Image, m.Image.id == m.Prediction.image_id)
                                  .where(m.Image.path.in_(lc.paths(lc.early)))).all())
    assert lc.n_done(lc.early) == len(lc.early)
    assert served_by == {(lc.weak.version, "ort-fp32")}  # fp32: no calibration set came with it
    assert autobuild.read_status(lc.weak.path).state == "no-calibration"


def test_scheduled_retrain_promotes_a_better_candidate_with_its_int8_engine(served: Lifecycle,
                                                                            promoted: Promotion) -> None:
    assert promoted.status == "promoted", promoted.reason
    cand = served.reg.active()
    assert cand.version == promoted.candidate and cand.labels_version == promoted.labels_version
    # the run's model and checkpoints live on in the version folder only
    run_train = served.settings.models_dir / "retrain" / "run-0001" / "train"
    assert run_train.is_dir() and not any((run_train / n).exists() for n in ("model.onnx", "best.pt", "last.pt"))
    assert (Path(cand.path).parent / "best.pt").is_file()
    # the candidate's engine was built and gated before promotion: model and engine switch together
    built = autobuild.read_status(cand.path)
    assert built.state == "ready" and built.engine in autobuild.SPEED_FIELDS and built.gate["passed"], built
    assert "retrain_promoted" in served.events()


def test_daemon_switches_between_batches_while_images_arrive(served: Lifecycle, promoted: Promotion) -> None:
    lc = served
    built = autobuild.read_status(lc.reg.get(promoted.candidate).path)
    wait_until(lambda: lc.runner.model.version == promoted.candidate, 30, "the daemon to switch models")
    # the engine the config names, on the int8 file the candidate's build published (the build
    # itself may have timed ONNX Runtime's int8 faster than OpenVINO's on this tiny model)
    assert lc.runner.model.engine.name == cpu_int8() and built.state == "ready" and built.engine in autobuild.SPEED_FIELDS
    wait_until(lambda: lc.n_done(lc.frames) == len(lc.frames), 60, "every image to be scored")
    with lc.engine.connect() as c:
        per = c.execute(select(m.Prediction.image_id, m.Prediction.model_version, m.Prediction.engine, func.count())
                        .join(m.Image, m.Image.id == m.Prediction.image_id)
                        .where(m.Image.path.in_(lc.paths(lc.frames)))
                        .group_by(m.Prediction.image_id, m.Prediction.model_version, m.Prediction.engine)).all()
    assert all(k == 1 for *_, k in per), "an image was scored twice by one version"
    versions: dict[int, set[str]] = {}
    for image_id, v, _, _ in per:
        versions.setdefault(image_id, set()).add(v)
    assert len(versions) == len(lc.frames), "an image was never scored"
    assert all(len(vs) == 1 for vs in versions.values()), "without rescore, each image has one version"
    by_version = [next(iter(v)) for v in versions.values()]
    assert by_version.count(promoted.candidate) >= 1 and by_version.count(lc.weak.version) >= len(lc.early)
    assert {(v, e) for _, v, e, _ in per} == {(lc.weak.version, "ort-fp32"), (promoted.candidate, cpu_int8())}


def test_worse_retrain_is_rejected_with_its_numbers(served: Lifecycle, promoted: Promotion) -> None:
    """Learning rate 0: an untrained candidate, worse than the active model."""
    active = served.reg.active().version
    worse = run_retrain(_with(served.settings, lr=0.0, epochs=1), trigger="manual", force=True)
    assert worse.status == "rejected" and served.reg.active().version == active, worse
    assert worse.numbers["candidate"]["balanced_accuracy"] < worse.numbers["active"]["balanced_accuracy"]
    assert "retrain_rejected" in served.events()


def test_killed_retrain_is_recorded_and_the_daemon_runs_on(served: Lifecycle, promoted: Promotion) -> None:
    """The trainer is killed once it has written its first checkpoint: a point the test sees
    the run reach, not a time limit that a fast machine could beat."""
    lc = served
    active = lc.reg.active().version
    result: list = []
    retrain = threading.Thread(target=lambda: result.append(
        run_retrain(_with(lc.settings, epochs=1000, patience=1000), trigger="manual", force=True)))
    retrain.start()
    try:
        wait_until(lambda: running_run(lc) is not None, 60, "the retrain run to start")
        run_dir = running_run(lc)
        wait_until(lambda: (run_dir / "train" / "last.pt").is_file(), 180, "the trainer's first checkpoint")
        assert kill_trainer(run_dir / "train.toml"), "no trainer process found"
    finally:
        retrain.join(120)
    assert not retrain.is_alive() and result, "the retrain did not return"
    crash = result[0]
    assert crash.status == "failed" and "killed" in crash.reason and lc.reg.active().version == active, crash
    assert "retrain_failed" in lc.events()
    assert lc.daemon.is_alive()
    extra = Microscope(vendor="incucyte", plate_format=96, fields=1, hours=0, interval_h=24, seed=11,
                       wells=["D12"], camera=Camera(shape=(256, 320)))
    frames = list(extra.frames())
    lc.drop(frames)
    wait_until(lambda: lc.n_done(frames) == 1, 30, "the daemon to keep scoring after a failed retrain")


def test_rollback_restores_the_previous_model_and_engine(served: Lifecycle, promoted: Promotion) -> None:
    """Runs last: it leaves the weak model active."""
    lc = served
    assert lc.reg.active().version == promoted.candidate
    wait_until(lambda: lc.runner.model.version == promoted.candidate, 30, "the daemon to serve the candidate")
    out = subprocess.run([sys.executable, "-m", "nscmonitor", "--config", str(lc.cfg), "models", "rollback"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert lc.reg.active().version == lc.weak.version
    wait_until(lambda: lc.runner.model.version == lc.weak.version, 30, "the daemon to roll back")
    assert lc.runner.model.engine.name == "ort-fp32"  # the previous pair: model and its engine


def running_run(lc: Lifecycle) -> Path | None:
    """The folder of the retrain run in progress, once it has one."""
    with lc.engine.connect() as c:
        rid = c.scalar(select(m.RetrainRun.id).where(m.RetrainRun.status == "running"))
    return lc.settings.models_dir / "retrain" / f"run-{rid:04d}" if rid is not None else None


def kill_trainer(cfg: Path) -> list[int]:
    """SIGKILL the training processes started for ``cfg`` (children of this process)."""
    import psutil

    pids = []
    for p in psutil.Process().children(recursive=True):
        try:
            if str(cfg) in " ".join(p.cmdline()):
                os.kill(p.pid, signal.SIGKILL)
                pids.append(p.pid)
        except (psutil.NoSuchProcess, ProcessLookupError):
            continue
    return pids


def _with(settings, **train):
    from dataclasses import replace

    epochs = train.pop("epochs", settings.retrain.epochs)
    return replace(settings, retrain=replace(settings.retrain, epochs=epochs, train={**settings.retrain.train, **train}))
