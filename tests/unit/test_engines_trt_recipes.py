"""The TensorRT path's parts that need no GPU: which TensorRT is accepted and how each precision
is built on it, the fp16 graph TensorRT 11 parses (run here on ONNX Runtime CPU), the checks on
the explicitly quantised int8 model, and the cache keys that tie an int8 plan to that model."""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import asdict, replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from nscmonitor.engines.base import EngineError
from nscmonitor.engines.build import cache_roots, pick_engine, require_qdq_model
from nscmonitor.engines.enginefile import MAGIC, EngineKey, file_sha256, read_engine_file, write_engine_file
from nscmonitor.engines.metadata import read_onnx_metadata, write_onnx_metadata
from nscmonitor.engines.ort import INT8_KEY, int8_path_for
from nscmonitor.engines.precision_graphs import convert_to_fp16, qdq_problems
from nscmonitor.engines.tensorrt import build_recipe, qdq_path_for, quantized_sha_for, trt_major
from nscmonitor.engines.tiny import build_tiny_classifier

TILES = np.random.default_rng(0).uniform(0, 1, (32, 1, 64, 64)).astype(np.float32)


@pytest.mark.parametrize("version,major", [("10.0.1", 10), ("10.13.3.9", 10), ("11.0.0", 11), ("11.4.1.2", 11)])
def test_supported_majors_are_read(version, major):
    assert trt_major(version) == major


@pytest.mark.parametrize("version,reason", [("9.3.0.1", "too old"), ("8.6.1", "too old"),
                                            ("12.0.0", "newer than"), ("dev", "cannot read")])
def test_other_majors_are_refused_with_the_reason(version, reason):
    with pytest.raises(EngineError, match=reason):
        trt_major(version)


def test_tensorrt_10_keeps_the_fp16_flag_and_builds_int8_from_qdq_strongly_typed():
    fp16 = build_recipe("10.13.0", "fp16")
    assert (fp16.strongly_typed, fp16.graph, fp16.builder_flags, fp16.network_flags) == (False, "fp32", ("FP16",), ())
    int8 = build_recipe("10.13.0", "int8")
    assert (int8.strongly_typed, int8.graph, int8.builder_flags) == (True, "int8-qdq", ())
    assert int8.network_flags == ("STRONGLY_TYPED",)
    fp32 = build_recipe("10.3.0", "fp32")
    assert fp32.builder_flags == () and fp32.graph == "fp32"


@pytest.mark.parametrize("precision,graph", [("fp32", "fp32"), ("fp16", "fp16"), ("int8", "int8-qdq")])
def test_tensorrt_11_takes_precision_from_the_graph_with_no_removed_flag(precision, graph):
    r = build_recipe("11.1.0", precision)
    assert r.strongly_typed and r.graph == graph
    assert r.builder_flags == () and r.network_flags == ()  # FP16/INT8 removed, STRONGLY_TYPED ignored in 11


def test_recipe_refuses_tensorrt_9_and_unknown_precisions():
    with pytest.raises(EngineError, match="too old"):
        build_recipe("9.2.0", "fp16")
    with pytest.raises(EngineError, match="precision"):
        build_recipe("11.0.0", "bf16")


def test_fp16_graph_keeps_fp32_io_and_metadata_and_agrees_with_fp32(tmp_path):
    meta = build_tiny_classifier(tmp_path / "m.onnx")
    out = convert_to_fp16(tmp_path / "m.onnx", tmp_path / "m.fp16.onnx")
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert {t.data_type for t in model.graph.initializer} == {TensorProto.FLOAT16}
    assert read_onnx_metadata(out) == meta
    runs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"input": TILES})[0]
            for p in (tmp_path / "m.onnx", out)]
    assert runs[1].dtype == np.float32
    np.testing.assert_allclose(runs[1], runs[0], atol=5e-3 * float(np.abs(runs[0]).max()))
    assert np.array_equal(runs[1].argmax(1), runs[0].argmax(1))
    assert not list(tmp_path.glob("*.part"))


class _Reader(CalibrationDataReader):
    def __init__(self) -> None:
        self._it = iter([{"input": TILES[i:i + 8]} for i in range(0, len(TILES), 8)])

    def get_next(self):
        return next(self._it, None)


def _quantize(src, dst, *, signed_symmetric: bool) -> None:
    quantize_static(str(src), str(dst), _Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8 if signed_symmetric else QuantType.QUInt8,
                    weight_type=QuantType.QInt8, per_channel=True,
                    extra_options={"ActivationSymmetric": signed_symmetric, "QuantizeBias": not signed_symmetric})


def _stamp(path, source_sha: str) -> None:
    meta = read_onnx_metadata(path)
    model = onnx.load(str(path))
    write_onnx_metadata(model, replace(meta, extra={**meta.extra, INT8_KEY: {"source_sha256": source_sha}}))
    onnx.save(model, str(path))


def test_qdq_check_names_what_tensorrt_would_refuse(tmp_path):
    build_tiny_classifier(tmp_path / "m.onnx")
    _quantize(tmp_path / "m.onnx", tmp_path / "u8.onnx", signed_symmetric=False)
    problems = qdq_problems(tmp_path / "u8.onnx")
    assert any("UINT8" in p for p in problems)
    assert any("INT32" in p for p in problems)
    _quantize(tmp_path / "m.onnx", tmp_path / "s8.onnx", signed_symmetric=True)
    assert qdq_problems(tmp_path / "s8.onnx") == []
    assert qdq_problems(tmp_path / "m.onnx") == ["the model has no QuantizeLinear/DequantizeLinear nodes "
                                                 "(not explicitly quantised)"]


