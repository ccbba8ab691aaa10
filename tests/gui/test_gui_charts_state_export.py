"""Dashboard fixes against a real store and real widgets: the condition chart's sd band, saving
every chart from its context menu, the plate state following a real daemon, and the export
dialog's wide sheets and HTML report (the CLI's own files)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtWidgets import QFileDialog  # noqa: E402
from test_gui_dashboard import Lab, lab, window  # noqa: E402, F401 - the dashboard's fixtures


def test_condition_chart_draws_the_sd_band_its_title_promises(window, lab: Lab) -> None:  # noqa: F811
    tc = window.time_course
    tc.set_condition_metric("prob:neuron")
    assert "mean ± sd across replicate wells" in tc.cond_plot.getPlotItem().titleLabel.text
    band = tc.bands["condition:BDNF 50 ng/ml"]
    assert not band.path().isEmpty(), "the sd band must be drawn, not an empty path"
    rect = band.path().boundingRect()
    # independent: mean ± sample sd of the two replicate wells' stored P(neuron) at 4 h and 28 h
    k = lab.readout("A01", 4.0)["classes"].index("neuron")
    lo, hi = [], []
    for h in (4.0, 28.0):
        v = np.array([lab.readout(w, h)["prob"][k] for w in ("A01", "A02")])
        lo.append(v.mean() - v.std(ddof=1))
        hi.append(v.mean() + v.std(ddof=1))
    assert rect.left() == pytest.approx(4.0, abs=0.02) and rect.right() == pytest.approx(28.0, abs=0.02)
    assert rect.top() == pytest.approx(min(lo), abs=1e-4) and rect.bottom() == pytest.approx(max(hi), abs=1e-4)
    assert band in tc.cond_plot.getPlotItem().items


def _save_from_menu(menu, suffix: str, out: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    action = next(a for a in menu.actions() if a.objectName() == f"save_chart_{suffix}")
    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: (str(out), "")))
    action.trigger()
    return out


def test_every_chart_saves_png_and_svg_from_its_context_menu(window, tmp_path: Path,  # noqa: F811
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    menus = {"wells": window.time_course.well_plot.getPlotItem().getViewBox().menu,
             "conditions": window.time_course.cond_plot.getPlotItem().getViewBox().menu,
             "plate": window.plate_map.context_menu()}
    for name, menu in menus.items():
        png = _save_from_menu(menu, "png", tmp_path / f"{name}.png", monkeypatch)
        svg = _save_from_menu(menu, "svg", tmp_path / f"{name}", monkeypatch)  # suffix added when left out
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000, name
        text = (tmp_path / f"{name}.svg").read_text(encoding="utf-8")
        assert "<svg" in text and len(text) > 2000, name


def test_plate_state_follows_the_daemon(window, lab: Lab, qtbot) -> None:  # noqa: F811
    from nscmonitor.daemon import build_runner

    window.refresh()
    # scored moments ago by a daemon that has exited: never 'acquiring' while no daemon runs
    qtbot.waitUntil(lambda: window.browser.state_of("E1") == "daemon stopped", timeout=10000)
    assert "no daemon running" in window.daemon_label.text()
    runner = build_runner(lab.settings, model=lab.model, retry_base_s=0.1, poll_interval=0.2, heartbeat_s=0.3)
    t = threading.Thread(target=runner.run, daemon=True)
    t.start()
    try:
        qtbot.waitUntil(lambda: window.browser.state_of("E1") == "acquiring", timeout=20000)
        assert "daemon running" in window.daemon_label.text() and "no daemon" not in window.daemon_label.text()
    finally:
        runner.stop_event.set()
        t.join(20)
    qtbot.waitUntil(lambda: window.browser.state_of("E1") == "daemon stopped", timeout=10000)
    assert "no daemon running" in window.daemon_label.text()


def test_export_dialog_writes_wide_sheets_and_the_report(window, lab: Lab, qtbot, tmp_path: Path) -> None:  # noqa: F811
    from nscmonitor.cli import main

    qtbot.waitUntil(lambda: window.overview is not None, timeout=5000)
    dlg = window.open_export()
    qtbot.addWidget(dlg)
    dlg.set_format("wide")
    dlg.with_n.setChecked(True)
    dlg.path.setText(str(tmp_path / "gui" / "sheet.txt"))
    qtbot.mouseClick(dlg.export_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dlg.result is not None, timeout=15000)
    paths, _ = dlg.result
    assert main(["export", "--db", lab.url, "--experiment", "E1", "-o", str(tmp_path / "cli" / "sheet.txt"),
                 "--format", "wide", "--n"]) == 0

    def body(p: Path) -> list[str]:
        return [line for line in p.read_text(encoding="utf-8").splitlines() if not line.startswith("Exported:")]

    assert len(paths) == 8  # 4 classes x (probability, fraction)
    for p in paths:
        assert body(p) == body(tmp_path / "cli" / p.name), p.name
    dlg.result = None
    dlg.set_format("report")
    assert dlg.path.text().endswith("sheet.html")
    dlg.times.setText("24, soon")
    qtbot.mouseClick(dlg.export_btn, Qt.MouseButton.LeftButton)
    assert "Export failed: times:" in dlg.message.text() and dlg.export_btn.isEnabled()
    dlg.times.setText("30")
    qtbot.mouseClick(dlg.export_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dlg.result is not None, timeout=15000)
    html = (tmp_path / "gui" / "sheet.html").read_text(encoding="utf-8")
    for sec in ("summary", "plate-maps", "time-courses", "calls", "qc", "provenance"):
        assert f'<section id="{sec}">' in html
    assert "<title>VID1 at 28.0 h</title>" in html and "VID1 at 4.0 h" not in html, "the plate map nearest 30 h only"
    assert "sheet.html" in dlg.message.text()
