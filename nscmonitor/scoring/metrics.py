"""Where the daemon's time goes, and how fast it scores: for the heartbeat (``status``, the
dashboard) and benchmarks/ingest.py. Kept apart so no stage has to know about them."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


@dataclass
class Timings:
    decode: float = 0.0
    preprocess: float = 0.0
    inference: float = 0.0
    store: float = 0.0
    images: int = 0
    latencies: list[float] = field(default_factory=list)  # file ready -> prediction stored, seconds


class Metrics:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.timings = Timings()
        self._ready_at: dict[str, float] = {}
        self._done_times: deque[float] = deque(maxlen=2000)

    def ready(self, paths: Iterable[str]) -> None:
        """These files entered the queue now: their latency counts from here."""
        now = self.clock()
        for p in paths:
            self._ready_at[p] = now

    def dropped(self, path: str) -> None:
        """The queue refused the file: no latency for it."""
        self._ready_at.pop(path, None)

    def stored(self, paths: Iterable[str]) -> None:
        now = self.clock()
        n = 0
        for p in paths:
            n += 1
            started = self._ready_at.pop(p, None)
            if started is not None:
                self.timings.latencies.append(now - started)
            self._done_times.append(now)
        self.timings.images += n

    def images_per_s(self, window: float = 300.0) -> float:
        now = self.clock()
        recent = [t for t in self._done_times if now - t <= window]
        if len(recent) < 2:
            return 0.0
        return len(recent) / max(now - recent[0], 1e-6)
