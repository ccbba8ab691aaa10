"""The zoom response (``nscmonitor.core.zoom_response``), the out-of-distribution test for a
field taken through another objective whose file states no pixel size: its statistics are the
graph's input statistics, its zoom is the bilinear zoom torch draws, it tells cells at half
their size from our own, its mirror tells cells at twice their size, the image's contrast sign
tells an inverted field, and an image is flagged when any of them or the served score says so,
with one stored score and one threshold (``scoring.stages.ood_of``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nscmonitor.core import zoom_response as Z
from nscmonitor.engines.metadata import ModelMetadata, validate
from nscmonitor.scoring.classify import TileScores
from nscmonitor.scoring.stages import ood_of
from nscmonitor.training import ood as T


def _blobs(rng: np.random.Generator, radius: float, n: int, size: int = 64, noise: float = 0.02) -> np.ndarray:
    """Fields of bright round cells of one size (a Gaussian of ``radius`` px) with camera noise."""
    from scipy.ndimage import gaussian_filter

    out = []
    for _ in range(n):
        cells = gaussian_filter((rng.random((size, size)) < 0.32 / radius ** 2).astype(float), radius)
        out.append(0.4 + 0.3 * cells / (cells.max() + 1e-9) + rng.normal(0, noise, (size, size)))
    return np.stack(out).astype(np.float32)


def _record(reference: np.ndarray) -> dict:
    """A zoom record fitted on ``reference`` tiles as training fits it (one class)."""
    stats = Z.statistics(reference)
    means, whiten = T.fit_mahalanobis(stats, np.zeros(len(stats), np.int64), 1)
    unit = float(np.sqrt(np.median(Z.distance(stats, means, whiten))))
    return {"means": means.tolist(), "whiten": whiten.tolist(), "unit": unit, "min_tile": Z.MIN_TILE}


def test_the_statistics_are_the_graphs_input_statistics() -> None:
    x = np.random.default_rng(1).random((5, 40, 40)).astype(np.float32) ** 3
    np.testing.assert_allclose(Z.statistics(x), T.input_statistics(torch.from_numpy(x)[:, None]).double().numpy(),
                               rtol=1e-4, atol=1e-5)
    assert np.allclose(Z.statistics(x, batch=2), Z.statistics(x))


def test_batches_sized_to_the_cache_give_the_numbers_all_tiles_at_once_give() -> None:
    x = np.random.default_rng(12).random((40, 112, 112)).astype(np.float32) ** 2
    assert Z._batch(x) == 10 and Z._batch(x, 4) == 2 and Z._batch(x[:, :8, :8]) == Z.BATCH_PIXELS // 64
    np.testing.assert_array_equal(Z.statistics(x), Z.statistics(x, batch=len(x)))
    np.testing.assert_array_equal(Z.zoomed_statistics(x[:9]), Z.zoomed_statistics(x[:9], batch=9))
    np.testing.assert_array_equal(Z.contrast_sign(x), Z.contrast_sign(x, batch=len(x)))


def test_the_zoom_is_torchs_bilinear_zoom_cut_into_quarters() -> None:
    x = np.random.default_rng(2).random((3, 16, 16))
    up = torch.nn.functional.interpolate(torch.from_numpy(x)[:, None], scale_factor=2.0, mode="bilinear",
                                         align_corners=False)[:, 0].numpy()
    np.testing.assert_allclose(Z.zoom2(x), up, atol=1e-6)
    got = Z.zoomed_statistics(x, batch=2)
    assert got.shape == (3, 4, len(Z.STATISTICS))
    np.testing.assert_allclose(got[1, 2], Z.statistics(up[1:2, 16:, :16])[0], rtol=1e-5, atol=1e-6)  # lower left
    np.testing.assert_allclose(got[2, 1], Z.statistics(up[2:3, :16, 16:])[0], rtol=1e-5, atol=1e-6)  # upper right


def test_the_response_tells_cells_at_half_their_size_from_our_own() -> None:
    """Served without its pixel size, a 5x field shows every cell at half its size. Zoomed 2x,
    such a tile comes nearer the training tiles' statistics, while one of our own moves away
    (too smooth, its cells too large): every half-scale tile answers more than any of ours."""
    rng = np.random.default_rng(0)
    rec = _record(_blobs(rng, 4.0, 300))
    ours, half = Z.response(_blobs(rng, 4.0, 100), rec), Z.response(_blobs(rng, 2.0, 100), rec)
    assert half.min() > ours.max(), (np.percentile(ours, [50, 100]), np.percentile(half, [0, 50]))


def _meta(zoom: dict | None, threshold: float = 10.0) -> ModelMetadata:
    meta = ModelMetadata(name="t", version="1", scheme="binary", classes=("neuron", "glia"), input_size=64,
                         ood={"output": "ood", "threshold": threshold, **({"zoom": zoom} if zoom else {})})
    validate(meta)
    return meta


def test_an_image_is_flagged_by_either_test_with_one_score_and_one_threshold() -> None:
    rng = np.random.default_rng(3)
    rec = _record(_blobs(rng, 4.0, 200))
    ours, half = _blobs(rng, 4.0, 6)[:, None], _blobs(rng, 2.0, 6)[:, None]
    r_ours, r_half = Z.response(ours[:, 0], rec).mean(), Z.response(half[:, 0], rec).mean()
    zoom = {**rec, "threshold": float((r_ours + r_half) / 2), "gain": 2.0}
    low = TileScores(np.full((6, 2), 0.5, np.float32), np.full(6, 8.0, np.float32))  # the sum: under 10
    high = TileScores(low.probs, np.full(6, 12.0, np.float32))
    assert ood_of(low, _meta(zoom), pixels=ours) == (8.0, False)
    score, flagged = ood_of(low, _meta(zoom), pixels=half)
    assert flagged and score == pytest.approx(10.0 + 2.0 * (r_half - zoom["threshold"]))
    assert ood_of(high, _meta(zoom), pixels=ours) == (12.0, True)  # the sum alone still flags
    # no record, or tiles too small to show a cell's size, or no pixels given: the sum alone
    assert ood_of(low, _meta(None), pixels=half) == (8.0, False)
    assert ood_of(low, _meta({**zoom, "min_tile": 128}), pixels=half) == (8.0, False)
    assert ood_of(low, _meta(zoom)) == (8.0, False)


def test_the_mapping_keeps_the_order_of_every_test() -> None:
    zoom = {"threshold": -3.0, "gain": 1.5, "sign_threshold": 0.1, "sign_gain": 20.0}
    s, r, sign = np.array([9.0, 9.0, 11.0, 9.0]), np.array([-4.0, -2.0, -4.0, -4.0]), np.array([0.0, 0.0, 0.0, 0.2])
    got = Z.mapped_score(s, Z.Responses(r), zoom, 10.0)
    assert list(got > 10.0) == [False, True, True, False]
    assert got[1] == pytest.approx(10.0 + 1.5 * 1.0)
    got = Z.mapped_score(s, Z.Responses(r, None, sign), zoom, 10.0)
    assert list(got > 10.0) == [False, True, True, True]
    assert got[3] == pytest.approx(10.0 + 20.0 * 0.1)
    assert list(Z.mapped_score(s, Z.Responses(r, None, sign), {"threshold": -3.0, "gain": 1.5}, 10.0) > 10.0) == [
        False, True, True, False]  # a record without the test ignores its response


def test_the_contrast_sign_is_the_graphs_and_turns_with_the_intensities() -> None:
    x = np.random.default_rng(9).random((5, 40, 40)).astype(np.float32) ** 3
    got = Z.contrast_sign(x, batch=2)
    np.testing.assert_allclose(got, T.contrast_sign(torch.from_numpy(x)[:, None])[:, 0].double().numpy(),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(Z.contrast_sign(1.0 - x), -got, rtol=1e-4, atol=1e-5)
    assert np.all(got > 0.2)  # cubed noise: sharp bright specks on a dark ground
    assert Z.side_of(got) == 1.0 and Z.side_of(-got) == -1.0


def test_the_shrink_is_2x2_block_means_as_torch_pools() -> None:
    x = np.random.default_rng(5).random((3, 17, 17)).astype(np.float32)
    pooled = torch.nn.functional.avg_pool2d(torch.from_numpy(x)[:, None], 2)[:, 0].numpy()
    np.testing.assert_allclose(Z.shrink2(x), pooled, rtol=1e-6)


def test_the_zoom_out_response_tells_cells_at_twice_their_size_from_our_own() -> None:
    """Served without its pixel size, a 20x field shows every cell at twice its size. Shrunk
    2x, such a tile comes nearer the training tiles' statistics, while one of our own moves
    away (its cells too small): every double-size tile answers more than any of ours.
    Shrinking also averages camera noise away, so this holds where the noise is small beside
    the cells' contrast (here 0.005 against 0.3; at 0.02 the two overlap, as on some of the
    simulator's trainings, docs/training.md)."""
    rng = np.random.default_rng(0)
    blobs = lambda radius, n: _blobs(rng, radius, n, noise=0.005)
    rec = _record(blobs(3.0, 300))
    ours, double = Z.out_response(blobs(3.0, 100), rec), Z.out_response(blobs(6.0, 100), rec)
    assert double.min() > ours.max(), (np.percentile(ours, [50, 100]), np.percentile(double, [0, 50]))


