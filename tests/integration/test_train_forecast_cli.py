"""``nscmonitor train-forecast``: from a simulated tiles export to a forecast.onnx the daemon
loads, with the held-out wells' figures per hour printed and stored in the file."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    from nscmonitor.simulate.labelled_tiles import export_tiles

    out = tmp_path_factory.mktemp("fc") / "data"
    export_tiles(out, plates=3, tile_size=64, hours=(0.0, 24.0, 48.0), wells_per_condition=2, seed=3)
    return out


def test_train_forecast_writes_a_model_the_daemon_loads(export: Path, tmp_path: Path, capsys) -> None:
    from nscmonitor.cli import main
    from nscmonitor.scoring.forecast import load_forecast_model

    assert main(["train-forecast", "--data", str(export), "--out", str(tmp_path / "fc"), "--epochs", "20"]) == 0
    printed = capsys.readouterr().out
    model = load_forecast_model(tmp_path / "fc" / "forecast.onnx")
    meta = model.meta
    assert meta["tile_px"] == 64 and meta["normalisation"] == "plate0+well0" and meta["scheme"] == "multiclass"
    from nscmonitor.training.forecast_train import MEMBERS

    assert [m["seed"] for m in meta["metrics"]["fit"]["members"]] == list(range(MEMBERS))  # three seeds, one model
    assert meta["classes"] == ["neuron", "astrocyte", "oligodendrocyte", "undifferentiated"]
    per_hour = meta["metrics"]["per_hour"]
    assert sorted(per_hour) == ["0 h", "24 h", "48 h"] and meta["metrics"]["split"] == "test"
    with (export / "tiles.csv").open() as fh:
        test_wells = {(r["plate"], r["well"]) for r in csv.DictReader(fh) if r["split"] == "test"}
    assert 0 < per_hour["48 h"]["wells"] <= len(test_wells)
    for hour, v in per_hour.items():
        lo, hi = v["ci95"]
        assert lo <= v["accuracy"] <= hi
        assert f"{hour:>7}  {v['accuracy']:.2f} [{lo:.2f}, {hi:.2f}]  (n = {v['wells']})" in printed
    seq = np.zeros((3, meta["input_width"]), np.float32)
    p = model.probs(seq)
    assert p.shape == (4,) and abs(float(p.sum()) - 1) < 1e-5
    # earliest confident calls: the rule chosen on validation, the held-out wells judged under it as the
    # exported model forecasts them from the frames up to each hour
    from nscmonitor.core.calibration import CallRule
    from nscmonitor.training import calls as C
    from nscmonitor.training import data as D
    from nscmonitor.training import splits as S
    from nscmonitor.training import well_frames as WF
    from nscmonitor.training.forecast_train import call_wells
    from nscmonitor.training.well_frames import record_features

    calls = meta["metrics"]["calls"]
    assert calls["rule"]["chosen_on"] == "validation" and calls["rule"]["threshold"] in C.THRESHOLDS
    records = S.assign_splits(D.for_scheme(D.discover(export, "well")[0], "multiclass")[0], seed=0)
    wells = WF.wells_of(records, np.asarray([record_features(r, 64) for r in records]))
    wells = [w for w in wells if WF.well_start(w) is not None]  # as training (and the daemon) leave them out
    seqs = WF.sequences(wells, "plate0+well0")
    held = [i for i, w in enumerate(wells) if w.split == "test"]
    probs = [np.stack([model.probs(seqs[i][:t + 1]) for t in range(len(seqs[i]))]) for i in held]
    judged = C.by_condition(call_wells(probs, [wells[i] for i in held], [meta["classes"].index(wells[i].label)
                                                                         for i in held]),
                            CallRule(calls["rule"]["threshold"], calls["rule"]["min_points"]), meta["classes"])
    assert calls["by_condition"] == judged and judged["all"]["wells"] == per_hour["0 h"]["wells"]
    assert "earliest confident call on the held-out wells" in printed and C.calls_table(calls) in printed
    # the forecast's own OOD score: fitted on the training and validation plates' images, stored in the
    # file, read back by the daemon's loader; its test-plate figure is what the stored score gives there
    from nscmonitor.simulate.out_of_domain import blanks, textures

    ood = meta["metrics"]["ood"]
    assert model.ood is not None and model.ood.threshold == meta["ood"]["threshold"] == ood["threshold"]
    assert ood["threshold_from"] == "leave-one-plate-out" and ood["n_plates"] == 2
    assert ood["n_images"] == sum(r.split in ("train", "val") for r in records)
    test_feats = np.array([record_features(r, 64) for r in records if r.split == "test"])
    assert ood["flagged_test_plate"] == pytest.approx(float(model.ood.flags(test_feats).mean()))
    assert f"{ood['flagged_held_out_plates']:.1%} of plates it was not fitted on" in printed
    # blank fields and textures score above every image of the test plate (with two fitting plates of
    # 64 px tiles the leave-one-plate-out threshold is loose, so flagging them is not asked of this data)
    for other in (blanks(10, 64, seed=2), textures(10, 64, seed=2)):
        assert np.median(model.ood.scores(np.array([record_features_of(im) for im in other]))) > \
            model.ood.scores(test_feats).max()


def record_features_of(image: np.ndarray) -> np.ndarray:
    from nscmonitor.scoring.well_sequence import frame_features

    return frame_features(image, 64)


def test_an_export_with_too_few_wells_is_refused_and_one_plate_is_warned_about(export: Path, tmp_path: Path,
                                                                               capsys) -> None:
    from nscmonitor.cli import main

    with (export / "tiles.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    first = rows[0]["plate"]

    def subset(name: str, keep) -> Path:
        folder = tmp_path / name
        shutil.copytree(export, folder)
        with (folder / "tiles.csv").open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(r for r in rows if keep(r))
        return folder

    one_well = subset("one-well", lambda r: r["plate"] == first and r["well"] == rows[0]["well"])
    assert main(["train-forecast", "--data", str(one_well), "--out", str(tmp_path / "a"), "--epochs", "5"]) != 0
    assert "needs both training and validation wells" in capsys.readouterr().err
    assert not (tmp_path / "a" / "forecast.onnx").exists()
    one_plate = subset("one-plate", lambda r: r["plate"] == first)
    assert main(["train-forecast", "--data", str(one_plate), "--out", str(tmp_path / "b"), "--epochs", "5"]) == 0
    out = capsys.readouterr().out
    assert "warning: validation wells share plate(s)" in out and (tmp_path / "b" / "forecast.onnx").is_file()


def _labelled_store(tmp_path: Path, forecast: Path | None = None, *, scored_with_forecast: bool = True) -> Path:
    """A plate (0, 24, 48 h) scored by a real daemon into SQLite with a registered tiny model,
    its wells' end-point labels imported; returns the configuration file, which names
    ``forecast`` as the forecast model (configured only after scoring unless
    ``scored_with_forecast``)."""
    import dataclasses

    from nscmonitor.config import load_settings
    from nscmonitor.engines.tiny import build_tiny_classifier
    from nscmonitor.registry.registry import Registry
    from nscmonitor.simulate.microscope import Microscope
    from nscmonitor.simulate.render import Camera
    from nscmonitor.store.db import ensure_schema, open_engine
    from retrain_setup import WELLS, retrain_config, scored_labelled_plate

    cfg = retrain_config(tmp_path, tmp_path / "plate", database_url=f"sqlite:///{tmp_path / 'nsc.db'}", epochs=1,
                         quiet_s=0.0, engine="ort-cpu")
    if forecast is not None:
        cfg.write_text(f'forecast_model = "{forecast}"\n' + cfg.read_text().replace("[retrain]", "[retrain]\n"
                                                                                    "forecast_epochs = 40"))
    settings = load_settings(cfg, env={})
    engine = open_engine(settings.database_url)
    ensure_schema(engine)
    build_tiny_classifier(tmp_path / "m.onnx", input_size=32, version="m", pixel_size_um=2.48)
    Registry(settings.models_dir, engine).register(tmp_path / "m.onnx")
    scope = Microscope(vendor="incucyte", plate_format=96, fields=1, hours=48, interval_h=24, seed=5, wells=WELLS,
                       camera=Camera(shape=(192, 256)))
    scored_labelled_plate(settings if scored_with_forecast else dataclasses.replace(settings, forecast_model=None),
                          engine, scope, tmp_path)
    engine.dispose()
    return cfg


def test_train_forecast_from_the_store_reads_frames_as_the_daemon_does(tmp_path: Path, capsys) -> None:
    """A lab's own data: a plate scored by a real daemon (SQLite), end-point labels imported,
    and the well model trained on the store's images, its features computed per frame over
    tiles of the given size, as the daemon's second stage computes them."""
    from nscmonitor.cli import main
    from nscmonitor.readers.decode import decode
    from nscmonitor.scoring import well_sequence as WS
    from nscmonitor.scoring.forecast import load_forecast_model, tile_px_for
    from nscmonitor.training import data as D
    from nscmonitor.training.well_frames import record_features

    cfg = _labelled_store(tmp_path)

    out = tmp_path / "fc"
    assert main(["--config", str(cfg), "train-forecast", "--from-store", "--tile-size", "64", "--out", str(out),
                 "--epochs", "10"]) == 0
    printed = capsys.readouterr().out
    assert "store data:" in printed and "warning: validation wells share plate(s)" in printed  # one plate
    meta = load_forecast_model(out / "forecast.onnx").meta
    assert meta["tile_px"] == 64 and sorted(meta["metrics"]["per_hour"]) == ["0 h", "24 h", "48 h"]
    # the store export points at the original frames, whose features are the daemon's per-frame mean
    records, info = D.discover(out / "data", "well")
    assert info.tile_size == 64 and all(Path(r.path).is_relative_to(tmp_path / "plate") for r in records)
    decoded = decode(records[0].path)  # what the daemon's second stage reads of the same file
    daemon = WS.frame_features(decoded.pixels, tile_px_for(meta, decoded.pixel_size_um))
    assert decoded.pixels.shape == (192, 256)
    assert np.array_equal(record_features(records[0], info.tile_size), daemon)
    assert not np.allclose(daemon, WS.tile_vector(decoded.pixels))  # 12 tiles, not the frame as one


