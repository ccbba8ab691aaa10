"""The images inside the ready paths: an OME-Zarr field placed by its plate's metadata (each
of its time points, where its array has a time axis), the positions or scenes of an ND2/CZI
file that name wells, else the path itself (placed by its name). A container that cannot be
opened yet is looked at again at later rescans."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from nscmonitor.core.names import shown
from nscmonitor.intake.folder import WatchedFolder
from nscmonitor.intake.known import KnownFiles, Ready
from nscmonitor.readers import formats
from nscmonitor.readers.formats import omezarr

log = logging.getLogger(__name__)


class Containers:
    def __init__(self, known: KnownFiles) -> None:
        self.known = known
        self.unopened: dict[str, tuple[int, float, int]] = {}  # container -> size, mtime, looks (formats.NotReady)

    def expand(self, folder: WatchedFolder, ready: list[Ready]) -> Iterator[tuple[Ready, formats.Unit | None]]:
        """Each ready path with the unit it holds (None: the path is the image). A symbolic
        link is never opened to look inside; an expanded container is known from here on,
        its units are queued under their references (``path|scene=1``)."""
        for item in ready:
            key = folder.zarr.key(item.path)
            if key is not None:
                times = omezarr.time_units(item.path, key)  # a field whose array has a time axis
                for unit in times or [formats.Unit(item.path, key, "ome-zarr")]:
                    yield item._replace(path=unit.ref), unit
                continue
            try:
                found = None if item.link else formats.units(item.path)
            except formats.NotReady as exc:
                if not self._wait(item, str(exc)):
                    continue
                found = None  # unreadable however long it waits: decoding records why
            if not found:
                yield item, None
                continue
            self.known.remember(item.path, item.size, item.mtime)
            for unit in found:
                yield item._replace(path=unit.ref), unit

    def _wait(self, item: Ready, reason: str) -> bool:
        """An ND2/CZI file that cannot be opened is not queued but looked at again at later
        rescans (it is not marked known); after ``MAX_LOOKS`` looks at the same size and
        mtime it is queued as it is. Returns True when it should be queued now."""
        seen = self.unopened.get(item.path)
        looks = seen[2] + 1 if seen is not None and seen[:2] == (item.size, item.mtime) else 1
        if looks >= formats.MAX_LOOKS:
            self.unopened.pop(item.path, None)
            return True
        self.unopened[item.path] = (item.size, item.mtime, looks)
        log.info("%s: cannot be opened yet (%s); looked at again at the next rescan", shown(item.path), reason)
        return False
