"""Which model the daemon serves and the engine it serves it with: a model file given
directly (checked against its start-time hash before every reload) or the registry's
active version, and the inference backend chosen for this machine."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from nscmonitor.config import Settings
from nscmonitor.core.errors import UserFacingError
from nscmonitor.engines.base import Engine, EngineError
from nscmonitor.engines.metadata import MetadataError, read_onnx_metadata
from nscmonitor.scoring.hot_swap import EngineFactory, ModelSource
from nscmonitor.store.db import open_engine

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


def engine_factory(settings: Settings) -> EngineFactory:
    def factory(path: Path, exclude: Mapping[str, str] | None = None) -> Engine:
        from nscmonitor.engines.select import select

        try:
            sel = select(path, settings.engine, batch_size=settings.batch_size, threads=settings.threads,
                         cache_dir=settings.models_dir / "engines", exclude=exclude)
        except MetadataError as exc:
            raise UserFacingError(f"refusing model {path}: {exc}") from exc
        except EngineError as exc:
            raise UserFacingError(f"no engine can serve {path}: {exc}") from exc
        for backend, why in sel.skipped:
            log.info("engine %s not used: %s", backend, why)
        log.info("serving %s with %s", path, sel.engine.name)
        return sel.engine

    return factory