@pytest.mark.parametrize("scored_with_forecast", [True, False])
def test_retraining_retrains_the_served_forecast_and_installs_it_only_when_it_reads_as_well(
        tmp_path: Path, capsys, scored_with_forecast: bool) -> None:
    """With a forecast model configured, a retrain run also trains a forecast candidate on the
    same labelled wells (a real subprocess) from the features the daemon stored while scoring
    them, reads the serving model on the same held-out wells,
    and installs the candidate exactly when the rule says so; the run and an event record both
    figures; ``models forecast --rollback`` serves the configured file again."""
    import json

    from sqlalchemy import text

    from nscmonitor.cli import main
    from nscmonitor.config import load_settings
    from nscmonitor.core.domain import MULTICLASS
    from nscmonitor.registry import forecasts as FR
    from nscmonitor.schedule.forecast_retrain import forecast_decision
    from nscmonitor.schedule.retrain import run_retrain
    from nscmonitor.scoring.forecast import load_forecast_model
    from nscmonitor.store.db import open_engine
    from nscmonitor.training.temporal import build_tiny_forecast

    configured = build_tiny_forecast(tmp_path / "forecast.onnx", classes=MULTICLASS, tile_px=64)
    # configured after the plate was scored: no stored features, and every image is read instead
    cfg = _labelled_store(tmp_path, forecast=configured, scored_with_forecast=scored_with_forecast)
    settings = load_settings(cfg, env={})
    assert settings.retrain.forecast and settings.retrain.forecast_epochs == 40
    out = run_retrain(settings, trigger="manual", force=True)
    fc = out.numbers["forecast"]
    assert fc["status"] in ("installed", "rejected"), fc
    served = FR.served(settings.models_dir, settings.forecast_model)
    assert fc["serving"]["usable"] and fc["serving"]["version"] == "forecast-test"
    assert fc["serving"]["path"] == str(configured)
    # scored with the forecast: every labelled image's features are the ones the daemon stored, none read again
    assert fc["stored_features"]["reused"] == (fc["stored_features"]["images"] if scored_with_forecast else 0)
    assert fc["stored_features"]["images"] > 0
    cand = fc["candidate"]
    assert cand["wells"] >= 1 and sorted(cand["per_hour"]) == ["0 h", "24 h", "48 h"]
    assert cand["mean_accuracy"] == np.mean([v["accuracy"] for v in cand["per_hour"].values()])
    ok, reason = forecast_decision(cand, fc["serving"], len(MULTICLASS))
    assert fc["reason"] == reason and (fc["status"] == "installed") == ok
    with open_engine(settings.database_url).connect() as c:
        events = c.execute(text("select kind, message from events where kind like 'forecast_%'")).fetchall()
        run_numbers = c.execute(text("select numbers from retrain_runs where id = :i"), {"i": out.run_id}).scalar()
    assert events == [(f"forecast_{fc['status']}", reason)]
    stored = json.loads(run_numbers) if isinstance(run_numbers, str) else run_numbers
    assert stored["forecast"]["status"] == fc["status"]
    if not ok:
        assert served == configured
        return
    model = load_forecast_model(served)
    assert model.version == fc["version"] == f"forecast-run-{out.run_id:04d}"
    assert model.meta["metrics"]["mean_accuracy"] == cand["mean_accuracy"] and model.meta["tile_px"] == 64
    capsys.readouterr()
    main(["--config", str(cfg), "status", "--json"])  # its exit code is the daemon's health (none runs here)
    status = json.loads(capsys.readouterr().out)["forecast"]
    assert status["version"] == model.version and status["serving"] == str(served) and status["reason"] == reason
    # the retrained forecast flags frames unlike its training images; the configured tiny one cannot
    assert status["ood"]["available"] and status["ood"]["threshold"] == model.ood.threshold
    assert main(["--config", str(cfg), "models", "forecast", "--rollback"]) == 0
    assert "the configured" in capsys.readouterr().out
    assert FR.served(settings.models_dir, settings.forecast_model) == configured
    main(["--config", str(cfg), "status", "--json"])
    status = json.loads(capsys.readouterr().out)["forecast"]
    assert not status["ood"]["available"] and "no out-of-distribution record" in status["ood"]["why"]


