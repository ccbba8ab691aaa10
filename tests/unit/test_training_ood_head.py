"""The out-of-distribution head's own arithmetic (``training.ood``): the input statistics and
the contrast sign it reads, checkpoints saved before the layers and before the contrast sign
loading with the same score, and a head that round-trips through its saved state."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from nscmonitor.training import ood as T


def test_input_statistics_read_the_moments_and_the_texture_scale() -> None:
    rng = np.random.default_rng(0)
    noise = rng.normal(0.5, 0.1, (1, 1, 64, 64))
    smooth = np.repeat(np.repeat(rng.normal(0.5, 0.1, (1, 1, 16, 16)), 4, axis=2), 4, axis=3)
    bright_spots = np.where(rng.random((1, 1, 64, 64)) < 0.05, 1.0, 0.2) + rng.normal(0, 0.01, (1, 1, 64, 64))
    s = T.input_statistics(torch.as_tensor(np.concatenate([noise, smooth, bright_spots]), dtype=torch.float32)).numpy()
    assert s.shape == (3, len(T.INPUT_STATISTICS))
    assert s[0, 0] == pytest.approx(0.5, abs=0.01) and s[0, 1] == pytest.approx(np.log(0.1), abs=0.05)
    assert abs(s[0, 2]) < 0.2 and s[2, 2] > 3  # a few bright spots: strongly right-skewed
    inverted = T.input_statistics(torch.as_tensor(1.2 - bright_spots, dtype=torch.float32)).numpy()
    assert inverted[0, 2] == pytest.approx(-s[2, 2], rel=1e-3)  # the same spots dark: the sign flips
    # white noise: neighbouring pixels differ by sqrt(2) sd in each direction, log(4) over the variance
    assert s[0, 4] == pytest.approx(np.log(4), abs=0.1)
    assert s[1, 4] < s[0, 4] - 1  # a texture at 4 px barely changes from one pixel to the next


def test_the_contrast_sign_reads_which_way_the_finest_detail_points() -> None:
    """A sharp one-pixel bright rim on a smooth field points up, the same field inverted
    points down by exactly as much, and noise has no sign: what an inversion changes and the
    variance, spectrum and every Gaussian distance of linear features cannot see."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:48, :48]
    r = np.hypot(yy - 24, xx - 24)
    rims = 0.3 + 0.5 * (np.abs(r - 12) < 0.5) + 0.1 * np.exp(-r ** 2 / 200) + rng.normal(0, 0.01, (48, 48))
    noise = rng.normal(0.5, 0.1, (48, 48))
    x = torch.as_tensor(np.stack([rims, 1.0 - rims, noise])[:, None], dtype=torch.float32)
    s = T.contrast_sign(x).numpy()
    assert s.shape == (3, 1)
    assert s[0, 0] > 0.3 and s[1, 0] == pytest.approx(-s[0, 0], rel=1e-4)
    assert abs(s[2, 0]) < 0.05
    assert np.all(np.abs(s) <= 1.0)


def _old_score(f: np.ndarray, means: np.ndarray, whiten: np.ndarray) -> np.ndarray:
    z, mw = f @ whiten, means @ whiten
    return ((z[:, None, :] - mw[None]) ** 2).sum(axis=2).min(axis=1)


def test_a_head_saved_before_the_layers_loads_with_its_old_score() -> None:
    rng = np.random.default_rng(1)
    feats, y = rng.normal(size=(200, 12)), rng.integers(0, 3, 200)
    means, whiten = T.fit_mahalanobis(feats, y, 3)
    old_state = {"w": torch.as_tensor(whiten), "mw": torch.as_tensor(means @ whiten)}
    head = T.head_from_state(old_state)
    assert (head.has_input, head.n_stages, head.n_layers) == (False, 0, 1)
    probe = rng.normal(size=(9, 12)).astype(np.float32)
    with torch.no_grad():
        got = head(torch.zeros(9, 1, 8, 8), [], torch.from_numpy(probe)).numpy()
    assert np.allclose(got, _old_score(probe, means, whiten), rtol=1e-4)


