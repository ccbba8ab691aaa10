"""The model registry.

On disk each version is a folder ``<models_dir>/versions/<version>/`` holding the ONNX
model (the canonical artefact), whatever engines were built from it, and the run's
metrics, resolved config and data hash. In the store, ``model_versions`` holds its state.
Exactly one version is ``active``; promotion retires the previous one, and ``rollback``
re-activates the most recently retired version, so undoing a promotion is one command.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

from sqlalchemy import Engine

from nscmonitor.core.errors import UserFacingError
from nscmonitor.engines.enginefile import file_sha256
from nscmonitor.engines.metadata import MetadataError, read_onnx_metadata
from nscmonitor.store.events import record_event
from nscmonitor.store.registry import (ModelInfo, active_version, add_version, find_version, list_versions,
                                       promote_version, rollback_version)

log = logging.getLogger(__name__)

# best.pt: the torch engines serve the checkpoint (no ONNX -> torch converter is trusted), the
# GPU's among them where TensorRT is missing (engines.torch_cuda)
RUN_FILES = ("metrics.json", "config.json", "evaluation.png", "tiles.json", "best.pt")


class ModelIntegrityError(UserFacingError):
    """A registered version's file no longer has the content it was registered with."""


class FileHashCache:
    """SHA-256 of model files, recomputed only when the file's inode, size, mtime or ctime
    changed: the daemon checks before every (re)load without re-reading a large model each
    time, and ctime cannot be set back by whoever replaced the file."""

    def __init__(self) -> None:
        self._seen: dict[Path, tuple[tuple[int, int, int, int], str]] = {}

    def sha256(self, path: Path) -> str:
        st = path.stat()
        key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        hit = self._seen.get(path)
        if hit is not None and hit[0] == key:
            return hit[1]
        sha = file_sha256(path)
        self._seen[path] = (key, sha)
        return sha


def integrity_problem(version: str, path: Path, sha256: str, cache: FileHashCache | None = None) -> str | None:
    """Why the file must not be served as ``version``, or None when it is the registered one."""
    path = Path(path)
    if not path.is_file():
        return f"the model file of {version} is missing: {path}"
    actual = (cache or FileHashCache()).sha256(path)
    if actual != sha256:
        return (f"the model file of {version} changed on disk since it was registered (sha256 {actual[:12]}..., "
                f"registered {sha256[:12]}...): {path}; restore the file or register it as a new version")
    return None