def test_an_image_is_flagged_by_any_of_four_tests_and_old_records_keep_theirs() -> None:
    rng = np.random.default_rng(6)
    rec = _record(_blobs(rng, 3.0, 200, noise=0.005))
    ours, double = _blobs(rng, 3.0, 6, noise=0.005)[:, None], _blobs(rng, 6.0, 6, noise=0.005)[:, None]
    r_in = max(Z.response(ours[:, 0], rec).mean(), Z.response(double[:, 0], rec).mean())
    o_ours, o_double = Z.out_response(ours[:, 0], rec).mean(), Z.out_response(double[:, 0], rec).mean()
    two = {**rec, "threshold": float(r_in + 1.0), "gain": 2.0}  # the zoom-in test flags neither
    three = {**two, "out_threshold": float((o_ours + o_double) / 2), "out_gain": 3.0}
    low = TileScores(np.full((6, 2), 0.5, np.float32), np.full(6, 8.0, np.float32))
    assert ood_of(low, _meta(three), pixels=ours) == (8.0, False)
    score, flagged = ood_of(low, _meta(three), pixels=double)
    assert flagged and score == pytest.approx(10.0 + 3.0 * (o_double - three["out_threshold"]), rel=1e-5)
    assert ood_of(low, _meta(two), pixels=double) == (8.0, False)  # a record from before: two tests
    assert Z.image_responses(double[:, 0], two).zoom_out is None
    # the contrast sign: our fields' fine detail leans one way, an inverted field's the other
    side = Z.side_of(Z.contrast_sign(ours[:, 0]))
    inverted = 1.0 - ours
    assert -side * Z.contrast_sign(ours[:, 0]).mean() < 0 < -side * Z.contrast_sign(inverted[:, 0]).mean()
    deaf = {**rec, "threshold": 1e9, "gain": 1.0}  # a zoom-in test that flags nothing
    sign = {**deaf, "sign_side": side, "sign_threshold": 0.0, "sign_gain": 5.0}
    assert ood_of(low, _meta(deaf), pixels=inverted) == (8.0, False)
    assert ood_of(low, _meta(sign), pixels=ours)[1] is False
    score, flagged = ood_of(low, _meta(sign), pixels=inverted)
    assert flagged and score == pytest.approx(
        10.0 + 5.0 * -side * Z.contrast_sign(inverted[:, 0]).mean(), rel=1e-5)
    assert ood_of(low, _meta({**three, **sign}), pixels=double)[1]  # all four: the zoom-out test still flags
    assert Z.image_responses(inverted[:, 0], three).sign is None


