"""Starting the dashboard: the read-only store, the Qt application, the screenshot mode."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from nscmonitor.core.errors import UserFacingError

if TYPE_CHECKING:
    from PySide6.QtWidgets import QApplication
    from sqlalchemy.engine import Engine

    from nscmonitor.config import Settings
    from nscmonitor.gui.main_window import MainWindow


def open_store(url: str) -> Engine:
    """The dashboard only reads: ``store.db.open_readonly`` (missing file or old schema = error)."""
    from nscmonitor.store.db import open_readonly

    return open_readonly(url)


def qt_app() -> QApplication:
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance()
    if app is None:
        app = QApplication(sys.argv[:1])
        app.setApplicationName("nscmonitor")
        app.setOrganizationName("nscmonitor")
    return app


def screenshot(window: MainWindow, out: Path, *, timeout_s: float = 60.0, select: bool = True) -> Path:
    """Wait for the first plate (and its images) to load, select a well with data, then grab
    the window. Works offscreen: ``make demo`` runs it on machines without a display."""
    import time

    from PySide6.QtCore import QCoreApplication, QEventLoop

    def pump(until: Callable[[], bool], limit: float) -> bool:
        end = time.monotonic() + limit
        while time.monotonic() < end:
            QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
            if until():
                return True
            time.sleep(0.02)
        return False

    if not pump(lambda: (window.load is not None and not window.load.partial)
                or (window.overview is not None and window.plate is None),
                timeout_s):
        raise UserFacingError(f"the dashboard did not load within {timeout_s:.0f} s")
    cube = window.cube
    if select and cube is not None and cube.n_times and not window.selection:
        has = cube.has[:, window.t_index]
        if has.any():
            first = cube.wells[int(has.argmax())]
            same = [w.name for w in cube.wells if w.condition == first.condition] if first.condition else [first.name]
            window.plate_map.set_selection(same[:4] if len(same) > 1 else [first.name])
    pump(lambda: window.reader.busy == 0, 20.0)
    pump(lambda: False, 0.3)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not window.grab().save(str(out)):
        raise UserFacingError(f"cannot write {out}")
    return out


def run(settings: Settings, *, experiment: str | None = None, screenshot_to: str | None = None,
        poll_s: float = 2.0) -> int:
    if screenshot_to and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from nscmonitor.gui.system_libs import check_qt_platform

    problem = check_qt_platform()
    if problem:
        raise UserFacingError(problem)
    engine = open_store(settings.database_url)
    app = qt_app()
    from nscmonitor.gui.main_window import MainWindow

    win = MainWindow(engine, settings, experiment=experiment, poll_s=poll_s)
    if screenshot_to:
        win.resize(1600, 1000)
        win.show()
        out = screenshot(win, Path(screenshot_to))
        print(f"wrote {out}")
        win.close()
        return 0
    win.show()
    return app.exec()
