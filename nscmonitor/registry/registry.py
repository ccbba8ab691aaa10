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
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.orm import sessionmaker

from nscmonitor.engines.enginefile import file_sha256
from nscmonitor.engines.metadata import MetadataError, read_onnx_metadata
from nscmonitor.core.errors import UserFacingError
from nscmonitor.store import models as m
from nscmonitor.store.repo import _aware

log = logging.getLogger(__name__)

RUN_FILES = ("metrics.json", "config.json", "evaluation.png", "tiles.json")


@dataclass(frozen=True)
class ModelInfo:
    version: str
    name: str
    path: str
    sha256: str
    scheme: str
    classes: tuple[str, ...]
    state: str
    labels_version: int | None
    metrics: dict
    created_at: datetime
    activated_at: datetime | None


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


def _info(r: m.ModelVersion) -> ModelInfo:
    return ModelInfo(r.version, r.name, r.path, r.sha256, r.scheme, tuple(r.classes), r.state, r.labels_version,
                     dict((r.meta or {}).get("metrics", {})), _aware(r.created_at), _aware(r.activated_at))


class Registry:
    def __init__(self, models_dir: Path, engine: Engine) -> None:
        self.models_dir = Path(models_dir)
        self.Session = sessionmaker(engine, expire_on_commit=False)
        self.engine = engine

    def list(self) -> list[ModelInfo]:
        with self.Session() as s:
            return [_info(r) for r in s.scalars(select(m.ModelVersion).order_by(m.ModelVersion.created_at))]

    def get(self, version: str) -> ModelInfo:
        with self.Session() as s:
            r = s.scalar(select(m.ModelVersion).where(m.ModelVersion.version == version))
            if r is None:
                raise UserFacingError(f"no model version {version!r} (see 'nscmonitor models list')")
            return _info(r)

    def active(self) -> ModelInfo | None:
        with self.Session() as s:
            r = s.scalar(select(m.ModelVersion).where(m.ModelVersion.state == "active"))
            return _info(r) if r else None

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
        with self.Session.begin() as s:
            s.add(m.Event(at=datetime.now(timezone.utc), kind="model_refused", level="error", message=reason,
                          data={"version": version}))

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
        with self.Session() as s:
            if s.scalar(select(m.ModelVersion).where(m.ModelVersion.version == version)):
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
        now = datetime.now(timezone.utc)
        with self.Session.begin() as s:
            first = s.scalar(select(m.ModelVersion).where(m.ModelVersion.state == "active")) is None
            row = m.ModelVersion(version=version, name=meta.name, path=str(dest / "model.onnx"), sha256=sha,
                                 scheme=meta.scheme, classes=list(meta.classes), meta=json.loads(meta.to_json()),
                                 state="active" if first and activate_if_first else "candidate",
                                 labels_version=labels_version, created_at=now,
                                 activated_at=now if first and activate_if_first else None)
            s.add(row)
            s.add(m.Event(at=now, kind="model_registered", message=f"registered {version} as {row.state}",
                          data={"version": version, "state": row.state}))
        return self.get(version)

    def promote(self, version: str, *, reason: str = "promoted by hand") -> ModelInfo:
        now = datetime.now(timezone.utc)
        with self.Session.begin() as s:
            row = s.scalar(select(m.ModelVersion).where(m.ModelVersion.version == version))
            if row is None:
                raise UserFacingError(f"no model version {version!r}")
            if row.state == "active":
                return _info(row)
            problem = integrity_problem(version, Path(row.path), row.sha256)
            if problem is not None:
                raise ModelIntegrityError(f"refusing to promote {version}: {problem}")
            for act in s.scalars(select(m.ModelVersion).where(m.ModelVersion.state == "active")):
                act.state = "retired"
            row.state, row.activated_at = "active", now
            s.add(m.Event(at=now, kind="promoted", message=f"{version} is now active: {reason}",
                          data={"version": version, "reason": reason}))
        log.info("model %s promoted: %s", version, reason)
        return self.get(version)

    def rollback(self) -> ModelInfo:
        """Retire the active version and re-activate the one that was active before it."""
        now = datetime.now(timezone.utc)
        with self.Session.begin() as s:
            act = s.scalar(select(m.ModelVersion).where(m.ModelVersion.state == "active"))
            prev = s.scalar(select(m.ModelVersion).where(m.ModelVersion.state == "retired",
                                                         m.ModelVersion.activated_at.is_not(None))
                            .order_by(m.ModelVersion.activated_at.desc()))
            if prev is None:
                raise UserFacingError("nothing to roll back to: no earlier active version")
            if act is not None:
                act.state = "retired"
                act.activated_at = None  # so a second rollback goes further back, not forth
            prev.state, prev.activated_at = "active", now
            s.add(m.Event(at=now, kind="rolled_back", level="warning",
                          message=f"rolled back from {act.version if act else 'none'} to {prev.version}",
                          data={"from": act.version if act else None, "to": prev.version}))
            version = prev.version
        return self.get(version)


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
