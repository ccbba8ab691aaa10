"""The daemon's second stage: a real daemon on real files stores each image's well-model
features and one forecast per well and time from the time-aware well model (real ONNX
Runtime on a small GRU exported by training), normalised against the plate's induction scan,
reading only the well's frames up to that time; per-image readouts are unchanged; SQLite
and PostgreSQL; the CSV export carries the forecasts."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from conftest import cells_image, csv_rows, settings_for, stable_seed, with_pixel_limit, write_tiff

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

TILE = 32
HOURS = (0, 24, 48)
WELLS = ("A01", "B02", "C03")  # as the store names them


def _forecast_model(path: Path) -> Path:
    from nscmonitor.training.temporal import build_tiny_forecast

    return build_tiny_forecast(path, tile_px=TILE)


def _plate(watch: Path, seed: str, um=None) -> dict[tuple[str, int], Path]:
    """One field per well and hour, as an Incucyte names them; (well, hour) -> file.
    ``um(well, hour)``: the pixel size its resolution tags state (None: no tags)."""
    def tags(well: str, h: int) -> dict:
        size = um(well, h) if um else None
        return {} if size is None else {"resolution": (1e4 / size, 1e4 / size), "resolutionunit": "CENTIMETER"}

    return {(well, h): write_tiff(watch / f"VID3_{well[0]}{int(well[1:])}_1_{h // 24:02d}d{h % 24:02d}h00m.tif",
                                  cells_image(stable_seed(seed, well, h), (96, 128)), **tags(well, h))
            for well in WELLS for h in HOURS}


def _run_once(settings, model: Path, **kw):  # noqa: ANN001, ANN202 (Settings; the runner)
    """A real daemon scores what the watch folder holds, then stops; returns the runner."""
    from nscmonitor.daemon import build_runner

    runner = build_runner(settings, model=model, retry_base_s=0.05, poll_interval=0.2, **kw)
    try:
        runner.run(once=True)
    finally:
        runner.stop_event.set()
    return runner


def _tile_model(tmp_path: Path) -> Path:
    from nscmonitor.engines.tiny import build_tiny_classifier

    model = tmp_path / "models" / "tiny.onnx"
    build_tiny_classifier(model, input_size=32)
    return model


def test_daemon_stores_forecasts_from_frames_up_to_each_time(tmp_path: Path, db_url: str) -> None:
    from nscmonitor.readers.decode import decode
    from nscmonitor.scoring import well_sequence as WS

    fmodel = _forecast_model(tmp_path / "forecast.onnx")
    watch = tmp_path / "watch"
    paths = _plate(watch, "forecast")
    model = _tile_model(tmp_path)
    settings = dataclasses.replace(settings_for(tmp_path, watch, db_url), forecast_model=fmodel)
    runner = _run_once(settings, model)
    with runner.store.engine.connect() as c:
        rows = c.execute(text("select w.name, f.elapsed_h, f.probs, f.n_timepoints, f.n_images, f.model_version, "
                              "f.n_reference_wells, f.normalisation from well_forecasts f join wells w "
                              "on w.id = f.well_id")).fetchall()
        flags = c.execute(text("select distinct ood, n_ood from well_forecasts")).fetchall()
        n_readouts = c.execute(text("select count(*) from well_readouts")).scalar()
        n_feats = c.execute(text("select count(*) from frame_features")).scalar()
    assert n_readouts == len(WELLS) * len(HOURS) and n_feats == len(WELLS) * len(HOURS)
    assert len(rows) == len(WELLS) * len(HOURS)
    assert flags == [(None, None)]  # a model without its own OOD score: the flag is unavailable, not "in domain"

    feats = {k: WS.frame_features(decode(p).pixels, TILE) for k, p in paths.items()}
    ref = WS.plate_reference([feats[(w, 0)] for w in WELLS])
    sess = ort.InferenceSession(str(fmodel), providers=["CPUExecutionProvider"])

    def probs(seq):
        z = sess.run(None, {"sequence": seq[None]})[0][0, -1]
        e = np.exp(z - z.max())
        return e / e.sum()

    for name, h, p, n_t, n_img, version, n_ref, norm in rows:
        p = json.loads(p) if isinstance(p, str) else p
        frames = [(hh, feats[(name, hh)]) for hh in HOURS]
        upto = WS.sequence(frames, ref, feats[(name, 0)], norm, up_to_h=h)
        full = WS.sequence(frames, ref, feats[(name, 0)], norm)
        assert n_t == len(upto) == n_img and n_ref == len(WELLS) and version == "forecast-test"
        np.testing.assert_allclose(p, probs(upto), atol=1e-5)
        if h < HOURS[-1]:  # the stored forecast is not the one that later frames would give
            assert not np.allclose(p, probs(full), atol=1e-6)

    out = tmp_path / "report.csv"
    subprocess.run([sys.executable, "-m", "nscmonitor", "export", "--db", settings.database_url,
                    "--experiment", "E1", "-o", str(out)], check=True, capture_output=True)
    fc = csv_rows(out.with_name("report_forecasts.csv"))
    assert len(fc) == len(rows)
    assert {r["forecast_model"] for r in fc} == {"forecast-test"}
    assert {(r["ood"], r["n_ood"]) for r in fc} == {("", "")}
    got = {(r["well"], float(r["elapsed_h"])): float(r["p_neuron"]) for r in fc}
    want = {(name, float(h)): (json.loads(p) if isinstance(p, str) else p)[0] for name, h, p, *_ in rows}
    assert got.keys() == want.keys()
    assert all(abs(got[k] - want[k]) < 1e-4 for k in got)


def test_a_file_that_is_not_a_forecast_model_is_refused_in_one_line(tmp_path: Path) -> None:
    from nscmonitor.engines.tiny import build_tiny_classifier
    from nscmonitor.scoring.forecast import ForecastModelError, load_forecast_model

    tile_model = tmp_path / "tiny.onnx"
    build_tiny_classifier(tile_model, input_size=32)
    with pytest.raises(ForecastModelError, match="not a well forecast model"):
        load_forecast_model(tile_model)
    bad = tmp_path / "junk.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(ForecastModelError, match="not an ONNX model"):
        load_forecast_model(bad)


def test_a_forecast_installed_while_the_daemon_runs_takes_over_between_batches(tmp_path: Path) -> None:
    """Retraining installs a new forecast model (``registry.forecasts``) while a daemon scores
    a plate: the next batch is forecast by it, and the plate's first batch under it recomputes
    every well and time of the plate, so its forecasts are complete under the new version; each
    is what that model gives on the frames up to its time. A file that cannot serve is refused
    once, with an event, and the model serving keeps forecasting."""
    from nscmonitor.daemon import build_runner
    from nscmonitor.readers.decode import decode
    from nscmonitor.registry import forecasts as FR
    from nscmonitor.scoring import well_sequence as WS
    from nscmonitor.training.temporal import build_tiny_forecast

    first = _forecast_model(tmp_path / "forecast.onnx")
    second = build_tiny_forecast(tmp_path / "forecast-new.onnx", tile_px=TILE, seed=11, version="forecast-new")
    watch = tmp_path / "watch"
    paths = _plate(watch, "swap")
    model = _tile_model(tmp_path)
    settings = dataclasses.replace(settings_for(tmp_path, watch), forecast_model=first, batch_size=2)
    runner = build_runner(settings, model=model, retry_base_s=0.05, poll_interval=0.2, claim_size=2)
    batches, switched = [], []

    def after(n: int) -> None:
        batches.append(n)
        if len(batches) == 1:  # a broken install first: refused, the configured model keeps serving
            (tmp_path / "broken.onnx").write_bytes(b"not a model")
            FR.install(settings.models_dir, tmp_path / "broken.onnx", "forecast-broken", "test")
            return
        with runner.store.engine.connect() as c:
            induction_done = c.execute(text("select count(*) from images where elapsed_h = 0 and status = 'done'")
                                       ).scalar() == len(WELLS)
        if induction_done and not switched:  # after the plate's induction scan, so only the switch can
            switched.append(len(batches))     # make the new model forecast the earlier frames
            FR.rollback(settings.models_dir)
            FR.install(settings.models_dir, second, "forecast-new", "test")

    runner.on_batch = after
    try:
        runner.run(once=True)
    finally:
        runner.stop_event.set()
    assert switched and switched[0] < len(batches), (switched, batches)
    with runner.store.engine.connect() as c:
        rows = c.execute(text("select w.name, f.elapsed_h, f.probs, f.model_version from well_forecasts f "
                              "join wells w on w.id = f.well_id")).fetchall()
        events = c.execute(text("select message from events where kind = 'forecast_error'")).scalars().all()
    assert len(events) == 1 and "forecast-test keeps serving" in events[0] and "broken" in events[0]
    by_version: dict[str, dict] = {}
    for name, h, p, version in rows:
        by_version.setdefault(version, {})[(name, round(h))] = json.loads(p) if isinstance(p, str) else p
    assert by_version.get("forecast-test"), "the configured model forecast the first batches"
    assert sorted(by_version["forecast-new"]) == sorted(paths)  # the whole plate, under the new version
    feats = {k: WS.frame_features(decode(p).pixels, TILE) for k, p in paths.items()}
    ref = WS.plate_reference([feats[(w, 0)] for w in WELLS])
    sess = ort.InferenceSession(str(second), providers=["CPUExecutionProvider"])
    for (name, h), p in by_version["forecast-new"].items():
        seq = WS.sequence([(hh, feats[(name, hh)]) for hh in HOURS], ref, feats[(name, 0)], "plate0+well0", up_to_h=h)
        z = sess.run(None, {"sequence": seq[None]})[0][0, -1]
        assert np.allclose(p, np.exp(z - z.max()) / np.exp(z - z.max()).sum(), atol=1e-5)


def test_a_forecast_reading_other_tiles_is_not_switched_to(tmp_path: Path) -> None:
    """Earlier frames' stored features were computed at the serving model's tile size; a model
    reading other tiles would forecast from features it was not trained on, so it is refused
    (once) and the serving model stays."""
    from nscmonitor.scoring.forecast import ForecastStage, load_forecast_model
    from nscmonitor.training.temporal import build_tiny_forecast

    serving = load_forecast_model(_forecast_model(tmp_path / "forecast.onnx"))
    other = build_tiny_forecast(tmp_path / "other.onnx", tile_px=2 * TILE, version="forecast-64")
    same = build_tiny_forecast(tmp_path / "same.onnx", tile_px=TILE, seed=5, version="forecast-same")
    offered = [other]
    stage = ForecastStage(serving, None, source=lambda: offered[0])
    why = stage.refresh()
    assert why and "64 px" in why and "would not match" in why and stage.model is serving
    assert stage.refresh() is None and stage.model is serving  # told once
    offered[0] = same
    assert stage.refresh() is None and stage.model.version == "forecast-same"


@pytest.mark.parametrize("score_threshold", [1e9, 0.0])
def test_a_frame_of_another_magnification_is_no_data_for_the_forecast(tmp_path: Path, score_threshold: float) -> None:
    """One frame of a plate was taken at another magnification (its resolution tags say 2.48
    um/px, the model's images 1.24): the tile model flags it, and the forecast neither keeps
    its features nor gives its well a time point there; the well's later forecast reads its
    other frames only, and every other well is forecast as usual. Frames the tile model's
    score flags (threshold 0: all of them) still feed the forecast: the score measures
    distance from the tile model's training data, not the forecast's."""
    from nscmonitor.engines.tiny import build_tiny_classifier

    watch = tmp_path / "watch"
    _plate(watch, "ood-forecast", um=lambda well, h: 2.48 if (well, h) == ("B02", 24) else 1.24)
    model = tmp_path / "models" / "tiny.onnx"
    build_tiny_classifier(model, input_size=32, pixel_size_um=1.24, ood_threshold=score_threshold)
    with_pixel_limit(model, 1.5)
    settings = dataclasses.replace(settings_for(tmp_path, watch), forecast_model=_forecast_model(
        tmp_path / "forecast.onnx"))
    runner = _run_once(settings, model)
    with runner.store.engine.connect() as c:
        images = c.execute(text("select i.path, p.ood, f.image_id is not null from images i join predictions p "
                                "on p.image_id = i.id left join frame_features f on f.image_id = i.id")).fetchall()
        forecasts = c.execute(text("select w.name, f.elapsed_h, f.n_timepoints, f.n_images from well_forecasts f "
                                   "join wells w on w.id = f.well_id")).fetchall()
    other_scale = "VID3_B2_1_01d00h00m.tif"
    flagged = {Path(p).name for p, ood, _ in images if ood}
    assert len(images) == len(WELLS) * len(HOURS) and other_scale in flagged
    assert len(flagged) == (1 if score_threshold else len(images))
    assert all(bool(has_features) is (Path(p).name != other_scale) for p, _, has_features in images)
    got = {(name, h): (n_t, n_img) for name, h, n_t, n_img in forecasts}
    assert ("B02", 24.0) not in got and got[("B02", 48.0)] == (2, 2)
    assert got[("A01", 48.0)] == (3, 3) and got[("C03", 24.0)] == (2, 2)
    assert len(got) == len(WELLS) * len(HOURS) - 1


def test_a_folder_pixel_size_stands_in_for_files_that_state_none(tmp_path: Path) -> None:
    """A watch folder set to 2.48 um/px (a 5x objective) whose files carry no resolution tags,
    but one that states 1.24 um/px itself: the tile model (trained at 1.24, at most 1.5x)
    flags every untagged frame as another magnification and the forecast keeps no features of
    them; the tagged frame is read at its own pixel size. The same files in a folder set to
    1.24 are all in scale."""
    from nscmonitor.engines.tiny import build_tiny_classifier

    model = tmp_path / "models" / "tiny.onnx"
    build_tiny_classifier(model, input_size=32, pixel_size_um=1.24, ood_threshold=1e9)
    with_pixel_limit(model, 1.5)
    tagged = "VID3_B2_1_01d00h00m.tif"
    for folder_um, want_flagged in ((2.48, True), (1.24, False)):
        root = tmp_path / f"at-{folder_um}"
        watch = root / "watch"
        _plate(watch, "folder-scale", um=lambda well, h: 1.24 if (well, h) == ("B02", 24) else None)
        settings = dataclasses.replace(settings_for(root, watch, pixel_size_um=folder_um),
                                       forecast_model=_forecast_model(root / "forecast.onnx"))
        assert settings.watch[0].pixel_size_um == folder_um
        runner = _run_once(settings, model)
        with runner.store.engine.connect() as c:
            images = c.execute(text("select i.path, p.ood, f.image_id is not null from images i join predictions p "
                                    "on p.image_id = i.id left join frame_features f on f.image_id = i.id")).fetchall()
        assert len(images) == len(WELLS) * len(HOURS)
        for path, ood, has_features in images:
            other_scale = want_flagged and Path(path).name != tagged
            assert (bool(ood), bool(has_features)) == (other_scale, not other_scale), path


def _ood_record() -> dict:
    """The forecast's own OOD score fitted on frames of the kind ``_plate`` writes (four plates
    of twenty), threshold at the largest held-out score."""
    from nscmonitor.scoring import forecast_ood as FO
    from nscmonitor.scoring import well_sequence as WS

    frames = {(p, i): cells_image(stable_seed("fit", p, i), (96, 128)) for p in range(4) for i in range(20)}
    ood, info = FO.fit(np.array([WS.frame_features(f, TILE) for f in frames.values()]), [p for p, _ in frames],
                       quantile=1.0)
    return ood.record(**info)


def test_frames_unlike_the_forecasts_training_are_marked_and_left_out_of_later_forecasts(tmp_path: Path) -> None:
    """A forecast model with its own OOD score: well B02's 24 h frame is a texture, well C03's
    induction frame a texture. B02's forecast at 24 h is flagged (it had nothing else to read
    then), its 48 h forecast reads 0 and 48 h only and is not flagged; every forecast of C03
    is flagged (its reference is unlike training), and the plate reference is made of the
    other two wells. The tile model knows nothing of this (no OOD score of its own here)."""
    from nscmonitor.readers.decode import decode
    from nscmonitor.scoring import forecast_ood as FO
    from nscmonitor.scoring import well_sequence as WS
    from nscmonitor.simulate.out_of_domain import textures

    record = _ood_record()
    fmodel = build_tiny_forecast_with(tmp_path / "forecast.onnx", record)
    watch = tmp_path / "watch"
    paths = _plate(watch, "ood-own")
    odd = textures(2, 128, seed=4)
    for k, (well, h) in enumerate((("B02", 24), ("C03", 0))):
        write_tiff(paths[(well, h)], odd[k][:96])
    score = FO.FrameOOD.from_record(record, len(record["mean"]))
    flagged = {k for k, p in paths.items() if score.flags(WS.frame_features(decode(p).pixels, TILE))[0]}
    assert flagged == {("B02", 24), ("C03", 0)}  # the fixture: only the two textures are unlike training
    # the focus check off: a texture among a well's cell frames has less fine detail than they,
    # and QC would leave it out before the forecast's own score could judge it
    settings = dataclasses.replace(settings_for(tmp_path, watch), forecast_model=fmodel, min_focus_ratio=0.0)
    runner = _run_once(settings, _tile_model(tmp_path))
    with runner.store.engine.connect() as c:
        rows = c.execute(text("select w.name, f.elapsed_h, f.ood, f.n_ood, f.n_timepoints, f.n_images, "
                              "f.n_reference_wells from well_forecasts f join wells w on w.id = f.well_id")).fetchall()
    got = {(name, h): (bool(ood), n_ood, n_t, n_img, n_ref) for name, h, ood, n_ood, n_t, n_img, n_ref in rows}
    assert len(got) == len(WELLS) * len(HOURS)
    assert got[("B02", 0.0)] == (False, 0, 1, 1, 2)
    assert got[("B02", 24.0)] == (True, 1, 2, 2, 2)
    assert got[("B02", 48.0)] == (False, 1, 2, 2, 2)
    assert all(got[("C03", float(h))][:2] == (True, 1) for h in HOURS)
    assert all(got[("A01", float(h))] == (False, 0, i + 1, i + 1, 2) for i, h in enumerate(HOURS))

    out = tmp_path / "report.csv"
    subprocess.run([sys.executable, "-m", "nscmonitor", "export", "--db", settings.database_url,
                    "--experiment", "E1", "-o", str(out)], check=True, capture_output=True)
    csv_flags = {(r["well"], float(r["elapsed_h"])): (r["ood"], r["n_ood"])
                 for r in csv_rows(out.with_name("report_forecasts.csv"))}
    assert csv_flags == {k: (str(int(v[0])), str(v[1])) for k, v in got.items()}


def test_frames_stored_before_the_optics_features_are_still_read_and_flagged(tmp_path: Path) -> None:
    """A store from before the optics features (rows of the model's 27 features under the old
    feature set's name): a later frame's forecast still reads the earlier frames, and the
    texture frame among them is still flagged (scored on the model's 27 by the marginal of
    the fitted score) and left out."""
    from nscmonitor.scoring import well_sequence as WS
    from nscmonitor.simulate.out_of_domain import textures

    fmodel = build_tiny_forecast_with(tmp_path / "forecast.onnx", _ood_record())
    watch = tmp_path / "watch"
    paths = _plate(watch, "ood-own")
    write_tiff(paths[("B02", 24)], textures(1, 128, seed=4)[0][:96])
    # the focus check off, as above: the forecast's own score is what this judges
    settings = dataclasses.replace(settings_for(tmp_path, watch), forecast_model=fmodel, min_focus_ratio=0.0)
    runner = _run_once(settings, _tile_model(tmp_path))
    with runner.store.engine.begin() as c:
        rows = c.execute(text("select image_id, extractor, feature_values from frame_features")).fetchall()
        assert len(rows) == len(paths) and {r[1] for r in rows} == {WS.STORED}
        for image_id, _, values in rows:
            values = json.loads(values) if isinstance(values, str) else values
            assert len(values) == WS.STORED_FEATURES
            c.execute(text("update frame_features set extractor = :e, feature_values = :v where image_id = :i"),
                      {"e": WS.EXTRACTOR, "v": json.dumps(values[:WS.MODEL_FEATURES]), "i": image_id})
    write_tiff(watch / "VID3_B2_1_03d00h00m.tif", cells_image(stable_seed("ood-own", "B02", 72), (96, 128)))
    runner = _run_once(settings, _tile_model(tmp_path))
    with runner.store.engine.connect() as c:
        got = c.execute(text("select f.ood, f.n_ood, f.n_timepoints, f.n_images, f.n_reference_wells "
                             "from well_forecasts f join wells w on w.id = f.well_id "
                             "where w.name = 'B02' and f.elapsed_h = 72")).fetchall()
        kinds = c.execute(text("select extractor, count(*) from frame_features group by extractor")).fetchall()
    assert [tuple(r) for r in got] == [(False, 1, 3, 3, 3)]  # 0, 48 and 72 h read; the 24 h texture left out
    assert sorted(kinds) == sorted([(WS.EXTRACTOR, len(paths)), (WS.STORED, 1)])


def build_tiny_forecast_with(path: Path, record: dict) -> Path:
    from nscmonitor.training.temporal import build_tiny_forecast

    return build_tiny_forecast(path, tile_px=TILE, ood=record)


def test_a_forecast_model_with_a_damaged_ood_record_is_refused_with_the_reason(tmp_path: Path) -> None:
    from nscmonitor.scoring.forecast import ForecastModelError, load_forecast_model

    record = _ood_record()
    good = load_forecast_model(build_tiny_forecast_with(tmp_path / "good.onnx", record))
    assert good.ood is not None and good.ood.threshold == record["threshold"]
    with pytest.raises(ForecastModelError, match="not for 27 or 29 features"):
        load_forecast_model(build_tiny_forecast_with(tmp_path / "bad.onnx", record | {"mean": [0.0, 1.0]}))


def test_doctor_checks_the_forecast_file_and_says_whether_it_has_its_flag(tmp_path: Path) -> None:
    from nscmonitor.ops.health import doctor_report, forecast_checks

    watch = tmp_path / "watch"
    watch.mkdir()
    plain = dataclasses.replace(settings_for(tmp_path, watch), forecast_model=_forecast_model(tmp_path / "plain.onnx"))
    flagged = dataclasses.replace(plain, forecast_model=build_tiny_forecast_with(tmp_path / "ood.onnx", _ood_record()))
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not onnx")
    got = {name: {check: (ok, note) for check, ok, note in forecast_checks(dataclasses.replace(plain, forecast_model=f))}
           for name, f in (("plain", plain.forecast_model), ("flagged", flagged.forecast_model), ("broken", broken))}
    assert got["plain"]["well forecast model"][0] and got["plain"]["well forecast model"][1].startswith("forecast-test")
    assert got["plain"]["well forecast OOD flag"][1].startswith("unavailable: the forecast model has no")
    assert got["flagged"]["well forecast OOD flag"] == (True, f"threshold {_ood_record()['threshold']:.3g} "
                                                              "(leave-one-plate-out)")
    ok, note = got["broken"]["well forecast model"]
    assert not ok and note.startswith(f"{broken}: not an ONNX model") and len(got["broken"]) == 1
    assert forecast_checks(dataclasses.replace(plain, forecast_model=None)) == []
    assert [c for c in doctor_report(flagged) if c[0].startswith("well forecast")] == forecast_checks(flagged)


def test_a_frame_that_failed_qc_is_no_data_for_the_forecast(tmp_path: Path) -> None:
    """One frame of the plate is saturated over a fifth of its pixels: it fails QC, so, as it
    is left out of its well's readout, the forecast keeps no features of it and gives its well
    no time point there; the well's later forecast reads its other frames only."""
    watch = tmp_path / "watch"
    files = _plate(watch, "qc-forecast")
    bad = cells_image(stable_seed("qc-forecast", "B02", 24), (96, 128))
    bad[:20] = np.iinfo(np.uint16).max
    write_tiff(files[("B02", 24)], bad)
    settings = dataclasses.replace(settings_for(tmp_path, watch), forecast_model=_forecast_model(
        tmp_path / "forecast.onnx"))
    runner = _run_once(settings, _tile_model(tmp_path))
    with runner.store.engine.connect() as c:
        images = c.execute(text("select i.path, i.qc_passed, f.image_id is not null from images i "
                                "left join frame_features f on f.image_id = i.id")).fetchall()
        forecasts = c.execute(text("select w.name, f.elapsed_h, f.n_timepoints, f.n_images from well_forecasts f "
                                   "join wells w on w.id = f.well_id")).fetchall()
    failed = files[("B02", 24)].name
    assert len(images) == len(WELLS) * len(HOURS)
    assert all((not passed) is (Path(p).name == failed) for p, passed, _ in images), images
    assert all(bool(has) is (Path(p).name != failed) for p, _, has in images), images
    got = {(name, h): (n_t, n_img) for name, h, n_t, n_img in forecasts}
    assert ("B02", 24.0) not in got and got[("B02", 48.0)] == (2, 2) and got[("A01", 48.0)] == (3, 3)
