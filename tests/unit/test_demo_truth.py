"""What the demo counts as a right well readout, and the end-point labels its model learns from."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from nscmonitor.cli.demo import FATES, plate_summary, qc_summary, right_call
from nscmonitor.training import data as D

# well -> (condition, live cells per fate at 72 h)
WELLS = {
    "A07": ("mixed", (20, 42, 10, 28)),           # a mixed well: astrocytes outgrew the neurons
    "A11": ("neuron-low-dose", (27, 30, 3, 40)),  # most cells stay undifferentiated
    "A01": ("neuron-directed", (45, 25, 5, 25)),
}


def _write(tmp_path: Path, calls: dict[str, dict[str, float]]) -> tuple[Path, Path]:
    manifest, report = tmp_path / "manifest.csv", tmp_path / "report.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["well", "field", "elapsed_h", "condition", *(f"n_{f}" for f in FATES)])
        for well, (cond, n) in WELLS.items():
            for field in (1, 2):  # the shares are summed over the fields
                w.writerow([well, field, 72.0, cond, *(v // 2 for v in n)])
            w.writerow([well, 1, 64.0, cond, 0, 0, 0, 1])  # before 72 h: not judged
    with report.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["well", "elapsed_h", "class", "prob_mean"])
        for well, probs in calls.items():
            for h in (64.0, 72.0):
                for cls, p in probs.items():
                    w.writerow([well, h, cls, p])
    return manifest, report


def _counts(lines: list[str]) -> dict[str, tuple[str, str]]:
    return {ln.split()[0]: (ln.split()[1], ln.split()[2]) for ln in lines[2:]}


def test_wells_are_judged_by_their_live_cells_not_the_recipe(tmp_path):
    manifest, report = _write(tmp_path, {
        "A07": {"neuron": 0.2, "astrocyte": 0.5, "oligodendrocyte": 0.1, "undifferentiated": 0.2},
        "A11": {"neuron": 0.5, "astrocyte": 0.2, "oligodendrocyte": 0.1, "undifferentiated": 0.2},
        "A01": {"neuron": 0.6, "astrocyte": 0.2, "oligodendrocyte": 0.1, "undifferentiated": 0.1},
    })
    got = _counts(plate_summary(report, manifest))
    assert got["mixed"] == ("1/1", "0/1")            # astrocyte: what the well shows, not the recipe's neuron
    assert got["neuron-low-dose"] == ("0/1", "1/1")  # neuron: 13 points below the undifferentiated share
    assert got["neuron-directed"] == ("1/1", "1/1")


def test_a_fate_within_the_tie_of_the_majority_is_right_and_one_further_off_is_not():
    shares = dict(zip(FATES, (0.27, 0.30, 0.03, 0.40)))
    assert right_call("undifferentiated", shares)
    assert not right_call("astrocyte", shares)  # 0.10 below
    assert right_call("astrocyte", shares, tie=0.12)
    assert not right_call("oligodendrocyte", shares, tie=0.12)


def test_endpoint_labels_take_the_majority_of_the_wells_cells_at_its_last_time_point():
    def rec(well, h, fr, label="neuron"):
        return D.TileRecord(path=f"{well}_{h}.tif", label=label, plate="P1", well=well, elapsed_h=h,
                            condition="mixed", fractions=dict(zip(FATES, fr)))

    records = [rec("A07", 24.0, (0.6, 0.2, 0.1, 0.1)),   # early: neuron-rich, not the end point
               rec("A07", 120.0, (0.3, 0.5, 0.1, 0.1)), rec("A07", 120.0, (0.2, 0.3, 0.1, 0.4)),
               rec("B07", 120.0, (0.5, 0.1, 0.1, 0.3), label="astrocyte")]
    out = D.endpoint_labels(records)
    assert [r.label for r in out] == ["astrocyte", "astrocyte", "astrocyte", "neuron"]


def test_soft_labels_are_the_wells_end_point_shares_renormalised_over_the_scheme():
    def rec(well, h, fr):
        return D.TileRecord(path=f"{well}_{h}.tif", label="neuron", plate="P1", well=well, elapsed_h=h,
                            condition="neuron-low-dose", fractions=dict(zip(FATES, fr)))

    out = D.endpoint_labels([rec("A11", 24.0, (0.9, 0.0, 0.0, 0.1)),     # early tiles learn the end point too
                             rec("A11", 120.0, (0.3, 0.2, 0.0, 0.5)), rec("A11", 120.0, (0.2, 0.4, 0.0, 0.4))])
    soft = D.soft_targets(out, D.MULTICLASS)
    assert soft.shape == (3, 4) and np.allclose(soft.sum(1), 1.0)
    assert np.allclose(soft[0], [0.25, 0.30, 0.0, 0.45]) and np.allclose(soft[0], soft[2])
    assert [r.label for r in out] == ["undifferentiated"] * 3  # the hard label stays the majority
    # a fate outside the classes is left out and the rest renormalised
    assert np.allclose(D.soft_targets(out[:1], ("neuron", "undifferentiated"))[0], [0.25 / 0.70, 0.45 / 0.70])
    with pytest.raises(D.DataError, match="fractions per fate"):
        D.soft_targets([rec("B01", 24.0, (0.5, 0.5, 0.0, 0.0))], D.MULTICLASS)  # no end point: no target


def test_tile_label_mode_targets_each_tiles_own_cells(tmp_path):
    rows = [("p1/A01/a.tif", "A01", 72.0, "neuron", (0.6, 0.2, 0.0, 0.2)),
            ("p1/A01/b.tif", "A01", 72.0, "astrocyte", (0.1, 0.5, 0.1, 0.3)),
            ("p1/A02/c.tif", "A02", 72.0, "undifferentiated", (0.0, 0.0, 0.0, 2.0))]  # counts, not shares
    with (tmp_path / "tiles.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "plate", "well", "elapsed_h", "label", *(f"frac_{f}" for f in FATES)])
        for path, well, h, label, fr in rows:
            w.writerow([path, "sim-plate-1", well, h, label, *fr])
    tile, _ = D.read_tiles_export(tmp_path, "tile")
    soft = D.soft_targets(tile, D.MULTICLASS)
    assert np.allclose(soft, [[0.6, 0.2, 0.0, 0.2], [0.1, 0.5, 0.1, 0.3], [0.0, 0.0, 0.0, 1.0]])
    assert [r.label for r in tile] == ["neuron", "astrocyte", "undifferentiated"]  # hard labels unchanged
    endpoint, _ = D.read_tiles_export(tmp_path, "endpoint")
    assert np.allclose(D.soft_targets(endpoint, D.MULTICLASS)[0], [0.35, 0.35, 0.05, 0.25])  # the well's shares
    well, _ = D.read_tiles_export(tmp_path, "well")
    with pytest.raises(D.DataError, match="fractions per fate"):  # a recipe's fate carries no shares
        D.soft_targets(well, D.MULTICLASS)


def test_soft_labels_need_the_multiclass_scheme():
    from nscmonitor.core.errors import UserFacingError
    from nscmonitor.training.train_data import TrainConfig

    with pytest.raises(UserFacingError, match="multiclass"):
        TrainConfig(scheme="binary", soft_labels=True)
    with pytest.raises(UserFacingError, match="true or false"):
        TrainConfig(scheme="multiclass", soft_labels="yes")
    assert TrainConfig(scheme="multiclass", soft_labels=True).soft_labels


def test_the_forecast_is_judged_at_early_hours_by_the_wells_end_point_beside_the_per_image_readout(tmp_path):
    from nscmonitor.cli.demo import forecast_summary

    # A11 (low dose) is neuron-rich at 24 h but mostly undifferentiated by its last scan (120 h)
    manifest, report, forecasts = tmp_path / "m.csv", tmp_path / "r.csv", tmp_path / "f.csv"
    live = {24.0: (50, 20, 0, 30), 48.0: (40, 25, 0, 35), 120.0: (27, 30, 3, 40)}
    with manifest.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["well", "field", "elapsed_h", "condition", *(f"n_{f}" for f in FATES)])
        for h, n in live.items():
            w.writerow(["A11", 1, h, "neuron-low-dose", *n])
            w.writerow(["A01", 1, h, "neuron-directed", 45, 25, 5, 25])
    one_hot = {f: dict.fromkeys(FATES, 0.1) | {f: 0.7} for f in FATES}
    with report.open("w", newline="") as fh:  # the per-image readout follows each scan's majority
        w = csv.writer(fh)
        w.writerow(["well", "elapsed_h", "class", "prob_mean"])
        for h in (24.0, 48.0, 72.0):
            for well, top in (("A11", "neuron"), ("A01", "neuron")):
                w.writerows([well, h, c, p] for c, p in one_hot[top].items())
    with forecasts.open("w", newline="") as fh:  # the forecast reads A11's end point from 48 h on
        w = csv.writer(fh)
        w.writerow(["experiment", "well", "elapsed_h", "predicted", *(f"p_{f}" for f in FATES)])
        for h, top in ((24.0, "neuron"), (48.0, "undifferentiated"), (72.0, "undifferentiated")):
            w.writerow(["E", "A11", h, top, *one_hot[top].values()])
            w.writerow(["E", "A01", h, "neuron", *one_hot["neuron"].values()])
    lines = forecast_summary(forecasts, report, manifest)
    rows = {ln.split()[0]: ln.split()[1:] for ln in lines[3:]}
    assert rows["neuron-low-dose"] == ["0/1", "1/1", "1/1", "0/1", "0/1", "0/1"]
    assert rows["neuron-directed"] == ["1/1"] * 6
    assert lines[2].split() == ["condition", "24", "h", "48", "h", "72", "h", "24", "h", "48", "h", "72", "h"]


def test_the_demo_daemon_serves_the_well_forecast_only_when_one_was_trained(tmp_path):
    from nscmonitor.cli.demo import _fresh_settings

    fc = tmp_path / "forecast" / "forecast.onnx"
    assert _fresh_settings(tmp_path, tmp_path / "plate", fc).forecast_model == fc
    assert _fresh_settings(tmp_path, tmp_path / "plate").forecast_model is None


def test_each_wells_earliest_call_is_judged_by_its_end_point_under_each_models_rule(tmp_path):
    from nscmonitor.cli.demo import calls_summary
    from nscmonitor.core.calibration import CallRule

    manifest, report, forecasts = tmp_path / "m.csv", tmp_path / "r.csv", tmp_path / "f.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["well", "field", "elapsed_h", "condition", *(f"n_{f}" for f in FATES)])
        for h in (24.0, 48.0, 72.0):
            w.writerow(["A01", 1, h, "neuron-directed", 45, 25, 5, 25])
            w.writerow(["A11", 1, h, "neuron-low-dose", 27, 30, 3, 40])  # undifferentiated at the end
    sure = {f: dict.fromkeys(FATES, 0.02) | {f: 0.94} for f in FATES}
    unsure = dict(zip(FATES, (0.4, 0.3, 0.1, 0.2)))
    with forecasts.open("w", newline="") as fh:  # A01 right from 48 h; A11 called neuron (wrong) from 24 h
        w = csv.writer(fh)
        w.writerow(["well", "elapsed_h", *(f"p_{f}" for f in FATES)])
        for h, a01 in ((24.0, unsure), (48.0, sure["neuron"]), (72.0, sure["neuron"])):
            w.writerow(["A01", h, *a01.values()])
            w.writerow(["A11", h, *sure["neuron"].values()])
    with report.open("w", newline="") as fh:  # per image: A01 sure only at 72 h, A11 never sure
        w = csv.writer(fh)
        w.writerow(["well", "elapsed_h", "class", "prob_mean"])
        for h in (24.0, 48.0, 72.0):
            for well, p in (("A01", sure["neuron"] if h == 72.0 else unsure), ("A11", unsure)):
                w.writerows([well, h, c, v] for c, v in p.items())
    lines = calls_summary(forecasts, report, manifest, CallRule(0.9, 1), CallRule(0.9, 1))
    rows = {ln.split()[0]: ln.split()[1:] for ln in lines[3:]}
    assert rows["neuron-directed"] == ["1/1", "0", "48", "h", "1/1", "0", "72", "h"]
    assert rows["neuron-low-dose"] == ["1/1", "1", "24", "h", "0/1", "0", "-"]
    strict = calls_summary(forecasts, report, manifest, CallRule(0.9, 3), CallRule(0.9, 1))
    assert {ln.split()[0]: ln.split()[1] for ln in strict[3:]}["neuron-directed"] == "0/1"  # 2 points only


def test_time_points_each_models_ood_score_flags_are_no_data_for_the_calls(tmp_path):
    """As the dashboard and report do: a forecast flagged by its own score (``ood`` 1) and a
    readout resting on flagged images (``n_ood`` > 0) are left out of the calls."""
    from nscmonitor.cli.demo import calls_summary
    from nscmonitor.core.calibration import CallRule

    manifest, report, forecasts = tmp_path / "m.csv", tmp_path / "r.csv", tmp_path / "f.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["well", "field", "elapsed_h", "condition", *(f"n_{f}" for f in FATES)])
        for h in (24.0, 48.0):
            w.writerow(["A01", 1, h, "neuron-directed", 45, 25, 5, 25])
    sure = dict.fromkeys(FATES, 0.02) | {"neuron": 0.94}
    with forecasts.open("w", newline="") as fh:  # sure at both hours, the 24 h forecast flagged
        w = csv.writer(fh)
        w.writerow(["well", "elapsed_h", "ood", "n_ood", *(f"p_{f}" for f in FATES)])
        w.writerow(["A01", 24.0, 1, 1, *sure.values()])
        w.writerow(["A01", 48.0, 0, 1, *sure.values()])
    with report.open("w", newline="") as fh:  # sure at both hours, every readout on flagged images
        w = csv.writer(fh)
        w.writerow(["well", "elapsed_h", "class", "prob_mean", "n_ood"])
        for h in (24.0, 48.0):
            w.writerows(["A01", h, c, v, 1] for c, v in sure.items())
    rows = {ln.split()[0]: ln.split()[1:] for ln in calls_summary(forecasts, report, manifest, CallRule(0.9, 1),
                                                                    CallRule(0.9, 1))[3:]}
    assert rows["neuron-directed"] == ["1/1", "0", "48", "h", "0/1", "0", "-"]


def test_qc_summary_counts_the_autofocus_failures_it_caught(tmp_path: Path) -> None:
    manifest, images = tmp_path / "manifest.csv", tmp_path / "images.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "autofocus_fail"])
        w.writerows([["a_t1.tif", "True"], ["a_t2.tif", "False"], ["b_t3.tif", "True"], ["c_t3.tif", "False"],
                     ["d_t2.tif", "False"]])
    with images.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "qc_passed", "qc_reason", "focus_ratio"])
        w.writerows([["/x/a_t1.tif", "1", "", ""],  # not judged (a field's only scan)
                     ["/x/a_t2.tif", "1", "", "1.02"],
                     ["/x/b_t3.tif", "0", "out of focus (fine detail 0.07 ...)", "0.07"],
                     ["/x/c_t3.tif", "0", "out of focus (fine detail 0.30 ...)", "0.30"],  # not a failure
                     ["/x/d_t2.tif", "0", "saturated (9.0% of pixels at full scale)", "0.95"]])
    (line,) = qc_summary(images, manifest)
    assert line.startswith("QC: 2 of 5 frames failed as out of focus") and ": 1 of the 2 frames whose" in line
    assert "failed, and 1 others;" in line and "never judged: 1;" in line and line.endswith("other QC failures: 1")
