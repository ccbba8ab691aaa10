"""The daemon: intake -> queue -> scoring, wired together, and the loop that drives them.

One thread owns the loop and the database writes; watchdog observers only feed queues.
Each pass: intake yields the images that became ready and they enter the queue; the
scorer takes one batch from the queue; on the heartbeat's rhythm the status row is
written and a promoted model or a newly built engine takes over (between batches only).
Stopping (SIGINT/SIGTERM or ``stop_event``) finishes the batch in hand, or hands it back to
the queue if the engine is mid-failure, so no image is lost or scored twice.

Several daemons may share one PostgreSQL database: each watches its own folders and all of
them score from the one queue (a daemon may also only score, ``score=False``/``watch=False``
being ``run --watch-only``/``--score-only``); their claims are leased and kept alive by
``scoring.lease_keeper``.

Kept apart from the CLI so tests and benchmarks start the same daemon in-process."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nscmonitor.config import Settings
from nscmonitor.core.calibration import well_calibration_of
from nscmonitor.core.errors import UserFacingError
from nscmonitor.core.queue import MAX_ATTEMPTS, WAITING
from nscmonitor.intake.enqueue import enqueue
from nscmonitor.intake.folder import WatchedFolder
from nscmonitor.intake.intake import Intake
from nscmonitor.intake.known import KnownFiles
from nscmonitor.ops import notify
from nscmonitor.ops.disk_notice import CHECK_S as DISK_CHECK_S
from nscmonitor.ops.disk_notice import DiskNotice
from nscmonitor.ops.heartbeat import Heartbeat
from nscmonitor.ops.told_once import ToldOnce
from nscmonitor.readers import formats
from nscmonitor.scoring.engine_builds import DaemonEngineBuilds
from nscmonitor.scoring.hot_swap import EngineBuilds, EngineFactory, LoadedModel, ModelSlot, ModelSource
from nscmonitor.scoring.metrics import Metrics, Timings
from nscmonitor.registry.forecasts import served as served_forecast
from nscmonitor.scoring.forecast import ForecastStage, load_forecast_model
from nscmonitor.scoring.lease_keeper import LeaseKeeper
from nscmonitor.scoring.scorer import MAX_CLAIM, Batch, Scorer, requeue_readable
from nscmonitor.scoring.serving import NO_MODEL, engine_factory, registry_model_source, static_model_source
from nscmonitor.store.db import ensure_schema, open_engine, sqlite_path
from nscmonitor.store.reads import Repo
from nscmonitor.store.writer import Writer

log = logging.getLogger(__name__)


class Daemon:
    def __init__(self, settings: Settings, store: Writer, model_source: ModelSource, engine_factory: EngineFactory, *,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 retry_base_s: float = 5.0, max_attempts: int = MAX_ATTEMPTS, claim_size: int = MAX_CLAIM,
                 poll_interval: float = 2.0, heartbeat_s: float = 5.0,
                 engine_builds: EngineBuilds | None = None, watch: bool = True, score: bool = True,
                 disk_usage: Callable[[Path], Any] = shutil.disk_usage, disk_check_s: float = DISK_CHECK_S) -> None:
        """``watch``/``score``: this daemon's parts (both by default; one alone only on a
        database shared with daemons doing the other). ``disk_usage``: the free-space probe
        (the tests give one of their own; free space is outside the program)."""
        self.settings = settings
        self.watch = watch
        self.score = score
        self.store = store
        self.clock = clock
        self.wall = wall
        self.poll_interval = poll_interval
        self.stop_event = threading.Event()
        self.on_batch: Callable[[int], None] | None = None  # told how many images each batch stored
        self.metrics = Metrics(clock)
        self.slot = ModelSlot(store, model_source, engine_factory, engine_builds=engine_builds,
                              hook=settings.retrain.hook)
        forecast = (ForecastStage(load_forecast_model(served_forecast(settings.models_dir, settings.forecast_model)),
                                  store.Session,
                                  source=lambda: served_forecast(settings.models_dir, settings.forecast_model),
                                  workers=settings.threads or None)
                    if settings.forecast_model and score else None)
        self.scorer = Scorer(settings, store, self.slot, self.metrics, channel=self._channel,
                             stop_event=self.stop_event, wall=wall, retry_base_s=retry_base_s,
                             max_attempts=max_attempts, claim_size=claim_size, forecast=forecast,
                             pixel_size=lambda path: formats.pixel_size_for(self.settings.watch, path))
        self.heartbeat = Heartbeat(store, heartbeat_s, clock)
        self.leases = LeaseKeeper(store, wall) if store.shared and score else None
        self.intake: Intake | None = None
        self._repo = Repo(store.engine)
        #: what the hook was last told about the newest images
        self._ood_told = ToldOnce(self._repo, ("images_unlike_training", "images_like_training"),
                                  quiet="images_like_training")
        self.disk_notice = DiskNotice(store.engine, self._repo, database_file=sqlite_path(settings.database_url),
                                      models_dir=settings.models_dir, hook=settings.retrain.hook, clock=clock,
                                      disk_usage=disk_usage, interval_s=disk_check_s)

    @property
    def model(self) -> LoadedModel | None:
        return self.slot.model

    @property
    def engine_builds(self) -> EngineBuilds | None:
        return self.slot.engine_builds

    @property
    def timings(self) -> Timings:
        return self.metrics.timings

    @property
    def folders(self) -> list[WatchedFolder]:
        return self.intake.folders if self.intake is not None else []

    def setup(self) -> None:
        """Database, folders, model and engine: a daemon start."""
        self.store.requeue_stale(self.wall())
        known = KnownFiles(self.store.known_files([str(c.path) for c in self.settings.watch]) if self.watch else {})
        folders = []
        for cfg in self.settings.watch if self.watch else ():
            exp_id = self.store.ensure_experiment(cfg.experiment, watch_path=str(cfg.path),
                                                  induction_time=cfg.induction_time)
            folders.append(WatchedFolder.open(cfg, exp_id, self.settings.custom_profiles,
                                              poll_interval=self.poll_interval, clock=self.clock, wall=self.wall))
        self.intake = Intake(folders, known, wall=self.wall, on_rescan=lambda: requeue_readable(self.store))
        if self.score:
            self.slot.load()
        self._apply_selection(folders)
        self.heartbeat.start(self._watched())

    def _apply_selection(self, folders: list[WatchedFolder]) -> None:
        """Each folder's ``channel`` and ``z`` settings applied to the images it already holds,
        so a setting changed on the advice of ``status`` or ``doctor`` reaches the backlog and
        the readouts, not only new files (``store.selection_rule``). A failure is logged and
        recorded: the daemon still starts, and the next start tries again."""
        served = self.slot.model if self.score else None
        calibrations = ({served.version: well_calibration_of(served.engine.metadata.extra)}
                        if served is not None else None)
        for folder in folders:
            try:
                applied = self.store.apply_selection(folder.experiment_id, str(folder.cfg.path), folder.cfg.channel,
                                                     folder.cfg.z, calibrations=calibrations,
                                                     served_version=served.version if served is not None else None)
            except Exception as exc:  # the database refused: scoring new images matters more
                log.exception("could not apply the channel and z settings of %s to the images already seen",
                              folder.cfg.path)
                self.store.event("selection_error", f"{folder.cfg.path}: {exc}", level="error")
                continue
            if applied.changed:
                log.warning("%s", applied.summary())

    def discover(self) -> None:
        """The images intake found ready since the last pass into the queue."""
        for folder, items in self.intake.discover():
            refused = enqueue(self.store, folder.root, items)
            self.metrics.ready(i.path for i in items if i.error is None and i.skip_reason is None)
            for path in refused:
                self.intake.forget(path)
                self.metrics.dropped(path)

    def idle(self) -> bool:
        return self.intake.pending() == 0 and (not self.score or self._backlog() == 0)

    def run(self, *, once: bool = False, progress: Callable[[int, int], None] | None = None) -> None:
        if self.intake is None:
            self.setup()
        notify.default().ready(f"watching {len(self.folders)} folder(s)")
        if not once:
            self.intake.start()
        if self.leases is not None:
            self.leases.start()
        try:
            while not self.stop_event.is_set():
                self.discover()
                batch = self.scorer.process_batch() if self.score else Batch(0, 0)
                if self.on_batch and batch.stored:
                    self.on_batch(batch.stored)
                if self.heartbeat.due():
                    self._beat("running")
                    self.disk_notice.check()
                    if self.score:
                        self.slot.load_safely()  # between batches: a promoted model or a new engine takes over here
                        self.slot.report_build_safely()
                        self._notice_unlike_images()
                if batch.claimed and progress is not None:
                    progress(batch.claimed, self._backlog())
                if once and not batch.claimed and self.idle():
                    break
                if not batch.claimed and not self.intake.rescanning():
                    self.stop_event.wait(0.2 if once else min(self.poll_interval, 0.5))
        finally:
            notify.default().stopping()
            if self.score:
                self._notice_unlike_images()  # a --once backfill of another kind of images says so too
            self.intake.stop()
            if self.leases is not None:
                self.leases.stop()
            if self.engine_builds is not None:
                self.engine_builds.close()
            self._beat("stopped")

    def _notice_unlike_images(self) -> None:
        """Tell the notification hook once when most of the newest scored images become unlike
        the model's training data (``status``'s warning), and once when they no longer are: an
        unattended run learns of a folder of another channel or objective from its hook, not
        from a dashboard nobody opens. What was last told is read from the event log, at the
        first check and before each telling, so neither a restarted daemon nor the other daemons
        sharing its database tell it again."""
        from sqlalchemy.exc import SQLAlchemyError

        from nscmonitor.hooks import emit
        from nscmonitor.ops.health import OOD_WINDOW, ood_share_warning

        kinds = self._ood_told.kinds
        try:
            flagged, judged = self._repo.recent_ood(OOD_WINDOW)
            warning = ood_share_warning(flagged, judged)
            kind = kinds[0] if warning is not None else kinds[1]
            if not self._ood_told.should_tell(kind):
                return
            data = {"flagged": flagged, "of_newest_scored": judged}
            if warning is not None:
                emit(self.store.engine, kind, warning, level="warning", data=data, hook=self.settings.retrain.hook)
            else:
                emit(self.store.engine, kind, f"{flagged} of the newest {judged} scored images are unlike the model's "
                     "training data: back to its usual rate", data=data, hook=self.settings.retrain.hook)
            self._ood_told.told(kind)
        except SQLAlchemyError as exc:
            log.warning("cannot count the newest out-of-distribution flags: %s", exc)

    def _channel(self, path: str) -> str | None:
        """The watch folder's ``channel`` setting for an image: scored inside stacks and containers."""
        return formats.channel_for(self.settings.watch, path)

    def _backlog(self) -> int:
        counts = self._repo.queue_counts()
        return sum(counts.get(state, 0) for state in WAITING)

    def _watched(self) -> list[dict]:
        return [f.status() for f in self.folders]

    def _beat(self, state: str) -> None:
        model = self.model
        self.heartbeat.beat(state, engine=model.engine.name if model else None,
                            model_version=model.version if model else None,
                            images_per_s=self.metrics.images_per_s(), watched=self._watched())


