"""The dashboard's presenter without a window (``gui/state/presenter.py`` is Qt-free): a plate
loads fast (newest time point) then whole, a poll with nothing new returns nothing, a poll after
the daemon scored more returns only the new readouts, and the tile overlay's model metadata is
read once per version, on a store the real daemon filled."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import text

from conftest import cells_image, stable_seed, write_tiff
from nscmonitor.config import parse_settings
from nscmonitor.engines.metadata import read_onnx_metadata
from nscmonitor.gui.state.presenter import DaemonLine, ModelMetaCache, daemon_line, load_plate, poll, read_overview
from nscmonitor.gui.state.readouts import merge, metric_at
from nscmonitor.store.db import open_engine, open_readonly


def _write_day(watch: Path, day: int) -> None:
    for well in ("A1", "A2", "B1"):
        write_tiff(watch / f"P1_{well}_1_{day:02d}d00h00m.tif", cells_image(stable_seed(well, day)))


def test_presenter_loads_polls_and_reads_model_metadata(tmp_path: Path, make_runner, tiny_model: Path) -> None:
    watch = tmp_path / "watch"
    _write_day(watch, 0)
    _write_day(watch, 1)
    db_url = f"sqlite:///{tmp_path / 'dash.db'}"
    runner = make_runner(watch, db_url=db_url)
    runner.run(once=True)
    engine = open_readonly(db_url)
    version = runner.model.version

    ov = read_overview(engine)
    (exp,) = ov.experiments
    (plate,) = exp.plates
    first = load_plate(engine, plate, version, latest_only=True)
    assert first.partial and first.version == version and first.cube.n_times == 1
    full = load_plate(engine, plate, None, version)
    assert not full.partial and full.cube.n_times == 2 and [w.name for w in full.wells] == ["A01", "A02", "B01"]
    assert np.isfinite(metric_at(full.cube, "prob:" + full.cube.classes[0], 1)).all()

    quiet = poll(engine, plate, version, full.marks, version)
    assert (quiet.rows, quiet.wells, quiet.full, quiet.overview) == (None, None, None, None)

    _write_day(watch, 2)
    make_runner(watch, db_url=db_url).run(once=True)  # a daemon started later scores the new day
    moved = poll(engine, plate, version, full.marks, version)
    assert moved.overview is not None and moved.full is None and moved.marks != full.marks
    assert moved.rows is not None and set(moved.rows.well_id.tolist()) == {w.id for w in full.wells}
    assert len(set(moved.rows.time_key.tolist())) == 1  # only the new time point is read
    assert merge(full.cube, moved.rows, moved.wells).n_times == 3

    settings = parse_settings({"database_url": db_url, "model": str(tiny_model)}, env={})
    cache = ModelMetaCache(engine, settings)
    assert cache.get(None) == (None, None)
    meta, path = cache.get(version)
    tiny = read_onnx_metadata(tiny_model)  # kept in the store by the daemon that served the file
    assert (meta["input_size"], meta["pixel_size_um"]) == (tiny.input_size, tiny.pixel_size_um)
    assert path == str(tiny_model)
    assert cache.get(version)[0] is meta  # read once per version
    shown = cache.well_images(full.wells[0].id, int(full.cube.time_keys[0]), version)
    assert len(shown.images) == 1 and shown.model_meta is meta
    # a store whose daemon kept nothing of the file (scored before it did): the configured file
    writable = open_engine(db_url)
    with writable.begin() as c:
        c.execute(text("DELETE FROM served_models"))
    writable.dispose()
    meta, path = ModelMetaCache(engine, settings).get(version)
    assert meta == {"input_size": tiny.input_size, "pixel_size_um": tiny.pixel_size_um} and path == str(tiny_model)

    d = ov.status.daemons[0]
    beating = replace(ov.status, daemons=[replace(d, state="running")])
    line = daemon_line(beating, d.heartbeat_at + timedelta(seconds=10))
    assert line.alive and line.text == f"● daemon running — {d.engine}, {version}"
    assert line.watched == [w["path"] for w in d.watched] and line.watched
    assert daemon_line(beating, d.heartbeat_at + timedelta(seconds=600)) == DaemonLine(False, "● no daemon running", [])
    assert not daemon_line(replace(ov.status, daemons=[replace(d, state="stopped")]), d.heartbeat_at).alive
