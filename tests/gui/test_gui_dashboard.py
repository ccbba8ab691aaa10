"""The dashboard against a real store filled by the real pipeline (tiny ONNX model, real
TIFFs, the daemon's runner), driven through real Qt widgets with pytest-qt."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")
tifffile = pytest.importorskip("tifffile")

from PySide6.QtCore import QEvent, QPointF, Qt  # noqa: E402
from PySide6.QtGui import QMouseEvent  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

WELLS = ("A1", "A2", "B1", "B2")
PLATE_MAP = "well,condition\nA01,BDNF 50 ng/ml\nA02,BDNF 50 ng/ml\nB01,control\nB02,control\n"


class Lab:
    """A watched folder, a tiny model and the daemon's runner writing a SQLite store."""

    def __init__(self, root: Path, model: Path) -> None:
        from nscmonitor.config import parse_settings

        self.root, self.model = root, model
        self.images = root / "images"
        self.images.mkdir()
        (root / "map.csv").write_text(PLATE_MAP)
        self.db = root / "store.db"
        self.url = f"sqlite:///{self.db}"
        self.settings = parse_settings({
            "database_url": self.url, "model": str(model),
            "watch": [{"path": str(self.images), "experiment": "E1", "quiet_seconds": 0,
                       "plate_map": str(root / "map.csv")}]})
        self.rng = np.random.default_rng(7)

    def write(self, hours: tuple[int, ...], wells: tuple[str, ...] = WELLS, fields: int = 2) -> None:
        for h in hours:
            for w in wells:
                for f in range(1, fields + 1):
                    img = self.rng.gamma(2.0 + (h / 24.0) * (w[0] == "A"), 600.0, (96, 128)).astype(np.uint16)
                    tifffile.imwrite(self.images / f"VID1_{w}_{f}_{h // 24:02d}d{h % 24:02d}h00m.tif", img)

    def score(self) -> None:
        from nscmonitor.daemon import build_runner

        build_runner(self.settings, model=self.model, retry_base_s=0.1).run(once=True)

    def readout(self, well: str, hours: float) -> dict:
        with sqlite3.connect(self.db) as c:
            r = c.execute("SELECT r.classes, r.prob_mean, r.fraction, r.n_images, r.n_qc_failed FROM well_readouts r"
                          " JOIN wells w ON w.id = r.well_id WHERE w.name = ? AND abs(r.elapsed_h - ?) < 0.01",
                          (well, hours)).fetchone()
        return {"classes": json.loads(r[0]), "prob": json.loads(r[1]), "fraction": json.loads(r[2]),
                "n_images": r[3], "n_qc_failed": r[4]}


@pytest.fixture()
def lab(tmp_path: Path, tiny_model: Path) -> Lab:
    lab = Lab(tmp_path, tiny_model)
    lab.write((4, 28))
    lab.score()
    return lab


@pytest.fixture()
def window(qtbot, lab: Lab):
    from nscmonitor.gui.app import open_store
    from nscmonitor.gui.main_window import MainWindow

    win = MainWindow(open_store(lab.url), lab.settings, poll_s=0.2)
    qtbot.addWidget(win)
    win.resize(1400, 900)
    win.show()
    qtbot.waitUntil(lambda: win.cube is not None and win.cube.n_times == 2, timeout=15000)
    yield win
    win.close()


def drag(widget, a: QPointF, b: QPointF) -> None:
    """A real press-move-release sequence (QTest's mouseMove carries no buttons)."""
    left, none = Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton
    mods = Qt.KeyboardModifier.NoModifier
    QApplication.sendEvent(widget, QMouseEvent(QEvent.Type.MouseButtonPress, a, a, left, left, mods))
    QApplication.sendEvent(widget, QMouseEvent(QEvent.Type.MouseMove, b, b, none, left, mods))
    QApplication.sendEvent(widget, QMouseEvent(QEvent.Type.MouseButtonRelease, b, b, left, none, mods))


