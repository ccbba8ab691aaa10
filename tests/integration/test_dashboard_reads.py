"""The dashboard's reads (``store.plate_reads``) on a store the real daemon filled, on SQLite and
on PostgreSQL: overview counts, wells, versions, a plate's readouts against the stored rows,
live-update marks and the image viewer's rows."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
from sqlalchemy import select

from conftest import cells_image, stable_seed, write_tiff
from nscmonitor.store import plate_reads as dash
from nscmonitor.store import reads
from nscmonitor.store import registry
from nscmonitor.store import models as m
from nscmonitor.store.db import open_readonly


def test_dashboard_reads_match_the_stored_rows(tmp_path, make_runner, db_url: str) -> None:
    watch = tmp_path / "watch"
    for well in ("A1", "A2", "B1"):
        for hours in (0, 24):
            write_tiff(watch / f"P1_{well}_1_{hours // 24:02d}d00h00m.tif", cells_image(stable_seed(well, hours)))
    runner = make_runner(watch, db_url=db_url)
    runner.run(once=True)
    engine = open_readonly(db_url)  # what the dashboard opens

    (exp,) = reads.overview(engine)
    assert (exp.name, exp.n_images, exp.n_done, exp.n_pending, exp.n_quarantined) == ("E1", 6, 6, 0, 0)
    assert exp.last_image_at is not None and exp.last_image_at.tzinfo is not None
    (plate,) = exp.plates
    assert (plate.name, plate.n_wells) == ("P1", 3)
    wells = dash.plate_wells(engine, plate.id)
    assert [w.name for w in wells] == ["A01", "A02", "B01"]
    (use,) = dash.plate_versions(engine, plate.id)
    version = runner.model.version
    assert (use.version, use.n_readouts) == (version, 6)

    cols = dash.plate_readouts(engine, plate.id, version)
    with runner.store.Session() as s:
        stored = {(r.well_id, r.time_key): r for r in s.scalars(select(m.WellReadout))}
    assert len(cols.well_id) == len(stored) == 6 and cols.classes == tuple(stored[next(iter(stored))].classes)
    for i, key in enumerate(zip(cols.well_id.tolist(), cols.time_key.tolist())):
        np.testing.assert_allclose(cols.prob_mean[i], stored[key].prob_mean, rtol=1e-6)
        assert cols.n_images[i] == stored[key].n_images
    latest = dash.plate_readouts(engine, plate.id, version, latest_only=True)
    assert len(latest.well_id) == 3 and set(latest.time_key.tolist()) == {int(cols.time_key.max())}

    marks = dash.marks(engine)
    assert marks.prediction_id > 0 and marks.image_id > 0
    assert dash.touched_since(engine, plate.id, version, 0) == set(stored)
    assert dash.touched_since(engine, plate.id, version, marks.prediction_id, marks.image_updated) == set()
    with runner.store.Session.begin() as s:  # an image changes state later (as a QC re-run would)
        img = s.scalars(select(m.Image).order_by(m.Image.id)).first()
        img.updated_at = img.updated_at + timedelta(seconds=5)
        moved = (img.well_id, img.time_key)
    assert dash.marks(engine).image_updated != marks.image_updated
    assert dash.touched_since(engine, plate.id, version, marks.prediction_id, marks.image_updated) == {moved}
    w0 = wells[0]
    t0 = int(cols.time_key.min())
    images = dash.well_images(engine, w0.id, t0, version)
    assert len(images) == 1 and images[0].path.endswith("P1_A1_1_00d00h00m.tif")
    assert images[0].qc_passed is True and images[0].status == "done" and images[0].error is None and images[0].qc
    assert [v.version for v in registry.model_versions(engine)] == [] or version in {v.version for v in
                                                                                registry.model_versions(engine)}
