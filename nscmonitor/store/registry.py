"""Model versions (``model_versions``): the store side of ``nscmonitor.registry``.

The registry decides what to copy and check on disk; here are its rows and the state changes
(exactly one ``active`` version; promotion retires the previous one; rollback re-activates
the most recently retired one), each in one transaction with the event that reports it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from nscmonitor.core.errors import UserFacingError
from nscmonitor.store import models as m
from nscmonitor.store.events import add_event
from nscmonitor.store.times import aware


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
    meta: dict  # the model's metadata as registered (``engines.metadata``), metrics included


def _info(r: m.ModelVersion) -> ModelInfo:
    return ModelInfo(r.version, r.name, r.path, r.sha256, r.scheme, tuple(r.classes), r.state, r.labels_version,
                     dict((r.meta or {}).get("metrics", {})), aware(r.created_at), aware(r.activated_at),
                     dict(r.meta or {}))


def _row(s: Session, version: str) -> m.ModelVersion | None:
    return s.scalar(select(m.ModelVersion).where(m.ModelVersion.version == version))


def _active(s: Session) -> m.ModelVersion | None:
    return s.scalar(select(m.ModelVersion).where(m.ModelVersion.state == "active"))


def list_versions(engine: Engine) -> list[ModelInfo]:
    with sessionmaker(engine)() as s:
        return [_info(r) for r in s.scalars(select(m.ModelVersion).order_by(m.ModelVersion.created_at))]


def model_versions(engine: Engine) -> list[ModelInfo]:
    """Newest first, as the dashboard lists them."""
    with sessionmaker(engine)() as s:
        return [_info(r) for r in s.scalars(select(m.ModelVersion).order_by(m.ModelVersion.created_at.desc(),
                                                                            m.ModelVersion.id.desc()))]


def version_meta(engine: Engine, version: str) -> dict | None:
    """The metadata of one version (its preprocessing, classes, tile size, call rule): as
    registered, else as kept when the daemon served it from a file (``note_served``); None
    when neither knows it, or the row holds no mapping."""
    with sessionmaker(engine)() as s:
        meta = s.scalar(select(m.ModelVersion.meta).where(m.ModelVersion.version == version))
        if meta is None:
            meta = s.scalar(select(m.ServedModel.meta).where(m.ServedModel.version == version))
    return meta if isinstance(meta, dict) else None


#: the state a model file served without the registry shows where versions are listed
SERVED_FILE = "served from a file"


def _served_info(r: m.ServedModel) -> ModelInfo:
    """A served file's row as a version in the state ``SERVED_FILE`` (created: first served);
    a row whose metadata is not a mapping reads as empty metadata."""
    meta = r.meta if isinstance(r.meta, dict) else {}
    classes = meta.get("classes") if isinstance(meta.get("classes"), list) else []
    metrics = meta.get("metrics") if isinstance(meta.get("metrics"), dict) else {}
    return ModelInfo(r.version, str(meta.get("name") or ""), r.path, r.sha256, str(meta.get("scheme") or ""),
                     tuple(str(c) for c in classes), SERVED_FILE, None, dict(metrics), aware(r.first_served_at),
                     None, dict(meta))


def served_file(engine: Engine, version: str) -> ModelInfo | None:
    """The model file the daemon served as ``version`` without the registry, if it did."""
    with sessionmaker(engine)() as s:
        r = s.scalar(select(m.ServedModel).where(m.ServedModel.version == version))
        return _served_info(r) if r is not None else None


def served_files(engine: Engine) -> list[ModelInfo]:
    """The model files the daemon served without the registry, newest first, for the
    dashboard's and the CLI's lists of versions."""
    with sessionmaker(engine)() as s:
        return [_served_info(r) for r in s.scalars(select(m.ServedModel).order_by(m.ServedModel.first_served_at.desc(),
                                                                                  m.ServedModel.id.desc()))]


def note_served(engine: Engine, version: str, *, path: str, sha256: str, meta: dict) -> bool:
    """Keep the metadata of a model file the daemon serves, the first time it serves that
    version, unless the registry has the version; returns whether a row was added. Two
    daemons on one database may both try: the version is unique, and the loser keeps the
    winner's row."""
    from sqlalchemy.exc import IntegrityError

    with sessionmaker(engine)() as s:
        if s.scalar(select(m.ModelVersion.id).where(m.ModelVersion.version == version)) is not None or \
                s.scalar(select(m.ServedModel.id).where(m.ServedModel.version == version)) is not None:
            return False
        s.add(m.ServedModel(version=version, path=path, sha256=sha256, meta=meta,
                            first_served_at=datetime.now(timezone.utc)))
        try:
            s.commit()
        except IntegrityError:
            s.rollback()
            return False
    return True


