"""What ``doctor``, ``status`` and ``models show`` say a model's out-of-distribution flag covers
(``nscmonitor.core.ood_record``), from records as training writes them, old and new, and from a
real tiny model's file read back."""

from __future__ import annotations

import pytest

from nscmonitor.core import ood_record
from nscmonitor.engines.metadata import read_onnx_metadata
from nscmonitor.engines.tiny import build_tiny_classifier
from nscmonitor.ops.health import doctor_report, model_ood_state

SCORE = {"method": "mahalanobis over layers", "output": "ood", "threshold": 14.1, "quantile": 0.97,
         "held_out_images": 1214, "threshold_from": "validation images and each training plate's, left out of the fit",
         "max_pixel_size_ratio": 1.5}
ZOOM = {"threshold": -6.2, "gain": 2.4, "images": 1214, "flagged_with_score": 0.049}


def test_a_model_without_a_record_is_said_to_flag_nothing() -> None:
    s = ood_record.summary(None)
    assert s["available"] is False
    assert ood_record.line(s).startswith("unavailable: ") and "no image is flagged" in ood_record.line(s)
    assert ood_record.short(s) == "unavailable: the model has none"


@pytest.mark.parametrize("damaged", [{"output": "ood"}, {"threshold": "high"}, ["not", "a", "record"],
                                     {**SCORE, "zoom": "zoomed"}])
def test_a_record_that_cannot_be_read_is_said_so_not_raised(damaged) -> None:
    """A registry row's metadata is input like any other: ``models show`` and the dashboard's
    models panel keep listing the other versions."""
    s = ood_record.summary(damaged)
    assert s["available"] is False and "cannot be read" in ood_record.line(s)
    assert ood_record.short(s) == "unavailable: its record cannot be read"


@pytest.mark.parametrize("zoom, tile_tests", [
    (None, []),
    (ZOOM, ["zoom in"]),
    ({**ZOOM, "out_threshold": 0.5, "out_gain": 3.0}, ["zoom in", "zoom out"]),
    ({**ZOOM, "out_threshold": 0.5, "out_gain": 3.0, "sign_threshold": 0.07, "sign_gain": 13.0, "sign_side": -1.0},
     ["zoom in", "zoom out", "contrast sign"]),
])
def test_the_summary_names_the_tests_the_record_carries(zoom, tile_tests) -> None:
    s = ood_record.summary({**SCORE, **({"zoom": zoom} if zoom else {})})
    assert s["available"] and s["threshold"] == pytest.approx(14.1)
    named = [t.split(" (")[0] for t in s["tests"]]
    assert named == ["the graph's score", *tile_tests, "a file's pixel size over 1.5x the model's, either way"]
    # the share of its own images: what the tests together flag, else the score's quantile
    assert s["flags_own_images"] == pytest.approx(0.049 if zoom else 0.03) and s["of_images"] == 1214
    text = ood_record.line(s)
    assert text.startswith(f"{len(named)} tests: ") and ("4.9%" if zoom else "3.0%") in text


def test_doctor_and_status_say_what_a_configured_models_flag_covers(tmp_path) -> None:
    from nscmonitor.config import load_settings

    for name, threshold in (("with", 5.0), ("without", None)):
        model = tmp_path / name / "model.onnx"
        build_tiny_classifier(model, ood_threshold=threshold)
        assert (read_onnx_metadata(model).ood is None) == (threshold is None)
        cfg = tmp_path / f"{name}.toml"
        cfg.write_text(f'database_url = "sqlite:///{(tmp_path / name / "db.sqlite").as_posix()}"\n'
                       f'model = "{model.as_posix()}"\n')
        settings = load_settings(cfg, env={})
        checks = {c[0]: c for c in doctor_report(settings)}
        assert model_ood_state(settings, "served")["available"] == (threshold is not None)  # what status prints
        assert model_ood_state(settings, None) is None  # no daemon has said what it serves
        _, ok, detail = checks["out-of-distribution flag"]
        assert ok
        if threshold is None:
            assert detail.startswith("unavailable: ")
        else:
            assert detail.startswith("1 test: the graph's score") and "Threshold 5" in detail
