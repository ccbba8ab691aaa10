"""The model's own calibration/held-out tiles: written beside the model, hashed, loaded
through the model's input contract, refused when corrupt or foreign."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nscmonitor.engines.base import EngineError
from nscmonitor.engines.calibration import (
    load_model_tiles,
    model_tiles_path,
    read_manifest,
    tiles_from_folder,
    write_model_tiles,
)
from nscmonitor.engines.metadata import read_onnx_metadata
from nscmonitor.engines.tiny import build_tiny_classifier
from nscmonitor.scoring.preprocess import Preprocess


def raw_tiles(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(100, 4000, (n, size, size)).astype(np.uint16)


def test_written_set_loads_through_the_input_contract(tmp_path):
    meta = build_tiny_classifier(tmp_path / "model.onnx", input_size=32)
    calib, held = raw_tiles(6), raw_tiles(4, seed=1)
    path = write_model_tiles(tmp_path, calib, [f"P/A{i}" for i in range(6)], held, ["P/B1", "P/B1", "P/B2", "P/B2"],
                             ["neuron", "astrocyte", "neuron", "astrocyte"], source="unit test")
    assert path == model_tiles_path(tmp_path / "model.onnx")
    manifest = read_manifest(path)
    assert manifest["counts"] == {"calib": 6, "heldout": 4} and manifest["source"] == "unit test"
    assert manifest["wells"]["heldout"] == 2 and manifest["dtype"] == "uint16"

    tiles = load_model_tiles(tmp_path / "model.onnx")
    assert tiles is not None and tiles.sha256 == manifest["sha256"]
    assert tiles.calib.x.shape == (6, 1, 32, 32) and tiles.heldout.x.dtype == np.float32
    assert tiles.heldout.groups == ("P/B1", "P/B1", "P/B2", "P/B2")
    assert tiles.heldout.labels[1] == "astrocyte"
    pre = Preprocess.from_metadata(meta)
    expected = pre.tiles(held[2], factor=pre.factor(tile_px=64)).tiles[0]
    np.testing.assert_array_equal(tiles.heldout.x[2], expected)


def test_no_set_means_none(tmp_path):
    build_tiny_classifier(tmp_path / "model.onnx", input_size=32)
    assert load_model_tiles(tmp_path / "model.onnx") is None


def test_corrupt_or_swapped_set_is_refused(tmp_path):
    build_tiny_classifier(tmp_path / "model.onnx", input_size=32)
    path = write_model_tiles(tmp_path, raw_tiles(3), ["a"] * 3, raw_tiles(2), ["b"] * 2, ["x"] * 2, source="t")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(EngineError, match="does not match its manifest"):
        load_model_tiles(tmp_path / "model.onnx")


def test_set_of_another_model_is_refused(tmp_path):
    import onnx

    from nscmonitor.engines.metadata import write_onnx_metadata

    model_path = tmp_path / "model.onnx"
    meta = build_tiny_classifier(model_path, input_size=32)
    path = write_model_tiles(tmp_path, raw_tiles(3), ["a"] * 3, raw_tiles(2), ["b"] * 2, ["x"] * 2, source="t")
    proto = onnx.load(str(model_path))
    write_onnx_metadata(proto, type(meta)(**{**meta.__dict__, "calibration_sha256": "0" * 64}))
    onnx.save(proto, str(model_path))
    assert read_onnx_metadata(model_path).calibration_sha256 == "0" * 64
    with pytest.raises(EngineError, match="not the calibration set"):
        load_model_tiles(model_path)
    # the right hash in the metadata passes
    proto = onnx.load(str(model_path))
    write_onnx_metadata(proto, type(meta)(**{**meta.__dict__, "calibration_sha256": read_manifest(path)["sha256"]}))
    onnx.save(proto, str(model_path))
    assert load_model_tiles(model_path) is not None


def test_attach_from_a_tiles_folder(tmp_path):
    import csv

    import tifffile

    src = tmp_path / "tiles"
    (src / "img").mkdir(parents=True)
    rows = []
    for i, img in enumerate(raw_tiles(8, size=48)):
        tifffile.imwrite(src / "img" / f"t{i}.tif", img)
        rows.append({"path": f"img/t{i}.tif", "label": "neuron", "plate": "P", "well": f"A{i % 3 + 1}",
                     "split": "train" if i < 5 else "test"})
    with open(src / "tiles.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    model_dir = tmp_path / "m"
    build_tiny_classifier(model_dir / "model.onnx", input_size=16)
    tiles_from_folder(src, model_dir)
    manifest = json.loads((model_dir / "calibration.json").read_text())
    assert manifest["origin"] == "attached" and manifest["counts"] == {"calib": 5, "heldout": 3}
    tiles = load_model_tiles(model_dir / "model.onnx")
    assert tiles.calib.x.shape == (5, 1, 16, 16) and set(tiles.heldout.groups) == {"P/A3", "P/A1", "P/A2"}


def _store(tmp_path):
    from nscmonitor.store.db import ensure_schema, open_engine

    e = open_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    ensure_schema(e)
    return e


def test_registry_copies_the_set_and_refuses_a_tampered_one(tmp_path):
    from nscmonitor.core.errors import UserFacingError
    from nscmonitor.registry.registry import Registry

    reg = Registry(tmp_path / "models", _store(tmp_path))
    run = tmp_path / "run"
    build_tiny_classifier(run / "model.onnx", input_size=32, version="v1")
    write_model_tiles(run, raw_tiles(3), ["a"] * 3, raw_tiles(2), ["b"] * 2, ["x"] * 2, source="t")
    info = reg.register(run)
    folder = Path(info.path).parent
    assert (folder / "calibration.npz").read_bytes() == (run / "calibration.npz").read_bytes()
    assert load_model_tiles(Path(info.path)).sha256 == read_manifest(run / "calibration.npz")["sha256"]

    run2 = tmp_path / "run2"
    build_tiny_classifier(run2 / "model.onnx", input_size=32, version="v2", seed=3)
    write_model_tiles(run2, raw_tiles(3), ["a"] * 3, raw_tiles(2), ["b"] * 2, ["x"] * 2, source="t")
    (run2 / "calibration.npz").write_bytes((run2 / "calibration.npz").read_bytes() + b"x")
    with pytest.raises(UserFacingError, match="calibration set"):
        reg.register(run2)
    assert [v.version for v in reg.list()] == [info.version]
    assert not list((tmp_path / "models" / "versions").glob("*.part"))


def test_registry_gives_a_foreign_model_a_set(tmp_path):
    from nscmonitor.registry.registry import Registry

    reg = Registry(tmp_path / "models", _store(tmp_path))
    onnx_path = tmp_path / "elsewhere.onnx"
    build_tiny_classifier(onnx_path, input_size=32)
    donor = tmp_path / "donor"
    write_model_tiles(donor, raw_tiles(4), ["a"] * 4, raw_tiles(3), ["b"] * 3, ["x"] * 3, source="t")
    info = reg.register(onnx_path, calibration=donor / "calibration.npz")
    tiles = load_model_tiles(Path(info.path))
    assert len(tiles.calib) == 4 and len(tiles.heldout) == 3
    assert read_manifest(Path(info.path).parent / "calibration.npz")["origin"] == "attached"


def test_an_npz_without_wells_or_labels_is_refused_with_a_reason(tmp_path):
    """``models register M --calibration set.npz`` with a hand-made file: a clear refusal
    naming what is missing, not a KeyError half-way through the copy."""
    raw = np.zeros((4, 32, 32), np.uint16)
    npz = tmp_path / "set.npz"
    np.savez(npz, calib_raw=raw, heldout_raw=raw)
    with pytest.raises(EngineError, match="calib_wells, heldout_wells, heldout_labels"):
        tiles_from_folder(npz, tmp_path / "model")
