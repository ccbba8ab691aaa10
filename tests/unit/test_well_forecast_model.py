"""The time-aware well model's parts: plate normalisation, the causal GRU (a forecast at t
never sees a later frame), and its ONNX export with metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nscmonitor.scoring import well_sequence as WS

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from nscmonitor.training import temporal as T  # noqa: E402


def _plate(rng, offset, n_wells=6, hours=(0.0, 12.0, 24.0, 48.0)):
    """Wells whose features drift per well over time, plus a plate-wide offset and gain."""
    wells = []
    for _ in range(n_wells):
        start = rng.normal(size=4)
        drift = rng.normal(size=4)
        wells.append([(h, offset + 2.0 * (start + drift * h / 48.0)) for h in hours])
    return wells


def _seqs(wells, norm):
    ref = WS.plate_reference([w[0][1] for w in wells])
    return [WS.sequence(w, ref, w[0][1], norm) for w in wells]


def test_plate_normalisation_removes_a_plate_wide_shift():
    a = _plate(np.random.default_rng(1), offset=0.0)
    b = [[(h, f + np.array([3.0, -1.0, 0.5, 7.0])) for h, f in w] for w in a]  # same cells, another plate's optics
    for norm in ("plate0", "plate0+well0"):
        for sa, sb in zip(_seqs(a, norm), _seqs(b, norm)):
            np.testing.assert_allclose(sa, sb, atol=1e-5)
    raw_a, raw_b = _seqs(a, "none"), _seqs(b, "none")
    assert not np.allclose(raw_a[0], raw_b[0])
    assert _seqs(a, "plate0+well0")[0].shape == (4, WS.feature_width(4, "plate0+well0"))
    np.testing.assert_allclose(_seqs(a, "plate0")[0][:, -1], np.array([0, 12, 24, 48]) / WS.HOURS_SCALE)


def test_normalisation_refuses_without_an_induction_scan():
    f = np.ones(4)
    with pytest.raises(ValueError, match="induction scan"):
        WS.normalise(f, None, None, "plate0")
    ref = WS.plate_reference([np.zeros(4), np.ones(4)])
    with pytest.raises(ValueError, match="induction frame of this well"):
        WS.normalise(f, ref, None, "plate0+well0")
    with pytest.raises(ValueError, match="unknown normalisation"):
        WS.normalise(f, ref, f, "same-hour")


def test_sequence_up_to_t_leaves_later_frames_out():
    frames = [(48.0, np.full(3, 4.0)), (0.0, np.zeros(3)), (24.0, np.ones(3))]
    s = WS.sequence(frames, None, None, "none", up_to_h=24.0)
    np.testing.assert_allclose(s[:, -1], [0.0, 24.0 / WS.HOURS_SCALE])
    assert s[:, :-1].max() == 1.0


def test_frame_features_pool_the_tiles_of_a_frame():
    rng = np.random.default_rng(0)
    tiles = [rng.normal(1000, s, (32, 32)) for s in (5.0, 50.0)]
    frame = np.concatenate(tiles, axis=1)
    got = WS.frame_features(frame, 32)
    np.testing.assert_allclose(got, (WS.tile_vector(tiles[0]) + WS.tile_vector(tiles[1])) / 2)


def test_a_batch_measured_on_threads_gives_each_image_its_own_features_in_order():
    from nscmonitor.scoring.forecast import batch_features

    rng = np.random.default_rng(1)
    images = [(i, rng.normal(1000, 5.0 * (i + 1), (64, 96)), um) for i, um in enumerate((None, 1.24, 2.48, 1.24))]
    meta = {"tile_px": 32, "pixel_size_um": 1.24}
    threaded = batch_features(images, meta, workers=3)
    assert [i for i, _, _ in threaded] == [0, 1, 2, 3] and {name for _, name, _ in threaded} == {WS.STORED}
    for (_, px, um), (_, _, got) in zip(images, threaded):  # 2.48 µm/px: the same 40 µm as 16 px tiles
        assert np.array_equal(got, WS.frame_features(px, 16 if um == 2.48 else 32))
    assert all(np.array_equal(a[2], b[2]) for a, b in zip(threaded, batch_features(images, meta, workers=1)))


def _trained(seed=0):
    rng = np.random.default_rng(seed)
    seqs, ys = [], []
    for i in range(24):
        y = i % 3
        n = int(rng.integers(3, 7))
        h = np.sort(rng.choice(np.arange(0, 120, 12), n, replace=False)).astype(float)
        f = rng.normal(size=(n, 4)) + y * (h[:, None] / 120.0)
        seqs.append(np.column_stack([f, h / WS.HOURS_SCALE]).astype(np.float32))
        ys.append(y)
    model, info = T.train_gru(seqs[:18], ys[:18], seqs[18:], ys[18:], 3, epochs=40, seed=seed)
    return model, info, seqs


def test_forecast_at_t_never_sees_a_later_frame():
    model, info, seqs = _trained()
    s = seqs[0]
    full = T.step_probs(model, [s], info["temperature"])[0]
    for t in range(len(s)):
        changed = s.copy()
        changed[t + 1:, :-1] += 50.0  # later frames as different as can be
        cut = T.step_probs(model, [s[:t + 1]], info["temperature"])[0]
        again = T.step_probs(model, [changed], info["temperature"])[0]
        np.testing.assert_allclose(cut[-1], full[t], atol=1e-6)
        np.testing.assert_allclose(again[t], full[t], atol=1e-6)
        if t + 1 < len(s):
            assert not np.allclose(again[-1], full[-1], atol=1e-3)  # the change is seen where it is allowed


def test_onnx_export_carries_metadata_and_matches_torch(tmp_path):
    model, info, seqs = _trained(1)
    meta = T.forecast_metadata(classes=("a", "b", "c"), scheme="multiclass", normalisation="plate0",
                               tile_px=128, pixel_size_um=1.24, temperature=info["temperature"], n_features=4,
                               version="forecast-test")
    path = T.export_forecast(model, meta, tmp_path / "forecast.onnx", seqs[:3])
    assert not (tmp_path / "forecast.onnx.part").exists()
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    back = json.loads(props[T.FORECAST_KEY])
    assert back["classes"] == ["a", "b", "c"] and back["input_width"] == 5
    assert back["temperature"] == pytest.approx(info["temperature"])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for s in seqs[3:6]:  # other lengths than the export's example
        got = sess.run(None, {"sequence": s[None]})[0][0]
        with torch.no_grad():
            want = model(torch.from_numpy(s[None]))[0].numpy()
        np.testing.assert_allclose(got, want, atol=1e-4)
        cut = sess.run(None, {"sequence": s[None, :2]})[0][0]
        np.testing.assert_allclose(cut[-1], got[1], atol=1e-5)


def test_an_ensemble_averages_its_members_logits_stays_causal_and_exports(tmp_path):
    rng = np.random.default_rng(2)
    seqs, ys = [], []
    for i in range(24):
        n = int(rng.integers(3, 7))
        h = np.sort(rng.choice(np.arange(0, 120, 12), n, replace=False)).astype(float)
        seqs.append(np.column_stack([rng.normal(size=(n, 4)) + (i % 3) * h[:, None] / 120.0,
                                     h / WS.HOURS_SCALE]).astype(np.float32))
        ys.append(i % 3)
    model, info = T.train_ensemble(seqs[:18], ys[:18], seqs[18:], ys[18:], 3, seeds=[4, 5], epochs=30)
    assert isinstance(model, T.MeanLogits) and [m["seed"] for m in info["members"]] == [4, 5]
    single, single_info = T.train_gru(seqs[:18], ys[:18], seqs[18:], ys[18:], 3, seed=4, epochs=30)
    assert info["members"][0]["best_epoch"] == single_info["best_epoch"]  # each member is that seed's model
    x = torch.from_numpy(seqs[0][None])
    with torch.no_grad():
        want = (model.members[0](x) + model.members[1](x)) / 2
        np.testing.assert_allclose(model(x).numpy(), want.numpy(), atol=1e-6)
        np.testing.assert_allclose(model.members[0](x).numpy(), single(x).numpy(), atol=1e-6)
    s = seqs[1]
    full = T.step_probs(model, [s], info["temperature"])[0]
    changed = s.copy()
    changed[2:, :-1] += 50.0
    np.testing.assert_allclose(T.step_probs(model, [changed], info["temperature"])[0][1], full[1], atol=1e-6)
    meta = T.forecast_metadata(classes=("a", "b", "c"), scheme="multiclass", normalisation="plate0", tile_px=64,
                               pixel_size_um=None, temperature=info["temperature"], n_features=4, version="ens")
    path = T.export_forecast(model, meta, tmp_path / "forecast.onnx", seqs[:2])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"sequence": seqs[5][None]})[0][0],
                               model(torch.from_numpy(seqs[5][None]))[0].detach().numpy(), atol=1e-4)


def test_the_binary_forecast_read_off_a_multiclass_model_is_its_neuron_against_glia_share(tmp_path):
    """P(neuron) against P(astrocyte) + P(oligodendrocyte), renormalised over the committed fates,
    after the multiclass temperature, in torch and in the exported ONNX graph."""
    from nscmonitor.scoring.forecast import load_forecast_model

    rng = np.random.default_rng(5)
    classes = ("neuron", "astrocyte", "oligodendrocyte", "undifferentiated")
    torch.manual_seed(5)
    net = T.WellGRU(5, 4)
    seqs = [rng.normal(size=(n, 5)).astype(np.float32) for n in (3, 4, 6)]
    read = T.BinaryFromMulticlass(net, 1.7, classes)
    for s in seqs:
        p = T.step_probs(net, [s], 1.7)[0]
        want = np.stack([p[:, 0], p[:, 1] + p[:, 2]], 1) / (1.0 - p[:, 3:4])
        np.testing.assert_allclose(T.step_probs(read, [s])[0], want, rtol=1e-5)
    meta = T.forecast_metadata(classes=("neuron", "glia"), scheme="binary", normalisation="plate0", tile_px=64,
                               pixel_size_um=None, temperature=1.0, n_features=4, version="forecast-binary",
                               read_from={"scheme": "multiclass", "classes": list(classes), "temperature": 1.7})
    model = load_forecast_model(T.export_forecast(read, meta, tmp_path / "forecast.onnx", seqs[:1]))
    assert model.meta["read_from"]["temperature"] == 1.7 and model.meta["classes"] == ["neuron", "glia"]
    np.testing.assert_allclose(model.probs(seqs[2]), T.step_probs(read, [seqs[2]])[0][-1], atol=1e-5)


def test_stored_features_without_the_optics_are_not_reused_for_training(tmp_path) -> None:
    """Rows stored before the optics features (the model's 27) are left out of a features file,
    so train-forecast reads those images again and every image gives the OOD fit all 29."""
    from nscmonitor.training.forecast_train import load_stored_features

    for n, kept in ((WS.MODEL_FEATURES, 0), (WS.STORED_FEATURES, 2)):
        path = tmp_path / f"f{n}.npz"
        np.savez(path, paths=np.asarray(["a.tif", "b.tif"]), values=np.ones((2, n)))
        got = load_stored_features(path)
        assert len(got) == kept and all(len(v) == WS.STORED_FEATURES for v in got.values())
