"""A retraining's training set does not depend on the order the watcher queued the files:
the same labelled images give the same samples in the same order, hence the same shuffles and
the same candidate (queue order once made the retraining lifecycle test flaky)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from conftest import cells_image, stable_seed, write_tiff

from nscmonitor.labels import import_labels
from nscmonitor.schedule.retrain import collect_samples
from nscmonitor.store import models as m


def _write(watch: Path, well: str) -> None:
    for field in (2, 1):
        for hours in (48, 24):
            write_tiff(watch / f"VID7_{well}_{field}_{hours // 24:02d}d{hours % 24:02d}h00m.tif",
                       cells_image(stable_seed(well, field, hours), (96, 128)))


def test_samples_come_in_well_time_field_order_not_queue_order(tmp_path: Path, make_runner) -> None:
    watch = tmp_path / "watch"
    _write(watch, "B1")  # queued first: lower image ids
    runner = make_runner(watch)
    runner.run(once=True)
    _write(watch, "A1")
    make_runner(watch).run(once=True)
    engine = runner.store.engine
    with engine.connect() as c:
        plate = c.scalar(select(m.Plate.name))
        queued = [w for (w,) in c.execute(select(m.Well.name).join(m.Image, m.Image.well_id == m.Well.id)
                                          .order_by(m.Image.id))]
    assert queued[0] == "B01" and queued[-1] == "A01", queued  # the queue order is not the one wanted
    labels = tmp_path / "labels.csv"
    labels.write_text(f"experiment,plate,well,label\nE1,{plate},A1,neuron\nE1,{plate},B1,astrocyte\n")
    version, n = import_labels(engine, labels)
    assert n == 2

    samples = collect_samples(engine, up_to=version)
    assert len(samples) == 8
    keys = [(s.well, s.timepoint, s.field, s.path) for s in samples]
    assert keys == sorted(keys), keys
    assert [s.well for s in samples] == ["A01"] * 4 + ["B01"] * 4
    assert [s.label for s in samples] == ["neuron"] * 4 + ["astrocyte"] * 4