@pytest.mark.parametrize("damage", [{"means": [[0.0] * 6]}, {"whiten": [[1.0]]}, {"unit": 0.0},
                                    {"threshold": float("nan")}, {"gain": "steep"}, {"means": None},
                                    {"out_threshold": float("inf"), "out_gain": 1.0},
                                    {"out_threshold": 0.0, "out_gain": -1.0}, {"out_threshold": 0.0},
                                    {"sign_threshold": 0.1, "sign_gain": 1.0},
                                    {"sign_threshold": 0.1, "sign_gain": 1.0, "sign_side": 0.5},
                                    {"sign_threshold": float("nan"), "sign_gain": 1.0, "sign_side": 1.0},
                                    {"sign_threshold": 0.1, "sign_gain": 0.0, "sign_side": -1.0}])
def test_a_damaged_zoom_record_is_refused_when_the_model_loads(damage) -> None:
    from nscmonitor.engines.metadata import MetadataError

    good = {**_record(_blobs(np.random.default_rng(4), 4.0, 40)), "threshold": -2.0, "gain": 1.0}
    validate(_meta(good))
    with pytest.raises(MetadataError, match="ood.zoom must"):
        validate(_meta({**good, **damage}))


def test_an_image_is_measured_on_at_most_eight_tiles_spread_over_it() -> None:
    """Zooming every tile cost more than decoding, preprocessing and the demo's engine together;
    the threshold was set on fields of 4-9 tiles, so eight spread over a frame are enough."""
    assert list(Z.spread(5)) == [0, 1, 2, 3, 4]
    picked = Z.spread(24)
    assert len(picked) == Z.MAX_TILES and picked[0] == 0 and picked[-1] == 23 and np.all(np.diff(picked) > 0)
    rng = np.random.default_rng(8)
    rec = {**_record(_blobs(rng, 4.0, 60)), "threshold": 0.0, "gain": 1.0}
    tiles = _blobs(rng, 3.0, 24)
    assert Z.image_responses(tiles, rec) == (pytest.approx(Z.response(tiles[picked], rec).mean()), None, None)
    every = {**rec, "out_threshold": 0.0, "out_gain": 1.0, "sign_threshold": 0.0, "sign_gain": 1.0, "sign_side": -1.0}
    assert Z.image_responses(tiles, every) == (pytest.approx(Z.response(tiles[picked], rec).mean()),
                                               pytest.approx(Z.out_response(tiles[picked], every).mean()),
                                               pytest.approx(Z.contrast_sign(tiles[picked]).mean()))


