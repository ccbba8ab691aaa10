"""Intake: from watched folders to discovered images, one unit with one I/O edge.

Per pass and folder: the watcher's events and (when due) a full rescan give paths; paths
inside an OME-Zarr plate go to its plate tracker; junk (system and temporary files) is
dropped before anything else looks at it; every other path gets one ``lstat``; files the
record of known files already holds unchanged stop there; links are recorded as skipped at
once, files still being written wait in the readiness tracker. Ready paths are expanded
into their images (containers, OME-Zarr fields) and described (place, channel and elapsed
time rules, plate map). ``discover`` yields them per folder; the caller queues them.

Symbolic links follow one rule, at start-up, at every rescan and live: they are never
followed (a link's target is scored under its own path when it lies in a watched folder;
one that points out of the folder is not ours to read) and each is recorded as skipped
with that reason, so nothing is silently dropped.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator

from nscmonitor.core.names import shown
from nscmonitor.intake.containers import Containers
from nscmonitor.intake.describe import describe, parse
from nscmonitor.intake.filters import junk_reason
from nscmonitor.intake.folder import WatchedFolder
from nscmonitor.intake.known import KnownFiles, Ready, look
from nscmonitor.intake.watcher import stop_all
from nscmonitor.store.writer import Discovered

log = logging.getLogger(__name__)

#: work a pass spends on a rescan in progress before the daemon scores again, and the files
#: it takes from the walk at a time
RESCAN_SLICE_S = 0.25
RESCAN_CHUNK = 2000


class Intake:
    def __init__(self, folders: list[WatchedFolder], known: KnownFiles, *,
                 wall: Callable[[], float] = time.time, on_rescan: Callable[[], None] | None = None) -> None:
        """``on_rescan`` runs before each folder's full rescan is looked at (the daemon gives
        files quarantined as unreadable another chance there)."""
        self.folders = folders
        self.known = known
        self.wall = wall
        self.on_rescan = on_rescan
        self.containers = Containers(known)
        self.rescan_slice_s = RESCAN_SLICE_S
        self.rescan_chunk = RESCAN_CHUNK

    def start(self) -> None:
        for f in self.folders:
            f.watcher.start()

    def stop(self) -> None:
        stop_all([f.watcher for f in self.folders])

    def rescanning(self) -> bool:
        """A full rescan is in progress in some folder: the daemon's loop goes on to its next
        slice at once instead of waiting for the poll interval."""
        return any(f.watcher.scanning is not None for f in self.folders)

    def pending(self) -> int:
        """Files and fields seen but not ready yet, and rescans still in progress, in all
        folders (a ``--once`` run is not done before its rescans are)."""
        return sum(f.pending() + (f.watcher.scanning is not None) for f in self.folders)

    def discover(self) -> Iterator[tuple[WatchedFolder, list[Discovered]]]:
        """The images that became ready since the last pass, per folder (folders with none
        are left out). One folder's trouble (a share, a database hiccup in ``on_rescan``)
        is logged and must not stop the others."""
        for f in self.folders:
            try:
                ready = self._ready(f)
                items = self._describe(f, ready) if ready else []
            except Exception:  # the boundary of one folder's pass; retried at the next pass
                log.exception("%s: discovery failed; retried at the next pass", shown(f.root))
                continue
            if items:
                yield f, items

    def forget(self, path: str) -> None:
        """The queue refused this file: looked at again at the next rescan."""
        self.known.forget(path)

    def _ready(self, f: WatchedFolder) -> list[Ready]:
        w = f.watcher
        w.supervise()
        links: list[Ready] = []
        for p in self._files(f, f.zarr.claim(w.drain())):
            seen = look(p)
            if not self.known.is_new(p, seen):
                continue
            if seen is not None and seen.link:
                links.append(Ready(p, seen.size, seen.mtime, True))
            else:
                f.tracker.observe(p, (seen.size, seen.mtime) if seen is not None and seen.regular else None)
        if w.scanning is None and w.due_for_scan():
            w.start_scan()
            if self.on_rescan is not None:
                self.on_rescan()
        if w.scanning is not None:
            links += self._rescan_slice(f)
        return ([Ready(*r) for r in f.tracker.ready()] + list(dict.fromkeys(links))
                + [Ready(*r) for r in f.zarr.ready()])

    def _rescan_slice(self, f: WatchedFolder) -> list[Ready]:
        """Files of the folder's rescan in progress, for up to ``RESCAN_SLICE_S`` of work: a
        rescan of a share holding months of images takes minutes, and the daemon scores
        between slices. Each file is looked at unless it is known and either its directory is
        unchanged on a shallow rescan or the listing shows it as it was; a new one settles or
        waits in the readiness tracker. Returns the symbolic links found (recorded as skipped)."""
        w = f.watcher
        sc = w.scanning
        links: list[Ready] = []
        t0 = time.monotonic()
        while True:
            part = w.scan_slice(self.rescan_chunk)
            if part is None:
                w.last_scan = {"files": sc.files, "seconds": round(sc.seconds + time.monotonic() - t0, 3),
                               "deep": sc.deep}
                break
            paths = f.zarr.claim(part)
            f.detect_profile(paths)
            now = self.wall()
            # known, and nothing says it changed: no look of its own (known files are never junk)
            paths = [p for p in paths if not (self.known.has(p) and (
                w.unchanged_dir(p.rpartition(os.sep)[0]) or not self.known.is_new_stat(p, w.listed(p))))]
            for p in self._files(f, paths):
                seen = look(p)
                if seen is None or not self.known.is_new(p, seen):
                    continue
                if seen.link:
                    links.append(Ready(p, seen.size, seen.mtime, True))
                elif now - seen.mtime >= f.cfg.quiet_seconds and seen.regular:
                    f.tracker.add_settled(p, seen.size, seen.mtime)
                else:
                    f.tracker.observe(p, (seen.size, seen.mtime) if seen.regular else None, event=False)
            if time.monotonic() - t0 >= self.rescan_slice_s:
                sc.seconds += time.monotonic() - t0
                break
        return links

    @staticmethod
    def _files(f: WatchedFolder, paths: Iterable[str]) -> Iterator[str]:
        """The paths that are not junk: dropped before they are stat'ed or tracked."""
        for p in paths:
            try:
                junk = junk_reason(f.rel(p))
            except ValueError:  # not below the folder (a move out of it): left to the checks below
                junk = None
            if junk is None:
                yield p

    def _describe(self, f: WatchedFolder, ready: list[Ready]) -> list[Discovered]:
        items = []
        for item, unit in self.containers.expand(f, ready):
            try:
                res = parse(f, item.path, unit)
            except ValueError as exc:
                log.warning("%s: cannot parse: %s", shown(item.path), exc)
                continue
            self.known.remember(item.path, item.size, item.mtime)
            if res.kind in ("ignore", "sidecar"):
                continue
            found = describe(f, res, item.path, item.size, item.mtime, item.link)
            if found.error:
                log.warning("%s: quarantined: %s", shown(item.path), found.error)
            items.append(found)
        return items
