"""Wiring for ``nscmonitor run``: settings -> store -> model source -> engine -> runner.

Kept apart from the CLI so tests and benchmarks start the same daemon in-process."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

from nscmonitor.config import Settings
from nscmonitor.engines.base import Engine, EngineError
from nscmonitor.engines.metadata import MetadataError, read_onnx_metadata
from nscmonitor.core.errors import UserFacingError
from nscmonitor.scoring.runner import ModelSource, Runner
from nscmonitor.store.db import ensure_schema, open_engine
from nscmonitor.store.writer import Writer

log = logging.getLogger(__name__)

NO_MODEL = (
    "no model to score with. Give one with --model PATH.onnx or 'model = \"...\"' in the config, "
    "train one with 'nscmonitor train' (see docs/training.md), or register one with 'nscmonitor models'. "
    "'make demo' trains a small demo model."
)


def file_version(path: Path) -> str:
    """Version string of a model file used directly (not through the registry): its
    declared version plus a content hash, so two files that both say 'v1' stay apart."""
    from nscmonitor.engines.enginefile import file_sha256

    meta = read_onnx_metadata(path)
    return f"{meta.version}-{file_sha256(path)[:8]}"


def static_model_source(path: Path) -> ModelSource:
    path = Path(path)
    if not path.is_file():
        raise UserFacingError(f"model file not found: {path}. {NO_MODEL}")
    try:
        version = file_version(path)
    except MetadataError as exc:
        raise UserFacingError(f"refusing model {path}: {exc}") from exc
    from nscmonitor.registry.registry import FileHashCache, ModelIntegrityError, integrity_problem

    cache = FileHashCache()
    sha = cache.sha256(path)

    def source() -> tuple[Path, str]:
        """The file as it was at start: changed later, it is refused (the engine loaded keeps serving)."""
        problem = integrity_problem(version, path, sha, cache)
        if problem is not None:
            raise ModelIntegrityError(f"refusing to serve model {version}: {problem}")
        return path, version

    return source


def registry_model_source(settings: Settings) -> ModelSource | None:
    try:
        from nscmonitor.registry.registry import Registry
    except ImportError:
        return None
    from nscmonitor.registry.registry import FileHashCache, ModelIntegrityError

    reg = Registry(settings.models_dir, open_engine(settings.database_url))
    if reg.active() is None:
        return None
    cache = FileHashCache()
    reported: set[str] = set()

    def source() -> tuple[Path, str]:
        """The active version, its file checked against the registered SHA-256 before every
        (re)load; a refusal is recorded once as an event, not at every heartbeat."""
        try:
            act = reg.active_verified(cache)
        except ModelIntegrityError as exc:
            if str(exc) not in reported:
                reported.add(str(exc))
                bad = reg.active()
                reg.record_refusal(bad.version if bad else "?", str(exc))
            raise
        if act is None:
            raise UserFacingError("the active model was retired and none replaced it")
        return Path(act.path), act.version

    return source


def engine_factory(settings: Settings):  # noqa: ANN201
    def factory(path: Path) -> Engine:
        from nscmonitor.engines.select import select

        try:
            sel = select(path, settings.engine, batch_size=settings.batch_size, threads=settings.threads,
                         cache_dir=settings.models_dir / "engines")
        except MetadataError as exc:
            raise UserFacingError(f"refusing model {path}: {exc}") from exc
        except EngineError as exc:
            raise UserFacingError(f"no engine can serve {path}: {exc}") from exc
        for backend, why in sel.skipped:
            log.info("engine %s not used: %s", backend, why)
        log.info("serving %s with %s", path, sel.engine.name)
        return sel.engine

    return factory


class DaemonEngineBuilds:
    """The daemon's side of build on arrival: it starts a background build (lower priority,
    ``engines.autobuild``) when the served model has no engine for this machine, reaps it,
    and tells the runner when a new engine has passed its gate so it can swap between
    batches. A preference for a backend that needs no build (``engine = "ort-cpu"``) turns
    building off."""

    def __init__(self, settings: Settings) -> None:
        from nscmonitor.engines.autobuild import wants_build

        self.enabled = wants_build(settings.engine)
        self.threads = settings.threads
        self._procs: dict[Path, object] = {}
        #: builds that ended without recording an outcome (killed, out of memory, a runtime crash)
        #: or could not start, with the fingerprint they had: retried only when it changes, not
        #: at every heartbeat for weeks
        self._gave_up: dict[Path, object] = {}

    def ensure(self, model_path: Path) -> None:
        from nscmonitor.engines import autobuild

        if not self.enabled:
            return
        for path, proc in list(self._procs.items()):  # reap finished builds, of this model or an earlier one
            if proc.poll() is not None:
                del self._procs[path]
                if autobuild.needed(path)[0] == "build":
                    self._give_up(path, f"the build process ended (exit code {proc.returncode}) without recording "
                                        f"an outcome; see {autobuild.log_path(path)}")
        if model_path in self._procs:
            return
        if model_path in self._gave_up and self._gave_up[model_path] == autobuild.fingerprint(model_path):
            return
        try:
            started = autobuild.start(model_path, threads=self.threads)
        except Exception as exc:  # an engine is an optimisation: whatever goes wrong, fp32 keeps serving
            self._give_up(model_path, f"cannot start an engine build: {exc}")
            return
        if started is not None:
            self._procs[model_path] = started

    def _give_up(self, model_path: Path, reason: str) -> None:
        from nscmonitor.engines import autobuild

        log.warning("%s: %s; fp32 keeps serving, and the build is retried when the model, its calibration set or "
                    "the runtimes change, or at the next daemon start", model_path, reason)
        try:
            self._gave_up[model_path] = autobuild.fingerprint(model_path)
        except OSError as exc:
            log.warning("%s: cannot fingerprint the model: %s", model_path, exc)

    def token(self, model_path: Path) -> str | None:
        from nscmonitor.engines.autobuild import token

        return token(model_path) if self.enabled else None

    def summary(self, model_path: Path, version: str) -> dict:
        from nscmonitor.engines.autobuild import summary

        if not self.enabled:
            return {"state": "off", "message": "engine builds are off (engine preference set in the configuration)"}
        info = summary(model_path, version)
        proc = self._procs.get(model_path)
        if info["state"] in ("none", "interrupted") and proc is not None and proc.poll() is None:
            # the build just started and has not written its record yet
            info = {"state": "building", "message": f"building an engine for {version} in the background; "
                                                    "scoring goes on with the engine in use"}
        return info


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


def build_runner(settings: Settings, *, model: Path | None = None, **runner_kw) -> Runner:  # noqa: ANN003
    if not settings.watch:
        raise UserFacingError("nothing to watch: add [[watch]] folders to the config or pass --watch DIR")
    for w in settings.watch:
        if not w.path.is_dir():
            log.warning("watch folder %s is not reachable now; it will be retried", w.path)
    check_models_dir(settings.models_dir)
    engine = open_engine(settings.database_url)
    ensure_schema(engine)
    model = model or settings.model
    source = static_model_source(model) if model else registry_model_source(settings)
    if source is None:
        raise UserFacingError(NO_MODEL)
    runner_kw.setdefault("engine_builds", DaemonEngineBuilds(settings))
    return Runner(settings, Writer(engine), source, engine_factory(settings), **runner_kw)


def install_signal_handlers(stop: threading.Event) -> None:
    def handler(signum, _frame) -> None:  # noqa: ANN001
        log.info("signal %s: finishing the batch in hand, then stopping", signum)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