def test_endpoint_labels_judge_each_well_by_its_live_cells_at_its_last_scan(export: Path, tmp_path: Path,
                                                                            capsys) -> None:
    from nscmonitor.cli import main
    from nscmonitor.scoring.forecast import load_forecast_model
    from nscmonitor.training import data as D
    from nscmonitor.training import splits as S
    from nscmonitor.training import well_frames as WF
    from nscmonitor.training.forecast_train import per_hour_accuracy

    assert main(["train-forecast", "--data", str(export), "--out", str(tmp_path / "fc"), "--epochs", "20",
                 "--label-mode", "endpoint"]) == 0
    model = load_forecast_model(tmp_path / "fc" / "forecast.onnx")
    metrics = model.meta["metrics"]
    assert metrics["label_mode"] == "endpoint"
    records = S.assign_splits(D.for_scheme(D.discover(export, "endpoint")[0], "multiclass")[0], seed=0)
    wells = [w for w in WF.wells_of(records, np.asarray([WF.record_features(r, 64) for r in records]))
             if WF.well_start(w) is not None]
    held = [w for w in wells if w.split == "test"]
    by_well = {r.well_key: r.label for r in D.discover(export, "well")[0]}
    assert any(by_well[w.key] != w.label for w in held), \
        "the fixture needs a held-out well whose end point differs from its recipe's fate"
    seqs = WF.sequences(held, "plate0+well0")
    probs = [np.stack([model.probs(s[:t + 1]) for t in range(len(s))]) for s in seqs]
    classes = model.meta["classes"]
    assert metrics["per_hour"] == per_hour_accuracy(probs, held, [classes.index(w.label) for w in held])
    with pytest.raises(SystemExit):  # a per-tile truth means nothing for a well's fate
        main(["train-forecast", "--data", str(export), "--out", str(tmp_path / "x"), "--label-mode", "tile"])


