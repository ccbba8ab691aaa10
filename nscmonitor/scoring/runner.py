"""The daemon loop: watch -> ready -> parse -> queue -> decode/QC/tile -> score -> store.

One thread owns the loop and the database writes; watchdog observers only feed queues.
Stopping (SIGINT/SIGTERM or ``stop_event``) finishes the batch in hand, or hands it back to
the queue if the engine is mid-failure, so no image is lost or scored twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

import numpy as np

from nscmonitor.ops import notify
from nscmonitor.config import Settings, WatchFolder
from nscmonitor.engines.base import Engine
from nscmonitor.core.domain import ParseResult
from nscmonitor.intake.filenames import detect_profile, parse_path
from nscmonitor.intake.filters import junk_reason
from nscmonitor.intake.profiles import BY_NAME, Profile, custom_profile
from nscmonitor.intake.readiness import ReadinessTracker
from nscmonitor.intake.watcher import FolderWatcher, stop_all
from nscmonitor.intake.zarr_plates import ZarrPlates
from nscmonitor.core.aggregate import image_score, pack_tiles
from nscmonitor.scoring.classify import score_batches
from nscmonitor.core.names import shown
from nscmonitor.scoring import formats
from nscmonitor.scoring.decode import DecodeError, decode, open_regular, why
from nscmonitor.core.limits import resample_refusal
from nscmonitor.scoring.qc import qc_metrics
from nscmonitor.scoring.preprocess import Preprocess
from nscmonitor.core.platemap import PlateMap, load_plate_map
from nscmonitor.store.models import MAX_ATTEMPTS
from nscmonitor.store.writer import Claimed, Discovered, Scored, Writer

log = logging.getLogger(__name__)


@dataclass
class Timings:
    """Where the time goes, for ``status`` and benchmarks/ingest.py."""

    decode: float = 0.0
    preprocess: float = 0.0
    inference: float = 0.0
    store: float = 0.0
    images: int = 0
    latencies: list[float] = field(default_factory=list)  # file ready -> prediction stored, seconds


@dataclass
class LoadedModel:
    engine: Engine
    version: str
    path: Path
    #: identity of the engine built here for this model when it was loaded (EngineBuilds.token)
    engine_token: str | None = None


class EngineBuilds(Protocol):
    """Engine builds for the model being served (``nscmonitor.daemon.DaemonEngineBuilds``):
    the runner asks between batches, so a build never blocks scoring."""

    def ensure(self, model_path: Path) -> None:
        """Start a build in the background when this model has no engine here."""

    def token(self, model_path: Path) -> str | None:
        """Changes exactly when a new engine for this model has passed its gate."""

    def summary(self, model_path: Path, version: str) -> dict:
        """``state`` and a one-line ``message`` for the heartbeat's event and ``status``."""


ModelSource = Callable[[], tuple[Path, str]]
EngineFactory = Callable[[Path], Engine]


class _Folder:
    def __init__(self, cfg: WatchFolder, experiment_id: int, plate_map: PlateMap, profile: Profile | str,
                 watcher: FolderWatcher) -> None:
        self.cfg = cfg
        self.experiment_id = experiment_id
        self.plate_map = plate_map
        self.profile = profile
        self.watcher = watcher
        self.root = str(cfg.path)


