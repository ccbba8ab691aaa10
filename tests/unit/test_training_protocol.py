"""The evaluation protocol's figures: intervals against hand-computed values, wells as the
unit, groups per plate and held-out conditions, the spread over seeds, manifest draws."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from nscmonitor.training import protocol as P
from nscmonitor.training.data import TileRecord
from nscmonitor.training.evaluate import balanced_accuracy, ece
from nscmonitor.training.evaluate_runs import plate_draws
from nscmonitor.training.intervals import cluster_bootstrap, cluster_weights, spread, wilson


def test_wilson_matches_the_hand_computed_interval():
    # 19 of 20 wells: p = 0.95, z = 1.96; centre (p + z²/2n)/(1 + z²/n), half-width
    # z·sqrt(p(1-p)/n + z²/4n²)/(1 + z²/n) -> 0.7639 .. 0.9911 (the "roughly 0.76-0.99")
    lo, hi = wilson(19, 20)
    assert lo == pytest.approx(0.76390, abs=5e-5) and hi == pytest.approx(0.99112, abs=5e-5)
    lo, hi = wilson(0, 10)  # no success: lower bound 0, upper z²/(n + z²)
    assert lo == 0.0 and hi == pytest.approx(1.96 ** 2 / (10 + 1.96 ** 2), abs=1e-4)
    assert wilson(0, 0) is None


def _acc(correct):
    return lambda w: (w @ correct) / w.sum(axis=1)


def test_bootstrap_of_two_wells_draws_each_with_replacement():
    # one well right, one wrong: a resample holds 0, 1 or 2 right wells with probability
    # 1/4, 1/2, 1/4, so accuracy is 0, 0.5 or 1 and the 95 % interval spans 0..1
    correct = np.array([1.0, 0.0])
    w = cluster_weights(["a", "b"], n_boot=4000, seed=3)
    values = _acc(correct)(w)
    assert set(np.unique(values)) == {0.0, 0.5, 1.0}
    assert np.mean(values == 0.5) == pytest.approx(0.5, abs=0.03)
    assert cluster_bootstrap(_acc(correct), ["a", "b"], seed=3) == (0.0, 1.0)


def test_bootstrap_of_many_wells_tends_to_the_binomial_interval():
    # 300 of 400 wells right: the interval tends to p ± 1.96·sqrt(p(1-p)/n) = 0.75 ± 0.042
    correct = np.r_[np.ones(300), np.zeros(100)]
    lo, hi = cluster_bootstrap(_acc(correct), [f"w{i}" for i in range(400)], seed=1)
    half = 1.96 * math.sqrt(0.75 * 0.25 / 400)
    assert lo == pytest.approx(0.75 - half, abs=0.01) and hi == pytest.approx(0.75 + half, abs=0.01)


def test_readouts_of_one_well_are_not_counted_as_independent():
    # 10 wells read 7 times each: the clustered interval is the one of 10 wells, exactly; taken
    # as 70 independent readouts it would be much narrower
    right = np.array([1, 1, 1, 1, 1, 1, 1, 0, 0, 0], float)
    once = cluster_bootstrap(_acc(right), [f"w{i}" for i in range(10)], seed=5)
    seven = cluster_bootstrap(_acc(np.repeat(right, 7)), np.repeat([f"w{i}" for i in range(10)], 7), seed=5)
    naive = cluster_bootstrap(_acc(np.repeat(right, 7)), [f"r{i}" for i in range(70)], seed=5)
    assert seven == once
    assert (naive[1] - naive[0]) < 0.6 * (once[1] - once[0])


def test_weighted_figures_at_unit_weights_equal_the_plain_ones():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=200)
    y = rng.integers(0, 4, size=200)
    y[:5] = 3
    pred = probs.argmax(axis=1)
    correct = (pred == y).astype(float)
    one = np.ones((1, 200))
    assert P.weighted_ece(one, probs.max(axis=1), correct)[0] == pytest.approx(ece(probs, y)[0])
    assert P.weighted_balanced_accuracy(one, correct, y, 4)[0] == pytest.approx(balanced_accuracy(y, pred, 4))
    assert P.weighted_accuracy(one, correct)[0] == pytest.approx(correct.mean())


def _tiles(plates=("P1", "P2", "P3"), wells=4, hours=(0, 24, 48, 72, 96), tiles=2, right=lambda p, w, h: True):
    """Tile records and probabilities: a well's truth is w % 2; its tiles say it with 0.8, or
    the other class when ``right`` says the readout is wrong."""
    recs, probs, y = [], [], []
    for p in plates:
        for w in range(wells):
            for t, h in enumerate(hours):
                for f in range(tiles):
                    truth = w % 2
                    guess = truth if right(p, w, h) else 1 - truth
                    recs.append(TileRecord(path=f"{p}{w}{h}{f}.tif", label=str(truth), plate=p, well=f"W{w}",
                                           field=f, timepoint=t, elapsed_h=float(h), condition=f"c{w}"))
                    probs.append([0.8, 0.2] if guess == 0 else [0.2, 0.8])
                    y.append(truth)
    return np.asarray(probs), np.asarray(y), recs


def test_wells_are_the_unit_per_time_bin_and_plate():
    probs, y, recs = _tiles(right=lambda p, w, h: not (p == "P3" and w == 0 and h >= 72))
    rep = P.protocol_report(probs, y, recs, ["a", "b"], n_boot=500)
    pooled = rep["groups"]["pooled"]
    late = pooled["72+"]  # 72 h and 96 h: one readout per well
    assert late["wells"] == late["readouts"] == 12 and late["correct"] == 11
    assert late["accuracy_interval"] == "wilson" and late["accuracy_ci"] == pytest.approx(wilson(11, 12))
    assert pooled["all"]["wells"] == 12 and pooled["all"]["readouts"] == 60
    assert pooled["96 h"]["correct"] == 11 and pooled["48 h"]["correct"] == 12 and pooled["96 h"]["wells"] == 12
    assert pooled["all"]["accuracy_interval"] == "well bootstrap"
    assert rep["groups"]["plate P3"]["72+"]["correct"] == 3 and rep["groups"]["plate P1"]["72+"]["accuracy"] == 1
    assert pooled["72+"]["ece"] == pytest.approx(abs(11 / 12 - 0.8))  # every readout 0.8 confident
    assert pooled["72+"]["tile_ece"] == pytest.approx(abs(44 / 48 - 0.8))
    lo, hi = pooled["72+"]["ece_ci"]
    assert lo <= pooled["72+"]["ece"] <= hi
    assert "held-out conditions" not in rep["groups"] and rep["held_out_conditions"] is None


def test_conditions_training_never_saw_are_pooled_apart():
    probs, y, recs = _tiles(right=lambda p, w, h: w < 2)
    rep = P.protocol_report(probs, y, recs, ["a", "b"], train_conditions=["c0", "c1"], n_boot=200)
    assert rep["held_out_conditions"] == ["c2", "c3"]
    assert rep["groups"]["held-out conditions"]["from 48 h"]["accuracy"] == 0
    assert rep["groups"]["training conditions"]["from 48 h"]["accuracy"] == 1
    assert rep["groups"]["held-out conditions"]["from 48 h"]["wells"] == 6


def test_seed_spread_is_mean_sd_min_max_over_runs():
    recs = _tiles()[2]
    reports = []
    for bad in (0, 1, 3):  # 12, 11 and 9 of 12 wells right at 72+
        wrong = {("P1", w) for w in range(bad)}
        reports.append(P.protocol_report(*_tiles(right=lambda p, w, h, wr=wrong: (p, w) not in wrong)[:2],
                                         recs, ["a", "b"], n_boot=100))
    s = P.seed_spread(reports)["pooled"]["72+"]["accuracy"]
    v = np.array([12, 11, 9]) / 12
    assert s["mean"] == pytest.approx(v.mean()) and s["sd"] == pytest.approx(v.std(ddof=1))
    assert (s["min"], s["max"], s["n"]) == (pytest.approx(0.75), 1.0, 3)
    assert spread([None])["mean"] is None


def test_plate_draws_are_read_from_the_manifest_when_it_records_them(tmp_path):
    def export(name, meta):
        d = tmp_path / name
        d.mkdir()
        (d / "tiles.csv").write_text("path,plate,well,label\na.tif,sim-plate-1,B02,neuron\n"
                                     "b.tif,sim-plate-2,B02,neuron\n")
        (d / "tiles.json").write_text(json.dumps(meta))
        return d

    listed = export("a", {"tile_size": 32, "plate_biology": [
        {"plate": "sim-plate-1", "t50_shift_h": 9.5, "efficiency": 0.8},
        {"plate": "sim-plate-2", "t50_shift_h": -4.0}]})
    keyed = export("b", {"plates": 2, "draws": {"sim-plate-2": {"timing": {"t50_shift_h": 12.0}}}})
    bare = export("c", {"tile_size": 32})
    # the simulator's record: tiles.json "biology", per plate its own draw and its wells'
    sim = export("d", {"biology": {"sim-plate-1": {
        "plate": {"plate_t50_shift_h": -7.25, "plate_efficiency": 0.91},
        "wells": {"B02": {"well_t50_shift_h": 1.5}}}}})
    assert plate_draws([sim]) == {"sim-plate-1": {"t50_shift_h": -7.25, "efficiency": 0.91}}
    assert plate_draws([listed]) == {"sim-plate-1": {"plate": "sim-plate-1", "t50_shift_h": 9.5, "efficiency": 0.8},
                                     "sim-plate-2": {"plate": "sim-plate-2", "t50_shift_h": -4.0}}
    both = plate_draws([keyed, bare])
    assert both == {"b/sim-plate-2": {"timing.t50_shift_h": 12.0}}
    assert P.describe_draws(both["b/sim-plate-2"]) == "timing.t50_shift_h +12"


def test_baseline_is_fitted_on_the_training_plates_and_judged_by_the_protocol(tmp_path):
    pytest.importorskip("sklearn")
    from nscmonitor.training.baseline import baseline_evaluation
    from nscmonitor.training.synthetic import write_synthetic_tiles

    train = write_synthetic_tiles(tmp_path / "train", plates=3, wells_per_class=3, timepoints=(0, 96), fields=2,
                                  tile_size=32, seed=1)
    test = write_synthetic_tiles(tmp_path / "test", plates=1, wells_per_class=3, timepoints=(0, 96), fields=2,
                                 tile_size=32, seed=2, split=False)
    ev = baseline_evaluation(train, [test], scheme="multiclass", split="all", n_boot=200)
    assert ev["train_tiles"] == 4 * 3 * 2 * 2  # plate 1 only: plate 2 validates, plate 3 tests
    late = ev["protocol"]["groups"]["pooled"]["from 48 h"]
    assert late["wells"] == 12 and late["accuracy_interval"] == "wilson"
    assert late["balanced_accuracy"] > 0.5  # chance 0.25: the texture of committed cells is there
    assert ev["protocol"]["held_out_conditions"] == []
