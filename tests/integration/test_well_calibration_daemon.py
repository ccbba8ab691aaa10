"""The daemon's well readouts apply the registered model's well calibration: the stored
readout is the calibrated mean of the images' probabilities, and a model without one
stores the plain mean as before. Real runner, real SQLite, real ONNX Runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from conftest import cells_image, stable_seed, write_tiff
from nscmonitor.core.calibration import WellCalibration


@pytest.mark.parametrize("temperature", [None, 3.0])
def test_readouts_are_calibrated_with_the_models_temperature(tmp_path: Path, make_runner,
                                                             temperature: float | None) -> None:
    from nscmonitor.engines.tiny import build_tiny_classifier

    model = tmp_path / "models" / "cal.onnx"
    extra = {} if temperature is None else {"well_calibration": {"temperature": temperature}}
    build_tiny_classifier(model, input_size=32, version=f"cal-{temperature}", extra=extra)
    watch = tmp_path / "watch"
    for field in (1, 2):
        write_tiff(watch / f"VID3_A1_{field}_01d00h00m.tif", cells_image(stable_seed("cal", field), (96, 128)))
    runner = make_runner(watch, model=model)
    runner.run(once=True)
    with runner.store.engine.connect() as c:
        images = [_array(r[0]) for r in c.execute(text("select prob_mean from predictions")).fetchall()]
        stored = c.execute(text("select prob_mean from well_readouts")).scalar_one()
    stored = _array(stored)
    assert len(images) == 2
    plain = np.mean(images, axis=0)
    want = plain if temperature is None else WellCalibration(temperature).apply(plain)
    assert stored == pytest.approx(want, abs=1e-6)
    if temperature is not None:  # a temperature above one pulls the readout towards the middle
        assert stored.max() < plain.max()


def _array(value: object) -> np.ndarray:
    """A JSON column as SQLite returns it (text) or a driver decodes it (a list)."""
    return np.asarray(json.loads(value) if isinstance(value, str) else value, dtype=np.float64)
