"""Engine files and their cache: the parts of the TensorRT path that need no GPU.

A foreign, truncated or tampered plan must never reach TensorRT; these tests corrupt real
files byte by byte and check the refusal and the rebuild path."""

from __future__ import annotations

import json
import struct
from dataclasses import replace

import pytest

from nscmonitor.engines.enginefile import (MAGIC, EngineCache, EngineFileError, EngineKey, EngineMismatchError,
                                           read_engine_file, write_engine_file)
from nscmonitor.engines.metadata import ModelMetadata, read_onnx_metadata
from nscmonitor.engines.tiny import build_tiny_classifier

META = ModelMetadata(name="m", version="3", scheme="binary", classes=("neuron", "glia"), input_size=64,
                     pixel_size_um=0.65, arch="resnet50")
KEY = EngineKey("NVIDIA H100 80GB HBM3", "9.0", "10.3.0", "ab" * 32, "fp16", 1, 8, 32)
PLAN = bytes(range(256)) * 40
GATE = {"passed": True, "top1_agreement": 1.0}


def test_round_trip_keeps_metadata_key_plan_and_gate(tmp_path):
    path = write_engine_file(tmp_path / "e.engine", KEY, META, PLAN, GATE)
    ef = read_engine_file(path, expected=KEY)
    assert ef.metadata == META and ef.key == KEY and ef.plan == PLAN and ef.gate == GATE
    assert not list(tmp_path.glob("*.part"))


def test_onnx_metadata_round_trip(tmp_path):
    meta = build_tiny_classifier(tmp_path / "m.onnx", classes=("neuron", "glia"), pixel_size_um=1.3)
    assert read_onnx_metadata(tmp_path / "m.onnx") == meta


@pytest.mark.parametrize("damage", ["magic", "truncate_plan", "flip_plan_byte", "header_len", "header_json", "bare_plan"])
def test_damaged_file_is_refused_with_reason(tmp_path, damage):
    path = write_engine_file(tmp_path / "e.engine", KEY, META, PLAN, GATE)
    data = bytearray(path.read_bytes())
    hlen = struct.unpack_from("<I", data, len(MAGIC))[0]
    if damage == "magic":
        data[0] ^= 0xFF
    elif damage == "truncate_plan":
        data = data[:-10]
    elif damage == "flip_plan_byte":
        data[-5] ^= 0x01
    elif damage == "header_len":
        struct.pack_into("<I", data, len(MAGIC), hlen + 10_000_000)
    elif damage == "header_json":
        data[len(MAGIC) + 4] = ord("#")
    else:
        data = bytearray(PLAN)
    path.write_bytes(bytes(data))
    with pytest.raises(EngineFileError) as exc:
        read_engine_file(path)
    assert str(path) in str(exc.value)


@pytest.mark.parametrize("field,value", [("gpu_name", "NVIDIA L4"), ("compute_capability", "8.9"),
                                         ("trt_version", "10.4.0"), ("onnx_sha256", "cd" * 32),
                                         ("precision", "int8"), ("max_batch", 64)])
def test_engine_for_another_gpu_trt_or_model_is_a_mismatch(tmp_path, field, value):
    path = write_engine_file(tmp_path / "e.engine", KEY, META, PLAN, GATE)
    here = replace(KEY, **{field: value})
    with pytest.raises(EngineMismatchError, match=field):
        read_engine_file(path, expected=here)


def test_cache_key_depends_on_every_field():
    digests = {KEY.digest()}
    for field, value in [("gpu_name", "x"), ("compute_capability", "7.5"), ("trt_version", "10.0.1"),
                         ("onnx_sha256", "0" * 64), ("precision", "fp32"), ("min_batch", 2), ("opt_batch", 16),
                         ("max_batch", 8)]:
        digests.add(replace(KEY, **{field: value}).digest())
    assert len(digests) == 9
    assert KEY.filename("model").startswith("model.fp16.") and KEY.filename("model").endswith(".engine")


def test_cache_lookup_moves_corrupt_and_ungated_files_aside(tmp_path):
    cache = EngineCache(tmp_path)
    path = cache.path_for(KEY, "model")
    assert cache.lookup(KEY, "model") is None
    write_engine_file(path, KEY, META, PLAN, GATE)
    assert cache.lookup(KEY, "model") == path
    path.write_bytes(path.read_bytes()[:-1])
    assert cache.lookup(KEY, "model") is None
    assert not path.exists() and path.with_suffix(".engine.rejected").exists()
    write_engine_file(path, KEY, META, PLAN, gate={"passed": False})
    assert cache.lookup(KEY, "model") is None


def test_cache_entries_report_unusable_files(tmp_path):
    write_engine_file(tmp_path / "a.engine", KEY, META, PLAN, GATE)
    (tmp_path / "b.engine").write_bytes(b"garbage")
    entries = {p.name: (ef, why) for p, ef, why in EngineCache(tmp_path).entries()}
    assert entries["a.engine"][0].key == KEY
    assert entries["b.engine"][0] is None and "magic" in entries["b.engine"][1]


def test_header_is_plain_json_for_inspection(tmp_path):
    path = write_engine_file(tmp_path / "e.engine", KEY, META, PLAN, GATE)
    data = path.read_bytes()
    n = struct.unpack_from("<I", data, len(MAGIC))[0]
    header = json.loads(data[len(MAGIC) + 4:len(MAGIC) + 4 + n])
    assert header["metadata"]["classes"] == ["neuron", "glia"] and header["key"]["trt_version"] == "10.3.0"
