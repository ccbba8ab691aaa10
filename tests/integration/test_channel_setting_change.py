"""A folder's ``channel`` setting changed between two daemon starts reaches the images the
store already holds, not only new files: ``status`` tells an operator to set the channel, and
following that advice must change the plate. A real daemon (real watcher, real ONNX Runtime on
the tiny model) on ImageXpress-style names, one file per site and wavelength, on SQLite and on
PostgreSQL; the store read back through its own plain records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import cells_image, stable_seed, write_tiff
from nscmonitor.cli import main
from nscmonitor.store.db import open_engine
from nscmonitor.store.reads import Repo

WELLS = ("A01", "B02")


def _plate(tmp_path: Path) -> Path:
    watch = tmp_path / "PLATE1"
    for well in WELLS:
        for w in (1, 2):
            # the two wavelengths look different, so a readout shows which of them it averages
            img = cells_image(stable_seed("chg", well, w), (64, 64))
            write_tiff(watch / "TimePoint_1" / f"PLATE1_{well}_s1_w{w}.tif", img if w == 1 else img[::-1, ::-1] // 3)
    return watch


def _state(db_url: str, key=lambda rec: Path(rec.path).name) -> tuple[dict, dict, dict]:  # noqa: ANN001
    """(image key -> (status, error)), (image key -> probabilities of its one prediction), (well
    -> (n_images, prob_mean)) of experiment IMX; an image's key is its file name unless given."""
    engine = open_engine(db_url)
    try:
        repo = Repo(engine)
        exp = repo.experiment_id("IMX")
        images, preds = {}, {}
        for rec, p in repo.images(exp):
            name = key(rec)
            images[name] = (rec.status, rec.error)
            if p:
                preds[name] = np.asarray(p[0]["prob_mean"])
        readouts = {r.well: (r.n_images, np.asarray(r.prob_mean)) for r in repo.readouts(exp)}
        return images, preds, readouts
    finally:
        engine.dispose()


def _run(make_runner, watch: Path, db_url: str, channel: str | None, z: str = "all") -> None:
    kw = {"channel": channel} if channel is not None else {}
    runner = make_runner(watch, db_url=db_url, experiment="IMX", z=z, **kw)
    runner.run(once=True)
    runner.stop_event.set()


def _scored_only(images: dict, readouts: dict, expected: dict, kept: int, other: int) -> None:
    """Per well, w``kept`` is scored and counted alone in its readout (matching its prediction
    in ``expected``), and w``other`` is skipped for its channel."""
    for well in WELLS:
        assert images[f"PLATE1_{well}_s1_w{kept}.tif"] == ("done", None)
        assert images[f"PLATE1_{well}_s1_w{other}.tif"] == (
            "skipped", f"channel {other} is not the scored channel ({kept})")
        n, p = readouts[well]
        assert n == 1 and np.allclose(p, expected[f"PLATE1_{well}_s1_w{kept}.tif"], atol=1e-6)