@pytest.mark.parametrize("score_share", [0.0, 0.02, 0.04, 0.05, 0.08])
def test_the_threshold_keeps_either_test_within_the_budget(score_share) -> None:
    """On 225 images with the graph's score flagging a share of them (some with high responses
    too), the response's threshold adds at most 1 % to the score's flags and keeps the two
    tests together within 5 %, using as much of that as it may."""
    rng = np.random.default_rng(3)
    n = 225
    r = rng.normal(size=n)
    flagged = np.zeros(n, bool)
    flagged[np.argsort(r)[-int(score_share * n) // 2:] if score_share else []] = True
    flagged[rng.choice(np.flatnonzero(~flagged), int(score_share * n) - flagged.sum(), replace=False)] = True
    t = Z.threshold_within(r, flagged)
    added, either = np.mean((r > t) & ~flagged), np.mean(flagged | (r > t))
    assert added <= Z.FLAGGED_IN_DOMAIN + 1e-9
    assert either <= max(Z.IN_DOMAIN_BUDGET, flagged.mean()) + 1e-9
    new = np.sum((r > t) & ~flagged)
    room = int(np.floor(min(Z.FLAGGED_IN_DOMAIN, max(Z.IN_DOMAIN_BUDGET - flagged.mean(), 0)) * n + 1e-9))
    assert new == room, (new, room)


def test_with_one_plates_images_and_no_room_the_threshold_is_their_largest_response() -> None:
    r = np.linspace(0.0, 1.0, 45)
    flagged = np.zeros(45, bool)
    flagged[:2] = True
    assert Z.threshold_within(r, flagged) == pytest.approx(1.0)
    assert Z.threshold_within(r, np.ones(45, bool)) == pytest.approx(1.0)


def test_an_images_mean_at_fit_time_is_over_the_tiles_the_daemon_measures() -> None:
    """Images of 3, 8, 24 and 140 tiles, interleaved: each image's mean is over ``spread`` of
    its tiles in their order, as ``image_responses`` takes them, not over every tile."""
    rng = np.random.default_rng(5)
    sizes = [3, 24, 8, 140, 24]
    keys = rng.permutation(np.concatenate([np.full(n, i) for i, n in enumerate(sizes)]))
    values = rng.normal(size=len(keys))
    got = Z.served_means(values, keys)
    for i, n in enumerate(sizes):
        own = values[keys == i]
        assert len(own) == n
        assert got[i] == pytest.approx(own[Z.spread(n)].mean(), abs=1e-12)
    assert not np.isclose(got[3], values[keys == 3].mean())


def test_the_fitted_thresholds_are_set_on_the_responses_the_daemon_computes() -> None:
    """Validation fields of 24 tiles (a 704 x 520 frame at 112 px): the zoom-in threshold is
    the daemon's response of one of them, and the share of them its record says it flags is
    the share the daemon flags."""
    from types import SimpleNamespace

    rng = np.random.default_rng(6)
    train = _blobs(rng, 4.0, 300)
    val = np.concatenate([_blobs(rng, rng.uniform(3.6, 4.4), 24) for _ in range(120)])
    val_keys = np.repeat(np.arange(120), 24)
    records = [SimpleNamespace(experiment="e", plate="p", path=f"t{i}") for i in range(len(train))]
    rec = T.fit_zoom(train, np.zeros(len(train), np.int64), records, 1, val, val_keys, np.zeros(120), None, 1e9)
    served = np.asarray([Z.image_responses(val[val_keys == i], rec).zoom_in for i in range(120)])
    assert np.min(np.abs(served - rec["threshold"])) < 1e-9
    assert np.mean(served > rec["threshold"] + 1e-9) == pytest.approx(rec["flagged"])
    assert rec["flagged"] > 0