def check_models_dir(path: Path) -> None:
    """At start, not at the first engine build hours later: the daemon writes the engines it
    builds and the registry's versions there."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserFacingError(f"models_dir: {path} is a file; give a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserFacingError(f"models_dir: cannot create the folder {path}: {exc.strerror or exc}") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserFacingError(f"models_dir: the folder {path} is not writable for this user; the daemon keeps the "
                              "engines it builds and the registry's model versions there")


def build_runner(settings: Settings, *, model: Path | None = None, watch: bool = True, score: bool = True,
                 **runner_kw) -> Daemon:
    """The daemon ``nscmonitor run`` starts, from validated settings; ``runner_kw`` go to ``Daemon``.
    ``watch``/``score`` False: ``run --score-only``/``--watch-only``, refused on SQLite (its
    single daemon both watches and scores, so an image would never be scored or never found)."""
    if not (watch and score) and sqlite_path(settings.database_url) is not None:
        raise UserFacingError(f"{'--score-only' if watch is False else '--watch-only'} needs a PostgreSQL database "
                              "shared with daemons that " + ("watch" if watch is False else "score")
                              + " (see docs/scale.md); on SQLite one daemon watches and scores: drop the option")
    if watch and not settings.watch:
        raise UserFacingError("nothing to watch: add [[watch]] folders to the config or pass --watch DIR")
    for w in settings.watch:
        if not w.path.is_dir():
            log.warning("watch folder %s is not reachable now; it will be retried", w.path)
    check_models_dir(settings.models_dir)
    if score:
        from nscmonitor.engines.select import remove_shared_openvino_cache

        remove_shared_openvino_cache(settings.models_dir / "engines")
    engine = open_engine(settings.database_url)
    ensure_schema(engine)
    model = model or settings.model
    source = static_model_source(model) if model else registry_model_source(settings)
    if source is None and score:
        raise UserFacingError(NO_MODEL)
    runner_kw.setdefault("engine_builds", DaemonEngineBuilds(settings) if score else None)
    return Daemon(settings, Writer(engine, lease_s=settings.lease_seconds), source, engine_factory(settings),
                  watch=watch, score=score, **runner_kw)


def install_signal_handlers(stop: threading.Event) -> None:
    def handler(signum, _frame) -> None:
        log.info("signal %s: finishing the batch in hand, then stopping", signum)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
