"""When is a file completely written? (modelled on paperless-ngx's stability tracker)

A file is ready when, for ``quiet_seconds``:
* its size and mtime have not changed      -> instruments that write in chunks, or pause
  mid-write, change one of them between checks (a size-only check is fooled by a writer
  that pre-allocates; an mtime-only check by coarse filesystem clocks);
* it is still a regular file                -> temp-then-rename writers and deletions
  before the file settled drop out instead of being read half-way;
* no new event arrived for it               -> every event restarts the quiet period.
Decoding is the last check and happens in the pipeline, which retries with backoff.
The clock and stat function are injected so tests drive time instead of sleeping.
"""

from __future__ import annotations

import os
import stat as stat_mod
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Seen:
    size: int
    mtime: float
    since: float


class ReadinessTracker:
    def __init__(self, quiet_seconds: float, *, clock: Callable[[], float] = time.monotonic,
                 stat: Callable[[str], os.stat_result] = os.stat) -> None:
        self.quiet = quiet_seconds
        self.clock = clock
        self.stat = stat
        self._pending: dict[str, _Seen] = {}
        self._settled: dict[str, tuple[int, float]] = {}

    def __len__(self) -> int:
        return len(self._pending) + len(self._settled)

    def touch(self, path: str, *, event: bool = True) -> None:
        """A watch event (``event=True``) restarts the quiet period; a rescan only does so
        when size or mtime changed, so a slow rescan cycle cannot starve a file."""
        self.observe(path, self._stat(path), event=event)

    def observe(self, path: str, st: tuple[int, float] | None, *, event: bool = True) -> None:
        """``touch`` with the caller's own look at the file (size, mtime; None when it is gone
        or not a regular file), so a file just stat'ed is not stat'ed again."""
        if st is None:
            self._pending.pop(path, None)
            return
        size, mtime = st
        seen = self._pending.get(path)
        if seen is None or (seen.size, seen.mtime) != (size, mtime):
            self._pending[path] = _Seen(size, mtime, self.clock())
        elif event:
            seen.since = self.clock()

    def add_settled(self, path: str, size: int, mtime: float) -> None:
        """A file found by a scan whose mtime is already older than the quiet period is ready
        at the next ``ready()`` as the scan saw it: the scan's look is the second look (a
        further stat microseconds later, in the same pass, would tell nothing new)."""
        self._pending.pop(path, None)
        self._settled[path] = (size, mtime)

    def _stat(self, path: str) -> tuple[int, float] | None:
        try:
            st = self.stat(path)
        except OSError:
            return None
        if not stat_mod.S_ISREG(st.st_mode):
            return None
        return st.st_size, st.st_mtime

    def ready(self) -> list[tuple[str, int, float]]:
        """Files quiet for long enough, as (path, size, mtime); they leave the tracker."""
        now = self.clock()
        out = []
        for path, seen in list(self._pending.items()):
            st = self._stat(path)
            if st is None:
                del self._pending[path]
                continue
            if st != (seen.size, seen.mtime):
                self._pending[path] = _Seen(st[0], st[1], now)
                continue
            if now - seen.since >= self.quiet:
                out.append((path, seen.size, seen.mtime))
                del self._pending[path]
        out.extend((path, size, mtime) for path, (size, mtime) in self._settled.items())
        self._settled.clear()
        return out