def test_plate_map_shows_stored_values_for_readout_and_time(window, lab: Lab) -> None:
    pm = window.plate_map
    assert window.cube.elapsed_h.tolist() == [4.0, 28.0]
    for key, hours in (("prob:neuron", 28.0), ("fraction:astrocyte", 4.0), ("prob:glia", 4.0), ("n_images", 28.0)):
        window.set_metric(key)
        window.set_time(0 if hours == 4.0 else 1)
        for well in ("A01", "A02", "B01", "B02"):
            ro = lab.readout(well, hours)
            cls = ro["classes"]
            expected = {"prob:neuron": ro["prob"][cls.index("neuron")],
                        "fraction:astrocyte": ro["fraction"][cls.index("astrocyte")],
                        "prob:glia": ro["prob"][cls.index("astrocyte")] + ro["prob"][cls.index("oligodendrocyte")],
                        "n_images": ro["n_images"]}[key]
            assert pm.value_of(well) == pytest.approx(expected, abs=1e-6), (key, hours, well)
    assert pm.value_of("C01") is None  # never imaged: drawn as no data
    assert "BDNF 50 ng/ml" in window.well_tooltip("A01")
    window.set_time(0)
    assert window.time_label.text().startswith("4.0 h") and window.slider.value() == 0


def test_click_and_drag_select_wells_and_show_their_stored_curves(window, lab: Lab, qtbot) -> None:
    pm = window.plate_map
    qtbot.mouseClick(pm, Qt.MouseButton.LeftButton, pos=pm.well_center("A02"))
    assert window.selection == ["A02"]
    tc = window.time_course
    qtbot.waitUntil(lambda: "neuron" in tc.curves, timeout=5000)
    cls = lab.readout("A02", 4.0)["classes"]
    for k, c in enumerate(cls):
        x, y = tc.curves[c]
        assert x.tolist() == [4.0, 28.0]
        assert y.tolist() == pytest.approx([lab.readout("A02", h)["prob"][k] for h in (4.0, 28.0)], abs=1e-6)
    tc.set_condition_metric("prob:neuron")
    x, y = tc.curves["condition:control"]
    expected = np.mean([lab.readout(w, 28.0)["prob"][0] for w in ("B01", "B02")])
    assert y[1] == pytest.approx(expected, abs=1e-6)
    drag(pm, QPointF(pm.well_center("A01")), QPointF(pm.well_center("B02")))
    assert sorted(window.selection) == ["A01", "A02", "B01", "B02"]
    qtbot.waitUntil(lambda: "4 wells" in tc.well_plot.getPlotItem().titleLabel.text, timeout=5000)


def test_new_predictions_appear_while_the_window_is_open(window, lab: Lab, qtbot) -> None:
    lab.write((52,), wells=("A1", "B1", "C3"))
    lab.score()
    qtbot.waitUntil(lambda: window.cube.n_times == 3 and "C03" in window.plate_map.names, timeout=10000)
    window.set_metric("prob:neuron")
    qtbot.waitUntil(lambda: window.t_index == 2, timeout=5000)
    neuron = lab.readout("C03", 52.0)["classes"].index("neuron")
    assert window.plate_map.value_of("C03") == pytest.approx(lab.readout("C03", 52.0)["prob"][neuron], abs=1e-6)
    assert window.plate_map.value_of("A02") is None  # not imaged at 52 h yet