class Runner:
    def __init__(self, settings: Settings, store: Writer, model_source: ModelSource, engine_factory: EngineFactory, *,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 retry_base_s: float = 5.0, max_attempts: int = MAX_ATTEMPTS, claim_size: int = 4,
                 poll_interval: float = 2.0, heartbeat_s: float = 5.0,
                 engine_builds: EngineBuilds | None = None) -> None:
        self.settings = settings
        self.store = store
        self.model_source = model_source
        self.engine_factory = engine_factory
        self.clock = clock
        self.wall = wall
        self.retry_base_s = retry_base_s
        self.max_attempts = max_attempts
        self.claim_size = claim_size
        self.poll_interval = poll_interval
        self.heartbeat_s = heartbeat_s
        self.timings = Timings()
        self.model: LoadedModel | None = None
        self.folders: list[_Folder] = []
        self.trackers: dict[str, ReadinessTracker] = {}
        self.zarr: dict[str, ZarrPlates] = {}  # OME-Zarr plates: one unit per field (intake/zarr_plates.py)
        self.unopened: dict[str, tuple[int, float, int]] = {}  # container -> size, mtime, looks (formats.NotReady)
        self.known: dict[str, tuple[int, float]] = {}
        self.ready_at: dict[str, float] = {}
        self._done_times: deque[float] = deque(maxlen=2000)
        self.daemon_id: int | None = None
        self.stop_event = threading.Event()
        self.on_batch: Callable[[int], None] | None = None
        self.engine_builds = engine_builds
        self.build_note: str | None = None
        self.load_error: str | None = None  # why the last (re)load was refused, reported once

    # --- set-up -----------------------------------------------------------------------
    def _profile(self, cfg: WatchFolder) -> Profile | str:
        if cfg.profile.startswith("custom:"):
            name = cfg.profile.split(":", 1)[1]
            spec = next((c for c in self.settings.custom_profiles if c.name == name), None)
            if spec is None:
                raise ValueError(f"watch folder {cfg.path}: custom profile {name!r} is not defined")
            return custom_profile(spec)
        return BY_NAME[cfg.profile] if cfg.profile != "auto" else "auto"

    def setup(self) -> None:
        self.store.requeue_stale()
        self.known = self.store.known_files()
        for cfg in self.settings.watch:
            exp_id = self.store.ensure_experiment(cfg.experiment, watch_path=str(cfg.path),
                                                  induction_time=cfg.induction_time)
            watcher = FolderWatcher(cfg.path, polling=cfg.use_polling(), rescan_interval=cfg.rescan_interval,
                                    poll_interval=self.poll_interval, clock=self.clock)
            folder = _Folder(cfg, exp_id, load_plate_map(cfg.plate_map), self._profile(cfg), watcher)
            self.folders.append(folder)
            self.trackers[folder.root] = ReadinessTracker(cfg.quiet_seconds, clock=self.clock)
            self.zarr[folder.root] = ZarrPlates(cfg.quiet_seconds, clock=self.clock, wall=self.wall)
        self.load_model()
        self.daemon_id = self.store.start_daemon(self._watched())

    def load_model(self) -> bool:
        """(Re)load when the model source names a new version, or when a new engine for the
        served version has been built and gated here; between batches only, so every image
        is scored by exactly one engine. A model with no engine for this machine gets a build
        started in the background and is served in fp32 meanwhile."""
        path, version = self.model_source()
        token = None
        if self.engine_builds is not None:
            self.engine_builds.ensure(path)
            token = self.engine_builds.token(path)
        if self.model is not None and self.model.version == version and self.model.path == path \
                and self.model.engine_token == token:
            return False
        engine = self.engine_factory(path)
        old = self.model
        self.model = LoadedModel(engine, version, path, token)
        if old is not None:
            old.engine.close()
            if old.version == version and old.path == path:
                log.info("engine swapped for %s: %s -> %s", version, old.engine.name, engine.name)
                self.store.event("engine_swapped", f"{version} now served with {engine.name} (was {old.engine.name})",
                                 data={"version": version, "from": old.engine.name, "to": engine.name})
            else:
                log.info("model swapped: %s -> %s (%s)", old.version, version, engine.name)
                self.store.event("model_swapped", f"now serving {version} with {engine.name}",
                                 data={"from": old.version, "to": version})
        return True

    def report_engine_build(self) -> None:
        """Say (log, event, notification hook on failure) when the served model's engine build
        starts, finishes or fails; quiet while nothing changes."""
        if self.engine_builds is None or self.model is None:
            return
        info = self.engine_builds.summary(self.model.path, self.model.version)
        note = info["message"]
        if note == self.build_note:
            return
        self.build_note = note
        failed = info["state"] in ("failed", "no-calibration")
        log.log(logging.WARNING if failed else logging.INFO, "engine build: %s", note)
        from nscmonitor.hooks import emit

        emit(self.store.engine, "engine_build_failed" if failed else "engine_build", note,
             level="warning" if failed else "info", hook=self.settings.retrain.hook if failed else None,
             data={"version": self.model.version, **{k: v for k, v in info.items() if k != "message"}})

    # --- discovery ----------------------------------------------------------------------
    def _discover(self) -> None:
        for f in self.folders:
            try:
                self._discover_folder(f)
            except Exception:  # one folder's trouble (a share, a database hiccup) must not stop the others
                log.exception("%s: discovery failed; retried at the next pass", shown(f.root))

    def _discover_folder(self, f: _Folder) -> None:
        """Symbolic links follow one rule, at start-up, at every rescan and live: they are
        never followed (a link's target is scored under its own path when it lies in a
        watched folder; one that points out of the folder is not ours to read) and each is
        recorded as skipped with that reason, so nothing is silently dropped."""
        tracker = self.trackers[f.root]
        w = f.watcher
        w.supervise()
        links = []
        for p in self.zarr[f.root].claim(w.drain()):
            if self.known.get(p) is None or self._changed(p):
                st = _stat(p)
                if st is not None and _is_link(p):
                    links.append((p, *st))
                else:
                    tracker.touch(p, event=True)
        if w.due_for_scan():
            paths = self.zarr[f.root].claim(w.full_scan())
            self._retry_unreadable()
            if f.profile == "auto" and paths:
                rel = [self._rel(f, p) for p in paths[:200]]
                detected = detect_profile(rel)
                if detected:
                    f.profile = BY_NAME[detected]
                    log.info("%s: detected the %s file-name profile", f.root, detected)
            now = self.wall()
            for p in paths:
                st = _stat(p)
                if st is None or self.known.get(p) == st:
                    continue
                if _is_link(p):
                    links.append((p, *st))
                elif now - st[1] >= f.cfg.quiet_seconds:
                    tracker.add_settled(p, *st)
                else:
                    tracker.touch(p, event=False)
        ready = tracker.ready() + list(dict.fromkeys(links)) + self.zarr[f.root].ready()
        if ready:
            self._enqueue(f, ready)

    def _retry_unreadable(self) -> None:
        """Files quarantined because they could not be opened go back to the queue as soon
        as they can be: fixing permissions changes neither size nor mtime, so the usual
        changed-file rule would never notice."""
        back = []
        for image_id, path in self.store.unreadable_quarantined().items():
            try:
                with open_regular(path):
                    back.append(image_id)
            except (OSError, DecodeError):
                continue
        if back and self.store.requeue(back):
            log.info("%d file(s) quarantined as unreadable can be read now; queued again", len(back))

    def _changed(self, p: str) -> bool:
        return _stat(p) != self.known.get(p)

    @staticmethod
    def _rel(f: _Folder, p: str) -> str:
        return Path(p).relative_to(f.cfg.path).as_posix()

    def _enqueue(self, f: _Folder, ready: list[tuple[str, int, float]]) -> None:
        items = []
        for path, size, mtime, unit in self._units(f, ready):
            rel = self._rel(f, path)
            try:
                res = parse_path(self._rel(f, formats.split_ref(path)[0]), f.profile, plate_format=f.cfg.plate_format)
            except ValueError as exc:
                log.warning("%s: cannot parse: %s", shown(path), exc)
                continue
            if unit is not None and (unit.key is not None or unit.error is not None):
                res = ParseResult(rel, "error" if unit.error else "image", unit.profile, unit.key, unit.error)
            self.known[path] = (size, mtime)
            if res.kind in ("ignore", "sidecar"):
                continue
            key = res.key
            error = res.reason if res.kind == "error" else None
            skip = None
            if key is not None and f.cfg.channel is not None and key.channel is not None \
                    and _norm_channel(key.channel) != _norm_channel(f.cfg.channel):
                skip = f"channel {key.channel} is not the scored channel ({f.cfg.channel})"
            if _is_link(path):
                error, skip = None, LINK_SKIP
            acquired = key.acquired_at if key is not None else None
            acquired_utc = acquired.astimezone(timezone.utc) if acquired else datetime.fromtimestamp(mtime, timezone.utc)
            items.append(Discovered(
                path=path, relpath=rel, size=size, mtime=mtime, experiment_id=f.experiment_id, profile=res.profile,
                key=key, plate=f.cfg.plate or (key.plate if key else None) or f.cfg.path.name,
                plate_format=f.cfg.plate_format, elapsed_h=_elapsed(key, acquired_utc, f.cfg.induction_time),
                acquired_at=acquired_utc, condition=f.plate_map.condition(key.well) if key else None,
                attributes=f.plate_map.attributes.get(key.well) if key else None,
                error=error, skip_reason=skip,
            ))
            if error:
                log.warning("%s: quarantined: %s", shown(path), error)
            self.ready_at[path] = self.clock()
        if items:
            try:
                new, changed = self.store.enqueue(items)
            except Exception:  # one row the database refuses must not keep the rest out of the queue
                log.exception("%s: queueing %d files failed; queueing them one by one", shown(f.root), len(items))
                new = changed = 0
                for item in items:
                    try:
                        n, c = self.store.enqueue([item])
                        new, changed = new + n, changed + c
                    except Exception as exc:  # logged with the file; looked at again at the next rescan
                        log.error("%s: cannot be queued: %s", shown(item.path), why(exc))
                        self.known.pop(item.path, None)
                        self.ready_at.pop(item.path, None)
            log.debug("%s: %d new, %d changed files queued", f.root, new, changed)

    def _units(self, f: _Folder, ready: list[tuple[str, int, float]]):  # noqa: ANN202 - generator
        """The images in the ready paths: an OME-Zarr field placed by its plate's metadata, the
        positions or scenes of an ND2/CZI file that name wells, else the path itself (placed
        by its name). A symbolic link is never opened to look inside."""
        zp = self.zarr[f.root]
        for path, size, mtime in ready:
            key = zp.key(path)
            if key is not None:
                yield path, size, mtime, formats.Unit(path, key, "ome-zarr")
                continue
            try:
                found = None if _is_link(path) or junk_reason(self._rel(f, path)) else formats.units(path)
            except formats.NotReady as exc:
                if not self._wait_for_container(path, size, mtime, str(exc)):
                    continue
                found = None  # unreadable however long it waits: decoding records why
            if not found:
                yield path, size, mtime, None
                continue
            self.known[path] = (size, mtime)
            for unit in found:
                yield unit.ref, size, mtime, unit

    def _wait_for_container(self, path: str, size: int, mtime: float, reason: str) -> bool:
        """An ND2/CZI file that cannot be opened is not queued but looked at again at later
        rescans (it is not marked known); after ``MAX_LOOKS`` looks at the same size and
        mtime it is queued as it is. Returns True when it should be queued now."""
        seen = self.unopened.get(path)
        looks = seen[2] + 1 if seen is not None and seen[:2] == (size, mtime) else 1
        if looks >= formats.MAX_LOOKS:
            self.unopened.pop(path, None)
            return True
        self.unopened[path] = (size, mtime, looks)
        log.info("%s: cannot be opened yet (%s); looked at again at the next rescan", shown(path), reason)
        return False

    def _channel(self, path: str) -> str | None:
        """The watch folder's ``channel`` setting for an image: scored inside stacks and containers."""
        return formats.channel_for((f.cfg for f in self.folders), path)

    # --- scoring ------------------------------------------------------------------------
    def process_batch(self) -> int:
        assert self.model is not None
        model = self.model
        claimed = self.store.claim(self.claim_size, self.wall(), model.version, max_attempts=self.max_attempts)
        if not claimed:
            return 0
        meta = model.engine.metadata
        prepared: list[tuple[Claimed, object, object, object]] = []
        for c in claimed:
            # The per-image error boundary: decode, QC, resampling, tiling. Whatever one
            # file does (a codec bug, an absurd tag, a resampler refusing), that image is
            # failed or quarantined with the reason and the others go on.
            try:
                item = self._prepare(c, meta)
            except DecodeError as exc:
                self._fail(c, exc.reason, exc.permanent)
                continue
            except Exception as exc:  # a bug or an odd file must not stop the daemon
                log.exception("%s: unexpected error while preparing the image", shown(c.path))
                self._fail(c, f"unexpected error while preparing the image: {why(exc)}", False)
                continue
            if item is not None:
                prepared.append(item)
        if not prepared:
            return len(claimed)
        t0 = time.perf_counter()
        probs = self._score(prepared)
        if probs is None:
            return len(claimed)
        t1 = time.perf_counter()
        results = []
        stored = []
        for (c, dec, qc, grid), p in zip(prepared, probs):
            if p is None:
                continue
            try:
                score = image_score(p) if grid is not None and len(p) else None
                results.append(Scored(
                    image_id=c.id, content_hash=dec.sha256, qc=qc, width=dec.pixels.shape[1],
                    height=dec.pixels.shape[0], score=score,
                    tiles_blob=pack_tiles(p, grid.rows, grid.cols, grid.kept) if grid is not None else None,
                    model_version=model.version, classes=meta.classes, engine=model.engine.name,
                ))
                stored.append(c)
            except Exception as exc:  # the same boundary for packing one image's result
                log.exception("%s: unexpected error while packing the result", shown(c.path))
                self._fail(c, f"unexpected error while packing the result: {why(exc)}", False)
        stored = self._complete(results, stored)
        t2 = time.perf_counter()
        self.timings.inference += t1 - t0
        self.timings.store += t2 - t1
        self.timings.images += len(stored)
        now = self.clock()
        for c in stored:
            started = self.ready_at.pop(c.path, None)
            if started is not None:
                self.timings.latencies.append(now - started)
            self._done_times.append(now)
        if self.on_batch and stored:
            self.on_batch(len(stored))
        return len(claimed)

    def _prepare(self, c: Claimed, meta) -> tuple[Claimed, object, object, object] | None:  # noqa: ANN001
        """Decode, QC and tile one claimed image; None when it needs no scoring."""
        norm = meta.normalization
        t0 = time.perf_counter()
        dec = decode(c.path, max_pixels=self.settings.max_pixels, channel=self._channel(c.path))
        t1 = time.perf_counter()
        if c.scored and dec.sha256 == c.previous_hash:
            self.store.unchanged(c.id)
            return None
        qc = qc_metrics(dec.pixels, p_low=norm["p_low"], p_high=norm["p_high"])
        grid = None
        if not qc.blank and not qc.nonfinite:
            pre = Preprocess.from_metadata(meta)
            factor = pre.factor(dec.pixel_size_um)
            refusal = resample_refusal(dec.pixels.shape, factor, self.settings.max_pixels, meta.input_size)
            if refusal:
                raise DecodeError(refusal, permanent=True)
            grid = pre.tiles(dec.pixels, factor=factor, lohi=(qc.p_low, qc.p_high))
        t2 = time.perf_counter()
        self.timings.decode += t1 - t0
        self.timings.preprocess += t2 - t1
        return c, dec, qc, grid

    def _score(self, prepared: list) -> list | None:
        """Tile probabilities per prepared image, None for an image the engine failed on.
        When a whole batch fails, each image is tried alone: one image the engine cannot
        take is failed on its own (its attempts count), while an engine that fails on
        every image hands the batch back untouched (returns None)."""
        model = self.model
        meta = model.engine.metadata
        tiles = [g.tiles if g is not None else _empty(meta) for _, _, _, g in prepared]
        try:
            return score_batches(model.engine, tiles, self.settings.batch_size)
        except Exception as exc:  # any engine error type: which image (or the engine) is at fault is decided below
            first = exc
        out: list = []
        errors: list[tuple[Claimed, Exception]] = []
        if len(prepared) > 1:
            for (c, *_), t in zip(prepared, tiles):
                try:
                    out.extend(score_batches(model.engine, [t], self.settings.batch_size))
                except Exception as exc:  # this image's failure, counted against its attempts
                    out.append(None)
                    errors.append((c, exc))
        if len(prepared) == 1 or len(errors) == len(prepared):
            log.error("engine %s failed on a batch: %s; the batch goes back to the queue", model.engine.name, first)
            self.store.event("engine_error", str(first), level="error")
            self.store.release(c.id for c, *_ in prepared)
            self.stop_event.wait(self.retry_base_s)
            return None
        for c, exc in errors:
            self._fail(c, f"the engine failed on this image: {why(exc)}", False)
        return out

    def _complete(self, results: list[Scored], claimed: list[Claimed]) -> list[Claimed]:
        """Store the batch in one transaction; if that fails, each image alone, so one row
        the database refuses cannot fail the others. Returns the images stored."""
        if not results:
            return []
        try:
            self.store.complete(results)
            return claimed
        except Exception as exc:  # a database hiccup must not stop the daemon; retry later
            log.exception("could not store the results of %d images", len(results))
            if len(results) == 1:
                self._fail(claimed[0], f"could not store the result: {why(exc)}", False)
                return []
        done = []
        for r, c in zip(results, claimed):
            try:
                self.store.complete([r])
                done.append(c)
            except Exception as exc:  # this image's row is the problem: fail it alone
                log.exception("%s: could not store the result", shown(c.path))
                self._fail(c, f"could not store the result: {why(exc)}", False)
        return done

    def _fail(self, c: Claimed, reason: str, permanent: bool) -> None:
        retry_at = self.wall() + self.retry_base_s * (2 ** (c.attempts - 1))
        state = self.store.fail(c.id, reason, permanent=permanent, retry_at=retry_at, max_attempts=self.max_attempts)
        log.warning("%s: %s (%s)", shown(c.path), reason, state)

    def images_per_s(self, window: float = 300.0) -> float:
        now = self.clock()
        recent = [t for t in self._done_times if now - t <= window]
        if len(recent) < 2:
            return 0.0
        return len(recent) / max(now - recent[0], 1e-6)

    # --- the loop -----------------------------------------------------------------------
    def idle(self) -> bool:
        return not any(len(t) for t in (*self.trackers.values(), *self.zarr.values())) and self._backlog() == 0

    def run(self, *, once: bool = False, progress: Callable[[int, int], None] | None = None) -> None:
        if self.daemon_id is None:
            self.setup()
        notify.default().ready(f"watching {len(self.folders)} folder(s)")
        for f in self.folders:
            if not once:
                f.watcher.start()
        last_beat = 0.0
        try:
            while not self.stop_event.is_set():
                self._discover()
                worked = self.process_batch()
                now = self.clock()
                if now - last_beat >= self.heartbeat_s:
                    self._beat("running")
                    last_beat = now
                    self.load_model_safely()  # between batches: a promoted model or a new engine takes over here
                    self._report_builds_safely()
                if worked and progress is not None:
                    progress(worked, self._backlog())
                if once and not worked and self.idle():
                    break
                if not worked:
                    self.stop_event.wait(0.2 if once else min(self.poll_interval, 0.5))
        finally:
            notify.default().stopping()
            stop_all([f.watcher for f in self.folders])
            self._beat("stopped")

    def _report_builds_safely(self) -> None:
        try:
            self.report_engine_build()
        except Exception:  # a status file or hook problem must not stop scoring
            log.exception("cannot report the engine build state")

    def load_model_safely(self) -> bool:
        try:
            loaded = self.load_model()
        except Exception as exc:  # keep serving the old model if the new one cannot load
            if str(exc) != self.load_error:  # once per reason, not at every heartbeat
                log.error("cannot load the new model: %s; still serving %s", exc, self.model and self.model.version)
                self.store.event("model_load_failed", str(exc), level="error")
                self.load_error = str(exc)
            return False
        self.load_error = None
        return loaded

    def _backlog(self) -> int:
        from sqlalchemy import func, select

        from nscmonitor.store import models as m

        with self.store.Session() as s:
            return s.scalar(select(func.count()).select_from(m.Image)
                            .where(m.Image.status.in_(("pending", "failed", "processing")))) or 0

    def _watched(self) -> list[dict]:
        return [{"path": str(f.cfg.path), "experiment": f.cfg.experiment, "reachable": f.watcher.reachable,
                 "polling": f.cfg.use_polling(), "error": f.watcher.last_error} for f in self.folders]

    def _beat(self, state: str) -> None:
        if self.daemon_id is None:
            return
        watched = self._watched()
        self.store.heartbeat(self.daemon_id, state=state,
                             engine=self.model.engine.name if self.model else None,
                             model_version=self.model.version if self.model else None,
                             images_per_s=self.images_per_s(), watched=watched)
        if state == "running":
            notify.default().watchdog()  # only after the heartbeat is written: a hung database trips it too


LINK_SKIP = "symbolic link: not followed (a target inside a watched folder is scored under its own path)"


def _stat(p: str) -> tuple[int, float] | None:
    """Size and mtime of the path itself (a symbolic link's own, never its target's)."""
    import os

    try:
        st = os.lstat(p)
    except OSError:
        return None
    return st.st_size, st.st_mtime


def _is_link(p: str) -> bool:
    import os

    return os.path.islink(p)


def _norm_channel(ch: str) -> str:
    return str(int(ch)) if ch.isdigit() else ch.strip().lower()


def _elapsed(key, acquired_utc: datetime, induction: datetime | None) -> float | None:  # noqa: ANN001
    if key is not None and key.elapsed_h is not None:
        return key.elapsed_h
    if induction is not None:
        return (acquired_utc - induction).total_seconds() / 3600.0
    return None


def _empty(meta) -> np.ndarray:  # noqa: ANN001
    return np.zeros((0, meta.input_channels, meta.input_size, meta.input_size), np.float32)
