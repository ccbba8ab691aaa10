"""One input contract: the same frame gives bit-identical model tiles through every caller:
the daemon's path (decode -> QC percentiles -> Preprocess), training's loader, int8
calibration's tiles-folder loader, the model's own calibration set, and explain."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tifffile

from nscmonitor.engines.calibration import load_model_tiles, load_tiles, write_model_tiles
from nscmonitor.engines.metadata import ModelMetadata
from nscmonitor.readers.decode import decode
from nscmonitor.scoring.preprocess import Preprocess
from nscmonitor.scoring.qc import qc_metrics
from nscmonitor.training import data as D

SRC_UM, TILE, SIZE = 1.24, 224, 96
MODEL_UM = SRC_UM * TILE / SIZE


def culture(shape, seed):
    """12-bit phase-like texture: blobs on a noisy background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    img = rng.normal(800, 40, shape)
    for _ in range(40):
        cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(3, 12)
        img += 1500 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    return img.clip(0, 4095).astype(np.uint16)


def write_tif(path, img):
    res = 1e4 / SRC_UM
    tifffile.imwrite(path, img, photometric="minisblack", resolution=(res, res), resolutionunit="CENTIMETER")


def meta():
    return ModelMetadata(name="m", version="1", scheme="multiclass", classes=D.MULTICLASS, input_size=SIZE,
                         pixel_size_um=MODEL_UM)


def daemon_tiles(path):
    """What the scorer's stages (scoring.stages.prepare) do with a frame (decode, QC percentiles, Preprocess)."""
    md = meta()
    dec = decode(path)
    norm = md.normalization
    qc = qc_metrics(dec.pixels, p_low=norm["p_low"], p_high=norm["p_high"])
    pre = Preprocess.from_metadata(md)
    return pre.tiles(dec.pixels, factor=pre.factor(dec.pixel_size_um), lohi=(qc.p_low, qc.p_high))


