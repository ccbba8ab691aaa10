"""The optional OpenVINO backend runs our ONNX files and is gated before it serves int8."""

from __future__ import annotations

import numpy as np
import pytest
from test_engines_int8_select import confident_tiny, write_tiles

from nscmonitor.engines.base import EngineError
from nscmonitor.engines.calibration import calibration_and_heldout
from nscmonitor.engines.metadata import read_onnx_metadata
from nscmonitor.engines.ort import OrtCpuEngine
from nscmonitor.engines.quantize import build_ort_int8
from nscmonitor.engines.select import select

pytest.importorskip("openvino", reason="OpenVINO is an optional extra")

from nscmonitor.engines.openvino import OpenVinoEngine  # noqa: E402


@pytest.fixture()
def built(tmp_path):
    model = tmp_path / "run" / "model.onnx"
    meta = confident_tiny(model)
    calib, held = calibration_and_heldout(write_tiles(tmp_path / "tiles"), meta)
    int8, _ = build_ort_int8(model, calib, held)
    return model, int8, held


@pytest.mark.parametrize("streams", [1, 2])
def test_openvino_matches_onnxruntime_on_fp32_and_int8(built, streams):
    model, int8, held = built
    for path in (model, int8):
        meta = read_onnx_metadata(path)
        ov = OpenVinoEngine(path, meta, streams=streams, threads=1)
        ov.load()
        ref = OrtCpuEngine(path, meta)
        ref.load()
        assert ov.name == ("openvino-int8" if path == int8 else "openvino-fp32")
        np.testing.assert_allclose(ov.infer(held.x), ref.infer(held.x), atol=2e-3)


def test_int8_build_gates_openvino_too_and_select_prefers_it(built):
    model, int8, held = built
    ov_gate = read_onnx_metadata(int8).extra["int8"]["openvino_gate"]
    assert ov_gate["passed"] and ov_gate["backend"] == "openvino-int8"
    sel = select(model, threads=1)
    assert sel.backend == "openvino-int8" and sel.engine.infer(held.x[:3]).shape == (3, 4)


def test_int8_built_without_openvino_is_not_served_by_it(tmp_path, monkeypatch):
    model = tmp_path / "run" / "model.onnx"
    meta = confident_tiny(model)
    calib, held = calibration_and_heldout(write_tiles(tmp_path / "tiles"), meta)
    monkeypatch.setenv("NSCMONITOR_DISABLE_OPENVINO", "1")
    int8, _ = build_ort_int8(model, calib, held)
    assert read_onnx_metadata(int8).extra["int8"]["openvino_gate"] is None
    monkeypatch.delenv("NSCMONITOR_DISABLE_OPENVINO")
    sel = select(model)
    assert sel.backend == "ort-int8"
    assert "no passed OpenVINO gate" in dict(sel.skipped)["openvino-int8"]


def test_disabled_openvino_is_a_clean_engine_error(built, monkeypatch):
    model, _, _ = built
    monkeypatch.setenv("NSCMONITOR_DISABLE_OPENVINO", "1")
    with pytest.raises(EngineError, match="NSCMONITOR_DISABLE_OPENVINO"):
        OpenVinoEngine(model, read_onnx_metadata(model)).load()