def find_version(engine: Engine, version: str) -> ModelInfo | None:
    with sessionmaker(engine)() as s:
        r = _row(s, version)
        return _info(r) if r is not None else None


def active_version(engine: Engine) -> ModelInfo | None:
    with sessionmaker(engine)() as s:
        r = _active(s)
        return _info(r) if r else None


def add_version(engine: Engine, version: str, *, name: str, path: str, sha256: str, scheme: str,
                classes: tuple[str, ...], meta: dict, labels_version: int | None, activate_if_first: bool) -> None:
    """A registered version: a candidate, or active when it is the first and may be."""
    now = datetime.now(timezone.utc)
    with sessionmaker(engine).begin() as s:
        activate = activate_if_first and _active(s) is None
        row = m.ModelVersion(version=version, name=name, path=path, sha256=sha256, scheme=scheme,
                             classes=list(classes), meta=meta, state="active" if activate else "candidate",
                             labels_version=labels_version, created_at=now, activated_at=now if activate else None)
        s.add(row)
        add_event(s, "model_registered", f"registered {version} as {row.state}", at=now,
                  data={"version": version, "state": row.state})


def promote_version(engine: Engine, version: str, *, reason: str, check: Callable[[ModelInfo], None]) -> bool:
    """Make ``version`` the active one (retiring the active one). ``check`` may raise to refuse
    (e.g. the file changed on disk); it runs inside the transaction, so nothing changes then.
    Returns False when the version was already active."""
    now = datetime.now(timezone.utc)
    with sessionmaker(engine, expire_on_commit=False).begin() as s:
        row = _row(s, version)
        if row is None:
            raise UserFacingError(f"no model version {version!r}")
        if row.state == "active":
            return False
        check(_info(row))
        for act in s.scalars(select(m.ModelVersion).where(m.ModelVersion.state == "active")):
            act.state = "retired"
        row.state, row.activated_at = "active", now
        add_event(s, "promoted", f"{version} is now active: {reason}", at=now,
                  data={"version": version, "reason": reason})
    return True


def rollback_version(engine: Engine, *, check: Callable[[ModelInfo], None]) -> str:
    """Retire the active version and re-activate the one that was active before it; returns
    the version now active. ``check`` may refuse the version rolled back to (its file changed
    or removed), inside the transaction, so nothing changes then: a rollback that left the
    daemon an active version it must refuse to serve would stop scoring."""
    now = datetime.now(timezone.utc)
    with sessionmaker(engine, expire_on_commit=False).begin() as s:
        act = _active(s)
        prev = s.scalar(select(m.ModelVersion).where(m.ModelVersion.state == "retired",
                                                     m.ModelVersion.activated_at.is_not(None))
                        .order_by(m.ModelVersion.activated_at.desc()))
        if prev is None:
            raise UserFacingError("nothing to roll back to: no earlier active version")
        check(_info(prev))
        if act is not None:
            act.state = "retired"
            act.activated_at = None  # so a second rollback goes further back, not forth
        prev.state, prev.activated_at = "active", now
        add_event(s, "rolled_back", f"rolled back from {act.version if act else 'none'} to {prev.version}",
                  level="warning", at=now, data={"from": act.version if act else None, "to": prev.version})
        return prev.version


def remove_version(engine: Engine, version: str, *, states: tuple[str, ...], commit_files: Callable[[], None],
                   freed_bytes: int, reason: str) -> bool:
    """Mark ``version`` removed (its row, metadata and hash stay: the provenance of every
    prediction it made), provided it is still in one of ``states``; ``commit_files`` moves its
    folder out of the way inside the transaction, so a version promoted meanwhile, or whose
    folder cannot be moved (in use), is left exactly as it was. False when the state changed."""
    now = datetime.now(timezone.utc)
    with sessionmaker(engine).begin() as s:
        row = s.scalar(select(m.ModelVersion).where(m.ModelVersion.version == version).with_for_update())
        if row is None or row.state not in states:
            return False
        row.state = "removed"
        s.flush()  # takes the write lock before the folder moves (SQLite locks on the first write)
        commit_files()
        add_event(s, "model_removed", f"{version}: files removed ({freed_bytes / 1e6:.1f} MB): {reason}", at=now,
                  data={"version": version, "bytes": freed_bytes, "reason": reason})
    return True
