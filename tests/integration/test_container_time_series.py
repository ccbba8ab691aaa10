"""A time-lapse written into one ND2, CZI or OME-Zarr field, through the real daemon (real
watcher, SQLite, ONNX Runtime on a tiny model): every time point of every position is an image
of its own, read from its own plane, timed by the frame's own acquisition time where the file
records it; a second file holding the same plate's wells is a second acquisition, so its time
points do not fall into the first file's; a time point whose file states no time gets no hours
(the file's clock is when the last one was written). Also: points that name no well as fields,
loop counts no file can hold, rows stored before the expansion, ``parse --contents`` and the
doctor's time survey."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from conftest import cells_image
from nscmonitor.core.scans import ACQUISITION_SPAN
from nscmonitor.store import models as m

INDUCTION = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _jdn(when: datetime) -> float:
    return 2440587.5 + when.timestamp() / 86400.0


def _frames(n_t: int, n_p: int, n_c: int, seed: int) -> np.ndarray:
    """T x P x C x Y x X, each plane told apart by its maximum (the stored QC maximum names it)."""
    out = np.zeros((n_t, n_p, n_c, 48, 64), np.uint16)
    for t in range(n_t):
        for p in range(n_p):
            for c in range(n_c):
                out[t, p, c] = cells_image(seed + 100 * t + 10 * p + c, (48, 64)) // (1 + c + 2 * t + 3 * p)
    return out


def _images(runner) -> dict[str, tuple]:
    with runner.store.Session() as s:
        rows = s.execute(select(m.Image, m.Well).outerjoin(m.Well, m.Well.id == m.Image.well_id)).all()
    return {img.path: (img, w) for img, w in rows}


def _readouts(runner) -> dict[tuple[str, int], tuple[int, float | None]]:
    with runner.store.Session() as s:
        rows = s.execute(select(m.Well.name, m.WellReadout.time_key, m.WellReadout.n_images, m.WellReadout.elapsed_h)
                         .join(m.Well, m.Well.id == m.WellReadout.well_id)).all()
    return {(w, t): (n, h) for w, t, n, h in rows if n > 0}


def test_an_nd2_time_lapse_gives_every_time_point_of_every_well_its_time(tmp_path: Path, make_runner) -> None:
    pytest.importorskip("nd2")
    from nd2_file import write_nd2

    watch = tmp_path / "nis"
    first = _frames(3, 2, 2, 500)
    # time points 2 h apart from 24 h after induction; positions 30 s apart within each
    times = [t * 7_200_000.0 + p * 30_000.0 for t in range(3) for p in range(2)]
    run1 = write_nd2(watch / "plate1_run1.nd2", first, ["DAPI", "BF"], ["B3", "C4"], times_ms=times,
                     start_jdn=_jdn(INDUCTION + timedelta(hours=24)))
    second = _frames(2, 2, 2, 900)  # the plate imaged again the next day into a file of its own
    run2 = write_nd2(watch / "plate1_run2.nd2", second, ["DAPI", "BF"], ["B3", "C4"],
                     times_ms=[t * 7_200_000.0 + p * 30_000.0 for t in range(2) for p in range(2)],
                     start_jdn=_jdn(INDUCTION + timedelta(hours=48)))
    runner = make_runner(watch, experiment="nis", channel="BF", induction_time=INDUCTION.isoformat())
    runner.run(once=True)
    images = _images(runner)
    assert len(images) == 6 + 4, sorted(images)
    for path, frames, ordinal, start_h in ((run1, first, 0, 24.0), (run2, second, 1, 48.0)):
        for t in range(len(frames)):
            for p, well in enumerate(("B03", "C04")):
                img, w = images[f"{path}|position={p},t={t}"]
                assert img.status == "done", img.error
                assert (w.name, img.field, img.timepoint) == (well, 1, t + 1)
                assert img.qc["max"] == float(frames[t, p, 1].max())  # its own plane, channel BF
                assert img.time_key == ordinal * ACQUISITION_SPAN + t + 1
                assert img.elapsed_h == pytest.approx(start_h + 2 * t + p * 30 / 3600)
    readouts = _readouts(runner)
    assert sorted(k for k in readouts if k[0] == "B03") == [
        ("B03", 1), ("B03", 2), ("B03", 3), ("B03", ACQUISITION_SPAN + 1), ("B03", ACQUISITION_SPAN + 2)]
    assert readouts[("C04", ACQUISITION_SPAN + 2)] == (1, pytest.approx(50 + 30 / 3600))
    assert run1.stat().st_size > 0 and run2.exists()  # the instrument's files are left as they were

    # the tidy CSV says which scan of which acquisition each time key is
    import csv

    from nscmonitor.report.export import export_readouts
    from nscmonitor.store.reads import Repo

    export_readouts(Repo(runner.store.engine), "nis", tmp_path / "report.csv")
    with open(tmp_path / "report.csv", newline="") as fh:
        shown = {(r["well"], int(r["timepoint"])): (r["acquisition"], r["scan"]) for r in csv.DictReader(fh)}
    assert shown[("B03", 3)] == ("1", "3") and shown[("B03", ACQUISITION_SPAN + 2)] == ("2", "2")
    assert len(shown) == 10


def test_an_nd2_time_lapse_placed_by_its_name_with_and_without_frame_times(tmp_path: Path, make_runner) -> None:
    pytest.importorskip("nd2")
    from nd2_file import write_nd2

    watch = tmp_path / "nis"
    frames = _frames(3, 1, 1, 300)
    # frame times but no start date: hours since the file's first frame
    timed = write_nd2(watch / "20260101_WellD05_Seq0000.nd2", frames, ["BF"], times_ms=[0.0, 3_600_000.0, 9_000_000.0])
    untimed = write_nd2(watch / "20260101_WellD06_Seq0000.nd2", frames, ["BF"])  # no frame-time record
    runner = make_runner(watch, experiment="nis", induction_time=INDUCTION.isoformat())
    runner.run(once=True)
    images = _images(runner)
    assert len(images) == 6, sorted(images)
    for t, hours in enumerate((0.0, 1.0, 2.5)):
        img, w = images[f"{timed}|t={t}"]
        assert img.status == "done", img.error
        assert (w.name, img.timepoint, img.time_key) == ("D05", t + 1, t + 1)
        assert img.elapsed_h == pytest.approx(hours)
        assert img.qc["max"] == float(frames[t, 0, 0].max())
        img, w = images[f"{untimed}|t={t}"]
        assert img.status == "done", img.error
        assert (w.name, img.timepoint, img.time_key) == ("D06", t + 1, t + 1)
        # the file's clock would give every time point the same hours: it gives none
        assert img.elapsed_h is None and img.acquired_at is None
    assert {k: n for k, (n, _) in _readouts(runner).items()} == {
        (w, t): 1 for w in ("D05", "D06") for t in (1, 2, 3)}


def test_a_czi_time_series_gives_every_time_point_of_every_scene(tmp_path: Path, make_runner) -> None:
    pytest.importorskip("pylibCZIrw")
    from pylibCZIrw import czi

    frames = _frames(2, 2, 2, 700)
    path = tmp_path / "zen" / "plate9.czi"
    path.parent.mkdir(parents=True)
    with czi.create_czi(str(path), exist_ok=True) as w:
        for t in range(2):
            for s in range(2):
                for c in range(2):
                    w.write(frames[t, s, c], plane={"C": c, "T": t, "Z": 0}, scene=s, location=(s * 1000, 0))
        w.write_metadata(document_name="plate9", channel_names={0: "DAPI", 1: "BF"})
    scenes_xml = "".join(f'<Scene Index="{i}" Name="{well}-1"><Shape Name="{well}"/></Scene>'
                         for i, well in enumerate(("E5", "E6")))
    with czi.edit_czi(str(path)) as ed, ed.edit_session() as b:
        b.set_xml(b.get_xml().replace("<Channels>", f"<S><Scenes>{scenes_xml}</Scenes></S><Channels>", 1))
    runner = make_runner(path.parent, experiment="zen", channel="BF", induction_time=INDUCTION.isoformat())
    runner.run(once=True)
    images = _images(runner)
    assert len(images) == 4, sorted(images)
    for t in range(2):
        for s, well in enumerate(("E05", "E06")):
            img, w = images[f"{path}|scene={s},t={t}"]
            assert img.status == "done", img.error
            assert (w.name, img.timepoint, img.time_key) == (well, t + 1, t + 1)
            assert img.qc["max"] == float(frames[t, s, 1].max())
            assert img.elapsed_h is None  # pylibCZIrw gives no time point's time: none is made up
    assert {k: n for k, (n, _) in _readouts(runner).items()} == {(w, t): 1 for w in ("E05", "E06") for t in (1, 2)}


def test_frame_times_no_clock_gives_are_not_believed() -> None:
    from nscmonitor.readers.formats.nd2 import frame_time, start_date

    start = start_date(_jdn(INDUCTION))
    assert start == INDUCTION
    assert start_date(0.0) is None and start_date(-1.0) is None and start_date(float("nan")) is None
    assert start_date(1e12) is None
    assert frame_time(start, 3_600_000.0) == (INDUCTION + timedelta(hours=1), None)
    assert frame_time(None, 5_400_000.0) == (None, 1.5)
    for bad in (float("nan"), float("inf"), -1.0, 1e15, None):
        assert frame_time(start, bad) == (None, None)


def test_doctor_counts_an_nd2_time_lapse_as_timed(tmp_path: Path) -> None:
    """A file name that gives no time, whose file holds a time loop: its time points are keyed
    by their index, so the folder needs no induction_time; a file of one time point does."""
    pytest.importorskip("nd2")
    from nd2_file import write_nd2

    from nscmonitor.config import WatchFolder
    from nscmonitor.intake.channel_survey import survey

    write_nd2(tmp_path / "lapse" / "20260101_WellD05_Seq0000.nd2", _frames(2, 1, 1, 10), ["BF"])
    found = survey(WatchFolder(path=tmp_path / "lapse", experiment="x", profile="nikon"))
    assert (found.indexed, found.clocked) == (1, 0) and not found.untimed
    write_nd2(tmp_path / "once" / "20260101_WellD05_Seq0000.nd2", _frames(1, 1, 1, 10)[0], ["BF"])
    found = survey(WatchFolder(path=tmp_path / "once", experiment="x", profile="nikon"))
    assert (found.indexed, found.clocked) == (0, 1) and found.untimed


def test_a_position_stored_before_its_time_points_were_images_is_set_aside(tmp_path: Path, make_runner) -> None:
    """Versions before 2026-12-05 stored an ND2 position as ``FILE|position=N`` scored at its
    first time point. When the same file arrives as time points (here: a daemon started on a
    file that now holds a time loop), that row is set aside with the reason and leaves the
    readouts, so the first time point is not counted twice."""
    pytest.importorskip("nd2")
    from nd2_file import write_nd2

    watch = tmp_path / "nis"
    path = watch / "plate1_run1.nd2"
    frames = _frames(2, 2, 1, 40)
    write_nd2(path, frames[0], ["BF"], ["B3", "C4"])  # positions without a time loop: FILE|position=N
    make_runner(watch, experiment="nis", induction_time=INDUCTION.isoformat()).run(once=True)
    write_nd2(path, frames, ["BF"], ["B3", "C4"], times_ms=[0.0, 10.0, 3_600_000.0, 3_600_010.0],
              start_jdn=_jdn(INDUCTION + timedelta(hours=24)))
    runner = make_runner(watch, experiment="nis", induction_time=INDUCTION.isoformat())
    runner.run(once=True)
    images = _images(runner)
    for p in (0, 1):
        legacy, _ = images[f"{path}|position={p}"]
        assert legacy.status == "skipped" and "several images" in legacy.error
        for t in (0, 1):
            assert images[f"{path}|position={p},t={t}"][0].status == "done"
    readouts = _readouts(runner)
    assert readouts == {(w, t): (1, pytest.approx(23.0 + t, abs=1e-3)) for w in ("B03", "C04") for t in (1, 2)}


def test_an_nd2_of_unnamed_points_in_one_well_gives_each_point_as_a_field(tmp_path: Path, make_runner) -> None:
    """NIS-Elements' multipoint in one well: points that name no well are fields of the well the
    file's name gives, each at each time point (before, only the first point was scored)."""
    pytest.importorskip("nd2")
    from nd2_file import write_nd2

    watch = tmp_path / "nis"
    frames = _frames(2, 3, 1, 600)
    path = write_nd2(watch / "20260101_WellD05_Seq0000.nd2", frames, ["BF"],
                     times_ms=[t * 3_600_000.0 + p * 1000.0 for t in range(2) for p in range(3)],
                     start_jdn=_jdn(INDUCTION + timedelta(hours=12)))
    runner = make_runner(watch, experiment="nis", induction_time=INDUCTION.isoformat())
    runner.run(once=True)
    images = _images(runner)
    assert len(images) == 6, sorted(images)
    for t in range(2):
        for p in range(3):
            img, w = images[f"{path}|position={p},t={t}"]
            assert img.status == "done", img.error
            assert (w.name, img.field, img.timepoint) == ("D05", p + 1, t + 1)
            assert img.qc["max"] == float(frames[t, p, 0].max())
            assert img.elapsed_h == pytest.approx(12 + t + p / 3600)
    assert {k: n for k, (n, _) in _readouts(runner).items()} == {("D05", 1): 3, ("D05", 2): 3}