class Registry:
    def __init__(self, models_dir: Path, engine: Engine) -> None:
        self.models_dir = Path(models_dir)
        self.engine = engine

    def list(self) -> list[ModelInfo]:
        return list_versions(self.engine)

    def get(self, version: str) -> ModelInfo:
        info = find_version(self.engine, version)
        if info is None:
            raise UserFacingError(f"no model version {version!r} (see 'nscmonitor models list')")
        return info

    def active(self) -> ModelInfo | None:
        return active_version(self.engine)

    def active_verified(self, cache: FileHashCache | None = None) -> ModelInfo | None:
        """The active version, provided its file still has the registered SHA-256: a file
        replaced on disk is never served under the old version's name."""
        act = self.active()
        if act is None:
            return None
        problem = integrity_problem(act.version, Path(act.path), act.sha256, cache)
        if problem is not None:
            raise ModelIntegrityError(f"refusing to serve model {act.version}: {problem}")
        return act

    def record_refusal(self, version: str, reason: str) -> None:
        record_event(self.engine, "model_refused", reason, level="error", data={"version": version})

    def register(self, source: Path, *, version: str | None = None, labels_version: int | None = None,
                 activate_if_first: bool = True, calibration: Path | None = None) -> ModelInfo:
        """Copy a run dir's model (or a bare .onnx) into the registry as a candidate, with the
        calibration set its training run wrote beside it (hash verified), or the one given
        as ``calibration`` (a tiles folder or a calibration.npz) for a model from elsewhere."""
        source = Path(source)
        onnx_path = source / "model.onnx" if source.is_dir() else source
        if not onnx_path.is_file():
            raise UserFacingError(f"no model.onnx in {source}")
        try:
            meta = read_onnx_metadata(onnx_path)
        except MetadataError as exc:
            raise UserFacingError(f"refusing to register {onnx_path}: {exc}") from exc
        sha = file_sha256(onnx_path)
        version = version or f"{_slug(meta.version)}-{sha[:8]}"
        if find_version(self.engine, version) is not None:
            raise UserFacingError(f"model version {version!r} is already registered")
        dest = self.models_dir / "versions" / version
        part = dest.with_name(dest.name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir(parents=True)
        shutil.copy2(onnx_path, part / "model.onnx")
        if source.is_dir():
            for name in RUN_FILES:
                if (source / name).is_file():
                    shutil.copy2(source / name, part / name)
        try:
            _copy_calibration(onnx_path, meta, part, calibration)
        except UserFacingError:
            shutil.rmtree(part, ignore_errors=True)
            raise
        _copy_engine(onnx_path, part)
        if dest.exists():
            shutil.rmtree(dest)
        part.rename(dest)
        add_version(self.engine, version, name=meta.name, path=str(dest / "model.onnx"), sha256=sha,
                    scheme=meta.scheme, classes=tuple(meta.classes), meta=json.loads(meta.to_json()),
                    labels_version=labels_version, activate_if_first=activate_if_first)
        return self.get(version)

    def promote(self, version: str, *, reason: str = "promoted by hand") -> ModelInfo:
        if promote_version(self.engine, version, reason=reason, check=_refuse_changed_file):
            log.info("model %s promoted: %s", version, reason)
        return self.get(version)

    def rollback(self) -> ModelInfo:
        """Retire the active version and re-activate the one that was active before it."""
        return self.get(rollback_version(self.engine, check=_refuse_changed_file_on_rollback))


def _refuse_changed_file(info: ModelInfo) -> None:
    problem = integrity_problem(info.version, Path(info.path), info.sha256)
    if problem is not None:
        raise ModelIntegrityError(f"refusing to promote {info.version}: {problem}")


def _refuse_changed_file_on_rollback(info: ModelInfo) -> None:
    problem = integrity_problem(info.version, Path(info.path), info.sha256)
    if problem is not None:
        raise ModelIntegrityError(f"refusing to roll back to {info.version}: {problem}; nothing changed "
                                  "('nscmonitor models promote VERSION' activates another version)")


def _copy_calibration(onnx_path: Path, meta, part: Path, given: Path | None) -> None:
    """The version folder gets the model's calibration set, verified: a corrupt or foreign
    set would calibrate and certify an engine on the wrong tiles."""
    from nscmonitor.engines.base import EngineError
    from nscmonitor.engines.calibration import MANIFEST_FILE, TILES_FILE, read_manifest, tiles_from_folder

    try:
        if given is not None:
            tiles_from_folder(Path(given), part)
            return
        src = onnx_path.parent / TILES_FILE
        if not src.is_file():
            return
        sha = read_manifest(src)["sha256"]
        if meta.calibration_sha256 and meta.calibration_sha256 != sha:
            raise EngineError(f"{src} (sha256 {sha[:12]}) is not the set the model records "
                              f"({meta.calibration_sha256[:12]})")
        shutil.copy2(src, part / TILES_FILE)
        shutil.copy2(src.with_name(MANIFEST_FILE), part / MANIFEST_FILE)
        if read_manifest(part / TILES_FILE)["sha256"] != sha:
            raise EngineError(f"{src} changed while it was copied")
    except EngineError as exc:
        raise UserFacingError(f"refusing to register {onnx_path}: calibration set: {exc}") from exc


def _copy_engine(onnx_path: Path, part: Path) -> None:
    """An engine ``nscmonitor train`` already built beside the run's model comes along (its
    status is re-checked against the copy, so nothing stale is served); a copy that fails
    only means a rebuild."""
    from nscmonitor.engines.autobuild import copy_artefacts

    try:
        copy_artefacts(onnx_path, part)
    except OSError as exc:
        log.warning("engine built beside %s not copied (it will be rebuilt): %s", onnx_path, exc)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-") or "model"
