"""The dashboard's image view shows the plane the daemon scored: inside a multi-channel
stack, the watch folder's channel, not the first plane (real widgets, real daemon, real store)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")
tifffile = pytest.importorskip("tifffile")


def test_image_view_shows_the_scored_channel_of_a_stack(qtbot, tmp_path: Path, tiny_model: Path) -> None:
    from nscmonitor.config import parse_settings
    from nscmonitor.daemon import build_runner
    from nscmonitor.gui.app import open_store
    from nscmonitor.gui.main_window import MainWindow

    rng = np.random.default_rng(3)
    planes = [rng.gamma(2.0, 300.0 * (i + 1), (96, 128)).astype(np.uint16) for i in range(3)]
    images = tmp_path / "mm" / "run_1"
    images.mkdir(parents=True)
    tifffile.imwrite(images / "run_MMStack_B2-Site_0.ome.tif", np.stack(planes),
                     metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "BF", "GFP"]}})
    url = f"sqlite:///{tmp_path / 'store.db'}"
    settings = parse_settings({"database_url": url, "model": str(tiny_model), "watch": [{
        "path": str(tmp_path / "mm"), "experiment": "E1", "quiet_seconds": 0, "channel": "GFP",
        "induction_time": "2026-01-01T00:00:00+00:00"}]})
    build_runner(settings, model=tiny_model, retry_base_s=0.1).run(once=True)

    win = MainWindow(open_store(url), settings, poll_s=0.2)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: win.cube is not None and win.cube.n_times == 1, timeout=15000)
    win.plate_map.set_selection(["B02"])
    win.tabs.setCurrentWidget(win.image_view)
    view = win.image_view
    qtbot.waitUntil(lambda: view.loaded is not None, timeout=10000)
    assert np.array_equal(view.loaded.pixels, planes[2])
    win.close()