def test_export_dialog_writes_the_same_files_as_the_cli(window, lab: Lab, qtbot, tmp_path: Path) -> None:
    from nscmonitor.cli import main

    qtbot.waitUntil(lambda: window.overview is not None, timeout=5000)
    dlg = window.open_export()
    qtbot.addWidget(dlg)
    gui_out = tmp_path / "gui" / "report.csv"
    dlg.path.setText(str(gui_out))
    qtbot.mouseClick(dlg.export_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dlg.result is not None, timeout=15000)
    cli_out = tmp_path / "cli" / "report.csv"
    assert main(["export", "--db", lab.url, "--experiment", "E1", "-o", str(cli_out)]) == 0
    assert gui_out.read_bytes() == cli_out.read_bytes()
    assert len(gui_out.read_text().splitlines()) == 1 + 4 * 2 * 4  # header + wells x times x classes
    assert (tmp_path / "gui" / "report_images.csv").read_bytes() == (tmp_path / "cli" / "report_images.csv").read_bytes()
    assert "Wrote 32 readout rows" in dlg.message.text()


def test_status_panel_shows_a_quarantined_files_reason(window, lab: Lab, qtbot) -> None:
    bad = lab.images / "VID1_C1_1_00d04h00m.tif"
    bad.write_bytes(np.random.default_rng(1).bytes(5000))
    lab.score()
    panel = window.status_panel
    qtbot.waitUntil(lambda: bad.name in panel.error_reasons(), timeout=10000)
    assert "not a readable TIFF" in panel.error_reasons()[bad.name]
    row = next(r for r in range(panel.errors.rowCount()) if panel.errors.item(r, 1).text() == bad.name)
    panel.errors.selectRow(row)
    assert str(bad) in panel.detail.toPlainText() and "quarantined" in panel.detail.toPlainText()
    assert "not running" in panel.daemon.text()  # the runner stopped: its heartbeat says so
    assert "engine build" in panel.daemon.text() and "no calibration set" in panel.daemon.text()
    assert re.search(r"\d+ files, last rescan \d+\.\d s", panel.daemon.text())  # what status prints
    assert window.browser.state_of("E1") == "daemon stopped"  # images arrived minutes ago, nobody scores now


def test_image_view_overlays_the_stored_tiles_on_the_grid(window, lab: Lab, qtbot) -> None:
    window.plate_map.set_selection(["B01"])
    window.tabs.setCurrentWidget(window.image_view)
    view = window.image_view
    qtbot.waitUntil(lambda: view.loaded is not None and view.geometry_used is not None, timeout=10000)
    assert view.loaded.pixels.shape == (96, 128)
    # 96 x 128 with 32 px tiles: a 3 x 4 grid, origin (0, 0), exact geometry from the model metadata
    assert (view.loaded.rows, view.loaded.cols) == (3, 4)
    g = view.geometry_used
    assert g.exact and (g.x0, g.y0, g.tile_w) == (0.0, 0.0, 32.0)
    rect = view.overlay.mapRectToParent(view.overlay.boundingRect())
    assert (rect.width(), rect.height()) == (128.0, 96.0)
    assert "QC passed" in view.info.text() and "VID1_B1_" in view.info.text()
    assert "engine ort-fp32" in view.info.text()  # provenance: which backend and precision scored it
    assert not view.explain_btn.isEnabled() and view.explain_btn.toolTip()