def test_int8_build_input_must_exist_come_from_this_model_and_be_signed_symmetric(tmp_path):
    model = tmp_path / "model.onnx"
    build_tiny_classifier(model)
    qdq = qdq_path_for(model)
    assert qdq != int8_path_for(model)  # the CPU file has unsigned activations TensorRT refuses
    with pytest.raises(EngineError, match="needs the explicitly quantised model"):
        require_qdq_model(model, None, None)
    _quantize(model, qdq, signed_symmetric=True)
    _stamp(qdq, "0" * 64)
    with pytest.raises(EngineError, match="another fp32 model"):
        require_qdq_model(model, None, None)
    _quantize(model, qdq, signed_symmetric=False)
    _stamp(qdq, file_sha256(model))
    with pytest.raises(EngineError, match="signed INT8"):
        require_qdq_model(model, None, None)
    _quantize(model, qdq, signed_symmetric=True)
    _stamp(qdq, file_sha256(model))
    assert require_qdq_model(model, None, None) == qdq


def test_int8_key_follows_the_quantised_model_and_fp_keys_keep_their_names(tmp_path):
    model = tmp_path / "model.onnx"
    build_tiny_classifier(model)
    assert quantized_sha_for(model, "fp16") == ""
    assert quantized_sha_for(model, "int8") == "missing"
    _quantize(model, int8_path_for(model), signed_symmetric=False)
    assert quantized_sha_for(model, "int8") == "missing"  # the CPU file is not what a plan is parsed from
    _quantize(model, qdq_path_for(model), signed_symmetric=True)
    sha = quantized_sha_for(model, "int8")
    assert sha == file_sha256(qdq_path_for(model))

    fp16 = EngineKey("NVIDIA H200", "9.0", "11.0.0", "ab" * 32, "fp16", 1, 8, 32)
    legacy = {k: v for k, v in asdict(fp16).items() if k != "quantized_sha256"}
    assert fp16.digest() == hashlib.sha256(json.dumps(legacy, sort_keys=True).encode()).hexdigest()
    int8_a = replace(fp16, precision="int8", quantized_sha256=sha)
    int8_b = replace(int8_a, quantized_sha256="cd" * 32)
    assert int8_a.filename("model") != int8_b.filename("model")
    assert any("quantized_sha256" in m for m in int8_a.mismatches(int8_b))


def test_engine_file_written_before_the_quantised_hash_existed_still_reads(tmp_path):
    key = EngineKey("NVIDIA H200", "9.0", "10.13.0", "ab" * 32, "fp16", 1, 8, 32)
    meta = build_tiny_classifier(tmp_path / "m.onnx")
    path = write_engine_file(tmp_path / "e.engine", key, meta, b"plan" * 10, {"passed": True})
    data = path.read_bytes()
    n = struct.unpack_from("<I", data, len(MAGIC))[0]
    header = json.loads(data[len(MAGIC) + 4:len(MAGIC) + 4 + n])
    del header["key"]["quantized_sha256"]
    new = json.dumps(header, sort_keys=True).encode()
    path.write_bytes(MAGIC + struct.pack("<I", len(new)) + new + data[len(MAGIC) + 4 + n:])
    assert read_engine_file(path, expected=key).key.quantized_sha256 == ""


def test_engines_built_beside_the_model_are_found_from_the_daemon_cache_folder_too(tmp_path):
    model = tmp_path / "versions" / "3" / "model.onnx"
    roots = cache_roots(model, tmp_path / "engines")
    assert roots == [tmp_path / "engines", model.parent / "trt-cache"]
    assert cache_roots(model, None) == [model.parent / "trt-cache"]
    assert cache_roots(model, model.parent / "trt-cache") == [model.parent / "trt-cache"]


def test_pick_engine_prefers_int8_and_skips_foreign_stale_ungated_or_too_small(tmp_path):
    meta = build_tiny_classifier(tmp_path / "m.onnx")
    here = EngineKey("NVIDIA H200", "9.0", "11.0.0", "ab" * 32, "fp32", 1, 1, 1)
    qdq = "cd" * 32

    def entry(name, gate=True, **kw):
        key = replace(here, **{"opt_batch": 8, "max_batch": 32, **kw})
        path = write_engine_file(tmp_path / f"{name}.engine", key, meta, b"plan", {"passed": gate})
        return path, read_engine_file(path), "ok"

    fp16 = entry("fp16", precision="fp16")
    int8 = entry("int8", precision="int8", quantized_sha256=qdq)
    stale = entry("stale", precision="int8", quantized_sha256="ef" * 32)
    other_gpu = entry("a100", precision="int8", quantized_sha256=qdq, gpu_name="NVIDIA A100", compute_capability="8.0")
    other_trt = entry("trt10", precision="int8", quantized_sha256=qdq, trt_version="10.13.0")
    ungated = entry("ungated", gate=False, precision="fp32")
    broken = (tmp_path / "broken.engine", None, "bad magic")
    everything = [broken, stale, other_gpu, other_trt, ungated, fp16, int8]
    assert pick_engine(everything, here, qdq) == int8[0]
    assert pick_engine(everything, here, qdq, precision="fp16") == fp16[0]
    assert pick_engine(everything, here, "99" * 32) == fp16[0]  # the quantised model was replaced
    assert pick_engine(everything, here, qdq, batch_size=64) is None
    assert pick_engine([broken, stale, ungated], here, qdq) is None
