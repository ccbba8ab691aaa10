"""Int8 calibration, its gate, the int8 artefact's self-description, and backend selection,
on the tiny real ONNX model with real TIFF tiles (no torch needed)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tifffile

from nscmonitor.engines.base import EngineError
from nscmonitor.engines.calibration import calibration_and_heldout, load_tiles
from nscmonitor.engines.metadata import read_onnx_metadata
from nscmonitor.engines.ort import OrtCpuEngine, OrtInt8Engine, int8_gate, int8_path_for
from nscmonitor.engines.quantize import build_ort_int8
from nscmonitor.engines.select import select
from nscmonitor.engines.tiny import build_tiny_classifier


def write_tiles(folder, n=96, size=64, seed=0):
    """Blob cultures whose density and brightness differ by class, as 16-bit TIFFs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    (folder / "img").mkdir(parents=True)
    rows = []
    for i in range(n):
        cls = i % 4
        img = rng.normal(300, 20, (size, size))
        for _ in range(3 + 4 * cls):
            cy, cx = rng.uniform(0, size, 2)
            r = rng.uniform(2, 3 + 3 * cls)
            img += (1000 + 500 * cls) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        rel = f"img/t{i:03d}.tif"
        tifffile.imwrite(folder / rel, img.clip(0, 65535).astype(np.uint16))
        rows.append({"path": rel, "label": str(cls), "plate": "P1", "well": f"A{(i // 2) % 4 + 1:02d}",
                     "split": "train" if i % 2 == 0 else "val"})
    with open(folder / "tiles.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return folder


def confident_tiny(path):
    """A tiny model with a decisive head, like a trained one: random heads give near-tied
    logits whose int8 rounding moves well readouts by a point or more, which the gate rightly
    refuses (see test_failed_gate_publishes_nothing_but_a_report)."""
    fc_w = np.random.default_rng(100).normal(0, 3.0, (8, 4))
    return build_tiny_classifier(path, weights={"fc_w": fc_w})


@pytest.fixture()
def model_and_tiles(tmp_path):
    meta = confident_tiny(tmp_path / "run" / "model.onnx")
    return tmp_path / "run" / "model.onnx", meta, write_tiles(tmp_path / "tiles")


def test_tiles_are_loaded_into_the_input_contract(model_and_tiles):
    _, meta, tiles = model_and_tiles
    calib, held = calibration_and_heldout(tiles, meta, n_calib=16)
    assert calib.x.shape == (16, 1, 64, 64) and held.x.shape == (48, 1, 64, 64)
    assert calib.x.dtype == np.float32 and -0.5 <= held.x.min() and held.x.max() <= 1.5
    for x in held.x[:4]:
        lo, hi = np.percentile(x, [1.0, 99.8])
        assert abs(lo) < 0.02 and abs(hi - 1) < 0.02
    assert set(held.groups) == {"P1/A01", "P1/A02", "P1/A03", "P1/A04"}
    smaller = load_tiles(tiles, meta.__class__(**{**meta.__dict__, "input_size": 32}), splits=("val",))
    assert smaller.x.shape[1:] == (1, 32, 32)


def test_int8_build_passes_gate_and_carries_its_record(model_and_tiles):
    model, meta, tiles = model_and_tiles
    calib, held = calibration_and_heldout(tiles, meta)
    path, report = build_ort_int8(model, calib, held)
    assert report.passed, report.summary()
    assert path == int8_path_for(model) and path.is_file()
    int8_meta = read_onnx_metadata(path)
    assert int8_meta.classes == meta.classes and int8_meta.input_size == meta.input_size
    assert int8_gate(int8_meta)["top1_agreement"] >= 0.99
    assert int8_meta.extra["int8"]["settings"]["per_channel"] is True
    import onnx

    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    engine = OrtInt8Engine(path, int8_meta)
    engine.load()
    ref = OrtCpuEngine(model, meta)
    ref.load()
    assert np.mean(engine.infer(held.x).argmax(1) == ref.infer(held.x).argmax(1)) >= 0.99


def test_failed_gate_publishes_nothing_but_a_report(model_and_tiles, tmp_path):
    model, meta, tiles = model_and_tiles
    strict = build_tiny_classifier(tmp_path / "strict" / "model.onnx")
    import onnx
    from dataclasses import replace

    from nscmonitor.engines.metadata import write_onnx_metadata

    proto = onnx.load(str(tmp_path / "strict" / "model.onnx"))
    write_onnx_metadata(proto, replace(strict, int8_tolerance={"top1_agreement": 1.0, "well_readout_pp": 0.0}))
    onnx.save(proto, str(tmp_path / "strict" / "model.onnx"))
    calib, held = calibration_and_heldout(tiles, meta)
    path, report = build_ort_int8(tmp_path / "strict" / "model.onnx", calib, held)
    assert path is None and not report.passed
    target = int8_path_for(tmp_path / "strict" / "model.onnx")
    assert not target.exists() and not [p for p in target.parent.iterdir() if ".part" in p.name]
    assert target.with_name(target.name + ".gate.json").is_file()


def test_int8_engine_refuses_ungated_or_stale_models(model_and_tiles):
    model, meta, tiles = model_and_tiles
    with pytest.raises(EngineError, match="not an nscmonitor int8 model"):
        OrtInt8Engine(model, meta).load()
    calib, held = calibration_and_heldout(tiles, meta)
    path, _ = build_ort_int8(model, calib, held)
    with pytest.raises(EngineError, match="another fp32 model"):
        OrtInt8Engine(path, read_onnx_metadata(path), source_sha256="0" * 64).load()


def test_select_prefers_certified_int8_and_logs_what_it_skipped(model_and_tiles, monkeypatch):
    monkeypatch.setenv("NSCMONITOR_DISABLE_OPENVINO", "1")
    model, meta, tiles = model_and_tiles
    sel = select(model)
    assert sel.backend == "ort-cpu" and [b for b, _ in sel.skipped][:3] == ["tensorrt", "torch-cuda", "ort-cuda"]
    calib, held = calibration_and_heldout(tiles, meta)
    build_ort_int8(model, calib, held)
    sel = select(model, threads=1)
    assert sel.backend == "ort-int8" and sel.engine.infer(held.x[:2]).shape == (2, 4)
    sel = select(model, prefer="ort-cpu")
    assert sel.backend == "ort-cpu" and sel.skipped == []


def test_stale_int8_is_skipped_after_the_fp32_model_changes(model_and_tiles):
    model, meta, tiles = model_and_tiles
    calib, held = calibration_and_heldout(tiles, meta)
    build_ort_int8(model, calib, held)
    build_tiny_classifier(model, seed=5)
    sel = select(model)
    assert sel.backend == "ort-cpu"
    assert "another fp32 model" in dict(sel.skipped)["ort-int8"]


def test_disabling_onnxruntime_falls_through_to_torch_or_fails_clearly(model_and_tiles, monkeypatch):
    model, _, _ = model_and_tiles
    monkeypatch.setenv("NSCMONITOR_DISABLE_ORT", "1")
    monkeypatch.setenv("NSCMONITOR_DISABLE_TORCH", "1")
    with pytest.raises(EngineError) as exc:
        select(model)
    for backend in ("ort-cpu", "ort-int8", "openvino-int8", "torch"):
        assert backend in str(exc.value)
    assert "disabled by NSCMONITOR_DISABLE_ORT" in str(exc.value)


def test_optimized_graph_is_cached_and_reused_only_for_the_same_model(model_and_tiles, tmp_path):
    model, meta, tiles = model_and_tiles
    cache = tmp_path / "opt" / "model.opt.onnx"
    x = load_tiles(tiles, meta, splits=("val",)).x
    first = OrtCpuEngine(model, meta, optimized_cache=cache)
    first.load()
    assert cache.is_file() and cache.with_name(cache.name + ".stamp").is_file()
    stamp = cache.with_name(cache.name + ".stamp").read_text()
    second = OrtCpuEngine(model, meta, optimized_cache=cache)
    second.load()
    np.testing.assert_allclose(first.infer(x), second.infer(x), atol=1e-6)
    build_tiny_classifier(model, seed=9)
    third = OrtCpuEngine(model, meta, optimized_cache=cache)
    third.load()
    assert cache.with_name(cache.name + ".stamp").read_text() != stamp
    assert not np.allclose(third.infer(x), first.infer(x))


def test_two_loads_optimising_at_once_each_write_their_own_part_and_both_start(model_and_tiles, tmp_path):
    """Daemons sharing a models folder start at once: each optimises the model into its own
    part file, so one's move into the cache cannot take the other's file (a shared part name
    crashed a daemon's start in the shared-queue test). Both commit, in either order, and one
    cache with its stamp is left, no part file."""
    import onnxruntime as ort

    model, meta, _ = model_and_tiles
    cache = tmp_path / "opt" / "model.opt.onnx"
    engines = [OrtCpuEngine(model, meta, optimized_cache=cache) for _ in range(2)]
    parts = []
    for e in engines:  # both reach the optimiser before either commits
        opts = ort.SessionOptions()
        _, part = e._optimized_source(ort, opts)
        ort.InferenceSession(str(model), sess_options=opts, providers=["CPUExecutionProvider"])
        parts.append(part)
    assert parts[0] != parts[1] and all(p.is_file() for p in parts)
    for e, part in zip(reversed(engines), reversed(parts)):
        e._commit_optimized(part, ort)
    assert cache.is_file() and cache.with_name(cache.name + ".stamp").is_file()
    assert not list(cache.parent.glob("*.part"))
    again = OrtCpuEngine(model, meta, optimized_cache=cache)
    again.load()  # the committed cache serves
    assert again._optimized_source(ort, ort.SessionOptions())[1] is None
