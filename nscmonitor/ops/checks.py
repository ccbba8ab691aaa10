"""Health checks for a daemon left alone for weeks: the two slow failures that a heartbeat
does not show.

* The loop beats but scores nothing (an engine that fails every batch, a queue row that
  blocks): the heartbeat is fresh, so only the age of the waiting work reveals it.
* The database volume fills up: SQLite then fails every write, and the WAL file of a busy
  daemon can grow by gigabytes first. A warning days before is worth more than an error after.

Pure functions over plain numbers, plus one read-only query, so ``status``, ``doctor`` and the
dashboard can share them.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

GIB = 1 << 30
DISK_WARN_BYTES = 5 * GIB
DISK_WARN_FRACTION = 0.05
DISK_CRITICAL_BYTES = 1 * GIB
BACKLOG_WINDOW_S = 900.0


@dataclass(frozen=True)
class Check:
    level: str  # "ok" | "warning" | "critical"
    message: str

    @property
    def ok(self) -> bool:
        return self.level == "ok"


def disk_space(free: int, total: int, *, where: str = "the database volume", warn_bytes: int = DISK_WARN_BYTES,
               warn_fraction: float = DISK_WARN_FRACTION, critical_bytes: int = DISK_CRITICAL_BYTES) -> Check:
    """Critical under 1 GiB (SQLite's WAL and a backup each need room); a warning under
    5 GiB or 5 % of the volume, whichever is larger, so a big disk warns early enough and
    a small one does not warn for ever."""
    gib = free / GIB
    pct = 100.0 * free / total if total else 0.0
    text = f"{gib:.1f} GiB free ({pct:.0f} %) on {where}"
    if free < critical_bytes:
        return Check("critical", f"{text}: the database will soon fail to write; free space or move it now")
    if free < max(warn_bytes, warn_fraction * total):
        return Check("warning", f"{text}: free space soon (old backups, exports, logs)")
    return Check("ok", text)


def database_disk(database_url: str) -> Check | None:
    """The check for the SQLite file's volume; None for a server database (its host's
    monitoring owns that) or when the folder does not exist yet."""
    from nscmonitor.store.db import sqlite_path

    p = sqlite_path(database_url)
    if p is None:
        return None
    folder = p.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        du = shutil.disk_usage(folder)
    except OSError as exc:
        return Check("warning", f"cannot read the free space of {folder}: {exc}")
    return disk_space(du.free, du.total, where=str(folder))


def backlog_stall(waiting: int, oldest_waiting: datetime | None, last_scored: datetime | None, now: datetime,
                  *, window_s: float = BACKLOG_WINDOW_S) -> str | None:
    """A stall message when work has waited longer than ``window_s`` and nothing was scored
    in that time; None otherwise. A burst that is being worked off is not a stall: something
    was scored recently."""
    if waiting <= 0 or oldest_waiting is None:
        return None
    limit = now - timedelta(seconds=window_s)
    if oldest_waiting > limit:
        return None
    if last_scored is not None and last_scored > limit:
        return None
    since = f"since {last_scored.isoformat(timespec='seconds')}" if last_scored else "ever"
    return (f"stalled: {waiting} images waiting (oldest for {(now - oldest_waiting).total_seconds() / 60:.0f} min) "
            f"and none scored {since}")


def drive_letter_warning(path: str | Path, *, is_windows: bool) -> str | None:
    """Mapped drive letters (``Z:\\``) belong to an interactive logon; a service or a
    scheduled task does not see them, so a folder that works in a test run vanishes after a
    reboot. Local fixed disks (C:) are fine; any other letter earns the warning, because
    from Python we cannot reliably tell a USB disk from a mapping made by a login script."""
    s = str(path)
    if len(s) < 2 or s[1] != ":" or not s[0].isalpha():
        return None
    if s[0].upper() == "C":
        return None
    if is_windows:
        try:
            import ctypes

            drive_remote = 4
            if ctypes.windll.kernel32.GetDriveTypeW(f"{s[0]}:\\") not in (drive_remote, 1):  # 1: no root dir
                return None
        except (AttributeError, OSError):
            pass
    return (f"{s} uses the drive letter {s[0].upper()}:, which a service or scheduled task does not see; "
            f"use the UNC path (\\\\server\\share\\...) instead")
