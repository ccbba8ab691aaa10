"""End to end on real parts: synthetic tiles -> train -> checkpoints -> metrics -> ONNX that
the daemon's engine loads; resume; CLI commands; the ResNet50 path once."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch

from nscmonitor.cli import main as cli_main
from nscmonitor.engines import read_onnx_metadata
from nscmonitor.engines.ort import OrtCpuEngine
from nscmonitor.training import data as D
from nscmonitor.training.export import check_parity, load_checkpoint
from nscmonitor.training.synthetic import render_tile, write_synthetic_tiles
from nscmonitor.training.train import TrainConfig, cpu_bf16_supported, main

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiles_dir(tmp_path_factory):
    return write_synthetic_tiles(tmp_path_factory.mktemp("tiles") / "d", plates=2, wells_per_class=4,
                                 timepoints=(0, 24, 48, 72, 96), fields=4, tile_size=32, seed=5)


@pytest.fixture(scope="module")
def run(tiles_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    metrics = main(TrainConfig(data=str(tiles_dir), out=str(out), scheme="multiclass", arch="tiny", epochs=12,
                               batch_size=32, lr=3e-3, warmup_epochs=0.5, patience=12, threads=1, progress=False))
    return out, metrics


def test_short_training_reduces_loss_and_beats_chance(run):
    out, metrics = run
    saved = torch.load(out / "last.pt", weights_only=True)
    hist = saved["state"]["history"]
    assert hist[-1]["train"]["loss"] < 0.85 * hist[0]["train"]["loss"]
    assert max(h["val"]["balanced_accuracy"] for h in hist) > 0.45
    assert metrics["split"] == "test"
    assert metrics["well"]["accuracy_from_48h"] > 0.5  # chance is 0.25
    assert set(metrics) >= {"tile", "image", "well", "temperature", "data_hash"}
    assert metrics["tile"]["by_time"].keys() >= {"0-12", "24-48", "72+"}


def test_run_dir_holds_atomic_artefacts_and_resolved_config(run):
    out, _ = run
    assert {p.name for p in out.iterdir()} >= {"best.pt", "last.pt", "config.json", "metrics.json",
                                               "evaluation.png", "model.onnx"}
    assert not list(out.glob("*.part"))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["arch"] == "tiny" and cfg["image_size"] == 32 and cfg["data_hash"].startswith("sha256:")
    assert cfg["precision"] == ("bfloat16" if cpu_bf16_supported() else "float32")
    saved = torch.load(out / "best.pt", weights_only=True)
    assert saved.keys() >= {"state_dict", "arch", "num_classes", "classes", "epoch", "optimizer", "scheduler", "metadata"}
    assert json.loads(saved["metadata"])["temperature"] > 0


def test_export_loads_in_the_daemon_engine_with_parity(run, tiles_dir):
    out, metrics = run
    md = read_onnx_metadata(out / "model.onnx")
    assert md.classes == D.MULTICLASS and md.scheme == "multiclass" and md.input_channels == 1
    assert md.normalization["in_graph"] is True and md.output == "logits"
    assert md.temperature == pytest.approx(metrics["temperature"])
    assert md.pixel_size_um == pytest.approx(1.24) and md.data_hash == metrics["data_hash"]
    assert md.metrics["well_accuracy"] == pytest.approx(metrics["well"]["accuracy"])
    from nscmonitor.engines.calibration import load_model_tiles, read_manifest

    manifest = read_manifest(out / "calibration.npz")
    assert md.calibration_sha256 == manifest["sha256"] and manifest["origin"] == "training"
    assert manifest["counts"]["calib"] > 0 and manifest["counts"]["heldout"] > 0
    own = load_model_tiles(out / "model.onnx", md)
    assert own.heldout.x.shape[1:] == (1, 32, 32) and all("/" in g for g in own.heldout.groups)
    recs, _ = D.read_tiles_export(tiles_dir)
    x, _, _ = D.load_arrays(recs[:24], D.MULTICLASS, tile_size=32, image_size=32)
    engine = OrtCpuEngine(out / "model.onnx", md)
    engine.load()
    probs = engine.infer(x[:, None].astype(np.float32))
    assert probs.shape == (24, 4) and np.allclose(probs.sum(1), 1, atol=1e-5)
    model, _ = load_checkpoint(out)
    assert check_parity(model, out / "model.onnx", x, md) <= 1e-4


def test_resume_continues_from_the_saved_epoch(tiles_dir, tmp_path, capsys):
    kw = dict(data=str(tiles_dir), out=str(tmp_path / "r"), scheme="binary", arch="tiny", batch_size=64,
              threads=1, progress=False, export=False)
    main(TrainConfig(epochs=2, **kw))
    first = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    assert first["epoch"] == 1
    main(TrainConfig(epochs=4, resume=True, **kw))
    assert "resuming after epoch 2" in capsys.readouterr().out
    second = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    hist = second["state"]["history"]
    assert second["epoch"] == 3 and [h["epoch"] for h in hist] == [0, 1, 2, 3]
    assert hist[:2] == first["state"]["history"]


def test_cli_evaluate_onnx_and_explain(run, tiles_dir, tmp_path, capsys):
    out, metrics = run
    assert cli_main(["evaluate", str(out / "model.onnx"), "--data", str(tiles_dir), "-o", str(tmp_path)]) == 0
    onnx_metrics = json.loads((tmp_path / "evaluation.json").read_text())
    assert onnx_metrics["tile"]["accuracy"] == pytest.approx(metrics["tile"]["accuracy"], abs=0.02)
    assert (tmp_path / "evaluation.png").stat().st_size > 10_000
    rng = np.random.default_rng(1)
    frame = np.block([[render_tile(rng, "neuron", 96, 32) for _ in range(3)] for _ in range(2)])
    tifffile.imwrite(tmp_path / "frame.tif", frame)
    assert cli_main(["explain", str(out), str(tmp_path / "frame.tif"), "-o", str(tmp_path / "cam.png")]) == 0
    assert "over 6 tiles" in capsys.readouterr().out
    assert (tmp_path / "cam.png").stat().st_size > 10_000
    assert cli_main(["explain", str(out / "model.onnx"), str(tmp_path / "frame.tif"), "-o", "x.png"]) == 2


def test_evaluate_leaves_the_runs_metrics_alone_unless_asked(run, tiles_dir, tmp_path, capsys):
    out, _ = run
    own = (out / "metrics.json").read_bytes()
    stamp = (out / "metrics.json").stat().st_mtime_ns
    assert cli_main(["evaluate", str(out), "--data", str(tiles_dir), "--resamples", "200"]) == 0
    assert (out / "metrics.json").read_bytes() == own and (out / "metrics.json").stat().st_mtime_ns == stamp
    ev = json.loads((out / "evaluation" / "evaluation.json").read_text())
    late = ev["protocol"]["groups"]["pooled"]["from 48 h"]
    assert late["wells"] == 8 and late["accuracy_interval"] == "wilson"  # 2 test wells per class, one readout each
    assert ev["seed"] == 0 and ev["training_validation"]["val_held_out_plate"] is True
    printed = capsys.readouterr().out
    assert "| from 48 h | 8 |" in printed and (out / "evaluation" / "evaluation.md").read_text() in printed
    # several runs (here the same run through torch and ONNX Runtime): each, then the spread
    assert cli_main(["evaluate", str(out), str(out / "model.onnx"), "--data", str(tiles_dir)]) == 2
    assert cli_main(["evaluate", str(out), str(out / "model.onnx"), "--data", str(tiles_dir), "-o", str(tmp_path),
                     "--resamples", "200"]) == 0
    both = json.loads((tmp_path / "evaluation.json").read_text())
    assert len(both["runs"]) == 2 and both["seed_spread"]["pooled"]["from 48 h"]["accuracy"]["n"] == 2
    assert (tmp_path / "protocol.png").stat().st_size > 10_000
    assert "2 runs (training seeds)" in capsys.readouterr().out
    assert (out / "metrics.json").read_bytes() == own
    assert cli_main(["evaluate", str(out), "--data", str(tiles_dir), "--resamples", "200", "--write-metrics"]) == 0
    replaced = json.loads((out / "metrics.json").read_text())
    assert "protocol" in replaced and replaced["data_hash"] == json.loads(own)["data_hash"]


def test_gradcam_points_at_the_cell(run):
    from nscmonitor.training.explain import gradcam

    model, _ = load_checkpoint(run[0])
    x = torch.full((1, 1, 32, 32), 0.2)
    x[0, 0, 2:10, 2:10] = 1.0
    cam, probs = gradcam(model, x, int(torch.softmax(model(x), 1).argmax()))
    assert cam.shape == (1, 32, 32) and 0 <= cam.min() and cam.max() == pytest.approx(1.0)
    assert probs.shape == (1, 4)


def test_subprocess_entry_point_runs_from_a_config_file(tiles_dir, tmp_path):
    cfg = tmp_path / "train.toml"
    cfg.write_text(f'data = "{tiles_dir.as_posix()}"\nout = "{(tmp_path / "r").as_posix()}"\nscheme = "binary"\n'
                   'arch = "tiny"\nepochs = 1\nthreads = 1\nexport = false\n')
    res = subprocess.run([sys.executable, "-m", "nscmonitor.training.train", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "time per epoch" in res.stdout and (tmp_path / "r" / "metrics.json").is_file()
    cfg.write_text(cfg.read_text() + "bogus = 1\n")
    res = subprocess.run([sys.executable, "-m", "nscmonitor.training.train", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "bogus" in res.stderr


def test_resnet50_path_trains_and_exports_on_a_few_tiny_images(tmp_path):
    data = write_synthetic_tiles(tmp_path / "d", plates=1, wells_per_class=3, timepoints=(96,), fields=1,
                                 tile_size=32, classes=("neuron", "astrocyte"))
    metrics = main(TrainConfig(data=str(data), out=str(tmp_path / "r"), scheme="binary", arch="resnet50", epochs=1,
                               batch_size=8, threads=1, progress=False))
    md = read_onnx_metadata(tmp_path / "r" / "model.onnx")
    assert md.arch == "resnet50" and md.classes == ("neuron", "glia") and metrics["tile"]["n"] == 2


def test_demo_model_trains_once_and_then_comes_from_the_cache(tiles_dir, tmp_path):
    from nscmonitor.training import demo_model

    path = demo_model(tmp_path / "demo", tiles_dir, arch="tiny", image_size=32, tile_size=None, epochs=1, threads=1,
                      progress=False)
    stamp = path.stat().st_mtime_ns
    assert read_onnx_metadata(path).arch == "tiny"
    assert demo_model(tmp_path / "demo", tiles_dir, arch="tiny", image_size=32, tile_size=None, epochs=1,
                      threads=1) == path
    assert path.stat().st_mtime_ns == stamp
    # another input size is another recipe: trained again, not served from the cache
    assert read_onnx_metadata(demo_model(tmp_path / "demo", tiles_dir, arch="tiny", image_size=24, tile_size=None,
                                         epochs=1, threads=1, progress=False)).input_size == 24


def test_simulator_export_trains_and_exports(tmp_path):
    tiles = pytest.importorskip("nscmonitor.simulate.labelled_tiles")
    tiles.export_tiles(tmp_path / "sim", plates=2, hours=(0, 96), tile_size=32, wells_per_condition=2,
                       grid=(2, 2), seed=0)
    metrics = main(TrainConfig(data=str(tmp_path / "sim"), out=str(tmp_path / "r"), scheme="multiclass", arch="tiny",
                               epochs=2, threads=1, progress=False, ood_fit_tiles=8))
    md = read_onnx_metadata(tmp_path / "r" / "model.onnx")
    assert md.scheme == "multiclass" and md.pixel_size_um == pytest.approx(1.24)
    # the OOD Gaussians were fitted on a share of the training tiles, and the model says how many
    assert 0 < md.ood["fit_tiles"] < md.ood["training_tiles"]
    assert np.isfinite(md.ood["threshold"])
    assert metrics["split"] == "test" and metrics["well"]["n"] > 0
    # default label_mode "well": every tile of a well carries its condition's fate, and the
    # ONNX says so, so `nscmonitor evaluate` judges it against the same truth
    assert md.extra["label_mode"] == "well"
    recs, _ = D.discover(tmp_path / "sim", "well")
    fates = {}
    for r in recs:
        fates.setdefault(r.well_key, set()).add(r.label)
    assert all(len(f) == 1 for f in fates.values())
    # the well calibration and the call rule fitted on the validation wells travel in the
    # model, and the held-out wells' calls are reported with the rule stored
    from nscmonitor.core.calibration import call_rule_of, well_calibration_of

    assert well_calibration_of(md.extra).temperature > 0
    assert call_rule_of(md.extra).threshold == metrics["calls"]["rule"]["threshold"]
    assert md.extra["call_rule"]["chosen_on"] == "validation"
    assert metrics["calls"]["by_condition"]["all"]["wells"] == len({r.well_key for r in recs if r.split == "test"})


def test_an_older_demo_export_is_rendered_again(tmp_path):
    """A demo folder holding an export with other settings (fewer plates, more fields, another
    grid, camera, hours or set of conditions) is not current, so it is rendered and its model
    trained again."""
    import json

    from nscmonitor.cli.demo import _demo_export, _export_is_current

    tiles = tmp_path / "tiles"
    tiles.mkdir()
    (tiles / "tiles.csv").write_text("path\n")
    want = _demo_export()
    info = {"plates": want["plates"], "fields": want["fields"], "wells_per_condition": want["wells_per_condition"],
            "bit_depth": want["bit_depth"], "grid": list(want["grid"]), "hours": list(want["hours"]),
            "conditions": {c: {} for c in want["conditions"]}}
    (tiles / "tiles.json").write_text(json.dumps(info))
    assert _export_is_current(tiles)
    fewer = {c: {} for c in want["conditions"] if c != "neuron-low-dose"}
    for other in ({"plates": 6}, {"fields": 4}, {"grid": [2, 2]}, {"bit_depth": 12},
                  {"hours": [0.0, 24.0, 48.0, 72.0, 96.0, 120.0]}, {"conditions": fewer}):
        (tiles / "tiles.json").write_text(json.dumps({**info, **other}))
        assert not _export_is_current(tiles)
    assert not _export_is_current(tmp_path / "missing")


def test_the_demo_export_settings_render_and_read_back_as_current(tmp_path):
    """``_demo_export`` is what the demo hands ``export_tiles``: every setting must be one it
    takes and records, or a fresh machine's ``make demo`` renders its export every time (or
    fails). Rendered with fewer plates and wells to stay fast; the rest as the demo asks."""
    import json

    from nscmonitor.cli.demo import _demo_export, _export_is_current
    from nscmonitor.simulate.labelled_tiles import export_tiles

    want = _demo_export()
    tiles = tmp_path / "tiles"
    export_tiles(tiles, **{**want, "plates": 2, "wells_per_condition": 1})
    info = json.loads((tiles / "tiles.json").read_text(encoding="utf-8"))
    assert not _export_is_current(tiles)  # two plates, not the demo's
    (tiles / "tiles.json").write_text(json.dumps({**info, "plates": want["plates"],
                                                  "wells_per_condition": want["wells_per_condition"]}))
    assert _export_is_current(tiles)
    assert info["dtype"] == "uint8" and info["grid"] == [1, 1] and min(info["hours"]) == 48.0


def test_demo_scores_with_a_given_model_and_refuses_a_bad_one(run, tmp_path, capsys):
    from nscmonitor.cli.demo import _model

    out, _ = run
    assert _model(tmp_path, retrain=False, given=out / "model.onnx") == out / "model.onnx"
    assert not (tmp_path / "tiles").exists()  # nothing rendered, nothing trained
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    assert cli_main(["demo", "--out", str(tmp_path / "d"), "--model", str(bad)]) != 0
    assert "not a usable nscmonitor model" in capsys.readouterr().err
    assert not (tmp_path / "d" / "plate").exists()


def test_int8_aware_fine_tuning_runs_after_the_epochs_and_is_recorded(tiles_dir, tmp_path, capsys):
    out = tmp_path / "r"
    main(TrainConfig(data=str(tiles_dir), out=str(out), scheme="binary", arch="tiny", epochs=1, batch_size=32,
                     threads=1, progress=False, int8_aware_steps=3))
    assert "int8-aware fine-tuning: 3 steps" in capsys.readouterr().out
    saved = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    rec = json.loads(saved["metadata"])["int8_aware"]
    assert rec["steps"] == 3
    # weights that cost validation accuracy are dropped, and the record says which happened
    assert rec["kept"] == (rec["val_balanced_accuracy_after"] >= rec["val_balanced_accuracy_before"] - 0.03)
    md = read_onnx_metadata(out / "model.onnx")  # exported from the fine-tuned weights, in their plain forward
    model, _ = load_checkpoint(out)
    recs, _ = D.read_tiles_export(tiles_dir)
    x, _, _ = D.load_arrays(recs[:16], D.BINARY, tile_size=32, image_size=32)
    assert check_parity(model, out / "model.onnx", x, md) <= 1e-4


def test_soft_labels_train_on_each_wells_end_point_shares(tmp_path, capsys):
    tiles = pytest.importorskip("nscmonitor.simulate.labelled_tiles")
    from nscmonitor.training.train_data import prepare_data

    tiles.export_tiles(tmp_path / "sim", plates=3, hours=(48, 96), tile_size=32, wells_per_condition=2,
                       grid=(2, 2), seed=0)
    cfg = TrainConfig(data=str(tmp_path / "sim"), out=str(tmp_path / "r"), scheme="multiclass", arch="tiny", epochs=1,
                      threads=1, progress=False, label_mode="endpoint", soft_labels=True)
    splits, _, classes, _ = prepare_data(cfg)
    train = splits["train"]
    assert train.soft is not None and train.soft.shape == (len(train.y), len(classes))
    assert np.allclose(train.soft.sum(1), 1.0)
    # every tile of a well learns the same shares, and the hard label is their largest
    by_well = {}
    for rec, row, y in zip(train.records, train.soft, train.y):
        assert np.allclose(by_well.setdefault(rec.well_key, row), row) and row.argmax() == y
    assert len({tuple(np.round(r, 4)) for r in by_well.values()}) > 1 and (train.soft.max(1) < 1).any()
    assert splits["val"].soft is None  # validation judges the call with hard labels
    assert cli_main(["train", "--data", str(tmp_path / "sim"), "--out", str(tmp_path / "r"), "--scheme", "multiclass",
                     "--arch", "tiny", "--epochs", "1", "--threads", "1", "--label-mode", "endpoint",
                     "--soft-labels", "--no-engine"]) == 0
    md = read_onnx_metadata(tmp_path / "r" / "model.onnx")
    assert md.extra["soft_labels"] is True and md.extra["label_mode"] == "endpoint"
    assert "class weights undone on the head" in capsys.readouterr().out
    saved = torch.load(tmp_path / "r" / "best.pt", map_location="cpu", weights_only=True)
    assert len(json.loads(saved["metadata"])["class_weights_undone"]) == len(classes)
    assert cli_main(["train", "--data", str(tmp_path / "sim"), "--out", str(tmp_path / "b"), "--scheme", "binary",
                     "--soft-labels"]) != 0
    assert "multiclass" in capsys.readouterr().err


def test_soft_labels_keep_class_weights_and_undo_them_on_the_head(run, tmp_path):
    from nscmonitor.training.train import class_balance, undo_class_weights

    assert class_balance(TrainConfig(scheme="multiclass", balance="weights", soft_labels=True)) == "weights"
    # draws by each tile's majority class would bias the shares in a way nothing undoes
    assert class_balance(TrainConfig(scheme="multiclass", balance="sampler", soft_labels=True)) == "none"
    assert class_balance(TrainConfig(scheme="multiclass", balance="sampler")) == "sampler"
    out, _ = run
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes((out / "best.pt").read_bytes())
    before = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]["backbone.fc.bias"].clone()
    w = np.array([2.0, 1.0, 0.5, 1.0])
    assert undo_class_weights(ckpt, w)
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    undone = before - torch.log(torch.tensor(w, dtype=torch.float32))
    assert torch.allclose(saved["state_dict"]["backbone.fc.bias"], undone)
    assert json.loads(saved["metadata"])["class_weights_undone"] == [2.0, 1.0, 0.5, 1.0]
    assert not undo_class_weights(ckpt, w)  # once per checkpoint: a resumed run does not subtract twice
    again = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]["backbone.fc.bias"]
    assert torch.equal(again, saved["state_dict"]["backbone.fc.bias"])
