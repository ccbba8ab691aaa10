"""Images whose names give no time (an IN Cell run without a time-lapse, one folder per plate
read) are timed by their files' clocks with the folder's induction time. A real daemon on a
real SQLite file and on PostgreSQL: each plate read gives one readout per well holding all its
fields, and all wells of a read share its time point, however the read's minutes fall."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import select

from conftest import cells_image, stable_seed, write_tiff
from nscmonitor.store import models as m

INDUCTION = datetime(2026, 3, 2, 9, 0, 30, tzinfo=timezone.utc)
WELLS = [("A", 1), ("A", 2), ("B", 1), ("B", 2), ("C", 3)]
FIELDS = 3


def _write_read(watch: Path, folder: str, start: datetime) -> None:
    """One plate read, 25 s between images: its 15 images span six minutes."""
    i = 0
    for row, col in WELLS:
        for fld in range(1, FIELDS + 1):
            path = write_tiff(watch / folder / f"{row} - {col}(fld {fld} wv TL-Brightfield - Cy3).tif",
                              cells_image(stable_seed("clock", folder, row, col, fld), (64, 64)))
            t = (start + timedelta(seconds=25 * i)).timestamp()
            os.utime(path, (t, t))
            i += 1


def _readouts(runner) -> list[tuple[str, int, int]]:
    with runner.store.Session() as s:
        return sorted(s.execute(select(m.Well.name, m.WellReadout.time_key, m.WellReadout.n_images)
                                .join(m.Well, m.Well.id == m.WellReadout.well_id)).all())


@pytest.mark.parametrize("live", [False, True], ids=["backfill", "read-by-read"])
def test_each_read_is_one_time_point_of_every_well(tmp_path: Path, make_runner, db_url: str, live: bool) -> None:
    watch = tmp_path / "plate7"
    reads = {"plate7_1": INDUCTION + timedelta(hours=24, seconds=40),
             "plate7_2": INDUCTION + timedelta(hours=48, seconds=50)}
    def run():
        r = make_runner(watch, db_url=db_url, induction_time=INDUCTION.isoformat(), profile="incell")
        r.run(once=True)
        return r

    for folder, start in reads.items():
        _write_read(watch, folder, start)
        if live:  # the daemon meets each read on its own (a run per read)
            runner = run()
    if not live:
        runner = run()
    got = _readouts(runner)
    assert len(got) == len(WELLS) * len(reads), got
    assert {n for _, _, n in got} == {FIELDS}
    keys = sorted({k for _, k, _ in got})
    assert len(keys) == 2
    assert [k / 60 for k in keys] == pytest.approx([24.0, 48.0], abs=0.1)
    with runner.store.Session() as s:
        minutes = {round(e * 60) for (e,) in s.execute(select(m.Image.elapsed_h))}
    assert len(minutes) > 4  # the images' own minutes differ: the reads, not the minutes, are the keys


def test_a_run_stamped_once_that_images_its_plate_twice_gives_two_time_points(tmp_path: Path, make_runner) -> None:
    """A Nikon JOBS run's names carry the run's start stamp; a run that loops over its time
    points gives every image of both reads that one stamp. Keyed by the stamp's minute, the two
    reads of a well were one readout of twice its fields; a position seen again starts a read."""
    watch = tmp_path / "jobs"
    stamp = INDUCTION + timedelta(hours=24)
    seq = 0
    for loop in range(2):
        for row, col in WELLS:
            for point in (1, 2):
                seq += 1
                write_tiff(watch / (f"{stamp:%Y%m%d_%H%M%S}_000__Well{row}{col:02d}_Point{row}{col:02d}_{point:04d}"
                                    f"_ChannelBF_Seq{seq:04d}.tif"),
                           cells_image(stable_seed("jobs", loop, row, col, point), (64, 64)))
    runner = make_runner(watch, induction_time=INDUCTION.isoformat(), profile="nikon")
    runner.run(once=True)
    got = _readouts(runner)
    assert len(got) == 2 * len(WELLS), got
    assert {n for _, _, n in got} == {2}
    assert len({k for _, k, _ in got}) == 2


def test_doctor_and_run_say_when_names_give_no_time(tmp_path: Path, tiny_model: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Names without a time in a folder without ``induction_time``: the doctor fails the
    folder's time check and ``run`` warns at its start, before images are scored that give
    no readout; with the induction time set both are quiet about it and the readouts come."""
    import subprocess
    import sys

    from nscmonitor.cli import main

    watch = tmp_path / "plate7"
    _write_read(watch, "plate7_1", INDUCTION + timedelta(hours=24))
    cfg = tmp_path / "config.toml"
    head = (f'database_url = "sqlite:///{(tmp_path / "nsc.db").as_posix()}"\n'
            f'models_dir = "{(tmp_path / "models").as_posix()}"\nlog_dir = "{(tmp_path / "logs").as_posix()}"\n'
            f'[[watch]]\npath = "{watch.as_posix()}"\nexperiment = "IC"\nquiet_seconds = 0\n')
    cfg.write_text(head)
    assert main(["--config", str(cfg), "doctor"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "watch IC time" in x)
    assert line.startswith("--") and "give no readout; set induction_time" in line
    run = subprocess.run([sys.executable, "-m", "nscmonitor", "--config", str(cfg), "run", "--model", str(tiny_model),
                          "--once"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "WARNING: watch" in run.stderr and "set induction_time" in run.stderr

    cfg.write_text(head + f'induction_time = "{INDUCTION.isoformat()}"\n')
    assert main(["--config", str(cfg), "doctor"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "watch IC time" in x)
    assert line.startswith("ok") and "modification time" in line
