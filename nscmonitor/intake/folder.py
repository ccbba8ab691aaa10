"""One watched folder and everything intake keeps for it: its settings, experiment, plate
map, file-name profile (detected at the first rescan for ``auto``), watcher, readiness
tracker for files and the OME-Zarr plate tracker for fields."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from nscmonitor.config import WatchFolder
from nscmonitor.core.platemap import PlateMap, load_plate_map
from nscmonitor.intake.filenames import detect_profile
from nscmonitor.intake.profiles import BY_NAME, CustomProfileSpec, Profile, custom_profile
from nscmonitor.intake.readiness import ReadinessTracker
from nscmonitor.intake.watcher import FolderWatcher
from nscmonitor.intake.zarr_plates import ZarrPlates

log = logging.getLogger(__name__)


def folder_profile(cfg: WatchFolder, custom: Sequence[CustomProfileSpec]) -> Profile | str:
    """The folder's profile setting resolved once: a built-in, a custom one, or ``"auto"``."""
    if cfg.profile.startswith("custom:"):
        name = cfg.profile.split(":", 1)[1]
        spec = next((c for c in custom if c.name == name), None)
        if spec is None:
            raise ValueError(f"watch folder {cfg.path}: custom profile {name!r} is not defined")
        return custom_profile(spec)
    return BY_NAME[cfg.profile] if cfg.profile != "auto" else "auto"


@dataclass
class WatchedFolder:
    cfg: WatchFolder
    experiment_id: int
    plate_map: PlateMap
    profile: Profile | str
    watcher: FolderWatcher
    tracker: ReadinessTracker
    zarr: ZarrPlates

    @classmethod
    def open(cls, cfg: WatchFolder, experiment_id: int, custom: Sequence[CustomProfileSpec], *,
             poll_interval: float, clock: Callable[[], float] = time.monotonic,
             wall: Callable[[], float] = time.time) -> WatchedFolder:
        watcher = FolderWatcher(cfg.path, polling=cfg.use_polling(), rescan_interval=cfg.rescan_interval,
                                poll_interval=poll_interval, clock=clock)
        # lstat: a path that turns into a symbolic link while it settles drops out here and is
        # recorded as a link by the next rescan, never read through
        tracker = ReadinessTracker(cfg.quiet_seconds, clock=clock, stat=os.lstat)
        return cls(cfg, experiment_id, load_plate_map(cfg.plate_map), folder_profile(cfg, custom), watcher, tracker,
                   ZarrPlates(cfg.quiet_seconds, clock=clock, wall=wall))

    @property
    def root(self) -> str:
        return str(self.cfg.path)

    def rel(self, path: str) -> str:
        """The path below the folder, with ``/``. A rescan asks this for every file of the
        folder: a path the folder's own listing made (the folder's path, a separator, the
        rest) is cut as a string, which is ten times cheaper than ``pathlib``'s parse."""
        prefix = str(self.cfg.path) + os.sep
        if path.startswith(prefix) and len(path) > len(prefix):
            tail = path[len(prefix):]
            return tail if os.sep == "/" else tail.replace(os.sep, "/")
        return Path(path).relative_to(self.cfg.path).as_posix()

    def detect_profile(self, paths: list[str]) -> None:
        """``auto`` becomes the profile the first rescan's names match, if any does."""
        if self.profile != "auto" or not paths:
            return
        detected = detect_profile([self.rel(p) for p in paths[:200]])
        if detected:
            self.profile = BY_NAME[detected]
            log.info("%s: detected the %s file-name profile", self.root, detected)

    def pending(self) -> int:
        """Files and fields still being written (not ready yet)."""
        return len(self.tracker) + len(self.zarr)

    def status(self) -> dict:
        """The folder's line in the heartbeat's ``watched`` list."""
        scan = self.watcher.last_scan or {}
        return {"path": str(self.cfg.path), "experiment": self.cfg.experiment, "reachable": self.watcher.reachable,
                "polling": self.cfg.use_polling(), "error": self.watcher.last_error,
                "files": scan.get("files"), "rescan_s": scan.get("seconds"), "rescan_deep": scan.get("deep"),
                "rescan_interval": self.cfg.rescan_interval}
