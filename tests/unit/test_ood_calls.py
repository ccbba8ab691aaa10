"""Readouts from images flagged out of distribution are left out of confident calls, and the
dashboard's plate cube carries the flag counts through merges (NaN: no flag from the model)."""

from __future__ import annotations

import numpy as np

from nscmonitor.gui.state.readouts import ReadoutRows, Well, build_cube, flagged_over, merge
from nscmonitor.report.calls import confident_call

CLASSES = ("neuron", "glia")


def test_flagged_time_points_are_left_out_of_a_call() -> None:
    probs = np.array([[0.3, 0.7], [0.9, 0.1], [0.9, 0.1], [0.9, 0.1]])
    hours = np.array([0.0, 24.0, 48.0, 72.0])
    assert confident_call(probs, hours, CLASSES).elapsed_h == 24.0
    later = confident_call(probs, hours, CLASSES, flagged=np.array([0, 3, 0, 0]))
    assert later.elapsed_h == 48.0 and later.cls == "neuron"
    # the last two points flagged: one clean point is not a stable call
    assert confident_call(probs, hours, CLASSES, flagged=np.array([0, 0, 1, 1])) is None
    # the flag unavailable (NaN) changes nothing
    assert confident_call(probs, hours, CLASSES, flagged=np.full(4, np.nan)).elapsed_h == 24.0


def _rows(well_ids, keys, n_ood) -> ReadoutRows:
    n = len(well_ids)
    p = np.tile(np.array([[0.8, 0.2]], np.float32), (n, 1))
    return ReadoutRows(np.array(well_ids, np.int64), np.array(keys, np.int64), np.array(keys, float), CLASSES,
                       p, p * 0.1, p, np.full(n, 3, np.int32), np.full(n, 9, np.int32), np.zeros(n, np.int32),
                       p.max(axis=1), None if n_ood is None else np.array(n_ood, np.float32))


def test_cube_keeps_flag_counts_through_merges() -> None:
    wells = [Well(1, "A01", 0, 0, None), Well(2, "A02", 0, 1, None)]
    cube = build_cube(wells, 96, _rows([1, 2], [0, 0], [2, 0]))
    assert cube.flagged_at(0).tolist() == [True, False] and cube.flagged_images() == 2
    cube = merge(cube, _rows([2], [24], [1]))  # a new time point grows the arrays
    assert cube.flagged_at(1).tolist() == [False, True] and cube.flagged_images() == 3
    assert np.isnan(cube.n_ood[0, 1])  # A01 has no readout at 24 h
    assert flagged_over(cube, [0, 1]).tolist() == [2, 1]
    plain = build_cube(wells, 96, _rows([1, 2], [0, 0], None))  # a model without the flag
    assert plain.flagged_images() == 0 and flagged_over(plain, [0, 1]) is None


def test_the_html_report_leaves_flagged_time_points_out_of_its_calls() -> None:
    from nscmonitor.core.calibration import CallRule
    from nscmonitor.report.html import condition_calls, well_calls
    from nscmonitor.report.tables import PlateGrid, WellInfo

    t, w = 4, 2
    probs = np.tile(np.array([0.9, 0.1]), (t, w, 1))
    probs[0] = [0.3, 0.7]
    n_ood = np.zeros((t, w))
    n_ood[1, 0] = 2  # A01's 24 h images are unlike the training data
    grid = PlateGrid("E", "P", "v1", CLASSES, (WellInfo("A01", 0, 0, "c", {}), WellInfo("A02", 0, 1, "c", {})),
                     np.arange(t), np.array([0.0, 24.0, 48.0, 72.0]), (None,) * t, probs, probs * 0.1, probs,
                     np.full((t, w), 3), np.zeros((t, w)), n_ood)
    a01, a02 = well_calls(grid, CallRule(0.6, 2))
    assert (a01.elapsed_h, a02.elapsed_h) == (48.0, 24.0)
    assert condition_calls(grid, CallRule(0.6, 2))["c"].elapsed_h == 48.0
