"""Which well forecast serves after retraining installed versions, and rolling them back
(real files in a temporary models folder), and the pure rule that decides an install."""

from __future__ import annotations

from pathlib import Path

import pytest

from nscmonitor.core.errors import UserFacingError
from nscmonitor.registry import forecasts as FR
from nscmonitor.schedule.forecast_retrain import forecast_decision


def test_installed_versions_serve_in_turn_and_roll_back_to_the_configured_file(tmp_path: Path) -> None:
    models, configured = tmp_path / "models", tmp_path / "lab" / "forecast.onnx"
    assert FR.served(models, None) is None  # no forecast configured: retraining never turns one on
    assert FR.served(models, configured) == configured and FR.history(models) == []
    src = tmp_path / "candidate.onnx"
    src.write_bytes(b"v1")
    one = FR.install(models, src, "forecast-run-0001", "0.6 >= 0.5")
    assert Path(one.path).read_bytes() == b"v1" and FR.served(models, configured) == Path(one.path)
    src.write_bytes(b"v2")  # the run folder's file may change later: the installed copy does not
    two = FR.install(models, src, "forecast-run-0002", "0.7 >= 0.6")
    assert Path(one.path).read_bytes() == b"v1" and FR.served(models, configured) == Path(two.path)
    assert [r.version for r in FR.history(models)] == ["forecast-run-0001", "forecast-run-0002"]
    with pytest.raises(UserFacingError, match="already installed"):
        FR.install(models, src, "forecast-run-0002", "again")
    assert FR.rollback(models).version == "forecast-run-0001"
    assert FR.served(models, configured) == Path(one.path)
    assert FR.rollback(models) is None and FR.served(models, configured) == configured
    with pytest.raises(UserFacingError, match="already serves"):
        FR.rollback(models)
    assert not list((models / "forecast").glob("*.part"))


def test_an_unreadable_pointer_is_an_error_not_a_silent_fallback(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "forecast").mkdir(parents=True)
    (models / "forecast" / FR.ACTIVE).write_text("{not json")
    with pytest.raises(UserFacingError, match="unreadable forecast pointer"):
        FR.served(models, tmp_path / "forecast.onnx")


def test_a_candidate_replaces_the_serving_forecast_only_when_it_reads_the_held_out_wells_as_well() -> None:
    cand = {"mean_accuracy": 0.60, "wells": 12}
    ok, why = forecast_decision(cand, {"usable": True, "mean_accuracy": 0.55, "version": "fc-old"}, 4)
    assert ok and "0.600 >= fc-old 0.550" in why
    ok, why = forecast_decision(cand, {"usable": True, "mean_accuracy": 0.70, "version": "fc-old"}, 4)
    assert not ok and "0.600 < fc-old 0.700" in why
    assert forecast_decision(cand, {"usable": True, "mean_accuracy": 0.604, "version": "x"}, 4)[0]  # tolerance
    # nothing comparable serving: the candidate must beat chance by the first-model margin
    ok, why = forecast_decision(cand, {"usable": False, "why": "cannot load: bad file"}, 4)
    assert ok and "chance + 0.1 = 0.350" in why and "cannot load" in why
    assert not forecast_decision({"mean_accuracy": 0.30, "wells": 12}, None, 4)[0]
    assert not forecast_decision({"mean_accuracy": None}, None, 4)[0]
