"""When is a field of an OME-Zarr plate completely written?

A Zarr plate is a folder that grows: converters and instruments add wells, fields and
chunks over hours, and rewrite the metadata as they go. The unit of work is one field (an
image group ``<plate>.zarr/<row>/<col>/<field>``), found from the plate's metadata (its
well list, then each well's image list), never by guessing from folder names. A field is
ready when its multiscales metadata is there and its files (count, bytes, newest mtime)
have not changed for ``quiet_seconds``; a field found already older than that at start-up
is ready at once, as settled files are. Any path the watcher reports inside the plate
marks the plate for a new look at its metadata, so fields added later are found and a
field rewritten later is queued again (its content hash then decides about rescoring).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from nscmonitor.core.domain import ImageKey
from nscmonitor.readers.formats import fingerprint, zarr_root
from nscmonitor.readers.formats.omezarr import Field, attrs, plate_fields

log = logging.getLogger(__name__)


@dataclass
class _Seen:
    fingerprint: tuple[int, int, int]
    since: float
    field: Field


class ZarrPlates:
    def __init__(self, quiet_seconds: float, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, check_every: float = 1.0) -> None:
        self.quiet = quiet_seconds
        self.clock = clock
        self.wall = wall
        self.check_every = min(check_every, max(quiet_seconds / 2, 0.0))
        self._dirty: set[Path] = set()
        self._pending: dict[str, _Seen] = {}
        self._done: dict[str, tuple[int, int, int]] = {}
        self._keys: dict[str, ImageKey] = {}
        self._not_plates: set[Path] = set()
        self._touched: set[str] = set()  # fields below which the watcher reported a path
        self._last_check = float("-inf")

    def __len__(self) -> int:
        return len(self._pending) + len(self._dirty)

    def claim(self, paths: Iterable[str]) -> list[str]:
        """Take the paths that lie inside a ``*.zarr`` folder (their plate is looked at
        again); return the others, which are files for the file readiness tracker."""
        rest = []
        for p in paths:
            root = zarr_root(p)
            if root is None:
                rest.append(p)
            else:
                self._dirty.add(root)
                parts = Path(p).relative_to(root).parts
                if len(parts) >= 4:  # <row>/<col>/<field>/...: only this field needs a new fingerprint
                    self._touched.add(str(root.joinpath(*parts[:3])))
        return rest

    def key(self, field_path: str) -> ImageKey | None:
        """The place of a field this tracker reported ready."""
        return self._keys.get(field_path)

    def _refresh(self, root: Path) -> None:
        """Read the plate's metadata again: new fields become pending; a field already
        pending is left to ``ready``; a field already queued is fingerprinted again only when
        the watcher reported a path below it, so a plate being written is not walked whole
        at every pass."""
        if not attrs(root).get("plate"):
            if root.is_dir() and root not in self._not_plates:
                self._not_plates.add(root)
                log.warning("%s: a Zarr folder without OME-Zarr plate metadata (yet); only HCS plates are read",
                            root)
            return
        self._not_plates.discard(root)
        now, wall = self.clock(), self.wall()
        for fld in plate_fields(root):
            path = str(fld.path)
            if path in self._pending or (path in self._done and path not in self._touched):
                continue
            self._touched.discard(path)
            fp = fingerprint(path)
            if fp is None or fp[0] == 0 or fp == self._done.get(path):
                continue
            seen = self._pending.get(path)
            if seen is None:
                settled = wall - fp[2] / 1e9 >= self.quiet
                self._pending[path] = _Seen(fp, now - self.quiet if settled else now, fld)
            elif seen.fingerprint != fp:
                self._pending[path] = _Seen(fp, now, fld)

    def ready(self) -> list[tuple[str, int, float]]:
        """Fields quiet for long enough, as (field folder, bytes, newest mtime)."""
        now = self.clock()
        if now - self._last_check < self.check_every:
            return []
        self._last_check = now
        for root in list(self._dirty):
            self._dirty.discard(root)
            self._refresh(root)
        out = []
        for path, seen in list(self._pending.items()):
            fp = fingerprint(path)
            if fp is None:
                del self._pending[path]
                continue
            if fp != seen.fingerprint:
                self._pending[path] = _Seen(fp, now, seen.field)
                continue
            if now - seen.since >= self.quiet:
                if attrs(Path(path)).get("multiscales"):
                    out.append((path, fp[1], fp[2] / 1e9))
                    self._keys[path] = seen.field.key
                else:  # listed by its well, quiet, yet no image metadata: wait for a change, not forever
                    log.warning("%s: listed as a field but holds no multiscales metadata; looked at again "
                                "when its files change", path)
                self._done[path] = fp
                del self._pending[path]
        return out