def test_a_changed_channel_setting_takes_other_channels_out_of_the_readouts_and_back(
        tmp_path: Path, make_runner, db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    watch = _plate(tmp_path)
    _run(make_runner, watch, db_url, None)  # no setting: both wavelengths scored, averaged
    images, preds, readouts = _state(db_url)
    assert {s for s, _ in images.values()} == {"done"} and len(preds) == 4
    for well in WELLS:
        n, p = readouts[well]
        both = (preds[f"PLATE1_{well}_s1_w1.tif"] + preds[f"PLATE1_{well}_s1_w2.tif"]) / 2
        assert n == 2 and np.allclose(p, both, atol=1e-6)

    _run(make_runner, watch, db_url, "2")  # the operator names the channel, as status advises
    images, preds2, readouts = _state(db_url)
    _scored_only(images, readouts, preds, kept=2, other=1)
    assert preds2.keys() == preds.keys()  # predictions are kept; only the readouts change
    main(["status", "--db", db_url, "--json"])
    assert not [w for w in json.loads(capsys.readouterr().out)["warnings"] if "channels" in w]

    _run(make_runner, watch, db_url, "1")  # and changed again: w1's predictions count once more
    images, preds3, readouts = _state(db_url)
    _scored_only(images, readouts, preds, kept=1, other=2)
    assert {k: v.tolist() for k, v in preds3.items()} == {k: v.tolist() for k, v in preds.items()}  # not scored again

    engine = open_engine(db_url)
    try:
        applied = [e for e in Repo(engine).events(50) if e.kind == "selection_applied"]
    finally:
        engine.dispose()
    assert len(applied) == 2 and "2 images of other channels or planes skipped" in applied[0].message


def test_a_backlog_skipped_by_a_wrong_channel_setting_is_scored_once_the_setting_is_right(
        tmp_path: Path, make_runner, db_url: str) -> None:
    """``channel = "phase"`` on ImageXpress names (which give the wavelength's number) skipped
    every image; the plate stayed empty. Set to the number, the next start scores them all,
    and the wavelength not chosen stays skipped with the new reason."""
    watch = _plate(tmp_path)
    _run(make_runner, watch, db_url, "phase")
    images, preds, readouts = _state(db_url)
    assert {s for s, _ in images.values()} == {"skipped"} and not preds and not readouts

    _run(make_runner, watch, db_url, "1")
    images, preds, readouts = _state(db_url)
    _scored_only(images, readouts, preds, kept=1, other=2)
    assert set(preds) == {f"PLATE1_{w}_s1_w1.tif" for w in WELLS}


def test_a_start_with_the_same_setting_changes_nothing(tmp_path: Path, make_runner, db_url: str) -> None:
    watch = _plate(tmp_path)
    _run(make_runner, watch, db_url, "1")
    before = _state(db_url)
    _run(make_runner, watch, db_url, "1")
    after = _state(db_url)
    assert before[0] == after[0]
    engine = open_engine(db_url)
    try:
        assert not [e for e in Repo(engine).events(50) if e.kind == "selection_applied"]
    finally:
        engine.dispose()


def test_images_waiting_for_a_rescore_keep_counting_in_the_readouts_they_are_in(
        tmp_path: Path, make_runner, db_url: str) -> None:
    """A promoted model queues the scored images for rescoring; until each is rescored the
    older version's readouts hold it. Setting one channel aside then must recompute those
    readouts from the images still in them, not drop them for not being ``done``."""
    from datetime import datetime, timezone

    from nscmonitor.store.retrain import mark_for_rescore
    from nscmonitor.store.writer import Writer

    watch = _plate(tmp_path)
    _run(make_runner, watch, db_url, None)
    _, preds, _ = _state(db_url)
    engine = open_engine(db_url)
    try:
        assert mark_for_rescore(engine, acquiring_since=datetime(2000, 1, 1, tzinfo=timezone.utc)) == 4
        exp = Repo(engine).experiment_id("IMX")
        applied = Writer(engine).apply_selection(exp, str(watch), "2")
        assert (applied.set_aside, applied.queued, applied.restored) == (2, 0, 0)
    finally:
        engine.dispose()
    images, _, readouts = _state(db_url)
    for well in WELLS:
        assert images[f"PLATE1_{well}_s1_w2.tif"][0] == "rescore"
        n, p = readouts[well]
        assert n == 1 and np.allclose(p, preds[f"PLATE1_{well}_s1_w2.tif"], atol=1e-6)


def test_z_planes_beside_a_projection_leave_the_readouts_when_the_folder_scores_the_projection(
        tmp_path: Path, make_runner, db_url: str) -> None:
    """An ImageXpress writes each z plane into ``ZStep_N`` and the projection beside them; with
    ``z = all`` (the default) a well's readout averages them all. ``z = "projection"`` and a
    plane number, set later, reach the images already scored."""
    watch = tmp_path / "PLATE1"
    for well in WELLS:
        base = cells_image(stable_seed("z", well), (64, 64))
        write_tiff(watch / "TimePoint_1" / f"PLATE1_{well}_s1_w1.tif", base)
        for z in (1, 2):
            write_tiff(watch / "TimePoint_1" / f"ZStep_{z}" / f"PLATE1_{well}_s1_w1.tif", base[:, ::-1] // (z + 1))

    def runner(z: str) -> None:
        _run(make_runner, watch, db_url, None, z)

    def by_plane() -> tuple[dict, dict, dict]:
        return _state(db_url, key=lambda rec: (rec.well, rec.z))

    runner("all")
    status, preds, readouts = by_plane()
    assert len(preds) == 6 and all(n == 3 for n, _ in readouts.values())

    runner("projection")
    status, _, readouts = by_plane()
    for well in WELLS:
        assert status[(well, 1)] == ("skipped", "z plane 1 is not scored (z = projection: only images without a z "
                                                "index)")
        n, p = readouts[well]
        assert n == 1 and np.allclose(p, preds[(well, None)], atol=1e-6)

    runner("2")
    status, _, readouts = by_plane()
    for well in WELLS:
        assert status[(well, 2)] == ("done", None)
        assert status[(well, None)] == ("skipped", "z plane (none: a projection or 2-D image) is not the scored "
                                                   "plane (2)")
        n, p = readouts[well]
        assert n == 1 and np.allclose(p, preds[(well, 2)], atol=1e-6)


def test_images_put_back_that_the_served_model_never_scored_wait_for_a_rescore(
        tmp_path: Path, make_runner, db_url: str) -> None:
    """Skipped while an older model served: put back, they count again in that model's
    readouts at once and wait for the served model in the rescore queue, as after a promotion."""
    from nscmonitor.store.writer import Writer

    watch = _plate(tmp_path)
    _run(make_runner, watch, db_url, None)
    _run(make_runner, watch, db_url, "2")
    _, preds, _ = _state(db_url)
    engine = open_engine(db_url)
    try:
        exp = Repo(engine).experiment_id("IMX")
        applied = Writer(engine).apply_selection(exp, str(watch), "1", served_version="a-newer-model")
        assert (applied.set_aside, applied.queued, applied.restored) == (2, 0, 2)
    finally:
        engine.dispose()
    images, _, readouts = _state(db_url)
    for well in WELLS:
        assert images[f"PLATE1_{well}_s1_w1.tif"] == ("rescore", None)
        n, p = readouts[well]
        assert n == 1 and np.allclose(p, preds[f"PLATE1_{well}_s1_w1.tif"], atol=1e-6)


def test_images_set_aside_no_longer_count_in_the_out_of_distribution_share(tmp_path: Path, make_runner,
                                                                          db_url: str) -> None:
    """A stain channel unlike the training data, scored while the folder had no channel
    setting, flagged every one of its frames; once the setting takes it out, ``status``'s share
    of flagged images is the scored channel's, not the skipped one's."""
    from conftest import stripes_image, tiny_model_flagging_stripes

    model = tiny_model_flagging_stripes(tmp_path / "flagging.onnx")
    watch = tmp_path / "PLATE1"
    for i, well in enumerate(WELLS):
        write_tiff(watch / "TimePoint_1" / f"PLATE1_{well}_s1_w1.tif", stripes_image(i))
        write_tiff(watch / "TimePoint_1" / f"PLATE1_{well}_s1_w2.tif", cells_image(i))

    def flagged_judged(channel: str | None) -> tuple[int, int]:
        kw = {"channel": channel} if channel else {}
        runner = make_runner(watch, model=model, db_url=db_url, experiment="IMX", **kw)
        runner.run(once=True)
        runner.stop_event.set()
        engine = open_engine(db_url)
        try:
            return Repo(engine).recent_ood()
        finally:
            engine.dispose()

    assert flagged_judged(None) == (2, 4)
    assert flagged_judged("2") == (0, 2)
