"""The out-of-distribution flag on the dashboard: the plate map cross-hatches a flagged well
(checked in the rendered pixels), and a window on a store scored by a model that flags
images shows the banner and hatches exactly the wells with flagged images; a model without
the flag shows neither."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")

from test_gui_dashboard import WELLS, Lab  # noqa: E402


def _rgb(widget) -> np.ndarray:
    from PySide6.QtGui import QImage

    img = widget.grab().toImage().convertToFormat(QImage.Format.Format_RGB888)
    row = img.bytesPerLine()
    buf = np.frombuffer(img.constBits(), np.uint8, count=row * img.height()).reshape(img.height(), row)
    return buf[:, : img.width() * 3].reshape(img.height(), img.width(), 3).copy()


def _flag_pixels(view, well: str) -> int:
    from nscmonitor.gui.widgets.plate_map_view import OOD_COLOR

    r, c = view.rowcol[well]
    rect = view._well_rect(r, c).toRect()
    ratio = view.devicePixelRatioF()
    px = _rgb(view)[int(rect.top() * ratio):int(rect.bottom() * ratio), int(rect.left() * ratio):int(rect.right() * ratio)]
    want = np.array([OOD_COLOR.red(), OOD_COLOR.green(), OOD_COLOR.blue()])
    return int((np.abs(px.astype(int) - want).max(axis=2) <= 40).sum())


def test_plate_map_cross_hatches_a_flagged_well(qtbot) -> None:
    from nscmonitor.gui.widgets.plate_map_view import PlateMapView

    view = PlateMapView()
    qtbot.addWidget(view)
    view.resize(700, 480)
    view.set_plate(96, [("A01", 0, 0, None), ("A02", 0, 1, None), ("B01", 1, 0, None)])
    view.set_values(np.array([0.5, 0.5, np.nan]), label="P(neuron)", unit="probability", fixed_range=(0.0, 1.0))
    view.show()
    assert _flag_pixels(view, "A01") == 0
    view.set_flagged(["A01", "H12"])  # a well the plate does not hold is ignored
    assert view.flagged == {"A01"}
    flagged, clean, no_data = (_flag_pixels(view, w) for w in ("A01", "A02", "B01"))
    assert flagged > 30, flagged
    assert clean == 0 and no_data == 0


def _window(qtbot, lab: Lab):
    from nscmonitor.gui.app import open_store
    from nscmonitor.gui.main_window import MainWindow

    win = MainWindow(open_store(lab.url), lab.settings, poll_s=0.2)
    qtbot.addWidget(win)
    win.resize(1400, 900)
    win.show()
    qtbot.waitUntil(lambda: win.cube is not None and win.cube.n_times == 1, timeout=15000)
    return win


@pytest.mark.parametrize("threshold", [0.0, None])
def test_window_hatches_wells_with_flagged_images_and_shows_a_banner(tmp_path: Path, qtbot, threshold) -> None:
    from nscmonitor.engines.tiny import build_tiny_classifier

    model = tmp_path / "models" / "m.onnx"
    build_tiny_classifier(model, input_size=32, ood_threshold=threshold)
    lab = Lab(tmp_path, model)
    lab.write((4,), wells=WELLS[:3])
    lab.score()
    win = _window(qtbot, lab)
    try:
        names = {f"{w[0]}{int(w[1:]):02d}" for w in WELLS[:3]}
        if threshold is None:  # no flag from this model: nothing hatched, no banner
            assert win.plate_map.flagged == set() and win.ood_banner.isHidden()
            assert "flag unavailable" in win.well_tooltip("A01")
        else:  # every image is above a zero threshold
            assert win.plate_map.flagged == names
            assert not win.ood_banner.isHidden() and "6 image(s)" in win.ood_banner.text()
            assert "unlike the training data" in win.well_tooltip("A01")
            assert win.cube.flagged_images() == 6
    finally:
        win.close()
