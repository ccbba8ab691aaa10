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

    win, view = _image_view_of(qtbot, url, settings, "B02")
    assert np.array_equal(view.loaded.pixels, planes[2])
    win.close()


def _image_view_of(qtbot, url: str, settings, well: str):  # noqa: ANN001, ANN202 (Settings; window and view)
    """A real main window on the store, its image view showing ``well``'s first image."""
    from nscmonitor.gui.app import open_store
    from nscmonitor.gui.main_window import MainWindow

    win = MainWindow(open_store(url), settings, poll_s=0.2)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: win.cube is not None and win.cube.n_times == 1, timeout=15000)
    win.plate_map.set_selection([well])
    win.tabs.setCurrentWidget(win.image_view)
    view = win.image_view
    qtbot.waitUntil(lambda: view.loaded is not None and view.geometry_used is not None, timeout=10000)
    return win, view


def test_image_view_overlays_tiles_at_the_folders_pixel_size(qtbot, tmp_path: Path) -> None:
    """A file without resolution tags in a folder set to 2.48 um/px, a model at 1.24 um/px:
    the daemon resampled it 2x (a 6 x 8 grid of 32 px tiles on 96 x 128 px), and the image
    view lays that grid over the file's own pixels (16 px per tile), as it was cut."""
    from nscmonitor.config import parse_settings
    from nscmonitor.daemon import build_runner
    from nscmonitor.engines.tiny import build_tiny_classifier

    model = tmp_path / "models" / "tiny.onnx"
    build_tiny_classifier(model, input_size=32, pixel_size_um=1.24)
    folder = tmp_path / "plain"
    folder.mkdir()
    tifffile.imwrite(folder / "VID1_B2_1_00d04h00m.tif",
                     np.random.default_rng(4).gamma(2.0, 300.0, (96, 128)).astype(np.uint16))
    url = f"sqlite:///{tmp_path / 'store.db'}"
    settings = parse_settings({"database_url": url, "model": str(model), "models_dir": str(tmp_path / "models"),
                               "watch": [{"path": str(folder), "experiment": "E1", "quiet_seconds": 0,
                                          "pixel_size_um": 2.48}]})
    build_runner(settings, model=model, retry_base_s=0.1).run(once=True)

    win, view = _image_view_of(qtbot, url, settings, "B02")
    assert view.loaded.pixel_size_um == 2.48 and (view.loaded.rows, view.loaded.cols) == (6, 8)
    assert view.geometry_used.exact and view.geometry_used.tile_w == 16.0
    rect = view.overlay.mapRectToParent(view.overlay.boundingRect())
    assert (rect.width(), rect.height()) == (128.0, 96.0)
    win.close()


def test_image_view_says_a_frame_was_out_of_focus_against_its_field(qtbot, tmp_path: Path) -> None:
    """Well B02 of the simulator's seed 1 loses focus at its third scan: the image view of that
    scan gives the QC verdict and how much of its field's fine detail the frame kept; the scan
    before it passed and says so too."""
    from nscmonitor.config import parse_settings
    from nscmonitor.daemon import build_runner
    from nscmonitor.engines.tiny import build_tiny_classifier
    from nscmonitor.simulate.microscope import Microscope
    from nscmonitor.simulate.render import Camera

    model = tmp_path / "models" / "tiny.onnx"
    build_tiny_classifier(model, input_size=32)
    scope = Microscope(vendor="incucyte", plate_format=96, fields=1, hours=16, interval_h=8, seed=1, wells=["B02"],
                       camera=Camera(shape=(288, 384)))
    scope.run(tmp_path / "scope", speed=0)
    url = f"sqlite:///{tmp_path / 'store.db'}"
    settings = parse_settings({"database_url": url, "model": str(model), "models_dir": str(tmp_path / "models"),
                               "watch": [{"path": str(tmp_path / "scope"), "experiment": "E1", "quiet_seconds": 0}]},
                              env={})
    build_runner(settings, model=model, retry_base_s=0.1).run(once=True)

    from nscmonitor.gui.app import open_store
    from nscmonitor.gui.main_window import MainWindow

    win = MainWindow(open_store(url), settings, poll_s=0.2)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: win.cube is not None and win.cube.n_times == 3, timeout=15000)
    win.plate_map.set_selection(["B02"])
    win.tabs.setCurrentWidget(win.image_view)
    view = win.image_view
    for t, expect in [(2, "QC failed: out of focus"), (1, "QC passed")]:
        win.set_time(t)
        qtbot.waitUntil(lambda: view.loaded is not None and expect in view.info.text(), timeout=10000)
        parts = view.info.text().split("fine detail ")
        assert len(parts) == 2, "the share of its field's detail is said once"
        ratio = float(parts[1].split(" ")[0])
        assert (ratio < 0.25) if t == 2 else (ratio > 0.6), view.info.text()
    win.close()


def test_image_view_shows_a_damaged_focus_ratio_as_no_figure(qtbot, tmp_path: Path, tiny_model: Path) -> None:
    """A stored QC whose focus ratio is text (a damaged or hand-edited row) is shown without
    it, not as an error in the view."""
    import json

    from sqlalchemy import create_engine, text

    from nscmonitor.config import parse_settings
    from nscmonitor.daemon import build_runner

    folder = tmp_path / "plain"
    folder.mkdir()
    tifffile.imwrite(folder / "VID1_B2_1_00d04h00m.tif",
                     np.random.default_rng(4).gamma(2.0, 300.0, (96, 128)).astype(np.uint16))
    url = f"sqlite:///{tmp_path / 'store.db'}"
    settings = parse_settings({"database_url": url, "model": str(tiny_model), "watch": [{
        "path": str(folder), "experiment": "E1", "quiet_seconds": 0}]}, env={})
    build_runner(settings, model=tiny_model, retry_base_s=0.1).run(once=True)
    engine = create_engine(url)
    with engine.begin() as c:
        for image_id, qc in c.execute(text("select id, qc from images")).all():
            qc = json.loads(qc) if isinstance(qc, str) else qc
            c.execute(text("update images set qc = :qc where id = :id"),
                      {"qc": json.dumps({**qc, "focus_ratio": "garbled"}), "id": image_id})
    engine.dispose()

    win, view = _image_view_of(qtbot, url, settings, "B02")
    qtbot.waitUntil(lambda: "QC passed" in view.info.text(), timeout=10000)
    assert "fine detail" not in view.info.text() and "garbled" not in view.info.text()
    win.close()
