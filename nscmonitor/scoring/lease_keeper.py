"""Keeps this daemon's claims alive on a database shared by several daemons, and takes back
the claims of daemons that stopped keeping theirs.

A thread of its own, not the scoring loop: a batch that takes longer than a lease (a slow
first engine call, a big stack) must not lose its images while it is being scored. Every
third of a lease it renews this daemon's leases and puts images whose lease ran out back in
the queue. A daemon that is killed, or loses the server, stops renewing; within one lease
another daemon re-queues what it held."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from nscmonitor.store.leases import reap_expired, renew
from nscmonitor.store.writer import Writer

log = logging.getLogger(__name__)


class LeaseKeeper:
    def __init__(self, writer: Writer, wall: Callable[[], float] = time.time) -> None:
        self.writer = writer
        self.wall = wall
        self.every_s = writer.lease_s / 3
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> int:
        """One round: renew ours, re-queue the expired. Returns how many were re-queued."""
        renew(self.writer.engine, self.writer.owner, self.wall(), self.writer.lease_s)
        return reap_expired(self.writer.engine, self.wall())

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="nscmonitor-leases", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.tick()
            except Exception:  # a database hiccup: the next round retries; the lease is three rounds long
                log.exception("could not renew this daemon's leases; retrying in %.0f s", self.every_s)
