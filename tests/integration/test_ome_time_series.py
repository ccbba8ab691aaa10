"""A time-lapse in one OME-TIFF (a Micro-Manager position stack, a Bio-Formats or Fiji export):
each time point is an image of its own, placed by the file's name, keyed by its time point and
timed by the stack's acquisition date plus the plane's DeltaT. Before, only the first plane
was scored. A stack first read whole (Micro-Manager writes the OME-XML last) is set aside when
its time points arrive, so no plane counts twice. Real daemon, real tifffile files, SQLite."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import tifffile
from sqlalchemy import select

from conftest import cells_image, stable_seed
from nscmonitor.readers.decode import decode
from nscmonitor.readers.formats import units
from nscmonitor.store import models as m
from nscmonitor.store.writer import EXPANDED

INDUCTION = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
HOURS = (0.0, 24.0, 48.0)


def _stack(path: Path, seed: str, hours=HOURS, *, ome: bool = True) -> np.ndarray:
    data = np.stack([cells_image(stable_seed(seed, i), (64, 64)) for i in range(len(hours))])
    path.parent.mkdir(parents=True, exist_ok=True)
    if ome:
        tifffile.imwrite(path, data, ome=True, metadata={
            "axes": "TYX", "AcquisitionDate": INDUCTION.isoformat(),
            "Plane": {"DeltaT": [h * 3600 for h in hours], "DeltaTUnit": ["s"] * len(hours)}})
    else:  # a stack still being written: pages, no OME-XML yet
        tifffile.imwrite(path, data[:1])
    return data


def test_each_time_point_is_read_from_its_own_plane(tmp_path: Path) -> None:
    path = tmp_path / "exp_1_MMStack_A1-Site_0.ome.tif"
    data = _stack(path, "planes")
    found = units(str(path))
    assert [u.timepoint for u in found] == [1, 2, 3]
    assert [u.acquired_at for u in found] == [INDUCTION + timedelta(hours=h) for h in HOURS]
    for i, u in enumerate(found):
        assert np.array_equal(decode(u.ref).pixels, data[i])
    single = tmp_path / "one.ome.tif"
    tifffile.imwrite(single, data[0], ome=True)
    assert units(str(single)) is None  # one time point: one image, as before


def test_the_daemon_scores_every_time_point(tmp_path: Path, make_runner) -> None:
    watch = tmp_path / "exp_1"
    for well in ("A1", "B2"):
        _stack(watch / f"exp_1_MMStack_{well}-Site_0.ome.tif", well)
    runner = make_runner(watch, induction_time=INDUCTION.isoformat(), profile="micromanager")
    runner.run(once=True)
    with runner.store.Session() as s:
        got = sorted(s.execute(select(m.Well.name, m.WellReadout.time_key, m.WellReadout.elapsed_h,
                                      m.WellReadout.n_images)
                               .join(m.Well, m.Well.id == m.WellReadout.well_id)).all())
    assert [(w, k, n) for w, k, _, n in got] == [(w, k, 1) for w in ("A01", "B02") for k in (1, 2, 3)]
    assert [e for *_, e, _ in got] == pytest.approx(list(HOURS) * 2)


def test_a_stack_read_whole_before_its_time_points_is_set_aside(tmp_path: Path, make_runner) -> None:
    watch = tmp_path / "exp_2"
    path = watch / "exp_2_MMStack_C3-Site_0.ome.tif"
    _stack(path, "live", ome=False)
    make_runner(watch, induction_time=INDUCTION.isoformat(), profile="micromanager").run(once=True)
    _stack(path, "live")  # the acquisition ended: Micro-Manager wrote the OME-XML
    runner = make_runner(watch, induction_time=INDUCTION.isoformat(), profile="micromanager")
    runner.run(once=True)
    with runner.store.Session() as s:
        rows = dict(s.execute(select(m.Image.path, m.Image.status)).all())
        whole = s.execute(select(m.Image.error).where(m.Image.path == str(path))).scalar_one()
        keys = sorted(s.execute(select(m.WellReadout.time_key, m.WellReadout.n_images)).all())
    assert rows[str(path)] == "skipped" and whole == EXPANDED
    assert sorted(v for p, v in rows.items() if p != str(path)) == ["done"] * 3
    assert keys == [(1, 1), (2, 1), (3, 1)]  # the whole file's readout is gone; each time point has its own


def test_a_channel_at_each_time_point_and_offsets_without_a_date(tmp_path: Path) -> None:
    """A time series of two channels: the folder's channel is read at every time point. Without
    an acquisition date the planes' offsets are hours since the stack began."""
    from nscmonitor.readers.formats import decode_native

    data = np.stack([np.stack([cells_image(stable_seed("tc", t, c), (64, 64)) for c in range(2)]) for t in range(2)])
    path = tmp_path / "well_A01_s1.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={
        "axes": "TCYX", "Channel": {"Name": ["Phase", "GFP"]},
        "Plane": {"DeltaT": [0.0, 0.0, 90.0, 90.0], "DeltaTUnit": ["min"] * 4}})
    found = units(str(path))
    assert [(u.timepoint, u.acquired_at, u.elapsed_h) for u in found] == [(1, None, 0.0), (2, None, 1.5)]
    for t, u in enumerate(found):
        got = decode_native(u.ref, channel="GFP", max_pixels=1 << 24, max_bytes=1 << 30)
        assert np.array_equal(got.pixels, data[t, 1])
    with pytest.raises(Exception, match="no time point 3"):
        decode_native(f"{path}|t=2", channel="GFP", max_pixels=1 << 24, max_bytes=1 << 30)


