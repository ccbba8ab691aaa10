"""Store reads off the GUI thread: a QRunnable per read, results back through queued signals.

Every read the dashboard makes can take long on a big plate or a busy network share, and the
window must keep repainting meanwhile (and never hold a transaction that could delay the
daemon). ``Reader.submit`` runs a plain function in a thread pool and calls ``done`` or
``failed`` on the GUI thread; a result whose ``token`` is no longer current (the user already
picked another plate) is dropped instead of overwriting newer state.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal

log = logging.getLogger(__name__)


class _Signals(QObject):
    done = Signal(object)
    failed = Signal(str)
    progress = Signal(int, int)


class _Task(QRunnable):
    def __init__(self, fn: Callable[..., Any], args: tuple, kwargs: dict, signals: _Signals, with_progress: bool) -> None:
        super().__init__()
        self.fn, self.args, self.kwargs, self.signals = fn, args, kwargs, signals
        self.with_progress = with_progress
        self.setAutoDelete(True)

    def run(self) -> None:
        try:
            if self.with_progress:
                self.kwargs["progress"] = lambda done, total: self.signals.progress.emit(int(done), int(total))
            result = self.fn(*self.args, **self.kwargs)
        except Exception as exc:  # shown in the window; the worker thread must never die silently
            log.debug("background read failed:\n%s", traceback.format_exc())
            self.signals.failed.emit(f"{type(exc).__name__}: {exc}")
            return
        self.signals.done.emit(result)


class Reader(QObject):
    """A small pool (two threads: a big plate load must not starve the status poll)."""

    busy_changed = Signal(int)

    def __init__(self, parent: QObject | None = None, threads: int = 2) -> None:
        super().__init__(parent)
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(threads)
        self._live: set[_Signals] = set()
        self._tokens: dict[str, int] = {}
        self._closed = False

    def submit(self, fn: Callable[..., Any], *args: Any, done: Callable[[Any], None] | None = None,
               failed: Callable[[str], None] | None = None, progress: Callable[[int, int], None] | None = None,
               channel: str | None = None, **kwargs: Any) -> None:
        """Run ``fn(*args, **kwargs)`` off the GUI thread. With a ``channel``, only the newest
        submission on that channel delivers its result. With ``progress``, ``fn`` receives a
        ``progress(done, total)`` keyword argument."""
        sig = _Signals()
        token = None
        if channel is not None:
            token = self._tokens.get(channel, 0) + 1
            self._tokens[channel] = token

        def current() -> bool:
            return channel is None or self._tokens.get(channel) == token

        def finish() -> bool:
            """False once the window has closed: results still queued then are dropped, since
            the widgets they would update may already be gone."""
            self._live.discard(sig)
            if self._closed:
                return False
            self.busy_changed.emit(len(self._live))
            return True

        def on_done(result: Any) -> None:
            if finish() and done is not None and current():
                done(result)

        def on_failed(msg: str) -> None:
            if finish() and failed is not None and current():
                failed(msg)

        sig.done.connect(on_done)
        sig.failed.connect(on_failed)
        if progress is not None:
            sig.progress.connect(lambda d, t: progress(d, t) if current() and not self._closed else None)
        self._live.add(sig)
        self.busy_changed.emit(len(self._live))
        self.pool.start(_Task(fn, args, kwargs, sig, progress is not None))

    @property
    def busy(self) -> int:
        return len(self._live)

    def wait(self, ms: int = 10_000) -> bool:
        return self.pool.waitForDone(ms)

    def shutdown(self, ms: int = 5000) -> None:
        """Stop delivering results, then let running reads finish (they hold no locks the
        daemon needs, but their threads must not outlive the window)."""
        self._closed = True
        self.pool.waitForDone(ms)