def test_models_panel_promotes_and_rolls_back_through_the_registry(qtbot, lab: Lab, tmp_path: Path) -> None:
    from dataclasses import replace

    from nscmonitor.engines.tiny import build_tiny_classifier
    from nscmonitor.gui.app import open_store
    from nscmonitor.gui.main_window import MainWindow
    from nscmonitor.registry.registry import Registry
    from nscmonitor.store.db import open_engine

    settings = replace(lab.settings, models_dir=tmp_path / "models")
    reg = Registry(settings.models_dir, open_engine(lab.url))
    for v in ("v1", "v2"):
        build_tiny_classifier(tmp_path / f"{v}.onnx", input_size=32, version=v, seed=len(v),
                              ood_threshold=5.0 if v == "v2" else None)
    first = reg.register(tmp_path / "v1.onnx")
    second = reg.register(tmp_path / "v2.onnx")
    from nscmonitor.engines import autobuild

    assert autobuild.start(Path(first.path)) is None  # no calibration set: recorded at once, no build
    win = MainWindow(open_store(lab.url), settings, poll_s=0.2)
    qtbot.addWidget(win)
    win.show()
    panel = win.models_panel
    qtbot.waitUntil(lambda: len(panel.versions) == 3, timeout=15000)
    # the tiny model file the lab's daemon served directly is listed after the registry's two
    from nscmonitor.scoring.serving import file_version
    from nscmonitor.store.registry import SERVED_FILE

    served = panel.versions[2]
    assert (served.version, served.state) == (file_version(lab.model), SERVED_FILE)
    assert panel.table.item(2, 0).text().endswith("◀ serving") and panel.table.item(2, 1).text() == SERVED_FILE
    assert panel.table.item(2, 7).text().startswith("unavailable")
    panel.table.selectRow(2)
    panel.buttons["promote"].click()  # a file served directly: told to register it, nothing changes
    assert "register it first" in panel.message.text() and reg.active().version == first.version
    panel.table.clearSelection()
    engine_cells = {v.version: panel.table.item(r, 6) for r, v in enumerate(panel.versions)}
    assert "no calibration set" in engine_cells[first.version].text()
    assert engine_cells[first.version].foreground().color().name() == "#b00020"
    assert "no engine built" in engine_cells[second.version].text()
    ood_cells = {v.version: panel.table.item(r, 7) for r, v in enumerate(panel.versions)}
    assert ood_cells[first.version].text().startswith("unavailable")  # a model without an OOD score says so
    assert ood_cells[second.version].text().startswith("1 test;") and "Threshold 5" in ood_cells[second.version].toolTip()
    assert all(b.isEnabled() for k, b in panel.buttons.items() if k != "rollback_forecast")
    assert not panel.buttons["rollback_forecast"].isEnabled()  # no forecast_model in these settings
    panel.buttons["promote"].click()  # nothing selected: the reason is shown, nothing changes
    assert "select the model version" in panel.message.text() and reg.active().version == first.version
    panel.table.selectRow([v.version for v in panel.versions].index(second.version))
    panel.buttons["promote"].click()
    assert reg.active().version == second.version and second.version in panel.message.text()
    panel.buttons["rollback"].click()
    assert reg.active().version == first.version and "rolled back" in panel.message.text()
    # a version a prune removed stays listed, greyed, and cannot be promoted (its file is gone)
    from nscmonitor.registry.prune import prune

    assert prune(reg.engine, settings.models_dir / "versions", keep=0, dry_run=False).removed == [second.version]
    row = lambda: [v.version for v in panel.versions].index(second.version)  # noqa: E731
    qtbot.waitUntil(lambda: panel.versions[row()].state == "removed", timeout=15000)
    assert "prune" in panel.table.item(row(), 6).text()
    assert panel.table.item(row(), 1).foreground().color().name() == "#808080"
    panel.table.selectRow(row())
    panel.buttons["promote"].click()
    assert "missing" in panel.message.text() and reg.active().version == first.version
    from nscmonitor.store.labels import current_labels

    panel.label_btn.click()  # no wells selected yet: refused with the reason
    assert "select wells" in panel.message.text() and current_labels(open_engine(lab.url)) == []
    qtbot.waitUntil(lambda: win.cube is not None and win.cube.n_times == 2, timeout=15000)
    win.plate_map.set_selection(["A01", "A02"])
    qtbot.waitUntil(lambda: win.selection == ["A01", "A02"], timeout=5000)
    panel.label_box.setCurrentText("neuron")
    panel.label_btn.click()
    labs = {x.well: x.label for x in current_labels(open_engine(lab.url))}
    assert labs == {"A01": "neuron", "A02": "neuron"} and "label set" in panel.message.text()
    qtbot.waitUntil(lambda: any(v.state == "active" and v.version == first.version for v in panel.versions),
                    timeout=15000)
    win.close()