def test_the_name_s_field_is_divided_among_a_file_s_points() -> None:
    from nscmonitor.intake.describe import subfield

    assert [subfield(None, p, 3) for p in range(3)] == [1, 2, 3]
    assert [subfield(2, p, 3) for p in range(3)] == [4, 5, 6]
    assert {subfield(s, p, 2) for s in (1, 2, 3) for p in range(2)} == {1, 2, 3, 4, 5, 6}


def test_a_loop_count_no_file_can_hold_is_refused_without_sizing_anything_by_it(tmp_path: Path,
                                                                               make_runner) -> None:
    """An ND2 whose time loop claims 400 million time points in a 12 kB file, and a CZI with one
    sub-block at time point 400 million: the readers would build an entry per declared frame
    (checked in a process whose memory is capped, where that fails at once). Both are
    quarantined with the reason by the daemon; the others in the folder are scored."""
    import subprocess
    import sys

    pytest.importorskip("nd2")
    pytest.importorskip("pylibCZIrw")
    from nd2_file import write_nd2
    from pylibCZIrw import czi

    watch = tmp_path / "hostile"
    nd2_path = write_nd2(watch / "20260101_WellB02_Seq0000.nd2", _frames(2, 1, 1, 5), ["BF"], declared_t=400_000_000)
    czi_path = watch / "P1_B03_s1.czi"
    with czi.create_czi(str(czi_path), exist_ok=True) as w:
        for t in (0, 400_000_000):
            w.write(np.zeros((16, 16), np.uint16), plane={"C": 0, "T": t, "Z": 0}, scene=0, location=(0, 0))
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (1 << 31, 1 << 31))\n"
            "from nscmonitor.readers.formats import DecodeError, decode_native, units\n"
            "for path in sys.argv[1:]:\n"
            "    (u,) = units(path)\n    print(u.error)\n"
            "try:\n    decode_native(sys.argv[1] + '|t=1', channel=None, max_pixels=10**7, max_bytes=10**9)\n"
            "except DecodeError as e:\n    print(e.permanent, e)\n")
    out = subprocess.run([sys.executable, "-c", code, str(nd2_path), str(czi_path)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "declares 400000000 frames" in lines[0] and "declares 400000001 frames" in lines[1]
    assert lines[2].startswith("True") and "declares 400000000 frames" in lines[2]

    fine = write_nd2(watch / "20260101_WellB04_Seq0000.nd2", _frames(1, 1, 1, 6)[0], ["BF"])
    runner = make_runner(watch, experiment="hostile", profile="nikon")
    runner.run(once=True)
    images = _images(runner)
    assert images[str(nd2_path)][0].status == "quarantined" and "corrupt metadata" in images[str(nd2_path)][0].error
    assert images[str(czi_path)][0].status == "quarantined" and "corrupt metadata" in images[str(czi_path)][0].error
    assert images[str(fine)][0].status == "done"


def test_a_czi_scene_missing_at_the_last_time_point_is_not_made_up(tmp_path: Path) -> None:
    """An acquisition stopped part-way through a time point: the scene it did not reach has no
    image there (it would read as the blank background)."""
    pytest.importorskip("pylibCZIrw")
    from pylibCZIrw import czi

    from nscmonitor.readers.formats import units

    path = tmp_path / "P1_C03.czi"
    with czi.create_czi(str(path), exist_ok=True) as w:
        for t in range(2):
            for s in range(2):
                if (t, s) != (1, 1):
                    w.write(np.full((16, 16), 10 * t + s, np.uint16), plane={"C": 0, "T": t, "Z": 0}, scene=s,
                            location=(100 * s, 0))
    assert [(u.ref.rpartition("|")[2], u.timepoint, u.position) for u in units(str(path))] == [
        ("scene=0,t=0", 1, 0), ("scene=1,t=0", 1, 1), ("scene=0,t=1", 2, 0)]


def test_parse_contents_shows_the_images_inside_a_file_as_the_daemon_places_them(tmp_path: Path, capsys,
                                                                                  make_runner) -> None:
    pytest.importorskip("nd2")
    import json

    from nd2_file import write_nd2

    from nscmonitor.cli import main

    watch = tmp_path / "nis"
    path = write_nd2(watch / "20260101_WellD05_Seq0000.nd2", _frames(2, 2, 1, 70), ["BF"],
                     times_ms=[0.0, 1000.0, 3_600_000.0, 3_601_000.0], start_jdn=_jdn(INDUCTION))
    assert main(["parse", "--contents", "--json", "--profile", "nikon", str(path)]) == 0
    shown = {r["path"]: (r["well"], r["field"], r["timepoint"], r["acquired_at"])
             for r in map(json.loads, capsys.readouterr().out.splitlines())}
    runner = make_runner(watch, experiment="nis", profile="nikon")
    runner.run(once=True)
    stored = {p: (w.name, img.field, img.timepoint, img.acquired_at.replace(tzinfo=timezone.utc).isoformat())
              for p, (img, w) in _images(runner).items()}
    assert shown == stored and len(shown) == 4
    assert main(["parse", "--contents", "--profile", "nikon", str(path.with_name("x_WellD06_Seq0000.nd2"))]) == 0
    assert "D06" in capsys.readouterr().out  # a name without a file: the name's parse, as without --contents


def test_an_ome_zarr_field_with_a_time_axis_gives_every_time_point(tmp_path: Path, make_runner) -> None:
    """A time-lapse converted into an OME-Zarr plate (the field's array is t, c, z, y, x): each
    time point an image, timed by the acquisition's start plus the axis's scale (2 h here),
    read from its own plane (before, only the first)."""
    pytest.importorskip("ome_zarr")
    import zarr
    from ome_zarr.writer import write_image, write_plate_metadata, write_well_metadata

    plate = tmp_path / "zarr" / "lapse.zarr"
    group = zarr.open_group(str(plate), mode="w")
    start = INDUCTION + timedelta(hours=24)
    write_plate_metadata(group, ["B"], ["3"], ["B/3"], name="LAPSE",
                         acquisitions=[{"id": 0, "starttime": int(start.timestamp())}])
    wg = group.require_group("B").require_group("3")
    write_well_metadata(wg, [{"path": "0", "acquisition": 0}])
    frames = _frames(3, 1, 2, 800)[:, 0][:, :, None]  # t, c, z, y, x
    window = {"min": 0, "max": 65535, "start": 0, "end": 4095}
    write_image(frames, wg.require_group("0"), axes="tczyx", scale_factors=[],
                scale={"t": 2.0, "c": 1.0, "z": 1.0, "y": 0.65, "x": 0.65},
                axes_units={"t": "hour", "z": "micrometer", "y": "micrometer", "x": "micrometer"},
                omero={"channels": [{"label": c, "color": "FFFFFF", "window": window} for c in ("DAPI", "BF")]})
    runner = make_runner(plate.parent, experiment="zarr", channel="BF", induction_time=INDUCTION.isoformat())
    runner.run(once=True)
    images = _images(runner)
    field = plate / "B" / "3" / "0"
    assert sorted(images) == [f"{field}|t={t}" for t in range(3)]
    for t in range(3):
        img, w = images[f"{field}|t={t}"]
        assert img.status == "done", img.error
        assert (w.name, img.field, img.timepoint, img.time_key) == ("B03", 1, t + 1, t + 1)
        assert img.qc["max"] == float(frames[t, 1, 0].max())
        assert img.elapsed_h == pytest.approx(24 + 2 * t)
    assert {k: n for k, (n, _) in _readouts(runner).items()} == {("B03", t): 1 for t in (1, 2, 3)}


def test_an_ome_zarr_time_axis_is_read_from_metadata_and_a_claim_no_plate_has_is_refused(tmp_path: Path) -> None:
    import json

    from nscmonitor.core.domain import ImageKey
    from nscmonitor.readers.formats.omezarr import time_units

    def field(shape: list[int], unit: str | None, scale_t: float) -> Path:
        f = tmp_path / f"f{len(list(tmp_path.iterdir()))}"
        (f / "s0").mkdir(parents=True)
        axes = [{"name": "t", "type": "time", **({"unit": unit} if unit else {})}, {"name": "y"}, {"name": "x"}]
        ms = [{"axes": axes, "datasets": [{"path": "s0", "coordinateTransformations": [
            {"type": "scale", "scale": [scale_t, 1.0, 1.0]}]}]}]
        (f / "zarr.json").write_text(json.dumps({"attributes": {"ome": {"multiscales": ms}}}))
        (f / "s0" / "zarr.json").write_text(json.dumps({"node_type": "array", "shape": shape}))
        return f

    key = ImageKey(plate="P", well="B03", row=1, col=2, field=1, timepoint=2, acquired_at=INDUCTION)
    units = time_units(str(field([3, 16, 16], "minute", 30.0)), key)
    assert [(u.key.timepoint, u.key.acquisition, u.key.acquired_at) for u in units] == [
        (t + 1, "acquisition 2", INDUCTION + timedelta(minutes=30 * t)) for t in range(3)]
    no_start = time_units(str(field([2, 16, 16], "hour", 6.0)), replace(key, acquired_at=None))
    assert [u.key.elapsed_h for u in no_start] == [0.0, 6.0]
    no_unit = time_units(str(field([2, 16, 16], None, 6.0)), key)  # a step without a unit: the start only
    assert [(u.key.acquired_at, u.key.elapsed_h) for u in no_unit] == [(INDUCTION, None), (None, None)]
    assert time_units(str(field([1, 16, 16], "hour", 1.0)), key) is None
    (refused,) = time_units(str(field([400_000_000, 16, 16], "hour", 1.0)), key)
    assert "400000000 time points" in refused.error


def test_the_doctor_opens_a_few_stacks_not_every_one(tmp_path: Path) -> None:
    """A folder of many ND2 time-lapses whose names give no time: the survey opens the first
    ten and takes the rest to be like them (opening each of 2,000 files held up a start)."""
    pytest.importorskip("nd2")
    from nd2_file import write_nd2

    from nscmonitor.config import WatchFolder
    from nscmonitor.intake.channel_survey import TIME_SERIES_OPENED, survey

    lapse = write_nd2(tmp_path / "x.nd2", _frames(2, 1, 1, 10), ["BF"]).read_bytes()
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(TIME_SERIES_OPENED + 5):
        (folder / f"run{i:03d}_Well{chr(65 + i % 8)}{i % 12 + 1:02d}_Seq0000.nd2").write_bytes(
            lapse if i < TIME_SERIES_OPENED else b"not an nd2 file")  # the unopened ones are not even ND2s
    found = survey(WatchFolder(path=folder, experiment="x", profile="nikon"))
    assert (found.indexed, found.clocked) == (TIME_SERIES_OPENED + 5, 0) and not found.untimed


def test_an_nd2_copied_without_its_time_is_dated_by_its_own_record(tmp_path: Path, make_runner) -> None:
    """A copy that does not keep file times dates a file by the copy. An ND2 of one time point
    (one placed by its name, and a plate's positions named by well) is dated by NIS-Elements'
    record of when its frames were taken, so its hours since induction are right."""
    pytest.importorskip("nd2")
    import os

    from nd2_file import write_nd2

    watch = tmp_path / "nis"
    taken = INDUCTION + timedelta(hours=36)
    one = write_nd2(watch / "20260101_WellD05_Seq0000.nd2", _frames(1, 1, 1, 20)[0], ["BF"], times_ms=[0.0],
                    start_jdn=_jdn(taken))
    plate = write_nd2(watch / "plate_read.nd2", _frames(1, 2, 1, 30)[0], ["BF"], ["B3", "C4"],
                      times_ms=[0.0, 60_000.0], start_jdn=_jdn(taken))
    copied = (INDUCTION + timedelta(days=30)).timestamp()  # the copy's date, a month on
    for f in (one, plate):
        os.utime(f, (copied, copied))
    runner = make_runner(watch, experiment="nis", profile="nikon", induction_time=INDUCTION.isoformat())
    runner.run(once=True)
    images = _images(runner)
    img, _ = images[str(one)]
    assert img.status == "done" and img.elapsed_h == pytest.approx(36.0)
    for p, minutes in ((0, 0.0), (1, 1.0)):
        img, w = images[f"{plate}|position={p}"]
        assert img.status == "done" and img.elapsed_h == pytest.approx(36.0 + minutes / 60)
