"""``nscmonitor status`` warns when most of the newest scored images are flagged as unlike the
model's training data (a folder of another channel, objective or culture): a real daemon on a
tiny ONNX model with an ``ood`` output, a real store (SQLite and PostgreSQL), the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import cells_image, stable_seed, write_tiff
from nscmonitor.cli import main
from nscmonitor.ops.health import OOD_MIN_IMAGES, OOD_WARN_SHARE, ood_share_warning


@pytest.mark.parametrize("threshold,warned", [(0.0, True), (1e9, False)])
def test_status_warns_when_the_newest_images_are_unlike_the_training_data(
        tmp_path: Path, make_runner, db_url: str, capsys: pytest.CaptureFixture[str], threshold: float,
        warned: bool) -> None:
    from nscmonitor.engines.tiny import build_tiny_classifier

    model = tmp_path / "models" / "ood.onnx"
    build_tiny_classifier(model, input_size=32, ood_threshold=threshold)
    watch = tmp_path / "watch"
    n = OOD_MIN_IMAGES + 4
    for i in range(n):
        well = f"{'ABCD'[i % 4]}{i // 4 + 1}"
        write_tiff(watch / f"VID3_{well}_1_00d00h00m.tif", cells_image(stable_seed("status-ood", i), (64, 64)))
    runner = make_runner(watch, model=model, db_url=db_url)
    runner.run(once=True)
    main(["status", "--db", db_url, "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["unlike_training_data"] == {"flagged": n if warned else 0, "of_newest_scored": n}
    hits = [w for w in report["warnings"] if "unlike the model's training data" in w]
    assert hits == ([f"{n} of the newest {n} scored images (100%) are unlike the model's training data "
                     "(out-of-distribution flag): is a folder another channel, objective, modality or culture than "
                     "the model was trained on? Their readouts are marked and left out of calls; 'nscmonitor "
                     "doctor' shows each folder's channel and pixel size"] if warned else [])
    main(["status", "--db", db_url])
    assert ("unlike the model" in capsys.readouterr().out) is warned


def test_the_warning_needs_enough_images_and_a_share_far_above_the_models_own_rate() -> None:
    assert ood_share_warning(OOD_MIN_IMAGES - 1, OOD_MIN_IMAGES - 1) is None  # too few to judge
    judged = 200
    assert ood_share_warning(int(OOD_WARN_SHARE * judged) - 1, judged) is None  # e.g. a bad plate's 10-20 %
    assert ood_share_warning(int(OOD_WARN_SHARE * judged), judged).startswith(f"50 of the newest {judged} ")