def test_plot_and_plate_map_export(window, tmp_path: Path) -> None:
    from nscmonitor.gui.export_dialog import save_plot, save_widget

    png = save_widget(window.plate_map, tmp_path / "map.png")
    svg = save_widget(window.plate_map, tmp_path / "map.svg")
    plot = save_plot(window.time_course.cond_plot, tmp_path / "cond.svg")
    plot_png = save_plot(window.time_course.cond_plot, tmp_path / "cond.png")
    assert png.read_bytes()[:8] == plot_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in svg.read_text() and "<svg" in plot.read_text()


def _pixels(png: Path) -> np.ndarray:
    """The PNG as an (h, w, 3) uint8 array."""
    from PySide6.QtGui import QImage

    img = QImage(str(png)).convertToFormat(QImage.Format.Format_RGB888)
    row = img.bytesPerLine()
    buf = np.frombuffer(img.constBits(), np.uint8, count=row * img.height()).reshape(img.height(), row)
    return buf[:, : img.width() * 3].reshape(img.height(), img.width(), 3).copy()


def _count(px: np.ndarray, rgb, tol: int = 2) -> int:
    return int((np.abs(px.astype(int) - np.asarray(rgb, int)).max(axis=2) <= tol).sum())


def test_cli_screenshot_renders_offscreen(window, lab: Lab, tmp_path: Path, qtbot) -> None:
    """The picture must show the plate, not only have a window's size: each imaged well is
    filled with the colour of its value, as the dashboard computes it for the readout and time
    the screenshot shows (the window opened on the same store picks the same defaults), and a
    well without a readout at that time (C03, imaged at 4 h only) adds a well drawn as no data."""
    from nscmonitor.cli import main

    def shot(name: str) -> np.ndarray:
        out = tmp_path / name
        assert main(["gui", "--db", lab.url, "--experiment", "E1", "--screenshot", str(out)]) == 0
        return _pixels(out)

    before = shot("before.png")
    lab.write((4,), wells=("C3",))
    lab.score()
    px = shot("shot.png")
    assert px.shape[1] >= 1200 and px.shape[0] >= 800
    qtbot.waitUntil(lambda: "C03" in window.plate_map.names, timeout=10000)
    pm = window.plate_map
    assert window.t_index == window.cube.n_times - 1 and pm.value_of("C03") is None
    values = np.array([pm.value_of(w) for w in ("A01", "A02", "B01", "B02")], float)
    fills = {tuple(int(v) for v in rgb) for rgb in pm.cmap.rgb(values, *pm.range)}
    no_data = (235, 235, 235)  # the plate map's fill of a well without a value, under its hatching
    assert no_data not in fills
    well_area = 400  # pixels inside one drawn well at this window size (measured: about 1400)
    for rgb in fills:
        assert _count(px, rgb) >= well_area, f"no well drawn in {rgb}"
    # the UI has that grey elsewhere too: what counts is the well the new plate position added
    assert _count(px, no_data, tol=0) - _count(before, no_data, tol=0) >= well_area, \
        "the well without a readout is not drawn as no data"


def test_status_panel_requeues_a_quarantined_file(window, lab: Lab, qtbot) -> None:
    bad = lab.images / "VID1_C2_1_00d04h00m.tif"
    bad.write_bytes(np.random.default_rng(2).bytes(5000))
    lab.score()
    panel = window.status_panel
    qtbot.waitUntil(lambda: bad.name in panel.error_reasons(), timeout=10000)
    assert panel.requeue_selected.isEnabled()
    row = next(r for r in range(panel.errors.rowCount()) if panel.errors.item(r, 1).text() == bad.name)
    panel.errors.selectRow(row)
    qtbot.mouseClick(panel.requeue_selected, Qt.MouseButton.LeftButton)
    assert "1 quarantined image(s) back in the queue" in panel.message.text()
    with sqlite3.connect(lab.db) as c:
        assert c.execute("SELECT status, attempts, error FROM images WHERE path = ?", (str(bad),)).fetchone() \
            == ("pending", 0, None)
    qtbot.waitUntil(lambda: bad.name not in panel.error_reasons(), timeout=10000)


