"""A plate read in several acquisitions whose vendor counts scan indexes from 1 in each (one
Harmony measurement a day, a CellVoyager measurement per read, MetaXpress time-lapse
acquisitions): every acquisition's scans get time keys of their own, so each well has a readout
per read. Before, a plate read daily gave each well one readout averaging all days. A real
daemon on SQLite and PostgreSQL, the real CLI's time labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from conftest import cells_image, stable_seed, write_tiff
from nscmonitor.core.scans import ACQUISITION_SPAN, acquisition_time_key, time_point_name
from nscmonitor.intake.filenames import parse_path
from nscmonitor.report.times import time_axis
from nscmonitor.store import models as m

WELLS = ("r02c03", "r03c04")


def _readouts(runner) -> list[tuple[str, int, int]]:
    with runner.store.Session() as s:
        return sorted(s.execute(select(m.Well.name, m.WellReadout.time_key, m.WellReadout.n_images)
                                .join(m.Well, m.Well.id == m.WellReadout.well_id)).all())


def _harmony(watch: Path, measurement: int, stamp: str, scans: int) -> None:
    for sk in range(1, scans + 1):
        for rc in WELLS:
            write_tiff(watch / f"PLATE-0042__{stamp}-Measurement {measurement}" / "Images" / f"{rc}f01p01-ch1sk{sk}fk1fl1.tiff",
                       cells_image(stable_seed("acq", measurement, sk, rc), (64, 64)))


def test_daily_measurements_of_a_plate_are_time_points_of_their_own(tmp_path: Path, make_runner, db_url: str) -> None:
    watch = tmp_path / "operetta"
    _harmony(watch, 1, "2026-11-03T09_00_00", scans=2)  # a short time-lapse, then one read a day
    _harmony(watch, 2, "2026-11-04T09_00_00", scans=1)
    make_runner(watch, db_url=db_url, profile="harmony").run(once=True)
    _harmony(watch, 3, "2026-11-05T09_00_00", scans=1)  # the next day's read, met by a later start
    runner = make_runner(watch, db_url=db_url, profile="harmony")
    runner.run(once=True)
    got = _readouts(runner)
    keys = [1, 2, acquisition_time_key(1, 1), acquisition_time_key(2, 1)]
    assert got == [(w, k, 1) for w in ("B03", "C04") for k in keys]
    with runner.store.Session() as s:
        assert sorted(s.execute(select(m.Acquisition.ordinal, m.Acquisition.name)).all()) == [
            (0, "PLATE-0042__2026-11-03T09_00_00-Measurement 1"), (1, "PLATE-0042__2026-11-04T09_00_00-Measurement 2"),
            (2, "PLATE-0042__2026-11-05T09_00_00-Measurement 3")]


def test_metaxpress_acquisitions_and_cellvoyager_measurements_name_theirs(tmp_path: Path, make_runner) -> None:
    watch = tmp_path / "imx"
    for acq in ("84", "101"):  # in the order taken: 84 before 101, whatever the names' text order
        for t in (1, 2):
            write_tiff(watch / "P1" / "2026-11-03" / acq / f"TimePoint_{t}" / "P1_B03_s1_w1.tif",
                       cells_image(stable_seed("imx", acq, t), (64, 64)))
    runner = make_runner(watch, profile="imagexpress", channel="1")
    runner.run(once=True)
    assert [k for _, k, _ in _readouts(runner)] == [1, 2, ACQUISITION_SPAN + 1, ACQUISITION_SPAN + 2]
    cv = parse_path("CV8000-Minimal-DataSet-2C-3W-4S-FP2-stack_20230918_135839/CV8000-Minimal-DataSet-2C-3W-4S-FP2-stack/"
                    "CV8000-Minimal-DataSet-2C-3W-4S-FP2-stack_D08_T0001F001L01A01Z01C01.tif").key
    assert (cv.timepoint, cv.acquisition) == (1, "CV8000-Minimal-DataSet-2C-3W-4S-FP2-stack_20230918_135839 timeline 1")
    assert parse_path("9987_Plate_3435/TimePoint_2/9987_B02_s1_w1.TIF").key.acquisition is None  # one acquisition


def test_time_points_of_later_acquisitions_read_as_such() -> None:
    assert time_point_name(3) == "3"
    assert time_point_name(acquisition_time_key(2, 1)) == "1 of acquisition 3"
    axis = time_axis(np.full(3, np.nan), np.array([1, 2, ACQUISITION_SPAN + 1]))
    assert list(axis.x) == [1.0, 2.0, 3.0] and axis.at(2) == "time point 1 of acquisition 2"
    assert time_axis(np.full(2, np.nan), np.array([4, 9])).at(1) == "time point 9"


def test_cellvoyager_timelines_count_their_own_time_points(tmp_path: Path, make_runner) -> None:
    """A CellVoyager measurement may run several timelines (L01, L02), each counting T from 1."""
    watch = tmp_path / "cv"
    for line in (1, 2):
        for t in (1, 2):
            write_tiff(watch / "P1" / f"P1_B03_T{t:04d}F001L{line:02d}A01Z01C01.tif",
                       cells_image(stable_seed("cv", line, t), (64, 64)))
    runner = make_runner(watch, profile="yokogawa")
    runner.run(once=True)
    assert [k for _, k, _ in _readouts(runner)] == [1, 2, ACQUISITION_SPAN + 1, ACQUISITION_SPAN + 2]


def test_a_database_from_before_keeps_its_keys_and_the_next_measurement_gets_its_own(tmp_path: Path,
                                                                                  make_runner) -> None:
    """Images stored before acquisitions were told apart have no acquisition rows: the
    measurement they came from goes on with their keys, and a new measurement does not fall
    into them (it would, as the plate's first acquisition met, with ordinal 0)."""
    watch = tmp_path / "operetta"
    _harmony(watch, 1, "2026-11-03T09_00_00", scans=1)
    make_runner(watch, profile="harmony").run(once=True)
    runner = make_runner(watch, profile="harmony")
    with runner.store.Session.begin() as s:
        s.execute(m.Acquisition.__table__.delete())  # as a database migrated from 0008 has it
    for rc in WELLS:  # the same measurement's next scan, and the next day's measurement
        write_tiff(watch / "PLATE-0042__2026-11-03T09_00_00-Measurement 1" / "Images" / f"{rc}f01p01-ch1sk2fk1fl1.tiff",
                   cells_image(stable_seed("acq-up", rc), (64, 64)))
    _harmony(watch, 2, "2026-11-04T09_00_00", scans=1)
    runner.run(once=True)
    assert [k for w, k, _ in _readouts(runner) if w == "B03"] == [1, 2, ACQUISITION_SPAN + 1]
    fresh = tmp_path / "other"  # a plate with nothing stored before: its first measurement is ordinal 0
    _harmony(fresh, 5, "2026-11-05T09_00_00", scans=1)
    other = make_runner(fresh, profile="harmony", db_url=f"sqlite:///{tmp_path / 'other.db'}")
    other.run(once=True)
    assert {k for _, k, _ in _readouts(other)} == {1}


def test_after_the_upgrade_a_new_measurement_alone_does_not_fall_into_the_old_keys(tmp_path: Path,
                                                                                   make_runner) -> None:
    watch = tmp_path / "operetta"
    _harmony(watch, 1, "2026-11-03T09_00_00", scans=2)
    make_runner(watch, profile="harmony").run(once=True)
    runner = make_runner(watch, profile="harmony")
    with runner.store.Session.begin() as s:
        s.execute(m.Acquisition.__table__.delete())
    _harmony(watch, 2, "2026-11-04T09_00_00", scans=1)
    runner.run(once=True)
    assert [k for w, k, n in _readouts(runner) if w == "B03"] == [1, 2, ACQUISITION_SPAN + 1]


def test_parse_shows_the_acquisition(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from nscmonitor.cli import main

    assert main(["parse", "--json", "P1/2026-11-03/84/TimePoint_2/P1_B03_s1_w1.tif"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert (rec["timepoint"], rec["acquisition"]) == (2, "2026-11-03/84")


def test_status_warns_when_two_reads_fall_into_one_time_point(tmp_path: Path, make_runner, db_url: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A plate folder copied into the watched folder twice (or any layout whose reads share a
    scan index nscmonitor cannot tell apart): every readout averages two images of one
    position, and ``status`` says so with an example pair; one copy alone is quiet."""
    import json

    from nscmonitor.cli import main

    watch = tmp_path / "imx"
    for copy in ("PLATE1", "PLATE1 - Copy"):
        for well in ("A01", "B02"):
            write_tiff(watch / copy / "TimePoint_1" / f"PLATE1_{well}_s1_w1.tif",
                       cells_image(stable_seed("copy", copy, well), (64, 64)))
    runner = make_runner(watch, db_url=db_url, profile="imagexpress", plate="PLATE1")
    runner.run(once=True)
    main(["status", "--db", db_url, "--json"])
    warnings = [w for w in json.loads(capsys.readouterr().out)["warnings"] if "share well" in w]
    assert len(warnings) == 1 and warnings[0].startswith("experiment E1: 4 of its newest scored images share")
    assert "PLATE1 - Copy" in warnings[0]
    quiet = tmp_path / "one"
    for well in ("A01", "B02"):
        write_tiff(quiet / "PLATE1" / "TimePoint_1" / f"PLATE1_{well}_s1_w1.tif", cells_image(stable_seed("one", well), (64, 64)))
    url = f"sqlite:///{tmp_path / 'one.db'}"  # a database of its own
    make_runner(quiet, db_url=url, profile="imagexpress").run(once=True)
    main(["status", "--db", url, "--json"])
    assert not [w for w in json.loads(capsys.readouterr().out)["warnings"] if "share well" in w]


def test_micromanager_acquisitions_count_their_own_time_points(tmp_path: Path, make_runner) -> None:
    """Micro-Manager writes each acquisition into <name>_<n>/ and counts time from 0 in each: a
    plate imaged again under the same name (exp_1, then exp_2) gets time points of its own, for
    separate files and for position stacks alike."""
    import tifffile

    watch = tmp_path / "mm"
    for acq in ("exp_1", "exp_2"):
        for t in (0, 1):
            write_tiff(watch / acq / "B3-Site_0" / f"img_channel000_position000_time{t:09d}_z000.tif",
                       cells_image(stable_seed("mm", acq, t), (64, 64)))
        stack = watch / acq / f"{acq}_MMStack_C4-Site_0.ome.tif"
        tifffile.imwrite(stack, np.stack([cells_image(stable_seed("mms", acq, t), (64, 64)) for t in (0, 1)]),
                         ome=True, metadata={"axes": "TYX"})
    runner = make_runner(watch, profile="micromanager")
    runner.run(once=True)
    got = _readouts(runner)
    keys = [1, 2, ACQUISITION_SPAN + 1, ACQUISITION_SPAN + 2]
    assert got == [(w, k, 1) for w in ("B03", "C04") for k in keys]
