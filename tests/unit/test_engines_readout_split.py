"""The gate's readout split: the part of an engine's readout error a well's tiles share is
gated at the tolerance, independent tile noise apart (``engines.validate``), on held-out sets
made here whose shift and noise are known."""

from __future__ import annotations

import numpy as np
import pytest

from nscmonitor.engines.validate import (MIN_SPLIT_WELLS, between_well_variance_upper, chi2_lower, compare,
                                         readout_split)


def held_out(seed: int, *, noise_pp: float = 1.2, shift_pp=None, wells_shifted: tuple[int, float] | None = None,
             heavy_tailed: bool = False):
    """50 wells of 6-16 tiles (the gate set's shape), the candidate the reference plus
    independent tile noise (normal, or Student's t with 3 degrees of freedom: int8 rounding
    errors have heavy tails, a few tiles moving several points), a shift of every tile, or a
    shift of the first wells' tiles only."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(6, 17, size=50)
    groups = [f"w{i}" for i, n in enumerate(sizes) for _ in range(n)]
    ref = rng.dirichlet(np.ones(4) * 0.5, size=len(groups))
    noise = rng.standard_t(3, size=ref.shape) / np.sqrt(3) if heavy_tailed else rng.normal(0, 1, size=ref.shape)
    cand = ref + noise * noise_pp / 100
    if shift_pp is not None:
        cand = cand + np.asarray(shift_pp) / 100
    if wells_shifted is not None:
        n_wells, pp = wells_shifted
        hit = np.array([int(g[1:]) < n_wells for g in groups])
        cand[hit, 0] += pp / 100
        cand[hit, 1] -= pp / 100
    return ref, cand, groups


def test_tile_noise_that_fails_small_wells_passes_when_nothing_is_shared():
    """Heavy-tailed noise of about 0.9 pp per tile, as the ResNet50s' all-int8 files have."""
    reports = [compare(*held_out(seed, noise_pp=0.9, heavy_tailed=True), backend="int8") for seed in range(10)]
    assert sum(r.well_readout_pp > 1.0 for r in reports) >= 3  # 6-16 tiles a well keep the noise
    for r in reports:
        assert r.shared_readout_pp < 0.9 and r.tile_noise_ratio < 0.1
        assert r.passed and r.readout_gated_pp == r.shared_readout_pp


@pytest.mark.parametrize("seed", range(3))
def test_a_shift_of_every_tile_fails_at_its_size(seed):
    r = compare(*held_out(seed, shift_pp=[1.5, -1.5, 0, 0]), backend="int8")
    assert not r.passed and r.shared_readout_pp >= 1.4
    assert any("a well's tiles share" in reason for reason in r.reasons)


@pytest.mark.parametrize("wells", [1, 3, 10])
def test_a_shift_confined_to_wells_of_one_kind_fails(wells):
    for seed in range(3):
        r = compare(*held_out(seed, wells_shifted=(wells, 2.0)), backend="int8")
        assert not r.passed and r.shared_readout_pp > 1.0, (wells, seed, r.shared_readout_pp)


def test_the_shared_figure_is_at_least_the_mean_shift_and_grows_with_the_between_well_spread():
    for seed in range(6):
        ref, cand, groups = held_out(seed, shift_pp=[0.3, 0, -0.3, 0], noise_pp=0.8 + 0.2 * seed)
        r = compare(ref, cand, groups, backend="int8")
        assert r.shared_readout_pp >= float(np.abs((cand - ref).mean(axis=0)).max() * 100)
    ref, cand, groups = held_out(0, noise_pp=0.5)
    calm = compare(ref, cand, groups, backend="int8").shared_readout_pp
    rng = np.random.default_rng(7)
    per_well = {g: rng.normal(0, 0.004) for g in dict.fromkeys(groups)}  # wells shifted 0.4 pp sd
    cand[:, 0] += [per_well[g] for g in groups]
    assert compare(ref, cand, groups, backend="int8").shared_readout_pp > calm + 0.5


def test_too_few_wells_gate_the_held_out_wells_own_figure():
    ref, cand, groups = held_out(0)
    keep = np.isin(groups, [f"w{i}" for i in range(MIN_SPLIT_WELLS - 1)])
    sub = [g for g, k in zip(groups, keep) if k]
    split = readout_split(ref[keep], cand[keep], sub, floor_pp=1.0)
    r = compare(ref[keep], cand[keep], sub, backend="int8")
    assert not split.split and r.shared_readout_pp == r.well_readout_pp
    one = compare(ref, cand, None, backend="int8")  # one well: its mean is all there is
    assert one.shared_readout_pp == one.well_readout_pp


def test_noise_large_next_to_the_tiles_own_spread_fails():
    rng = np.random.default_rng(0)
    groups = [f"w{i // 10}" for i in range(500)]
    base = rng.dirichlet(np.ones(4) * 2, size=50)
    ref = np.repeat(base, 10, axis=0) + rng.normal(0, 0.02, size=(500, 4))  # tiles within 2 pp of their well
    cand = ref + rng.normal(0, 0.01, size=ref.shape)
    r = compare(ref, cand, groups, backend="int8")
    assert r.tile_noise_ratio > 0.3 and not r.passed
    assert any("tile noise" in reason for reason in r.reasons)
    assert compare(ref, cand, groups, backend="int8", tolerance={"tile_noise_ratio": 1.0}).passed


def test_a_class_no_tile_varies_in_does_not_gate_the_noise():
    rng = np.random.default_rng(1)
    groups = [f"w{i // 10}" for i in range(500)]
    ref = np.column_stack([rng.dirichlet(np.ones(3), size=500) * 0.999, np.full(500, 0.001)])
    cand = ref + np.column_stack([rng.normal(0, 0.005, size=(500, 3)), rng.normal(0, 0.001, size=500)])
    r = compare(ref, cand, groups, backend="int8")
    assert r.tile_noise_ratio < 0.2 and r.passed  # 0.1 pp of noise on a class fixed at 0.1 %


def test_chi2_quantile_is_the_five_percent_point():
    for df, exact in ((4, 0.7107), (9, 3.3251), (49, 33.930)):
        assert abs(chi2_lower(df) - exact) < 1e-3


def test_the_between_well_variance_bound_covers_the_truth_as_often_as_it_says():
    rng = np.random.default_rng(0)
    v, tau2 = np.full(50, 0.1), 0.2
    covered = [between_well_variance_upper(rng.normal(0, np.sqrt(tau2 + v)), v) >= tau2 for _ in range(300)]
    assert 0.90 <= np.mean(covered) <= 0.99
    assert between_well_variance_upper(np.zeros(50), v) == 0.0


def test_the_status_lines_name_the_gated_figure():
    from nscmonitor.engines.autobuild_status import gate_text

    r = compare(*held_out(0), backend="int8")
    text = gate_text(r.to_dict())
    assert f"{r.shared_readout_pp:.2f} pp (shared by a well's tiles; {r.well_readout_pp:.2f} pp" in text
    assert "within 0.38 pp" in gate_text({"top1_agreement": 0.99, "well_readout_pp": 0.38})
