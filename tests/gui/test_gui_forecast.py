"""The well forecast on the dashboard: a window on a store where the daemon's second stage
wrote forecasts shows, in a well's hover text and in the plate map coloured by a forecast class,
the forecast stored for that well and time; a store without forecasts shows and offers none."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")
pytest.importorskip("torch")

from test_gui_dashboard import WELLS, Lab  # noqa: E402


@pytest.mark.parametrize("with_forecast", [True, False])
def test_hover_text_shows_the_stored_forecast(tmp_path: Path, qtbot, tiny_model: Path, with_forecast: bool) -> None:
    from nscmonitor.daemon import build_runner
    from nscmonitor.gui.app import open_store
    from nscmonitor.gui.main_window import MainWindow
    from nscmonitor.training.temporal import build_tiny_forecast

    lab = Lab(tmp_path, tiny_model)
    lab.write((0, 24), wells=WELLS[:3], fields=1)
    settings = lab.settings
    if with_forecast:
        settings = dataclasses.replace(settings, forecast_model=build_tiny_forecast(tmp_path / "forecast.onnx"))
    build_runner(settings, model=lab.model, retry_base_s=0.1).run(once=True)
    win = MainWindow(open_store(lab.url), lab.settings, poll_s=0.2)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: win.cube is not None and win.cube.n_times == 2, timeout=15000)
    win.t_index = 1
    text = win.well_tooltip("A01")
    win.plate_map.set_selection(["A01"])
    qtbot.waitUntil(lambda: win.selection == ["A01"], timeout=5000)
    drawn = {k[len("forecast:"):]: v for k, v in win.time_course.curves.items() if k.startswith("forecast:")}
    offered = [m.key for m in win._metrics if m.key.startswith("forecast:")]
    if not with_forecast:
        assert "well forecast" not in text and not offered
        assert not drawn and "Dashed" not in win.time_course.call_label.text()
        return
    with sqlite3.connect(lab.db) as c:
        classes, probs, n_t = c.execute(
            "SELECT f.classes, f.probs, f.n_timepoints FROM well_forecasts f JOIN wells w ON w.id = f.well_id "
            "WHERE w.name = 'A01' AND abs(f.elapsed_h - 24) < 0.01").fetchone()
    classes, probs = json.loads(classes), json.loads(probs)
    assert n_t == 2
    assert "well forecast (forecast-test, from 2 time points" in text
    assert f"<b>{classes[max(range(3), key=lambda k: probs[k])]}</b>" in text
    assert all(f"{c} {p:.2f}" in text for c, p in zip(classes, probs))
    # the time course draws the stored forecast at every time it has one, per class
    with sqlite3.connect(lab.db) as c:
        stored = c.execute("SELECT f.elapsed_h, f.probs FROM well_forecasts f JOIN wells w ON w.id = f.well_id "
                           "WHERE w.name = 'A01' ORDER BY f.elapsed_h").fetchall()
    assert sorted(drawn) == sorted(classes) and len(stored) == 2
    for k, cls in enumerate(classes):
        x, y = drawn[cls]
        assert list(x) == pytest.approx([h for h, _ in stored])
        assert list(y) == pytest.approx([json.loads(p)[k] for _, p in stored])
    assert "Dashed: the well forecast (forecast-test" in win.time_course.call_label.text()
    # the plate map coloured by each forecast class shows each well's stored probability at that time
    assert offered == [f"forecast:{c}" for c in classes]
    with sqlite3.connect(lab.db) as c:
        at24 = dict(c.execute("SELECT w.name, f.probs FROM well_forecasts f JOIN wells w ON w.id = f.well_id "
                              "WHERE abs(f.elapsed_h - 24) < 0.01").fetchall())
    assert len(at24) == 3 and "A01" in at24
    win.set_time(1)
    for k, cls in enumerate(classes):
        win.set_metric(f"forecast:{cls}")
        assert f"Well forecast P({cls})" in win.plate_map.title
        for well, p in at24.items():
            assert win.plate_map.value_of(well) == pytest.approx(json.loads(p)[k])


def test_forecasts_arriving_while_the_window_is_open_are_offered_on_the_plate_map(
        tmp_path: Path, qtbot, tiny_model: Path) -> None:
    from nscmonitor.daemon import build_runner
    from nscmonitor.gui.app import open_store
    from nscmonitor.gui.main_window import MainWindow
    from nscmonitor.training.temporal import build_tiny_forecast

    lab = Lab(tmp_path, tiny_model)
    settings = dataclasses.replace(lab.settings, forecast_model=build_tiny_forecast(tmp_path / "forecast.onnx"))
    lab.write((0,), wells=WELLS[:3], fields=1)
    build_runner(settings, model=lab.model, retry_base_s=0.1).run(once=True)
    with sqlite3.connect(lab.db) as c:  # the plate as the window first sees it: readouts, no forecast yet
        c.execute("DELETE FROM well_forecasts")
    win = MainWindow(open_store(lab.url), lab.settings, poll_s=0.2)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: win.cube is not None and win.cube.n_times == 1, timeout=15000)
    assert not any(m.key.startswith("forecast:") for m in win._metrics)
    win.set_metric("prob:neuron")
    lab.write((24,), wells=WELLS[:3], fields=1)
    build_runner(settings, model=lab.model, retry_base_s=0.1).run(once=True)
    qtbot.waitUntil(lambda: any(m.key.startswith("forecast:") for m in win._metrics), timeout=15000)
    assert win.current_metric().key == "prob:neuron"  # the user's choice is kept
    qtbot.waitUntil(lambda: win.cube.n_times == 2 and win.t_index == 1, timeout=15000)
    with sqlite3.connect(lab.db) as c:
        classes, probs = c.execute("SELECT f.classes, f.probs FROM well_forecasts f JOIN wells w ON w.id = f.well_id "
                                   "WHERE w.name = 'A01' AND abs(f.elapsed_h - 24) < 0.01").fetchone()
    cls = json.loads(classes)[0]
    win.set_metric(f"forecast:{cls}")
    assert win.plate_map.value_of("A01") == pytest.approx(json.loads(probs)[0])


def test_the_models_tab_names_the_serving_forecast_and_rolls_an_installed_one_back(
        tmp_path: Path, qtbot, tiny_model: Path) -> None:
    from nscmonitor.gui.app import open_store
    from nscmonitor.gui.main_window import MainWindow
    from nscmonitor.registry import forecasts as FR
    from nscmonitor.training.temporal import build_tiny_forecast

    lab = Lab(tmp_path, tiny_model)
    lab.write((0,), wells=WELLS[:1], fields=1)
    lab.score()
    plain = MainWindow(open_store(lab.url), lab.settings, poll_s=0.2)
    qtbot.addWidget(plain)
    assert not plain.models_panel.buttons["rollback_forecast"].isEnabled()
    qtbot.waitUntil(lambda: "No well forecast" in plain.models_panel.forecast.text(), timeout=10000)

    configured = build_tiny_forecast(tmp_path / "forecast.onnx")
    settings = dataclasses.replace(lab.settings, forecast_model=configured, models_dir=tmp_path / "models")
    win = MainWindow(open_store(lab.url), settings, poll_s=0.2)
    qtbot.addWidget(win)
    qtbot.waitUntil(lambda: f"the configured file {configured}" in win.models_panel.forecast.text(), timeout=10000)
    assert "out-of-distribution flag is <b>unavailable</b>" in win.models_panel.forecast.text()
    FR.install(settings.models_dir, configured, "forecast-run-0007", "0.61 >= forecast-test 0.40")
    win.refresh()
    qtbot.waitUntil(lambda: "forecast-run-0007" in win.models_panel.forecast.text(), timeout=10000)
    assert "0.61 >= forecast-test 0.40" in win.models_panel.forecast.text()
    button = win.models_panel.buttons["rollback_forecast"]
    assert button.isEnabled()
    button.click()
    assert "configured in the settings serves again" in win.models_panel.message.text()
    assert FR.served(settings.models_dir, configured) == configured
    qtbot.waitUntil(lambda: f"the configured file {configured}" in win.models_panel.forecast.text(), timeout=10000)
    button.click()  # nothing left to roll back: the reason is shown, nothing changes
    assert "already serves" in win.models_panel.message.text()


def test_forecasts_flagged_by_their_own_ood_score_are_hatched_with_a_banner(tmp_path: Path, qtbot,
                                                                          tiny_model: Path) -> None:
    """A forecast model whose own OOD threshold every frame exceeds: coloured by the forecast, each
    well is cross-hatched and the banner speaks of the forecasts; coloured by the tile model's
    readout (which has no OOD score here) nothing is hatched and no banner shows."""
    import numpy as np

    from nscmonitor.daemon import build_runner
    from nscmonitor.gui.app import open_store
    from nscmonitor.gui.main_window import MainWindow
    from nscmonitor.scoring import forecast_ood as FO
    from nscmonitor.training.temporal import build_tiny_forecast

    fitted = FO.fit_gaussian(np.random.default_rng(0).normal(size=(50, 27)))
    record = dataclasses.replace(fitted, threshold=-1.0).record()
    lab = Lab(tmp_path, tiny_model)
    lab.write((0, 24), wells=WELLS[:3], fields=1)
    settings = dataclasses.replace(lab.settings, forecast_model=build_tiny_forecast(tmp_path / "fc.onnx", ood=record))
    build_runner(settings, model=lab.model, retry_base_s=0.1).run(once=True)
    with sqlite3.connect(lab.db) as c:
        assert c.execute("SELECT count(*), sum(ood) FROM well_forecasts").fetchone() == (6, 6)
    win = MainWindow(open_store(lab.url), lab.settings, poll_s=0.2)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: win.cube is not None and win.cube.n_times == 2
                    and any(m.key.startswith("forecast:") for m in win._metrics), timeout=15000)
    win.set_time(1)
    win.set_metric("prob:neuron")
    assert not win.plate_map.flagged and win.ood_banner.isHidden()
    win.set_metric(next(m.key for m in win._metrics if m.key.startswith("forecast:")))
    assert win.plate_map.flagged == {"A01", "A02", "B01"}  # as the store names WELLS[:3]
    assert not win.ood_banner.isHidden() and "6 well forecast(s)" in win.ood_banner.text()
    assert "forecast flagged" in win.well_tooltip("A01") and "2 frame(s) flagged" in win.well_tooltip("A01")
