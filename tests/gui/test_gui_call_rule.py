"""The dashboard's time course calls wells with the call rule of the model whose readouts it
shows (read from the store by the presenter: the registry, or what the daemon kept of a model
file it served), the same rule as the report, and its label says which rule that is; a model
without one shows the default rule, said as such. Real parts: the registry, the daemon's
runner, a SQLite store, the presenter and a real widget."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")

from call_rule_store import STRICT, WELLS, build_store  # noqa: E402


def _shown(qtbot, url: str, version: str):
    """The presenter's full plate load and a time course showing it, every well selected."""
    from nscmonitor.gui.state.presenter import load_plate, read_overview
    from nscmonitor.gui.widgets.time_course import TimeCourse
    from nscmonitor.store.db import open_readonly

    engine = open_readonly(url)
    (exp,) = read_overview(engine).experiments
    (plate,) = exp.plates
    load = load_plate(engine, plate, version)
    tc = TimeCourse()
    qtbot.addWidget(tc)
    tc.set_call_rule(load.call_rule)
    tc.set_cube(load.cube)
    tc.set_wells([w.name for w in load.cube.wells])
    return load, tc


def test_the_time_course_calls_with_the_models_rule(qtbot, tmp_path: Path) -> None:
    from nscmonitor.core.calibration import CallRule
    from nscmonitor.report.calls import confident_call, rule_in_use

    url, version = build_store(tmp_path, STRICT)
    load, tc = _shown(qtbot, url, version)
    assert load.call_rule.rule == CallRule(0.9, 2) and load.call_rule.from_model
    assert len(load.cube.wells) == len(WELLS)
    assert tc.calls["wells"] is None
    assert "top class ≥ 90%" in tc.call_label.text()
    assert f"P ≥ 0.90 over at least 2 time points (chosen on the validation wells of model {version})" \
        in tc.call_label.text()
    # the same readouts under the default rule: the premise that the model's rule changes the call
    tc.set_call_rule(rule_in_use(None, version))
    default = confident_call(*_mean_course(tc), load.cube.classes)
    assert default is not None and tc.calls["wells"] == default
    assert "default rule: model" in tc.call_label.text()


def _mean_course(tc):
    """The selected wells' mean class curves the widget drew, as a T x K array and the hours."""
    import numpy as np

    cube = tc.cube
    x = np.stack([tc.curves[c][1] for c in cube.classes], axis=1)
    return x, tc.curves[cube.classes[0]][0]


def test_a_model_without_a_rule_shows_the_default_said_as_such(qtbot, tmp_path: Path) -> None:
    url, version = build_store(tmp_path, None)
    load, tc = _shown(qtbot, url, version)
    assert not load.call_rule.from_model
    assert f"(default rule: model {version} carries none)" in tc.call_label.text()


def test_a_model_served_from_a_file_shows_its_own_rule(qtbot, tmp_path: Path) -> None:
    """The daemon served the model file itself (``nscmonitor run --model``, as ``make demo``
    does): the dashboard reads its rule from what the daemon kept in the store, not the
    default with "not in the registry"."""
    from nscmonitor.core.calibration import CallRule

    url, version = build_store(tmp_path, STRICT, registered=False)
    load, tc = _shown(qtbot, url, version)
    assert load.call_rule.rule == CallRule(0.9, 2) and load.call_rule.from_model
    assert f"(chosen on the validation wells of model {version})" in tc.call_label.text()
    assert tc.calls["wells"] is None
