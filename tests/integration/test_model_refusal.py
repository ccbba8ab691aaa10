"""A model without valid metadata is refused with a message that says what is wrong."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from nscmonitor.engines.metadata import METADATA_KEY, MetadataError, read_onnx_metadata


def _strip(src: Path, dst: Path, value: str | None) -> Path:
    model = onnx.load(str(src))
    keep = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    if value is not None:
        e = model.metadata_props.add()
        e.key, e.value = METADATA_KEY, value
    onnx.save(model, str(dst))
    return dst


@pytest.mark.parametrize("value, message", [
    (None, "no nscmonitor metadata"),
    ("{not json", "not valid JSON"),
    ('{"name": "m", "version": "1", "scheme": "multiclass", "classes": ["neuron"], "input_size": 64}', "at least two"),
    ('{"name": "m", "version": "1", "scheme": "multiclass", "classes": ["a", "b"]}', "input_size"),
])
def test_bad_metadata_refused_by_reader_and_daemon(tmp_path: Path, tiny_model: Path, value: str | None,
                                                   message: str) -> None:
    bad = _strip(tiny_model, tmp_path / "bad.onnx", value)
    with pytest.raises(MetadataError, match=message):
        read_onnx_metadata(bad)
    (tmp_path / "w").mkdir()
    out = subprocess.run([sys.executable, "-m", "nscmonitor", "run", "--db", f"sqlite:///{tmp_path / 'd.db'}",
                          "--watch", str(tmp_path / "w"), "--model", str(bad), "--once"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "refusing model" in out.stderr and message in out.stderr


def test_daemon_without_model_says_how_to_get_one(tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    out = subprocess.run([sys.executable, "-m", "nscmonitor", "run", "--db", f"sqlite:///{tmp_path / 'd.db'}",
                          "--watch", str(tmp_path / "w"), "--once"], capture_output=True, text=True,
                         env={"PATH": "", "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
                              "XDG_DATA_HOME": str(tmp_path / "data")})
    assert out.returncode == 2 and "no model" in out.stderr and "nscmonitor train" in out.stderr