def test_a_binary_forecast_learns_the_four_fates_and_answers_neuron_or_glia(export: Path, tmp_path: Path,
                                                                           capsys) -> None:
    """Where every label names a fate, --scheme binary trains the multiclass model (the
    undifferentiated wells included) and exports it read as neuron vs glia; its figures are
    the held-out wells that have a binary answer, as the exported file forecasts them. Where
    some label is only "glia", it learns the binary labels as before."""
    from nscmonitor.cli import main
    from nscmonitor.scoring.forecast import load_forecast_model
    from nscmonitor.training import data as D
    from nscmonitor.training import splits as S
    from nscmonitor.training import well_frames as WF
    from nscmonitor.training.forecast_train import answer_index, per_hour_accuracy

    assert main(["train-forecast", "--data", str(export), "--out", str(tmp_path / "fc"), "--epochs", "20",
                 "--scheme", "binary"]) == 0
    assert "the multiclass model read as neuron vs astrocyte + oligodendrocyte" in capsys.readouterr().out
    model = load_forecast_model(tmp_path / "fc" / "forecast.onnx")
    meta = model.meta
    assert meta["scheme"] == "binary" and meta["classes"] == ["neuron", "glia"] and meta["temperature"] == 1.0
    assert meta["read_from"]["classes"] == list(D.MULTICLASS) and meta["read_from"]["temperature"] > 0
    records = S.assign_splits(D.for_scheme(D.discover(export, "well")[0], "multiclass")[0], seed=0)
    wells = [w for w in WF.wells_of(records, np.asarray([WF.record_features(r, 64) for r in records]))
             if WF.well_start(w) is not None and w.split == "test"]
    keep = [i for i, w in enumerate(wells) if answer_index(w, ["neuron", "glia"]) is not None]
    held = [wells[i] for i in keep]
    assert any(w.label == "undifferentiated" for w in wells) and len(held) < len(wells)
    seqs = WF.sequences(wells, "plate0+well0")  # the plate reference holds every well, answered or not
    probs = [np.stack([model.probs(seqs[i][:t + 1]) for t in range(len(seqs[i]))]) for i in keep]
    assert meta["metrics"]["per_hour"] == per_hour_accuracy(probs, held, [answer_index(w, ["neuron", "glia"])
                                                                          for w in held])
    # labels that only say "glia": the binary labels are learned
    glia = tmp_path / "glia"
    shutil.copytree(export, glia)
    with (glia / "tiles.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["condition"] = ""
        r["label"] = "glia" if r["label"] in ("astrocyte", "oligodendrocyte") else r["label"]
    with (glia / "tiles.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert main(["train-forecast", "--data", str(glia), "--out", str(tmp_path / "fc2"), "--epochs", "20",
                 "--scheme", "binary"]) == 0
    plain = load_forecast_model(tmp_path / "fc2" / "forecast.onnx").meta
    assert "read_from" not in plain and plain["classes"] == ["neuron", "glia"] and plain["temperature"] != 1.0


