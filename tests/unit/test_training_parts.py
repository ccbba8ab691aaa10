"""Metrics, temperature, augmentation, the stem fold and the model-metadata gate."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from nscmonitor.engines import MetadataError, read_onnx_metadata
from nscmonitor.engines.metadata import METADATA_KEY
from nscmonitor.engines.tiny import build_tiny_classifier
from nscmonitor.training import evaluate as E
from nscmonitor.training.data import TileRecord
from nscmonitor.training.model import build_model, fold_stem, load_weights
from nscmonitor.training.transforms import AugmentConfig, augment

torch.set_num_threads(1)


def test_temperature_fit_recovers_the_overconfidence_factor():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, (4000, 3))
    p = E.softmax(z)
    y = np.array([rng.choice(3, p=row) for row in p])
    assert E.fit_temperature(2.5 * z, y) == pytest.approx(2.5, rel=0.1)


def test_image_and_well_levels_average_tiles_and_bin_by_time():
    recs = [TileRecord(f"t{i}", "neuron", plate="P", well=w, field=f, timepoint=t, elapsed_h=h)
            for i, (w, f, t, h) in enumerate([("A01", 1, 1, 6.0), ("A01", 1, 1, 6.0), ("A01", 2, 1, 6.0),
                                              ("A01", 1, 2, 50.0), ("B01", 1, 2, 50.0)])]
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.4, 0.6], [0.8, 0.2], [0.1, 0.9]])
    y = np.array([0, 0, 0, 0, 1])
    p_img, y_img, h_img = E.aggregate(probs, y, recs, "image")
    assert len(p_img) == 4 and p_img[0] == pytest.approx([0.6, 0.4])
    p_well, _, h_well = E.aggregate(probs, y, recs, "well")
    assert len(p_well) == 3 and p_well[0] == pytest.approx([(0.9 + 0.3 + 0.4) / 3, (0.1 + 0.7 + 0.6) / 3])
    rep = E.level_report(p_well, np.array([0, 0, 1]), h_well, ["neuron", "glia"])
    assert rep["by_time"]["0-12"] == {"n": 1, "accuracy": 1.0, "balanced_accuracy": 1.0}
    assert rep["by_time"]["48-72"] == {"n": 2, "accuracy": 1.0, "balanced_accuracy": 1.0}
    assert rep["by_hour"] == {"6": {"n": 1, "accuracy": 1.0, "balanced_accuracy": 1.0},
                              "50": {"n": 2, "accuracy": 1.0, "balanced_accuracy": 1.0}}
    assert rep["accuracy_from_48h"] == 1.0 and rep["roc_auc"] == 1.0
    assert [E.time_bin(h) for h in (0, 11.9, 12, 47, 48, 72, 500, -1, None)] == [
        "0-12", "0-12", "12-24", "24-48", "48-72", "72+", "72+", "<0", "unknown"]


def test_well_accuracy_by_condition_counts_wells_per_timepoint():
    spec = [("A01", "neuron-directed", 24.0, [0.8, 0.2]), ("A01", "neuron-directed", 24.0, [0.6, 0.4]),
            ("A01", "neuron-directed", 72.0, [0.3, 0.7]), ("B01", "mixed", 72.0, [0.45, 0.55]),
            ("B01", "mixed", 72.0, [0.6, 0.4]), ("C01", "mixed", 96.0, [0.1, 0.9])]
    recs = [TileRecord(f"t{i}", "neuron", plate="P", well=w, timepoint=int(h), elapsed_h=h, condition=c)
            for i, (w, c, h, _) in enumerate(spec)]
    probs = np.array([p for *_, p in spec])
    y = np.zeros(len(spec), dtype=np.int64)
    got = E.by_condition(probs, y, recs)
    assert got["neuron-directed"] == {"n": 2, "accuracy": 0.5, "n_from_48h": 1, "accuracy_from_48h": 0.0}
    assert got["mixed"] == {"n": 2, "accuracy": 0.5, "n_from_48h": 2, "accuracy_from_48h": 0.5}
    report = E.full_report(np.log(probs), y, recs, ["neuron", "glia"], 1.0)
    assert report["well"]["by_condition"] == got
    assert "| mixed | 2 | 0.500 | 0.500 (n=2) |" in E.condition_table(report)
    plain = [TileRecord(r.path, r.label, plate=r.plate, well=r.well, elapsed_h=r.elapsed_h) for r in recs]
    assert "by_condition" not in E.full_report(np.log(probs), y, plain, ["neuron", "glia"], 1.0)["well"]


def test_ece_is_zero_for_calibrated_certainty_and_large_for_confident_errors():
    y = np.array([0, 1, 0, 1])
    assert E.ece(np.eye(2)[y], y)[0] == pytest.approx(0.0)
    assert E.ece(np.eye(2)[1 - y] * 0.98 + 0.01, y)[0] > 0.9


def test_ece_of_a_perfectly_calibrated_model_is_what_its_own_draws_give_and_shrinks_with_n():
    """The reference printed beside the well ECE: brute force through ece() on labels drawn
    from the confidences agrees with it, it shrinks with more readouts, and an overconfident
    model on many readouts lies above it."""
    rng = np.random.default_rng(3)
    conf = rng.uniform(0.3, 0.95, 75)
    probs = np.stack([conf] + [(1 - conf) / 3] * 3, axis=1)  # class 0 is the top class
    brute = []
    for _ in range(400):
        right = rng.random(75) < conf
        brute.append(E.ece(probs, np.where(right, 0, 1 + rng.integers(0, 3, 75)))[0])
    ref = E.ece_if_calibrated(conf)
    assert abs(ref["median"] - np.median(brute)) < 0.015 and abs(ref["p95"] - np.percentile(brute, 95)) < 0.03
    assert ref["median"] > 0.08  # on 75 readouts a perfect model is far from an ECE of 0.03
    big = E.ece_if_calibrated(rng.uniform(0.3, 0.95, 3000))
    assert big["p95"] < ref["median"] / 3
    # an overconfident model: right 20 points less often than it says, on 3000 readouts
    c = rng.uniform(0.5, 0.95, 3000)
    y = np.where(rng.random(3000) < c - 0.2, 0, 1)
    assert E.ece(np.stack([c, 1 - c], axis=1), y)[0] > E.ece_if_calibrated(c)["p95"] + 0.1


def test_augment_keeps_shape_and_range_and_rotations_only_permute_pixels():
    x = torch.rand(16, 1, 24, 24) * 2 - 0.5
    gen = torch.Generator().manual_seed(0)
    out = augment(x, AugmentConfig(contrast=0, brightness=0, gamma=0, blur_p=0, noise=0), gen)
    assert torch.equal(out.flatten(1).sort(1).values, x.flatten(1).sort(1).values)
    assert not torch.equal(out, x)
    full = augment(x, AugmentConfig(blur_p=1.0), gen)
    assert full.shape == x.shape and full.min() >= -0.5 and full.max() <= 1.5


@pytest.mark.parametrize("arch", ["tiny", "resnet18"])
def test_folded_stem_matches_the_training_graph_including_borders(arch):
    model = build_model(arch, 3).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
    x = torch.rand(2, 1, 32, 32) * 2 - 0.5
    with torch.no_grad():
        assert torch.allclose(model(x), fold_stem(model)(x), atol=1e-4)
    assert fold_stem(model).conv1.conv.in_channels == 1


def test_local_weights_load_and_a_reshaped_head_is_skipped(tmp_path):
    src = build_model("tiny", 4)
    torch.save(src.backbone.state_dict(), tmp_path / "w.pth")
    dst = build_model("tiny", 2)
    skipped = load_weights(dst, tmp_path / "w.pth")
    assert skipped == ["fc.bias", "fc.weight"]
    assert torch.equal(dst.backbone.conv1.weight, src.backbone.conv1.weight)
    torch.save(build_model("resnet18", 2).backbone.state_dict(), tmp_path / "other.pth")
    with pytest.raises(ValueError, match="match this architecture"):
        load_weights(dst, tmp_path / "other.pth")


def _with_metadata(tmp_path, value):
    path = tmp_path / "m.onnx"
    build_tiny_classifier(path, input_size=16)
    model = onnx.load(str(path))
    props = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    if value is not None:
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, value
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("value, match", [
    (None, "no nscmonitor metadata"),
    ("{not json", "not valid JSON"),
    ('{"name": "m", "version": "1", "scheme": "binary"}', "lacks required keys"),
    ('{"name": "m", "version": "1", "scheme": "binary", "classes": ["neuron", "glia"], "input_size": 16, '
     '"input_channels": 2}', "input_channels"),
    ('{"name": "m", "version": "1", "scheme": "binary", "classes": ["neuron", "glia"], "input_size": 16, '
     '"temperature": 0}', "temperature"),
])
def test_models_with_bad_or_missing_metadata_are_refused(tmp_path, value, match):
    with pytest.raises(MetadataError, match=match):
        read_onnx_metadata(_with_metadata(tmp_path, value))


def test_config_file_layers_under_flags_and_rejects_unknown_keys(tmp_path):
    from nscmonitor.core.errors import UserFacingError
    from nscmonitor.training.train import TrainConfig

    f = tmp_path / "t.toml"
    f.write_text('[train]\narch = "tiny"\nepochs = 3\n[train.augment]\ngamma = 0.1\n')
    cfg = TrainConfig.from_sources(str(f), epochs=5, lr=None)
    assert (cfg.arch, cfg.epochs, cfg.lr, cfg.augment) == ("tiny", 5, 1e-3, {"gamma": 0.1})
    f.write_text('arch = "tiny"\n[augment]\nhue = 0.1\n')
    with pytest.raises(UserFacingError, match="augment.hue"):
        TrainConfig.from_sources(str(f))


def test_mixed_precision_follows_the_device_and_the_cpu_units():
    from nscmonitor.training.train import TrainConfig, amp_dtype, cpu_bf16_supported

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert amp_dtype(TrainConfig(amp=False), cpu) is None
    assert amp_dtype(TrainConfig(amp=False), cuda) is None
    assert amp_dtype(TrainConfig(), cuda) == torch.float16
    assert amp_dtype(TrainConfig(), cpu) == (torch.bfloat16 if cpu_bf16_supported() else None)


def test_channels_last_bf16_training_step_matches_fp32_direction():
    """The fast CPU path must compute the same step, up to bf16 rounding, as plain fp32. The
    tiny CNN is used because a freshly initialised deep ResNet's gradient is chaotic: 0.1 %
    input noise alone turns a ResNet50's early-layer gradients by 60 degrees in fp32."""
    from nscmonitor.training.train import _to_model_layout, TrainConfig

    torch.manual_seed(0)
    ref = build_model("tiny", 3)
    fast = build_model("tiny", 3)
    fast.load_state_dict(ref.state_dict())
    fast.to(memory_format=torch.channels_last)
    x = torch.rand(16, 1, 32, 32)
    y = torch.arange(16) % 3
    grads = []
    for model, layout, dtype in ((ref, False, None), (fast, True, torch.bfloat16)):
        model.train()
        xb = _to_model_layout(x, TrainConfig(channels_last=layout))
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(xb), y)
        loss.backward()
        grads.append(torch.cat([p.grad.flatten().float() for p in model.parameters()]))
    cos = torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0)
    assert cos > 0.98
