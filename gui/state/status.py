"""Pure verdicts for the browser and status panel: is an experiment acquiring, idle, finished
or left without a running daemon, is the daemon alive. Time is passed in so tests drive it."""

from __future__ import annotations

from datetime import datetime
from pathlib import PurePath

STALE_S = 120.0  # same threshold as ``nscmonitor status``: a heartbeat older than this is a stalled daemon
RECENT_MIN = 30.0


def daemon_alive(heartbeat_at: datetime | None, state: str | None, now: datetime, stale_s: float = STALE_S) -> bool:
    if heartbeat_at is None or state in (None, "stopped"):
        return False
    return (now - heartbeat_at).total_seconds() <= stale_s


def heartbeat_text(heartbeat_at: datetime | None, now: datetime) -> str:
    if heartbeat_at is None:
        return "never"
    age = max(0.0, (now - heartbeat_at).total_seconds())
    if age < 90:
        return f"{age:.0f} s ago"
    if age < 5400:
        return f"{age / 60:.0f} min ago"
    return f"{age / 3600:.1f} h ago"


def _same_folder(a: str, b: str) -> bool:
    return PurePath(a).as_posix().rstrip("/") == PurePath(b).as_posix().rstrip("/")


def experiment_state(last_image_at: datetime | None, now: datetime, *, watch_path: str | None,
                     watched_by_live_daemon: list[str], pending: int = 0, recent_min: float = RECENT_MIN) -> str:
    """What the plate list says, following the daemon so it never contradicts the status bar:

    - 'acquiring': a live daemon watches the experiment's folder and an image arrived in the
      last ``recent_min`` minutes;
    - 'idle': a live daemon watches it but nothing arrived lately (between the scans of a slow
      time-lapse);
    - 'daemon stopped': no live daemon watches it while images are waiting to be scored or
      arrived lately (acquisition may go on with nobody scoring);
    - 'finished': no live daemon, nothing waiting, nothing recent;
    - 'empty': no image yet and no live daemon watching."""
    watched = bool(watch_path) and any(_same_folder(watch_path, p) for p in watched_by_live_daemon)
    recent = last_image_at is not None and (now - last_image_at).total_seconds() <= recent_min * 60
    if watched:
        return "acquiring" if recent else "idle"
    if last_image_at is None:
        return "empty"
    if pending > 0 or recent:
        return "daemon stopped"
    return "finished"
