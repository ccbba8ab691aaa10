"""Tell the notification hook when the disk under the database or the models folder runs low.

``status`` exits 4 and the dashboard warns when the database volume is almost full, but an
unattended instrument PC is looked at when something breaks, and a full disk breaks SQLite's
writes and every engine build at once. The daemon checks both volumes every ten minutes and
tells the hook (and the event log) once when they turn low, once more when they turn critical,
and once when there is room again, with what ``nscmonitor models prune`` would free where the
models folder shares the low volume (``ops.told_once``: a restart or another daemon on the
same database does not tell it again).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nscmonitor.ops.checks import Check, disk_space
from nscmonitor.ops.told_once import ToldOnce

log = logging.getLogger(__name__)

KINDS = ("disk_space_low", "disk_space_critical", "disk_space_ok")
#: seconds between looks at the volumes (free space changes slowly; a walk of the version
#: folders for the prune hint is only made while one is low)
CHECK_S = 600.0


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def volumes(database_file: Path | None, models_dir: Path) -> list[tuple[str, Path, bool]]:
    """(what, folder, whether the models folder is on it) per volume to watch: the database's
    folder (SQLite only) and the models folder, one entry when both are on the same volume."""
    out: list[tuple[str, Path, bool]] = []
    models = _existing(Path(models_dir))
    if database_file is not None:
        db = _existing(Path(database_file).parent)
        try:
            same = db.stat().st_dev == models.stat().st_dev
        except OSError:
            same = False
        out.append(("the database and the models folder" if same else "the database", db, same))
        if same:
            return out
    out.append(("the models folder", models, True))
    return out


def state(checks: list[tuple[str, Check]]) -> tuple[str, str]:
    """(event kind, message) for the worst of the volumes' checks."""
    critical = [(what, c) for what, c in checks if c.level == "critical"]
    low = critical or [(what, c) for what, c in checks if c.level == "warning"]
    if not low:
        return KINDS[2], "; ".join(c.message for _, c in checks) + ": room again"
    return (KINDS[1] if critical else KINDS[0]), "; ".join(f"{what}: {c.message}" for what, c in low)


class DiskNotice:
    def __init__(self, engine: Any, repo: Any, *, database_file: Path | None, models_dir: Path, hook: str | None,
                 clock: Callable[[], float], disk_usage: Callable[[Path], Any] = shutil.disk_usage,
                 interval_s: float = CHECK_S) -> None:
        self.engine = engine
        self.repo = repo  # store.reads.Repo
        self.database_file = database_file
        self.models_dir = Path(models_dir)
        self.hook = hook
        self.clock = clock
        self.disk_usage = disk_usage
        self.interval_s = interval_s
        self._next = 0.0
        self.told = ToldOnce(repo, KINDS, quiet=KINDS[2])

    def due(self) -> bool:
        return self.clock() >= self._next

    def check(self) -> None:
        """At a heartbeat; looks at the disks at most every ``interval_s``. Never raises: a
        volume that cannot be read (a share gone) is logged and the daemon goes on."""
        if not self.due():
            return
        self._next = self.clock() + self.interval_s
        from sqlalchemy.exc import SQLAlchemyError

        try:
            self._check()
        except (OSError, ValueError, SQLAlchemyError) as exc:
            log.warning("disk space notice skipped this time: %s", exc)

    def _check(self) -> None:
        from nscmonitor.hooks import emit

        checks, models_on = [], set()
        for what, folder, has_models in volumes(self.database_file, self.models_dir):
            try:
                du = self.disk_usage(folder)
            except OSError as exc:
                log.warning("cannot read the free space of %s: %s", folder, exc)
                continue
            checks.append((what, disk_space(du.free, du.total, where=str(folder))))
            if has_models:
                models_on.add(what)
        if not checks:
            return
        kind, message = state(checks)
        if not self.told.should_tell(kind):
            return
        data: dict = {"volumes": [{"what": w, "level": c.level, "message": c.message} for w, c in checks]}
        if kind != KINDS[2] and any(w in models_on for w, c in checks if not c.ok):
            freed, n, runs = prunable(self.engine, self.models_dir)
            data["prunable_bytes"] = freed
            if n or runs:
                message += "; " + what_prune_frees(freed, n, runs)
        emit(self.engine, kind, message, level={"disk_space_ok": "info", "disk_space_low": "warning"}
             .get(kind, "error"), data=data, hook=self.hook)
        self.told.told(kind)


def last_warning(repo: Any) -> str | None:
    """The daemon's last word on the disks while it is "low" or "critical", for ``status`` and
    the dashboard's status tab: ``status`` sees the database's volume itself but not the models
    folder's, and a dashboard on another PC sees neither. ``repo``: a ``store.reads.Repo``."""
    last = repo.last_event_of(KINDS)
    if last is None or last.kind == KINDS[2]:
        return None
    return f"{last.message} (the daemon's look at {last.at:%Y-%m-%d %H:%M} UTC)"


def prunable(engine: Any, models_dir: Path) -> tuple[int, int, int]:
    """(bytes, versions, retrain runs) a prune with its default keep would free: the versions'
    folders and the checkpoints ended retrain runs left."""
    from nscmonitor.registry.prune import DEFAULT_KEEP, folder_bytes, plan, run_checkpoints
    from nscmonitor.store.registry import list_versions

    versions = list_versions(engine)
    go = [d for d in plan(versions, models_dir / "versions", DEFAULT_KEEP) if d.remove]
    paths = {v.version: Path(v.path).parent for v in versions}
    runs = run_checkpoints(engine, models_dir / "retrain")
    total = sum(folder_bytes(paths[d.version]) for d in go if paths[d.version].is_dir())
    total += sum(_size(f) for _, _, files in runs for f in files)
    return total, len(go), len(runs)


def what_prune_frees(freed: int, versions: int, runs: int) -> str:
    parts = ([f"{versions} superseded version(s)"] if versions else []) + (
        [f"the checkpoints of {runs} ended retrain run(s)"] if runs else [])
    return f"'nscmonitor models prune' would free {freed / 1e9:.2f} GB ({' and '.join(parts)})"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        log.warning("cannot read the size of %s: %s", path, exc)
        return 0