def test_a_layered_head_round_trips_through_its_state() -> None:
    rng = np.random.default_rng(2)
    dims = (len(T.INPUT_STATISTICS), 1, 4, 6)
    layers = [T.fit_mahalanobis(rng.normal(size=(80, d)), rng.integers(0, 2, 80), 2) for d in dims]
    scale = [2.0, 7.0, 3.0, 5.0]
    head = T.OodHead(layers, scale, has_input=True, n_stages=1, has_sign=True, root=True)
    again = T.head_from_state(T.head_state(head))
    assert again.has_sign and again.root and again.n_layers == 4
    x = torch.rand(5, 1, 16, 16)
    maps, pooled = [torch.rand(5, 4, 3, 3)], torch.rand(5, 6)
    with torch.no_grad():
        assert torch.allclose(head(x, maps, pooled), again(x, maps, pooled))
        d = head.distances(T.layer_vectors(x, maps, pooled, True, True))
        assert torch.allclose(head(x, maps, pooled), torch.sqrt(d / torch.tensor(scale)).sum(dim=1))
    with pytest.raises(ValueError, match="one Gaussian and one scale per layer"):
        T.OodHead(layers, [1.0] * 4, has_input=True, n_stages=1, has_sign=False)


def test_a_head_saved_before_the_contrast_sign_loads_with_its_old_score() -> None:
    """A checkpoint of the layered head without the contrast sign stores a layout of two
    numbers (input statistics, stages); it loads as that head and scores as it did: the sum
    of the squared distances, not of their roots."""
    rng = np.random.default_rng(4)
    dims = (len(T.INPUT_STATISTICS), 4, 6)
    layers = [T.fit_mahalanobis(rng.normal(size=(80, d)), rng.integers(0, 2, 80), 2) for d in dims]
    head = T.OodHead(layers, [2.0, 3.0, 5.0], has_input=True, n_stages=1)
    old = {**T.head_state(head), "layout": torch.tensor([1, 1])}
    again = T.head_from_state(old)
    assert (again.has_input, again.has_sign, again.n_stages, again.root) == (True, False, 1, False)
    x = torch.rand(5, 1, 16, 16)
    maps, pooled = [torch.rand(5, 4, 3, 3)], torch.rand(5, 6)
    with torch.no_grad():
        d = head.distances(T.layer_vectors(x, maps, pooled, True))
        assert torch.allclose(again(x, maps, pooled), (d / torch.tensor([2.0, 3.0, 5.0])).sum(dim=1))


def _records(plates: list[str], fields_per_plate: int):
    from nscmonitor.training.data import TileRecord

    return [TileRecord(path=f"{p}-{i}.tif", label="neuron", experiment="e", plate=p, well="A01", field=i,
                       timepoint=0) for p in plates for i in range(fields_per_plate)]


def _score(head, vectors) -> np.ndarray:
    with torch.no_grad():
        return head.score([torch.from_numpy(np.asarray(v, np.float32)) for v in vectors]).numpy()