def test_a_stack_declaring_more_planes_than_it_holds_is_not_expanded(tmp_path: Path) -> None:
    """OME-XML stating 400 million time points in a two-page file: neither intake nor decoding
    sizes anything by the claim (checked in a process whose memory is capped, where sizing by it
    fails at once); decoding refuses the file with the reason."""
    import subprocess
    import sys

    with tifffile.TiffFile(_write_two(tmp_path / "two.ome.tif")) as two:
        ome = two.ome_metadata
    path = tmp_path / "claims.ome.tif"
    tifffile.imwrite(path, np.zeros((2, 16, 16), np.uint16), description=ome.replace('SizeT="2"', 'SizeT="400000000"'),
                     metadata=None)
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (1 << 31, 1 << 31))\n"
            "from nscmonitor.readers.formats import units\nfrom nscmonitor.readers.decode import DecodeError, decode\n"
            "assert units(sys.argv[1]) is None\n"
            "try:\n    decode(sys.argv[1])\nexcept DecodeError as e:\n    print(e.permanent, e)\n")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("True") and "declares 400000000 planes" in out.stdout


def _write_two(path: Path) -> Path:
    tifffile.imwrite(path, np.zeros((2, 16, 16), np.uint16), ome=True, metadata={"axes": "TYX"})
    return path


def test_offsets_and_dates_no_clock_gives_are_not_believed(tmp_path: Path) -> None:
    path = tmp_path / "odd.ome.tif"
    tifffile.imwrite(path, np.zeros((3, 16, 16), np.uint16), ome=True, metadata={
        "axes": "TYX", "AcquisitionDate": "1970-01-01T00:00:00",
        "Plane": {"DeltaT": [float("nan"), 1e300, 7200.0], "DeltaTUnit": ["s"] * 3}})
    found = units(str(path))
    assert [(u.timepoint, u.acquired_at, u.elapsed_h) for u in found] == [(1, None, None), (2, None, None),
                                                                          (3, None, 2.0)]


def test_doctor_counts_a_time_series_as_timed(tmp_path: Path) -> None:
    """A Micro-Manager stack's name gives no time, its time points do: no induction_time needed."""
    from nscmonitor.config import WatchFolder
    from nscmonitor.intake.channel_survey import survey

    _stack(tmp_path / "exp_1" / "exp_1_MMStack_A1-Site_0.ome.tif", "survey")
    found = survey(WatchFolder(path=tmp_path / "exp_1", experiment="x", profile="micromanager"))
    assert found.indexed == 1 and not found.untimed
    _stack(tmp_path / "exp_2" / "exp_2_MMStack_A1-Site_0.ome.tif", "survey", ome=False)  # still being written
    assert survey(WatchFolder(path=tmp_path / "exp_2", experiment="x", profile="micromanager")).untimed