def test_status_panel_warns_as_status_does_when_the_images_are_unlike_the_training_data(
        qtbot, tmp_path: Path) -> None:
    """A model whose every image is flagged (threshold 0): after 24 images the status tab says
    what ``nscmonitor status`` says, in the same words (``ops.health.ood_share_warning``)."""
    from nscmonitor.engines.tiny import build_tiny_classifier
    from nscmonitor.gui.app import open_store
    from nscmonitor.gui.main_window import MainWindow
    from nscmonitor.ops.health import OOD_WINDOW, ood_share_warning
    from nscmonitor.store.db import open_engine
    from nscmonitor.store.reads import Repo

    model = tmp_path / "models" / "ood.onnx"
    build_tiny_classifier(model, input_size=32, ood_threshold=0.0)
    (tmp_path / "lab").mkdir()
    lab = Lab(tmp_path / "lab", model)
    lab.write((4, 28, 52), fields=2)
    lab.score()
    store = open_engine(lab.url)
    want = ood_share_warning(*Repo(store).recent_ood(OOD_WINDOW))
    store.dispose()
    assert want is not None and want.startswith("24 of the newest 24 scored images")
    win = MainWindow(open_store(lab.url), lab.settings, poll_s=0.2)
    qtbot.addWidget(win)
    win.show()
    try:
        qtbot.waitUntil(lambda: "unlike the model" in win.status_panel.daemon.text(), timeout=15000)
        assert want.replace("'", "&#x27;") in win.status_panel.daemon.text()
    finally:
        win.close()


def test_time_courses_of_scans_without_hours_run_over_the_time_points(qtbot, tmp_path: Path, tiny_model: Path) -> None:
    """ImageXpress-style names carry a scan index (``TimePoint_n``) and no time; with no
    ``induction_time`` set the readouts have no hours. The curves run over the time points,
    the axis says so and how to get hours, instead of an empty plot."""
    from nscmonitor.config import parse_settings
    from nscmonitor.daemon import build_runner
    from nscmonitor.gui.app import open_store
    from nscmonitor.gui.main_window import MainWindow

    watch = tmp_path / "PLATE1"
    rng = np.random.default_rng(3)
    for t in (1, 2, 3):
        for well in ("A01", "B02"):
            img = rng.gamma(2.0, 600.0, (96, 128)).astype(np.uint16)
            (watch / f"TimePoint_{t}").mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(watch / f"TimePoint_{t}" / f"PLATE1_{well}_s1_w1.tif", img)
    url = f"sqlite:///{tmp_path / 'store.db'}"
    settings = parse_settings({"database_url": url, "model": str(tiny_model),
                               "watch": [{"path": str(watch), "experiment": "IMX", "quiet_seconds": 0}]})
    build_runner(settings, model=tiny_model, retry_base_s=0.1).run(once=True)
    win = MainWindow(open_store(url), settings, poll_s=0.2)
    qtbot.addWidget(win)
    win.show()
    try:
        qtbot.waitUntil(lambda: win.cube is not None and win.cube.n_times == 3, timeout=15000)
        assert not np.isfinite(win.cube.elapsed_h).any()
        pm = win.plate_map
        qtbot.mouseClick(pm, Qt.MouseButton.LeftButton, pos=pm.well_center("B02"))
        tc = win.time_course
        qtbot.waitUntil(lambda: "neuron" in tc.curves, timeout=5000)
        x, y = tc.curves["neuron"]
        assert x.tolist() == [1.0, 2.0, 3.0] and np.isfinite(y).all()
        assert "Time point" in tc.well_plot.getPlotItem().getAxis("bottom").labelText
    finally:
        win.close()
