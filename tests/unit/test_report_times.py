"""The time axis the report's and the dashboard's time courses share."""

from __future__ import annotations

import html

import numpy as np

from nscmonitor.report.figures import Series, time_course_svg
from nscmonitor.report.times import time_axis


def test_hours_where_known_else_the_time_points() -> None:
    hours = time_axis(np.array([np.nan, 24.0, 48.0]), np.array([1, 2, 3]))
    assert hours.hours and np.isnan(hours.x[0]) and hours.at(1) == "24.0 h"
    assert hours.label == "hours since induction"
    scans = time_axis(np.full(3, np.nan), np.array([1, 2, 3]))
    assert not scans.hours and scans.x.tolist() == [1.0, 2.0, 3.0] and scans.at(2) == "time point 3"
    assert "induction_time" in scans.label


def test_the_report_curve_over_time_points_is_drawn_and_labelled() -> None:
    axis = time_axis(np.full(3, np.nan), np.array([1, 2, 3]))
    s = Series("control (n=2)", np.array([0.2, 0.5, 0.9]), np.array([0.05, 0.05, 0.05]), (0, 114, 178), call_index=2)
    svg = time_course_svg(axis.x, [s], "P", "P(neuron)", hours=axis.hours, xlabel=axis.label)
    assert svg.count('class="curve"') == 1 and html.escape(axis.label) in svg
    assert "confident call from time point 3" in svg and " h</title>" not in svg
