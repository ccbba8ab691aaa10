"""An image whose name gives only a scan index is timed by its file's own acquisition time, not
by its mtime (which a copy that does not keep times turns into the copy's): a real daemon on
ImageXpress-style names whose TIFFs carry a DateTime tag, written now, with the folder's
induction time set; an image timed by its name keeps the name's time. SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import select

from conftest import cells_image, stable_seed, write_tiff
from nscmonitor.store import models as m
from nscmonitor.store.times import aware

INDUCTION = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


def _local(dt: datetime) -> datetime:
    """The naive local wall-clock an instrument PC would write for the UTC time ``dt``."""
    return dt.astimezone().replace(tzinfo=None)


def test_scan_indexed_images_take_their_files_acquisition_time(tmp_path: Path, make_runner, db_url: str) -> None:
    watch = tmp_path / "PLATE1"
    taken = {1: INDUCTION + timedelta(hours=2), 2: INDUCTION + timedelta(hours=26)}
    for t, when in taken.items():
        for well in ("A01", "B02"):
            write_tiff(watch / f"TimePoint_{t}" / f"PLATE1_{well}_s1_w1.tif",
                       cells_image(stable_seed("acq", t, well), (64, 64)), datetime=_local(when))
    runner = make_runner(watch, db_url=db_url, induction_time=INDUCTION.isoformat())
    runner.run(once=True)
    with runner.store.Session() as s:
        images = {str(Path(p).relative_to(watch)): (aware(a), e) for p, a, e in
                  s.execute(select(m.Image.path, m.Image.acquired_at, m.Image.elapsed_h)).all()}
        readouts = sorted(s.execute(select(m.WellReadout.timepoint, m.WellReadout.elapsed_h)
                                    .where(m.WellReadout.timepoint.is_not(None))).all())
    for t, when in taken.items():
        for well in ("A01", "B02"):
            acquired, elapsed = images[f"TimePoint_{t}/PLATE1_{well}_s1_w1.tif"]
            assert acquired == when
            assert elapsed == pytest.approx((when - INDUCTION).total_seconds() / 3600)
    assert [t for t, _ in readouts] == [1, 1, 2, 2]
    assert [e for _, e in readouts] == pytest.approx([2.0, 2.0, 26.0, 26.0])


def test_an_image_timed_by_its_name_keeps_the_names_time(tmp_path: Path, make_runner) -> None:
    """An Incucyte name gives the elapsed time (and the readout's key): the file's own clock,
    40 h later, moves neither."""
    watch = tmp_path / "inc"
    write_tiff(watch / "VID3_C3_1_00d05h00m.tif", cells_image(stable_seed("acq", "name"), (64, 64)),
               datetime=_local(INDUCTION + timedelta(hours=40)))
    runner = make_runner(watch, induction_time=INDUCTION.isoformat())
    runner.run(once=True)
    with runner.store.Session() as s:
        (acquired, elapsed, key), = s.execute(select(m.Image.acquired_at, m.Image.elapsed_h, m.Image.time_key)).all()
    assert elapsed == pytest.approx(5.0) and key == 300
    assert aware(acquired) != INDUCTION + timedelta(hours=40)


def test_a_file_time_near_the_mtime_leaves_the_mtime(tmp_path: Path, make_runner) -> None:
    """A file's time a few hours from its mtime is the same moment through another clock (the
    instrument PC in another time zone): the mtime, an absolute instant, stays."""
    import os

    watch = tmp_path / "PLATE1"
    path = write_tiff(watch / "TimePoint_1" / "PLATE1_A01_s1_w1.tif", cells_image(stable_seed("acq", "tz"), (64, 64)),
                      datetime=_local(datetime.now(timezone.utc) - timedelta(hours=5)))
    mtime = path.stat().st_mtime
    runner = make_runner(watch)
    runner.run(once=True)
    with runner.store.Session() as s:
        (acquired,) = s.execute(select(m.Image.acquired_at)).one()
    assert aware(acquired) == datetime.fromtimestamp(mtime, timezone.utc)
    assert os.path.getmtime(path) == mtime  # the original is never touched
