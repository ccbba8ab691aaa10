"""The validation gate's arithmetic, on hand-made probabilities whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from nscmonitor.engines.validate import GateReport, compare, ood_threshold_for, serving_metadata, well_readouts


def _probs(n=200, k=4, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(k) * 0.3, size=n).astype(np.float32)
    return p


def test_identical_outputs_pass():
    p = _probs()
    r = compare(p, p.copy(), None, backend="x")
    assert r.passed and r.top1_agreement == 1.0 and r.well_readout_pp == 0.0


def test_one_flip_in_fifty_fails_the_99_percent_bar():
    ref = np.tile(np.array([[0.9, 0.05, 0.03, 0.02]], np.float32), (50, 1))
    cand = ref.copy()
    cand[0] = [0.05, 0.9, 0.03, 0.02]
    r = compare(ref, cand, ["w"] * 50, backend="int8")
    assert not r.passed and r.top1_agreement == 0.98
    assert any("top-1" in reason for reason in r.reasons)


def test_small_shift_in_every_tile_fails_on_the_well_readout():
    ref = np.tile(np.array([[0.70, 0.20, 0.05, 0.05]], np.float32), (100, 1))
    cand = ref + np.array([[-0.02, 0.02, 0, 0]], np.float32)
    r = compare(ref, cand, ["A01"] * 50 + ["A02"] * 50, backend="fp16")
    assert r.top1_agreement == 1.0 and not r.passed
    assert abs(r.well_readout_pp - 2.0) < 1e-3 and r.n_groups == 2


def test_well_readouts_are_mean_probability_and_fraction_per_well():
    p = np.array([[0.6, 0.4], [0.2, 0.8], [1.0, 0.0]], np.float32)
    means, fracs = well_readouts(p, ["a", "a", "b"])
    np.testing.assert_allclose(means, [[0.4, 0.6], [1.0, 0.0]])
    np.testing.assert_allclose(fracs, [[0.5, 0.5], [1.0, 0.0]])


def test_tile_fraction_is_reported_but_one_flipped_tile_of_few_does_not_fail_the_gate():
    ref = np.array([[0.51, 0.49]] * 99 + [[0.9, 0.1]], np.float32)
    cand = ref.copy()
    cand[0] = [0.495, 0.505]  # one near-tie flips: 1 % of tiles, 50 pp of a 2-tile well's fraction
    r = compare(ref, cand, ["A01", "A01"] + ["B01"] * 98, backend="int8")
    assert r.passed and r.top1_agreement == 0.99 and r.fraction_pp == 50.0 and r.well_readout_pp < 1.0


def test_nan_or_wrong_shape_never_passes():
    p = _probs(10)
    bad = p.copy()
    bad[3, 1] = np.nan
    assert not compare(p, bad, None, backend="x").passed
    assert not compare(p, p[:, :3], None, backend="x").passed


def test_report_round_trips_through_a_dict():
    r = compare(_probs(), _probs(seed=1), None, backend="x")
    assert GateReport.from_dict(r.to_dict()) == r


def test_near_tied_flips_are_reported_but_gated_on_clear_tiles_only():
    clear = np.tile(np.array([[0.8, 0.1, 0.05, 0.05]], np.float32), (90, 1))
    tied = np.tile(np.array([[0.46, 0.44, 0.05, 0.05]], np.float32), (10, 1))
    ref = np.concatenate([clear, tied])
    cand = ref.copy()
    cand[90:93] = [0.445, 0.455, 0.05, 0.05]  # three near-ties flip: 97 % agreement on all tiles
    r = compare(ref, cand, ["A01"] * 50 + ["A02"] * 50, backend="int8")
    assert r.top1_agreement == 0.97 and r.top1_agreement_clear == 1.0 and r.n_clear == 90
    assert r.passed and "90 clear tiles" in r.summary()
    cand[0] = [0.1, 0.8, 0.05, 0.05]  # one clear tile flips
    r = compare(ref, cand, ["A01"] * 50 + ["A02"] * 50, backend="int8",
                tolerance={"well_readout_pp": 100.0})
    assert not r.passed and r.top1_agreement_clear == 89 / 90
    assert "on the 90 tiles the reference calls clearly (margin >= 0.10)" in r.reasons[0]


def test_margin_rule_follows_the_tolerance():
    ref = np.tile(np.array([[0.6, 0.4]], np.float32), (40, 1))
    cand = ref.copy()
    cand[0] = [0.4, 0.6]
    assert compare(ref, cand, None, backend="x", tolerance={"well_readout_pp": 100.0}).n_clear == 40
    r = compare(ref, cand, None, backend="x", tolerance={"well_readout_pp": 100.0, "clear_margin": 0.3})
    assert r.n_clear == 0 and r.top1_agreement_clear is None and not r.passed
    assert "too few to gate on" in r.reasons[0]


def test_the_ood_threshold_follows_a_shifted_engine_score_and_flags_what_fp32_flags():
    """An int8 backbone scores every tile a little higher (the demo model: 10 %); the gate's
    line through both engines' scores puts the threshold where fp32's flags stay the same."""
    rng = np.random.default_rng(3)
    ref = rng.gamma(9.0, 1.0, 600)
    cand = 1.1 * ref + 0.4 + rng.normal(0, 0.05, ref.size)
    thr = float(np.quantile(ref, 0.96))
    mapped = ood_threshold_for(ref, cand, thr)
    assert mapped == pytest.approx(1.1 * thr + 0.4, rel=0.01)
    assert np.mean((cand > mapped) == (ref > thr)) >= 0.99
    assert np.mean((cand > thr) == (ref > thr)) < 0.97  # at fp32's threshold it flags more
    r = compare(_probs(600), _probs(600), None, backend="int8", ood=(ref, cand, thr))
    assert r.ood_threshold == pytest.approx(mapped) and r.ood_threshold_reference == thr
    assert "OOD threshold" in r.summary()
    assert GateReport.from_dict(r.to_dict()) == r


def test_too_few_scores_or_a_falling_line_leave_the_model_threshold():
    ref = np.linspace(5, 15, 100)
    assert ood_threshold_for(ref[:10], ref[:10] * 1.1, 10.0) is None
    assert ood_threshold_for(ref, 20 - ref, 10.0) is None
    assert ood_threshold_for(np.full(100, 7.0), ref, 10.0) is None
    assert ood_threshold_for(ref, np.where(ref > 6, ref, np.nan), 10.0) == pytest.approx(10.0)
    r = compare(_probs(100), _probs(100), None, backend="x", ood=(ref, None, 10.0))
    assert r.ood_threshold is None and r.ood_threshold_reference is None


def test_an_engine_serves_with_its_gate_threshold_and_keeps_the_model_own():
    from nscmonitor.engines.metadata import ModelMetadata

    meta = ModelMetadata(name="m", version="1", scheme="binary", classes=("neuron", "glia"), input_size=32,
                         ood={"output": "ood", "threshold": 10.0, "quantile": 0.96})
    served = serving_metadata(meta, {"passed": True, "ood_threshold": 11.5})
    assert served.ood["threshold"] == 11.5 and served.ood["threshold_fp32"] == 10.0
    assert served.ood["quantile"] == 0.96 and meta.ood["threshold"] == 10.0
    assert serving_metadata(served, {"ood_threshold": 12.0}).ood["threshold_fp32"] == 10.0
    assert serving_metadata(meta, {"passed": True}) is meta and serving_metadata(meta, None) is meta
    for damaged in ("high", float("nan"), [1.0]):
        assert serving_metadata(meta, {"ood_threshold": damaged}) is meta
    plain = ModelMetadata(name="m", version="1", scheme="binary", classes=("neuron", "glia"), input_size=32)
    assert serving_metadata(plain, {"ood_threshold": 11.5}) is plain


def test_the_status_line_names_the_engine_own_ood_threshold():
    from nscmonitor.engines.autobuild_status import gate_text

    gate = {"top1_agreement": 0.9974, "well_readout_pp": 0.38}
    assert "OOD" not in gate_text(gate)
    line = gate_text({**gate, "ood_threshold": 13.8938, "ood_threshold_reference": 13.8233})
    assert line.endswith("OOD threshold 13.89 (fp32 13.82)"), line
    assert "OOD" not in gate_text({**gate, "ood_threshold": "high", "ood_threshold_reference": 13.8})
