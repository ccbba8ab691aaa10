from __future__ import annotations

import numpy as np
import pytest

from nscmonitor.core.domain import parse_well, well_name
from nscmonitor.core.aggregate import image_score, pack_tiles, unpack_tiles, well_aggregate
from nscmonitor.scoring.qc import qc_metrics
from nscmonitor.scoring.preprocess import Preprocess, grid, percentiles, scale


def test_histogram_percentiles_match_numpy() -> None:
    img = np.random.default_rng(0).integers(0, 4096, (300, 400)).astype(np.uint16)
    lo, hi = percentiles(img, (1.0, 99.8))
    assert lo == pytest.approx(np.percentile(img, 1.0), abs=1)
    assert hi == pytest.approx(np.percentile(img, 99.8), abs=1)


def test_twelve_bit_data_uses_its_own_range() -> None:
    img = np.linspace(100, 4000, 256 * 256).reshape(256, 256).astype(np.uint16)
    x = scale(img, *percentiles(img, (1, 99)))
    assert x.min() < 0.05 and x.max() > 0.95  # /65535 would have left it below 0.07


def test_tiles_centred_and_empty_ones_dropped() -> None:
    img = np.zeros((100, 130), np.float32)
    img[10:40, 20:50] = np.random.default_rng(1).random((30, 30))
    g = grid(img, 32)
    assert (g.rows, g.cols) == (3, 4) and g.origin == (2, 1)
    assert g.kept.sum() == len(g.tiles) >= 1 and g.kept.sum() < 12


def test_prepare_resamples_to_model_pixel_size() -> None:
    img = np.random.default_rng(2).integers(0, 255, (200, 200)).astype(np.uint8)
    pre = Preprocess(input_size=50, p_low=1, p_high=99, pixel_size_um=1.24)
    g = pre.tiles(img, factor=pre.factor(0.62))
    assert (g.rows, g.cols) == (2, 2) and g.tiles.shape[1:] == (1, 50, 50)


def test_image_and_well_aggregation() -> None:
    p1 = np.array([[0.7, 0.3], [0.4, 0.6], [0.9, 0.1]])
    s1 = image_score(p1)
    assert s1.n_tiles == 3 and np.allclose(s1.prob_mean, [2 / 3, 1 / 3])
    assert np.allclose(s1.fraction, [2 / 3, 1 / 3]) and s1.confidence == pytest.approx((0.7 + 0.6 + 0.9) / 3)
    s2 = image_score(np.array([[0.2, 0.8]]))
    agg = well_aggregate([(s1, True), (s2, True), (s1, False)], 2)
    assert agg.n_images == 2 and agg.n_qc_failed == 1 and agg.n_tiles == 4
    assert agg.prob_mean[0] == pytest.approx((2 / 3 + 0.2) / 2)
    assert agg.prob_sd[0] == pytest.approx(np.std([2 / 3, 0.2], ddof=1))
    assert agg.fraction == pytest.approx([2 / 4, 2 / 4])
    empty = well_aggregate([(None, False)], 2)
    assert empty.n_images == 0 and empty.prob_mean == [] and empty.n_qc_failed == 1


def test_tile_blob_round_trip() -> None:
    kept = np.array([True, False, True, True, False, True])
    probs = np.random.default_rng(3).dirichlet([1, 1, 1], size=4).astype(np.float32)
    rows, cols, k2, p2 = unpack_tiles(pack_tiles(probs, 2, 3, kept))
    assert (rows, cols) == (2, 3) and (k2 == kept).all() and np.allclose(p2, probs, atol=1e-3)


def test_qc_flags_blank_and_saturated() -> None:
    assert qc_metrics(np.zeros((64, 64), np.uint16)).blank
    sat = np.random.default_rng(4).integers(0, 1000, (64, 64)).astype(np.uint16)
    sat[:20] = 65535
    q = qc_metrics(sat)
    assert not q.passed and "saturated" in q.reason
    ok = qc_metrics(np.random.default_rng(5).integers(0, 4000, (64, 64)).astype(np.uint16))
    assert ok.passed and ok.focus > 0


@pytest.mark.parametrize("name, rc", [("A01", (0, 0)), ("h12", (7, 11)), ("P24", (15, 23)), ("AF48", (31, 47))])
def test_well_names_round_trip(name: str, rc: tuple[int, int]) -> None:
    assert parse_well(name) == rc and well_name(*rc) == name.upper()
