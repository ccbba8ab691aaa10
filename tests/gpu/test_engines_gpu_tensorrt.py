"""TensorRT build -> gate -> cache -> serve, on a real GPU with real TensorRT (10.x or 11.x).

Skipped (with the reason) where either is missing; ``benchmarks/gpu_check.sh`` runs these."""

from __future__ import annotations

import csv
import json
import struct

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

trt = pytest.importorskip("tensorrt", reason="TensorRT Python package not installed")
torch = pytest.importorskip("torch", reason="torch (CUDA build) not installed")
if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU available", allow_module_level=True)

from nscmonitor.engines.build import BuildOptions, build_trt_engine, find_engine  # noqa: E402
from nscmonitor.engines.calibration import calibration_and_heldout  # noqa: E402
from nscmonitor.engines.enginefile import MAGIC, EngineMismatchError, file_sha256, read_engine_file  # noqa: E402
from nscmonitor.engines.metadata import read_onnx_metadata  # noqa: E402
from nscmonitor.engines.ort import OrtCpuEngine  # noqa: E402
from nscmonitor.engines.precision_graphs import qdq_problems  # noqa: E402
from nscmonitor.engines.select import select  # noqa: E402
from nscmonitor.engines.tensorrt import TrtEngine, build_recipe, qdq_path_for, trt_major  # noqa: E402
from nscmonitor.engines.tiny import build_tiny_classifier  # noqa: E402


def _tiles(folder, n=96, size=64):
    import tifffile

    rng = np.random.default_rng(0)
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
        rows.append({"path": rel, "plate": "P1", "well": f"A{(i // 2) % 4 + 1:02d}",
                     "split": "train" if i % 2 == 0 else "val"})
    with open(folder / "tiles.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("trt")
    model = root / "run" / "model.onnx"
    build_tiny_classifier(model, weights={"fc_w": np.random.default_rng(100).normal(0, 3.0, (8, 4))})
    meta = read_onnx_metadata(model)
    calib, held = calibration_and_heldout(_tiles(root / "tiles"), meta)
    return model, meta, calib, held, root / "cache"


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_build_gate_cache_and_serve(setup, precision):
    model, meta, calib, held, cache = setup
    opts = BuildOptions(precision=precision, max_batch=16, opt_batch=8)
    path, report = build_trt_engine(model, held, opts=opts, cache_dir=cache, calib=calib)
    assert path is not None and report.passed, report.summary()
    again, report2 = build_trt_engine(model, held, opts=opts, cache_dir=cache, calib=calib)
    assert again == path and report2 is None
    engine = TrtEngine(model, meta, engine_path=path)
    engine.load()
    ref = OrtCpuEngine(model, meta)
    ref.load()
    x = held.x[:37]
    got, want = engine.infer(x), ref.infer(x)
    assert got.shape == want.shape
    assert np.mean(got.argmax(1) == want.argmax(1)) >= 0.99
    assert find_engine(model, cache_dir=cache, precision=precision) == path
    key = read_engine_file(path).key
    assert key.trt_version == trt.__version__ and key.precision == precision
    if precision == "int8":
        # parsed from TensorRT's own signed Q/DQ model beside the fp32 one, which the build made
        qdq = qdq_path_for(model)
        assert qdq.is_file() and qdq_problems(qdq) == []
        assert key.quantized_sha256 == file_sha256(qdq)
    assert list(cache.glob("timing.*.cache")), "build should leave a timing cache"


def test_recipe_of_the_installed_tensorrt_is_the_documented_one():
    major = trt_major(trt.__version__)
    fp16 = build_recipe(trt.__version__, "fp16")
    if major >= 11:
        assert not hasattr(trt.BuilderFlag, "FP16"), "TensorRT 11 documents BuilderFlag.FP16 as removed"
        assert fp16.graph == "fp16" and fp16.builder_flags == ()
    else:
        assert hasattr(trt.BuilderFlag, "FP16") and fp16.builder_flags == ("FP16",)
        assert hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")


def test_requantised_model_invalidates_the_int8_engine(setup):
    model, meta, calib, held, cache = setup
    opts = BuildOptions(precision="int8", max_batch=16, opt_batch=8)
    path, _ = build_trt_engine(model, held, opts=opts, cache_dir=cache, calib=calib)
    qdq = qdq_path_for(model)
    original = qdq.read_bytes()
    try:
        qdq.write_bytes(original + b"\0")  # any change of the quantised file changes its hash
        with pytest.raises(EngineMismatchError, match="quantized_sha256"):
            TrtEngine(model, meta, engine_path=path).load()
    finally:
        qdq.write_bytes(original)
    TrtEngine(model, meta, engine_path=path).load()


def test_corrupt_engine_is_rebuilt_not_loaded(setup):
    model, meta, calib, held, cache = setup
    opts = BuildOptions(precision="fp16", max_batch=16, opt_batch=8)
    path, _ = build_trt_engine(model, held, opts=opts, cache_dir=cache, calib=calib)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    rebuilt, report = build_trt_engine(model, held, opts=opts, cache_dir=cache, calib=calib)
    assert rebuilt == path and report is not None and report.passed
    assert path.with_suffix(".engine.rejected").exists()


def test_engine_from_another_trt_version_is_refused(setup):
    model, meta, calib, held, cache = setup
    path, _ = build_trt_engine(model, held, opts=BuildOptions(precision="fp16", max_batch=16, opt_batch=8),
                               cache_dir=cache, calib=calib)
    data = path.read_bytes()
    n = struct.unpack_from("<I", data, len(MAGIC))[0]
    header = json.loads(data[len(MAGIC) + 4:len(MAGIC) + 4 + n])
    header["key"]["trt_version"] = "9.0.0"
    new = json.dumps(header, sort_keys=True).encode()
    foreign = path.with_name("foreign.engine")
    foreign.write_bytes(MAGIC + struct.pack("<I", len(new)) + new + data[len(MAGIC) + 4 + n:])
    with pytest.raises(EngineMismatchError, match="trt_version"):
        TrtEngine(model, meta, engine_path=foreign).load()


def test_selector_picks_tensorrt_when_a_validated_engine_exists(setup):
    model, meta, calib, held, cache = setup
    build_trt_engine(model, held, opts=BuildOptions(precision="fp16", max_batch=16, opt_batch=8),
                     cache_dir=cache, calib=calib)
    sel = select(model, batch_size=8, cache_dir=cache)
    assert sel.backend == "tensorrt"
    assert sel.engine.infer(held.x[:8]).shape == (8, 4)
