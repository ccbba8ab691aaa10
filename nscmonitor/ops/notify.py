"""systemd's notify protocol (sd_notify), written out with ``socket`` instead of a dependency.

The protocol is one datagram of ``KEY=VALUE`` lines to the AF_UNIX socket named by
``$NOTIFY_SOCKET`` (a leading ``@`` means the Linux abstract namespace). With ``Type=notify``
systemd counts the service as started only at ``READY=1``, after the database and the model
are loaded, so a daemon that dies during set-up is reported as a failed start; with
``WatchdogSec`` it kills and restarts a daemon whose ``WATCHDOG=1`` pings stop, which is what
turns a hung loop (a stuck network share, a deadlock) into a restart instead of a silent week.

Outside systemd (Windows, a terminal, tests without the variable) every call is a no-op, so
callers never need to ask where they run. A send that fails is logged and never raised: losing
a ping must not take the daemon down.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        addr = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self.address = addr or None
        self._sock: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None and hasattr(socket, "AF_UNIX")

    def _target(self) -> str:
        assert self.address is not None
        return "\0" + self.address[1:] if self.address.startswith("@") else self.address

    def send(self, *fields: str) -> bool:
        """Send one datagram; True when it left. Repeated failures are logged once."""
        if not self.enabled:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(fields).encode("utf-8"), self._target())
            return True
        except OSError as exc:
            if not self._warned:
                log.warning("cannot notify systemd at %s: %s (watchdog pings are lost; systemd may restart us)",
                            self.address, exc)
                self._warned = True
            return False

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", f"MAINPID={os.getpid()}", *([f"STATUS={status}"] if status else []))

    def watchdog(self, status: str | None = None) -> bool:
        return self.send("WATCHDOG=1", *([f"STATUS={status}"] if status else []))

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval_s(env: dict[str, str] | None = None) -> float | None:
    """Half of systemd's watchdog period (``$WATCHDOG_USEC``), the ping interval systemd
    recommends; None when no watchdog is armed for this process."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not an integer", usec)
        return None


class WatchdogPinger:
    """Rate-limits pings so the runner can call ``beat()`` from every loop turn.

    The runner's heartbeat is every 5 s; systemd's period in our unit is 120 s, so pinging
    with each heartbeat keeps a wide margin. The clock is injectable for tests.
    """

    def __init__(self, notifier: Notifier, *, min_interval_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.notifier = notifier
        self.min_interval_s = min_interval_s
        self.clock = clock
        self._last: float | None = None

    def beat(self, status: str | None = None) -> bool:
        now = self.clock()
        if self._last is not None and now - self._last < self.min_interval_s:
            return False
        self._last = now
        return self.notifier.watchdog(status)


_default: Notifier | None = None


def default() -> Notifier:
    """The process-wide notifier, so the runner and the CLI share one socket."""
    global _default
    if _default is None:
        _default = Notifier()
    return _default
