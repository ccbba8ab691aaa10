"""The dashboard's pure state: cube building and merging, readouts at a time, condition
means, the confident-call rule, experiment status and the tile overlay geometry."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from nscmonitor.gui.state.readouts import (ReadoutRows, Well, build_cube, condition_series, confident_call,
                                           mean_over_wells, merge, metric_at, metric_series, metrics_for,
                                           nearest_time, well_tooltip)
from nscmonitor.gui.state.status import daemon_alive, experiment_state, heartbeat_text
from nscmonitor.gui.state.tile_overlay import overlay_geometry, tile_rgba

CLASSES = ("neuron", "astrocyte", "oligodendrocyte", "undifferentiated")
WELLS = [Well(10, "A01", 0, 0, "BDNF"), Well(11, "A02", 0, 1, "BDNF"), Well(12, "B01", 1, 0, "ctrl")]


def rows(entries: list[tuple[int, int, float, list[float]]], classes=CLASSES) -> ReadoutRows:
    n = len(entries)
    p = np.array([e[3] for e in entries], np.float32).reshape(n, len(classes))
    return ReadoutRows(
        well_id=np.array([e[0] for e in entries], np.int64), time_key=np.array([e[1] for e in entries], np.int64),
        elapsed_h=np.array([e[2] for e in entries]), classes=classes, prob_mean=p, prob_sd=p * 0.1, fraction=p * 0.5,
        n_images=np.full(n, 2, np.int32), n_tiles=np.full(n, 20, np.int32), n_qc_failed=np.arange(n, dtype=np.int32),
        confidence=p.max(axis=1))


def test_cube_places_rows_and_marks_missing_as_nan() -> None:
    cube = build_cube(WELLS, 96, rows([(10, 240, 4.0, [0.7, 0.1, 0.1, 0.1]), (12, 480, 8.1, [0.1, 0.6, 0.2, 0.1])]))
    assert list(cube.time_keys) == [240, 480]
    assert cube.elapsed_h.tolist() == pytest.approx([4.0, 8.1])
    assert metric_at(cube, "prob:neuron", 0)[0] == pytest.approx(0.7)
    assert np.isnan(metric_at(cube, "prob:neuron", 0)[1])  # A02 has no data
    assert np.isnan(metric_at(cube, "prob:neuron", 1)[0])
    assert metric_at(cube, "prob:glia", 1)[2] == pytest.approx(0.8)  # astrocyte + oligodendrocyte
    assert metric_at(cube, "fraction:neuron", 0)[0] == pytest.approx(0.35)
    assert metric_at(cube, "qc_failed", 1)[2] == 1
    assert np.isnan(metric_at(cube, "n_images", 1)[0])
    assert metric_at(cube, "n_images", 0)[0] == 2


def test_well_tooltip_names_the_readout_or_why_there_is_none() -> None:
    cube = build_cube(WELLS, 96, rows([(10, 240, 4.0, [0.7, 0.1, 0.1, 0.1]), (12, 480, 8.1, [0.1, 0.6, 0.2, 0.1])]))
    text = well_tooltip(cube, "A01", 0, "BDNF", "P(neuron)", 0.7)
    assert "<b>A01</b> — BDNF" in text and "P(neuron) = 0.7<br>" in text
    assert "neuron 0.70 astrocyte 0.10" in text and "neuron 0.35" in text  # probabilities, then tile fractions
    assert "2 images, 20 tiles, 0 QC failed, confidence 0.70" in text
    assert "no readout at" in well_tooltip(cube, "A01", 1, "BDNF", "P(neuron)", None)
    assert "no condition in the plate map" in well_tooltip(cube, "A02", 0, None, "P(neuron)", None)
    assert well_tooltip(None, "A01", 0, "BDNF", "", None).endswith("no readouts yet")


def test_merge_replaces_grows_times_and_wells() -> None:
    cube = build_cube(WELLS, 96, rows([(10, 240, 4.0, [0.7, 0.1, 0.1, 0.1])]))
    newer = merge(cube, rows([(10, 240, 4.0, [0.2, 0.6, 0.1, 0.1]), (13, 120, 2.0, [0.4, 0.2, 0.2, 0.2])]),
                  WELLS + [Well(13, "B02", 1, 1, "ctrl")])
    assert list(newer.time_keys) == [120, 240]
    assert [w.name for w in newer.wells] == ["A01", "A02", "B01", "B02"]
    assert metric_at(newer, "prob:neuron", 1)[0] == pytest.approx(0.2)  # replaced, not duplicated
    assert metric_at(newer, "prob:neuron", 0)[3] == pytest.approx(0.4)
    assert metric_at(cube, "prob:neuron", 0)[0] == pytest.approx(0.7)  # the old cube is untouched
    with pytest.raises(ValueError):
        merge(cube, rows([(10, 240, 4.0, [0.5, 0.5])], classes=("neuron", "glia")))


def test_binary_models_offer_glia_directly() -> None:
    cube = build_cube(WELLS, 96, rows([(10, 60, 1.0, [0.3, 0.7])], classes=("neuron", "glia")))
    keys = [m.key for m in metrics_for(cube.classes)]
    assert "prob:glia" in keys and "fraction:neuron" in keys
    assert metric_at(cube, "prob:glia", 0)[0] == pytest.approx(0.7)


def test_condition_means_and_sd_across_replicates() -> None:
    cube = build_cube(WELLS, 96, rows([(10, 60, 1.0, [0.6, 0.2, 0.1, 0.1]), (11, 60, 1.0, [0.8, 0.1, 0.05, 0.05]),
                                       (12, 60, 1.0, [0.1, 0.5, 0.3, 0.1]), (10, 120, 2.0, [0.7, 0.1, 0.1, 0.1])]))
    series = {s.condition: s for s in condition_series(cube, metric_series(cube, "prob:neuron"))}
    assert series["BDNF"].mean[0] == pytest.approx(0.7)
    assert series["BDNF"].sd[0] == pytest.approx(np.std([0.6, 0.8], ddof=1))
    assert series["BDNF"].n.tolist() == [2, 1]
    assert series["BDNF"].mean[1] == pytest.approx(0.7) and series["BDNF"].sd[1] == 0.0
    assert series["ctrl"].mean[0] == pytest.approx(0.1) and np.isnan(series["ctrl"].mean[1])
    assert mean_over_wells(cube, ["A01", "A02"])[0, 0] == pytest.approx(0.7)


def test_confident_call_is_first_time_after_which_the_call_holds() -> None:
    h = np.array([4.0, 12, 24, 36, 48, 60])
    p = np.array([[0.4, 0.6], [0.7, 0.3], [0.55, 0.45], [0.7, 0.3], [0.8, 0.2], [0.9, 0.1]])
    call = confident_call(p, h, ("neuron", "glia"), threshold=0.6)
    assert call is not None and call.cls == "neuron" and call.elapsed_h == 36 and call.index == 3
    assert call.probability == pytest.approx(0.7) and not call.early
    # a flip at the last time point means no stable call
    assert confident_call(np.vstack([p, [0.3, 0.7]]), np.append(h, 72), ("neuron", "glia")) is None
    # gaps (NaN rows) are skipped, not counted against the call; an early call is flagged
    gap = np.array([[0.8, 0.2], [np.nan, np.nan], [0.9, 0.1]])
    early = confident_call(gap, np.array([6.0, 12, 18]), ("neuron", "glia"))
    assert early is not None and early.elapsed_h == 6.0 and early.early
    # one confident point alone is not yet stable
    assert confident_call(np.array([[0.5, 0.5], [0.9, 0.1]]), np.array([1.0, 2.0]), ("neuron", "glia")) is None


def test_nearest_time_keeps_the_slider_on_the_same_hour() -> None:
    cube = build_cube(WELLS, 96, rows([(10, k, k / 60, [0.25] * 4) for k in (60, 240, 480)]))
    assert nearest_time(cube, 3.9) == 1
    assert cube.time_label(2) == "8.0 h"


def test_experiment_state_and_daemon_alive() -> None:
    now = datetime(2025, 1, 1, 12, tzinfo=timezone.utc)
    live = ["/d/x/"]
    # the state follows the daemon: never 'acquiring' while no daemon runs
    assert experiment_state(now - timedelta(minutes=5), now, watch_path="/d/x", watched_by_live_daemon=live) == "acquiring"
    assert experiment_state(now - timedelta(hours=5), now, watch_path="/d/x", watched_by_live_daemon=live) == "idle"
    assert experiment_state(now - timedelta(minutes=5), now, watch_path="/d/x",
                            watched_by_live_daemon=[]) == "daemon stopped"
    assert experiment_state(now - timedelta(hours=5), now, watch_path="/d/x", watched_by_live_daemon=[],
                            pending=3) == "daemon stopped"
    assert experiment_state(now - timedelta(hours=5), now, watch_path="/d/x", watched_by_live_daemon=[]) == "finished"
    assert experiment_state(now - timedelta(minutes=5), now, watch_path="/d/y", watched_by_live_daemon=live) == \
        "daemon stopped", "a daemon watching another folder does not count"
    assert experiment_state(None, now, watch_path=None, watched_by_live_daemon=[]) == "empty"
    assert experiment_state(None, now, watch_path="/d/x", watched_by_live_daemon=live) == "idle"
    assert daemon_alive(now - timedelta(seconds=30), "running", now)
    assert not daemon_alive(now - timedelta(seconds=600), "running", now)
    assert not daemon_alive(now, "stopped", now)
    assert heartbeat_text(now - timedelta(seconds=42), now) == "42 s ago"


def test_overlay_geometry_matches_the_daemons_grid() -> None:
    # 100 x 70 frame, 32 px tiles, no resampling: 2 x 3 tiles centred -> origin (2, 3)
    g = overlay_geometry(100, 70, 2, 3, input_size=32)
    assert (g.x0, g.y0, g.tile_w, g.exact) == (2.0, 3.0, 32.0, True)
    # a 0.5 um/px frame for a 1.0 um/px model is halved first: 200x140 -> 100x70, tiles are 64 original px
    g = overlay_geometry(200, 140, 2, 3, input_size=32, src_um=0.5, dst_um=1.0)
    assert (g.x0, g.y0, g.tile_w, g.exact) == (4.0, 6.0, 64.0, True)
    # without metadata the grid is inferred and flagged
    g = overlay_geometry(100, 70, 2, 3)
    assert not g.exact and g.tile_w == pytest.approx(100 / 3)


def test_tile_colours_follow_top_class_with_probability_as_opacity() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8]], np.float32)
    kept = np.array([True, False, True])
    rgba = tile_rgba(probs, kept, 1, 3, np.array([[255, 0, 0], [0, 0, 255]]), max_alpha=1.0)
    assert rgba.shape == (1, 3, 4)
    assert tuple(rgba[0, 0]) == (255, 0, 0, 229)
    assert rgba[0, 1, 3] == 0
    assert tuple(rgba[0, 2, :3]) == (0, 0, 255) and rgba[0, 2, 3] == 204


def test_forecast_series_averages_the_selected_wells_per_time_and_leaves_gaps_as_nan():
    from nscmonitor.gui.state.forecasts import forecast_series
    from nscmonitor.store.forecasts import ForecastCell

    cls = ("neuron", "glia")

    def cell(p, n, h, classes=cls):
        return ForecastCell("fc-1", classes, (p, 1 - p), n, h)

    cells = {("A01", 0): cell(0.5, 1, 0.0), ("A01", 1): cell(0.8, 2, 24.0), ("A02", 1): cell(0.6, 2, 24.0),
             ("A03", 2): cell(0.1, 3, 48.0, ("x", "y"))}  # another model's classes: not mixed in
    s = forecast_series(cells, ["A01", "A02"], np.array([0, 1, 2]))
    assert s.classes == cls and s.model_version == "fc-1"
    assert s.n_wells.tolist() == [1, 2, 0]
    assert np.allclose(s.probs[:2], [[0.5, 0.5], [0.7, 0.3]]) and np.isnan(s.probs[2]).all()
    assert forecast_series(cells, ["B01"], np.array([0, 1])) is None


def test_the_plate_map_can_be_coloured_by_each_forecast_class_with_gaps_as_no_data():
    from nscmonitor.gui.state.forecasts import forecast_at, forecast_metrics
    from nscmonitor.store.forecasts import ForecastCell

    cls = ("astrocyte", "neuron", "undifferentiated")
    cells = {("A01", 3): ForecastCell("fc-1", cls, (0.2, 0.7, 0.1), 2, 24.0),
             ("A02", 3): ForecastCell("fc-1", cls, (0.6, 0.3, 0.1), 2, 24.0),
             ("A01", 4): ForecastCell("fc-1", cls, (0.1, 0.1, 0.8), 3, 48.0)}
    metrics = forecast_metrics(cells)
    assert [m.key for m in metrics] == [f"forecast:{c}" for c in cls]
    assert all(m.fixed_range == (0.0, 1.0) for m in metrics) and metrics[1].label == "Well forecast P(neuron)"
    assert forecast_metrics({}) == []
    v = forecast_at(cells, ["A01", "A02", "B01"], 3, "forecast:neuron")
    assert v[:2].tolist() == [0.7, 0.3] and np.isnan(v[2])
    v = forecast_at(cells, ["A01", "A02"], 4, "forecast:undifferentiated")
    assert v[0] == 0.8 and np.isnan(v[1])
    assert np.isnan(forecast_at(cells, ["A01"], None, "forecast:neuron")).all()


def test_flagged_forecasts_are_listed_per_time_counted_for_the_banner_and_named_in_the_hover_text():
    from nscmonitor.gui.state.forecasts import flagged_forecasts, forecast_flagged, forecast_note
    from nscmonitor.store.forecasts import ForecastCell

    cls = ("neuron", "glia")
    cells = {("A01", 1): ForecastCell("fc-1", cls, (0.9, 0.1), 2, 24.0, True, 1),
             ("A02", 1): ForecastCell("fc-1", cls, (0.4, 0.6), 2, 24.0, False, 0),
             ("A03", 1): ForecastCell("fc-1", cls, (0.4, 0.6), 2, 24.0),  # a model without the score
             ("A02", 2): ForecastCell("fc-1", cls, (0.4, 0.6), 3, 48.0, True, 2)}
    assert forecast_flagged(cells, ["A01", "A02", "A03", "B01"], 1) == ["A01"]
    assert forecast_flagged(cells, ["A01", "A02"], 2) == ["A02"] and forecast_flagged(cells, ["A01"], None) == []
    assert flagged_forecasts(cells) == 2
    assert "forecast flagged" in forecast_note(cells, "A01", 1) and "1 frame(s) flagged" in forecast_note(cells, "A01", 1)
    assert "flag" not in forecast_note(cells, "A02", 1)
    assert "flagged" not in forecast_note(cells, "A03", 1) and "flag unavailable" in forecast_note(cells, "A03", 1)