def test_image_features_read_by_a_process_pool_are_those_read_one_by_one(export: Path) -> None:
    from nscmonitor.training import data as D
    from nscmonitor.training import well_frames as WF

    records = D.discover(export, "well")[0]
    assert len(records) >= WF.POOL_MIN_IMAGES  # else the pool is not used
    pooled = list(WF.read_features(records, 64, workers=2))
    assert len(pooled) == len(records)
    assert all(np.array_equal(p, WF.record_features(r, 64)) for p, r in zip(pooled, records))


def test_the_demo_forecast_is_trained_once_and_again_when_its_data_change(export: Path, tmp_path: Path) -> None:
    from nscmonitor.scoring.forecast import load_forecast_model
    from nscmonitor.training.demo_training import demo_forecast

    data = tmp_path / "data"
    shutil.copytree(export, data)
    path = demo_forecast(tmp_path / "fc", data, epochs=5, progress=False)
    meta = load_forecast_model(path).meta
    assert meta["version"] == "demo-forecast" and meta["metrics"]["label_mode"] == "endpoint"
    stamp = path.stat().st_mtime_ns
    assert demo_forecast(tmp_path / "fc", data, epochs=5, progress=False) == path
    assert path.stat().st_mtime_ns == stamp  # cached: same data, same recipe
    with (data / "tiles.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    with (data / "tiles.csv").open("w", newline="") as fh:  # one plate fewer: other data
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(r for r in rows if r["plate"] != rows[-1]["plate"])
    demo_forecast(tmp_path / "fc", data, epochs=5, progress=False)
    assert path.stat().st_mtime_ns != stamp
    assert load_forecast_model(path).meta["data_hash"] != meta["data_hash"]
