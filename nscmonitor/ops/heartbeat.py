"""The daemon's heartbeat: its status row (state, engine, model, throughput, watched folders)
for ``nscmonitor status`` and the dashboard, and the service manager's watchdog ping."""

from __future__ import annotations

import time
from collections.abc import Callable

from nscmonitor.ops import notify
from nscmonitor.store.writer import Writer


class Heartbeat:
    def __init__(self, writer: Writer, every_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.writer = writer
        self.every_s = every_s
        self.clock = clock
        self.daemon_id: int | None = None
        self._last = 0.0

    def start(self, watched: list[dict]) -> None:
        self.daemon_id = self.writer.start_daemon(watched)

    def due(self) -> bool:
        """True once every ``every_s`` (and at the first pass): the caller beats, then does
        what is done between batches on the heartbeat's rhythm."""
        now = self.clock()
        if now - self._last >= self.every_s:
            self._last = now
            return True
        return False

    def beat(self, state: str, *, engine: str | None, model_version: str | None, images_per_s: float,
             watched: list[dict]) -> None:
        if self.daemon_id is None:
            return
        self.writer.heartbeat(self.daemon_id, state=state, engine=engine, model_version=model_version,
                              images_per_s=images_per_s, watched=watched)
        if state == "running":
            notify.default().watchdog()  # only after the heartbeat is written: a hung database trips it too
