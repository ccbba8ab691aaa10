"""The int8 recipe on a real (tiny, stem + body + head) ONNX model: the CPU file (unsigned
activations, signed symmetric weights) passes the gate with the stem and head kept in fp32,
TensorRT's own file is signed symmetric, and a bad calibration set is refused with a readable
reason."""

from __future__ import annotations

import numpy as np
import pytest

from nscmonitor.engines.calibration import TileSet
from nscmonitor.engines.metadata import read_onnx_metadata
from nscmonitor.engines.ort import int8_path_for
from nscmonitor.engines.quantize import build_ort_int8, sensitive_nodes
from nscmonitor.engines.tiny import build_tiny_classifier

from blob_tiles import SIZE, blobs, tileset  # noqa: E402  (tests/ is on the path)


@pytest.fixture()
def model(tmp_path):
    path = tmp_path / "model.onnx"
    meta = build_tiny_classifier(path, input_size=SIZE, depth=2, seed=4)
    return path, meta


def _zero_points(path):
    import onnx
    from onnx import numpy_helper

    q = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    weights = {n.input[0] for n in q.graph.node if n.input and n.input[0] in inits}
    act = [inits[n.input[2]] for n in q.graph.node
           if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[0] not in weights]
    return q, inits, act


def test_cpu_recipe_passes_the_gate_with_unsigned_activations_and_fp32_stem_and_head(model):
    path, meta = model
    calib = tileset(meta, *blobs(64, 1), "calib")
    held = tileset(meta, *blobs(160, 2), "held")
    out, report = build_ort_int8(path, calib, held, threads=1)
    assert out == int8_path_for(path) and out.is_file(), report.summary()
    assert report.passed and report.well_readout_pp <= 1.0
    q, inits, act = _zero_points(out)
    assert act and all(z.dtype == np.uint8 for z in act)  # VNNI's u8 x s8
    assert any(not z.any() for z in act)  # a tensor after a ReLU starts at 0: all 256 steps over [0, max]
    conv_weights = [inits[n.input[0]] for n in q.graph.node if n.op_type == "DequantizeLinear"
                    and n.input[0] in inits and inits[n.input[0]].ndim == 4]
    assert conv_weights and all(w.dtype == np.int8 for w in conv_weights)  # signed weights
    quantized = {n.output[0] for n in q.graph.node if n.op_type == "DequantizeLinear"}
    convs = [n for n in q.graph.node if n.op_type == "Conv"]
    assert len(convs) == 3
    assert convs[0].input[1] not in quantized and convs[1].input[1] in quantized  # stem fp32, body int8
    head = [n for n in q.graph.node if n.op_type in ("Gemm", "MatMul")][-1]
    assert head.input[1] not in quantized
    rec = read_onnx_metadata(out).extra["int8"]
    assert rec["settings"]["activation_type"] == "QUInt8" and rec["settings"]["activation_symmetric"] is False
    assert rec["gate"]["passed"] and "top1_agreement_clear" in rec["gate"]
    assert rec["ort_gate_speed"]["fp32_tiles_per_s"] > 0 and rec["ort_gate_speed"]["int8_tiles_per_s"] > 0


def test_tensorrt_gets_its_own_signed_symmetric_file_written_from_the_calibration_tiles(model):
    from nscmonitor.engines.build import require_qdq_model
    from nscmonitor.engines.precision_graphs import qdq_problems
    from nscmonitor.engines.tensorrt import qdq_path_for

    path, meta = model
    calib = tileset(meta, *blobs(64, 1), "calib")
    held = tileset(meta, *blobs(160, 2), "held")
    cpu, _ = build_ort_int8(path, calib, held, threads=1)
    assert qdq_problems(cpu), "the CPU file's unsigned activations are not what TensorRT takes"
    trt = require_qdq_model(path, calib, held)
    assert trt == qdq_path_for(path) and trt != cpu and cpu.is_file()
    assert qdq_problems(trt) == []  # signed, symmetric, float biases
    _, _, act = _zero_points(trt)
    assert act and all(z.dtype == np.int8 and not z.any() for z in act)
    rec = read_onnx_metadata(trt).extra["int8"]
    assert rec["settings"]["activation_type"] == "QInt8" and rec["gate"]["passed"]


def test_all_zero_calibration_tiles_fail_the_gate_with_a_reason(model):
    path, meta = model
    raw, wells = blobs(32, 1)
    bad = TileSet(np.zeros((32, 1, SIZE, SIZE), np.float32), tuple(wells), ("",) * 32, "all-zero tiles")
    held = tileset(meta, *blobs(160, 2), "held")
    out, report = build_ort_int8(path, bad, held, threads=1)
    assert out is None and not report.passed and not int8_path_for(path).exists()
    assert report.reasons and ("top-1 agreement" in report.reasons[0] or "well readout" in report.reasons[0])
    assert "FAILED" in report.summary(), report.summary()


def test_small_graphs_keep_nothing_in_fp32(tmp_path):
    import onnx

    build_tiny_classifier(tmp_path / "m.onnx", input_size=SIZE)
    assert sensitive_nodes(onnx.load(str(tmp_path / "m.onnx"))) == []
