"""The model being served, and swapping it between batches.

A promoted model (a new version from the model source) or a new engine for the served
model (built in the background and gated here) takes over between batches only, so every
image is scored by exactly one engine. A model that cannot load leaves the old one
serving. An engine that keeps failing while it serves (a GPU whose driver was reset, which
stays unusable in this process) is replaced by the next one the selector offers
(``fail_over``), and its backend stays excluded until the daemon restarts."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from nscmonitor.engines.base import Engine
from nscmonitor.store.writer import Writer

log = logging.getLogger(__name__)

ModelSource = Callable[[], tuple[Path, str]]


class EngineFactory(Protocol):
    def __call__(self, path: Path, exclude: Mapping[str, str] | None = None) -> Engine:
        """The engine to serve ``path`` with, passing over the backends in ``exclude``."""


@dataclass
class LoadedModel:
    engine: Engine
    version: str
    path: Path
    #: identity of the engine built here for this model when it was loaded (EngineBuilds.token)
    engine_token: str | None = None


class EngineBuilds(Protocol):
    """Engine builds for the model being served (``scoring.engine_builds.DaemonEngineBuilds``):
    asked between batches, so a build never blocks scoring."""

    def ensure(self, model_path: Path) -> None:
        """Start a build in the background when this model has no engine here."""

    def token(self, model_path: Path) -> str | None:
        """Changes exactly when a new engine for this model has passed its gate."""

    def summary(self, model_path: Path, version: str) -> dict:
        """``state`` and a one-line ``message`` for the heartbeat's event and ``status``."""

    def close(self) -> None:
        """At daemon stop: no build outlives the daemon."""


class ModelSlot:
    def __init__(self, writer: Writer, model_source: ModelSource, engine_factory: EngineFactory, *,
                 engine_builds: EngineBuilds | None = None, hook: str | None = None) -> None:
        """``hook``: the notification hook told when an engine build fails."""
        self.writer = writer
        self.model_source = model_source
        self.engine_factory = engine_factory
        self.engine_builds = engine_builds
        self.hook = hook
        self.model: LoadedModel | None = None
        self.build_note: str | None = None
        self.load_error: str | None = None  # why the last (re)load was refused, reported once
        #: backends that failed while serving here, with the reason (until the daemon restarts)
        self.excluded: dict[str, str] = {}

    def load(self) -> bool:
        """(Re)load when the model source names a new version, or when a new engine for the
        served version has been built and gated here. A model with no engine for this
        machine gets a build started in the background and is served in fp32 meanwhile."""
        path, version = self.model_source()
        token = None
        if self.engine_builds is not None:
            self.engine_builds.ensure(path)
            token = self.engine_builds.token(path)
        if self.model is not None and self.model.version == version and self.model.path == path \
                and self.model.engine_token == token:
            return False
        engine = self.engine_factory(path, exclude=self.excluded)
        old = self.model
        self.model = LoadedModel(engine, version, path, token)
        if old is None or old.version != version:
            self._note_served(path, version, engine)
        if old is not None:
            old.engine.close()
            from nscmonitor.engines.autobuild import token_engine

            built = token_engine(token) == engine.name  # the new build's own engine serves
            if old.version == version and old.path == path and old.engine.name == engine.name and not built:
                log.info("engine build for %s finished; %s still serves", version, engine.name)
                self.writer.event("engine_kept", f"{version} still served with {engine.name} after the engine build "
                                  "here ('nscmonitor status' says why: e.g. the built engine is slower than fp32 "
                                  "on this machine)", data={"version": version, "engine": engine.name})
            elif old.version == version and old.path == path:
                log.info("engine swapped for %s: %s -> %s", version, old.engine.name, engine.name)
                self.writer.event("engine_swapped", f"{version} now served with {engine.name} (was {old.engine.name})",
                                  data={"version": version, "from": old.engine.name, "to": engine.name})
            else:
                log.info("model swapped: %s -> %s (%s)", old.version, version, engine.name)
                self.writer.event("model_swapped", f"now serving {version} with {engine.name}",
                                  data={"from": old.version, "to": version})
        return True

    def _note_served(self, path: Path, version: str, engine: Engine) -> None:
        """Keep the metadata of a model served from a file, not the registry, in the store
        (``store.registry.note_served``), so that the dashboard and the report read its call
        rule and provenance as they read a registered version's. A failure here costs only
        that, and is logged."""
        from sqlalchemy.exc import SQLAlchemyError

        from nscmonitor.engines.enginefile import file_sha256
        from nscmonitor.store.registry import find_version, note_served, served_file

        db = self.writer.engine
        try:  # the file is read for its hash only the first time its version is served
            if find_version(db, version) is None and served_file(db, version) is None and note_served(
                    db, version, path=str(path), sha256=file_sha256(path), meta=json.loads(engine.metadata.to_json())):
                log.info("serving %s from %s, not the registry: its metadata kept in the store", version, path)
        except (SQLAlchemyError, OSError, ValueError) as exc:
            log.warning("%s: could not keep the served model's metadata in the store: %s", path, exc)

    def fail_over(self, reason: str) -> bool:
        """Serve the model with the next engine the selector offers, leaving out the one in
        use (which failed ``reason``) until the daemon restarts; say so (log, event, the
        notification hook). False, keeping the current engine, when no other can serve."""
        from nscmonitor.engines.select import backend_of
        from nscmonitor.hooks import emit

        old = self.model
        if old is None:
            return False
        try:
            backend = backend_of(old.engine.name)
        except Exception:  # an engine of no known backend: nothing to leave out
            log.exception("cannot tell which backend %s is", old.engine.name)
            return False
        self.excluded[backend] = f"failed while serving here ({reason}); left out until the daemon restarts"
        try:
            engine = self.engine_factory(old.path, exclude=self.excluded)
        except Exception as exc:  # no other backend: keep the one that fails, retrying
            log.error("engine %s keeps failing (%s) and no other can serve %s: %s", old.engine.name, reason,
                      old.version, exc)
            del self.excluded[backend]
            return False
        self.model = LoadedModel(engine, old.version, old.path, old.engine_token)
        old.engine.close()
        msg = (f"{old.version}: engine {old.engine.name} kept failing ({reason}); now served with {engine.name} "
               "until the daemon restarts")
        log.error("%s", msg)
        emit(self.writer.engine, "engine_failed_over", msg, level="error", hook=self.hook,
             data={"version": old.version, "from": old.engine.name, "to": engine.name, "reason": reason})
        return True

    def load_safely(self) -> bool:
        try:
            loaded = self.load()
        except Exception as exc:  # keep serving the old model if the new one cannot load
            if str(exc) != self.load_error:  # once per reason, not at every heartbeat
                log.error("cannot load the new model: %s; still serving %s", exc, self.model and self.model.version)
                self.writer.event("model_load_failed", str(exc), level="error")
                self.load_error = str(exc)
            return False
        self.load_error = None
        return loaded

    def report_build(self) -> None:
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

        emit(self.writer.engine, "engine_build_failed" if failed else "engine_build", note,
             level="warning" if failed else "info", hook=self.hook if failed else None,
             data={"version": self.model.version, **{k: v for k, v in info.items() if k != "message"}})

    def report_build_safely(self) -> None:
        try:
            self.report_build()
        except Exception:  # a status file or hook problem must not stop scoring
            log.exception("cannot report the engine build state")