def test_each_training_plate_is_scored_by_gaussians_fitted_without_it() -> None:
    """Plate b's features sit off plate a's: scored by the Gaussians of a alone (left out of
    the fit) it is far, where a fit that included it would call it near."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, (200, 3)), rng.normal(0, 1, (200, 3)) + np.array([4.0, 0, 0])
    layers = [np.concatenate([a, b]).astype(np.float32)] * 4  # input stats, sign, one stage, pooled
    y = np.zeros(400, np.int64)
    records = _records(["a", "b"], 200)
    held = T.leave_one_plate_out(layers, y, records, 1, np.ones(4))
    assert held is not None and held.shape == (400,)  # one image per record here
    inside = T.OodHead([T.fit_mahalanobis(layers[0], y, 1)] * 4, np.ones(4), has_input=True, n_stages=1,
                       has_sign=True, root=True)
    in_sample = _score(inside, layers)
    assert np.median(held[200:]) > 2 * np.median(in_sample[200:])
    assert T.leave_one_plate_out(layers, y, _records(["a"], 400), 1, np.ones(4)) is None


def test_more_plates_than_folds_are_left_out_in_groups(monkeypatch) -> None:
    """Seven plates, three folds: plates 0, 3, 6 leave together, then 1, 4 and 2, 5."""
    monkeypatch.setattr(T, "MAX_FOLDS", 3)
    rng = np.random.default_rng(1)
    layers = [rng.normal(0, 1, (70, 2)).astype(np.float32) + np.repeat(np.arange(7), 10)[:, None] * 0.3] * 4
    y = np.zeros(70, np.int64)
    held = T.leave_one_plate_out(layers, y, _records([f"p{i}" for i in range(7)], 10), 1, np.ones(4))
    fold = np.repeat(np.arange(7) % 3, 10)
    for f in range(3):
        out = fold == f
        head = T.OodHead([T.fit_mahalanobis(v[~out], y[~out], 1) for v in layers], np.ones(4), has_input=True,
                         n_stages=1, has_sign=True, root=True)
        assert np.allclose(held[out], _score(head, [v[out] for v in layers]))


def test_distances_are_the_per_class_definition_with_one_product_per_tile(tmp_path) -> None:
    """The head whitens each tile once (about the centre of the class means) instead of once per
    class; the distance stays the definition, and the exported graph holds one tile-sized
    product per layer (the class offsets are constants folded into the file)."""
    import onnx

    rng = np.random.default_rng(4)
    dims, k = (len(T.INPUT_STATISTICS), 1, 4, 32), 4
    offset = 50.0  # features far from the origin: the case that made the first head subtract the mean first
    layers = [T.fit_mahalanobis(offset + rng.normal(size=(400, d)), rng.integers(0, k, 400), k) for d in dims]
    head = T.OodHead(layers, [1.0] * 4, has_input=True, n_stages=1, has_sign=True, root=True).eval()
    vectors = [torch.as_tensor(offset + rng.normal(size=(7, d)), dtype=torch.float32) for d in dims]
    want = np.stack([np.min([(((v.double().numpy() - m) @ w) ** 2).sum(axis=1) for m in means.astype(np.float64)],
                            axis=0) for v, (means, w) in zip(vectors, layers)], axis=1)
    with torch.no_grad():
        got = head.distances(vectors).double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4)

    class Distances(torch.nn.Module):
        def forward(self, *vs):
            return head.distances(list(vs))

    path = tmp_path / "head.onnx"
    with warnings.catch_warnings():  # the TorchScript exporter, as training's export uses it
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(Distances(), tuple(v[:2] for v in vectors), str(path), dynamo=False, opset_version=17,
                          input_names=[f"v{i}" for i in range(len(dims))],
                          dynamic_axes={f"v{i}": {0: "N"} for i in range(len(dims))})
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(path))).graph
    rank = {v.name: len(v.type.tensor_type.shape.dim) for v in [*graph.value_info, *graph.input]}
    products = [n for n in graph.node if n.op_type == "MatMul"]
    assert len(products) == len(dims)
    assert all(rank[n.input[0]] == 2 for n in products)  # N x D tiles, not N x classes x D


def _tiled_records(plates: dict[str, int], tiles_per_image: int = 4):
    """Each image (a field) cut into ``tiles_per_image`` tiles, as a tiles export cuts it."""
    from nscmonitor.training.data import TileRecord

    return [TileRecord(path=f"{p}-{i}-{t}.tif", label="neuron", experiment="e", plate=p, well="A01", field=i,
                       timepoint=0) for p, n in plates.items() for i in range(n) for t in range(tiles_per_image)]


def test_the_ood_fit_subset_keeps_whole_images_and_every_plates_share() -> None:
    records = _tiled_records({"a": 300, "b": 100, "c": 20})  # 1,680 tiles
    assert np.array_equal(T.fit_subset(records, 0), np.arange(len(records)))
    assert np.array_equal(T.fit_subset(records, 5000), np.arange(len(records)))
    idx = T.fit_subset(records, 420, seed=3)  # a quarter
    assert 400 <= len(idx) <= 440 and np.all(np.diff(idx) > 0)
    kept = [records[i] for i in idx]
    per_image = {}
    for r in kept:
        per_image[(r.plate, r.field)] = per_image.get((r.plate, r.field), 0) + 1
    assert set(per_image.values()) == {4}  # an image is kept whole or not at all
    per_plate = {p: sum(1 for k in per_image if k[0] == p) for p in "abc"}
    assert per_plate == {"a": 75, "b": 25, "c": 5}
    assert np.array_equal(idx, T.fit_subset(records, 420, seed=3))  # the same run fits the same tiles
    assert not np.array_equal(idx, T.fit_subset(records, 420, seed=4))
    lopsided = _tiled_records({"a": 400, "z": 1})
    assert {lopsided[i].plate for i in T.fit_subset(lopsided, 40)} == {"a", "z"}  # a small plate keeps an image


@pytest.mark.parametrize("value", [-1, "4096", 1.5, True])
def test_a_bad_ood_fit_cap_is_refused_before_training_starts(tmp_path, value) -> None:
    from nscmonitor.core.errors import UserFacingError
    from nscmonitor.training.train_data import TrainConfig

    with pytest.raises(UserFacingError, match="ood_fit_tiles"):
        TrainConfig(data="d", out=str(tmp_path), ood_fit_tiles=value)