def tiles_folder(folder, images):
    (folder / "img").mkdir(parents=True)
    rows = []
    for i, img in enumerate(images):
        rel = f"img/f{i}.tif"
        write_tif(folder / rel, img)
        rows.append({"path": rel, "label": "neuron", "plate": "P1", "well": f"A0{i + 1}",
                     "split": "train" if i % 2 == 0 else "val", "experiment": "", "field": 1, "timepoint": 0,
                     "elapsed_h": 24, "condition": ""})
    with open(folder / "tiles.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (folder / "tiles.json").write_text(json.dumps({"pixel_size_um": SRC_UM, "tile_size": TILE}))
    return [folder / r["path"] for r in rows]


@pytest.mark.parametrize("shape", [(TILE, TILE), (2 * TILE + 17, 2 * TILE + 40)])
def test_frame_gives_identical_tiles_daemon_training_calibration(tmp_path, shape):
    images = [culture(shape, seed) for seed in range(4)]
    paths = tiles_folder(tmp_path / "tiles", images)
    served = [daemon_tiles(p) for p in paths]
    assert all(len(g.tiles) >= 1 for g in served)
    n_expected = 1 if shape == (TILE, TILE) else 4
    assert all(len(g.tiles) == n_expected for g in served)

    for p, g in zip(paths, served):
        trained = D.image_tiles(p, TILE, SIZE)
        np.testing.assert_array_equal(trained, g.tiles[:, 0])
    records, _ = D.read_tiles_export(tmp_path / "tiles")
    x, _, _ = D.load_arrays(records, D.MULTICLASS, tile_size=TILE, image_size=SIZE)
    np.testing.assert_array_equal(x, np.concatenate([g.tiles[:, 0] for g in served]).astype(np.float16))

    calib = load_tiles(tmp_path / "tiles", meta())
    np.testing.assert_array_equal(calib.x, np.concatenate([g.tiles for g in served]))


def test_model_calibration_set_gives_the_daemons_tiles_for_export_tiles(tmp_path):
    images = [culture((TILE, TILE), seed) for seed in range(4)]
    paths = tiles_folder(tmp_path / "tiles", images)
    records, _ = D.read_tiles_export(tmp_path / "tiles")
    raw, wells, labels, lohi = D.raw_tiles(records, TILE, 10)
    order = [int(w.split("A0")[1]) - 1 for w in wells]
    model_dir = tmp_path / "model"
    from nscmonitor.engines.tiny import build_tiny_classifier

    build_tiny_classifier(model_dir / "model.onnx", input_size=SIZE, pixel_size_um=MODEL_UM)
    write_model_tiles(model_dir, raw[:2], wells[:2], raw[2:], wells[2:], labels[2:], source="test",
                      pixel_size_um=SRC_UM, calib_lohi=lohi[:2], heldout_lohi=lohi[2:])
    own = load_model_tiles(model_dir / "model.onnx")
    served = [daemon_tiles(paths[i]).tiles for i in order]
    np.testing.assert_array_equal(own.calib.x, np.concatenate(served[:2]))
    np.testing.assert_array_equal(own.heldout.x, np.concatenate(served[2:]))


def test_explain_sees_the_daemons_tiles(tmp_path):
    torch = pytest.importorskip("torch")
    from nscmonitor.training.explain import explain_image
    from nscmonitor.training.model import build_model

    torch.manual_seed(0)
    model = build_model("tiny", 4).eval()
    md = {"arch": "tiny", "classes": list(D.MULTICLASS), "image_size": SIZE, "tile_size": TILE,
          "pixel_size_um": MODEL_UM, "source_pixel_size_um": SRC_UM, "temperature": 1.0,
          "normalization": {"p_low": D.P_LOW, "p_high": D.P_HIGH, "mean": 0.45, "std": 0.25}}
    torch.save({"state_dict": model.state_dict(), "arch": "tiny", "num_classes": 4, "metadata": json.dumps(md)},
               tmp_path / "best.pt")
    frame = culture((2 * TILE + 17, 2 * TILE + 40), 7)
    write_tif(tmp_path / "frame.tif", frame)
    g = daemon_tiles(tmp_path / "frame.tif")
    out = explain_image(tmp_path / "best.pt", tmp_path / "frame.tif")
    assert out["n_tiles"] == len(g.tiles) == 4
    (y0, x0), s = g.origin, g.size
    stitched = np.stack([out["image"][y0 + r * s:y0 + (r + 1) * s, x0 + c * s:x0 + (c + 1) * s]
                         for r in range(g.rows) for c in range(g.cols)])
    np.testing.assert_array_equal(stitched[g.kept], g.tiles[:, 0])
    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(g.tiles)), 1).numpy().mean(axis=0)
    np.testing.assert_array_equal(np.asarray(out["probabilities"], np.float32), probs.astype(np.float32))


def test_calibration_tiles_cut_from_frames_keep_the_frames_scaling(tmp_path):
    """Frames larger than a tile (store or image-folder sources): a calibration tile is one
    grid cell cut from the raw frame with the frame's percentiles, so without resampling it is
    exactly the tile the daemon scores in that cell."""
    from nscmonitor.engines.tiny import build_tiny_classifier

    frames = [culture((100, 130), seed) for seed in range(6)]
    (tmp_path / "f").mkdir()
    records = []
    for i, img in enumerate(frames):
        p = tmp_path / "f" / f"{i}.tif"
        tifffile.imwrite(p, img)
        records.append(D.TileRecord(path=str(p), label="neuron", plate="P1", well=f"A0{i + 1}"))
    raw, wells, labels, lohi = D.raw_tiles(records, 32, 6, seed=3)
    assert len(raw) == 6 and all(t.shape == (32, 32) and t.dtype == np.uint16 for t in raw)
    model_dir = tmp_path / "m"
    meta = build_tiny_classifier(model_dir / "model.onnx", input_size=32)
    write_model_tiles(model_dir, raw[:3], wells[:3], raw[3:], wells[3:], labels[3:], source="frames",
                      calib_lohi=lohi[:3], heldout_lohi=lohi[3:])
    own = load_model_tiles(model_dir / "model.onnx")
    pre = Preprocess.from_metadata(meta)
    for x, well, lh in zip(own.heldout.x, own.heldout.groups, lohi[3:]):
        frame = frames[int(well.split("A0")[1]) - 1]
        assert tuple(lh) == pre.lohi(frame)
        served = pre.tiles(frame).tiles  # factor 1: the daemon's cells of this frame
        assert any(np.array_equal(x, t) for t in served)
