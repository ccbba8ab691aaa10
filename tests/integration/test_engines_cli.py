"""``nscmonitor engine`` end to end through the real CLI entry point."""

from __future__ import annotations

import json
import re

from test_engines_int8_select import confident_tiny, write_tiles

from nscmonitor.cli import main
from nscmonitor.engines.ort import int8_path_for


def test_build_list_and_bench(tmp_path, capsys):
    model = tmp_path / "run" / "model.onnx"
    confident_tiny(model)
    tiles = write_tiles(tmp_path / "tiles")
    assert main(["engine", "build", str(model), "--backend", "ort-int8", "--calibration", str(tiles)]) == 0
    assert int8_path_for(model).is_file()
    assert main(["engine", "list", str(model)]) == 0
    out = capsys.readouterr().out
    assert "ort int8" in out and "passed" in out and "nscmonitor[gpu]" in out
    assert "no engine built" in out  # a hand build does not record an automatic one
    assert main(["engine", "autobuild", str(model), "--calibration", str(tiles)]) == 0
    assert main(["engine", "list", str(model)]) == 0
    # the build serves the fastest certified CPU engine: an int8 one, or the model in bf16 where the CPU has bf16 units
    assert re.search(r"(-int8|openvino-bf16) ready \(top-1 agreement", capsys.readouterr().out)
    assert main(["engine", "bench", str(model), "--backends", "ort-cpu,ort-int8,trt", "--batch", "1,4",
                 "--seconds", "0.2", "--tiles", str(tiles)]) == 0
    out = capsys.readouterr().out
    assert "ort-int8" in out and "skipped" in out


def test_missing_metadata_is_a_user_error(tmp_path, capsys):
    (tmp_path / "x.onnx").write_bytes(b"not onnx")
    assert main(["engine", "bench", str(tmp_path / "x.onnx")]) == 2
    assert "not a readable ONNX model" in capsys.readouterr().err


def test_build_uses_the_calibration_set_that_travels_with_the_model(tmp_path, capsys):
    from nscmonitor.engines.calibration import tiles_from_folder

    model = tmp_path / "run" / "model.onnx"
    confident_tiny(model)
    assert main(["engine", "build", str(model), "--backend", "ort-int8"]) == 2
    assert "no calibration set beside it" in capsys.readouterr().err
    tiles_from_folder(write_tiles(tmp_path / "tiles"), model.parent)
    assert main(["engine", "build", str(model), "--backend", "ort-int8"]) == 0
    gate = json.loads(int8_path_for(model).with_name("model.int8.onnx.gate.json").read_text())
    assert int8_path_for(model).is_file() and gate["tiles_source"].endswith("calibration.npz:heldout")
