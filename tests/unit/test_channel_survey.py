"""What a folder's names and files say about its channels, told before the first image:
MetaXpress names carry the wavelength's number and its TIFFs the illumination's name, so a
setting by name skips every image and no setting averages them all."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from nscmonitor.config import WatchFolder
from nscmonitor.core.selection import channel_skip
from nscmonitor.intake.channel_survey import survey
from nscmonitor.readers.decode import stated_channel_name

def _metaxpress(path: Path, illum: str) -> None:
    desc = ("<MetaData>\n<prop id=\"Description\" type=\"string\" value=\"\"/>\n<PlaneInfo>\n"
            f"<prop id=\"image-name\" type=\"string\" value=\"Copy of {illum}\"/>\n"
            f"<prop id=\"_IllumSetting_\" type=\"string\" value=\"{illum}\"/>\n</PlaneInfo>\n</MetaData>")
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.zeros((16, 16), np.uint16), description=desc, software="MetaSeries", metadata=None)


def test_the_channel_name_a_tiff_states(tmp_path: Path) -> None:
    _metaxpress(tmp_path / "m.tif", "FITC")
    tifffile.imwrite(tmp_path / "o.tif", np.zeros((1, 16, 16), np.uint16), ome=True,
                     metadata={"axes": "CYX", "Channel": {"Name": ["Phase"]}})
    tifffile.imwrite(tmp_path / "o2.tif", np.zeros((2, 16, 16), np.uint16), ome=True,
                     metadata={"axes": "CYX", "Channel": {"Name": ["Phase", "GFP"]}})
    tifffile.imwrite(tmp_path / "plain.tif", np.zeros((16, 16), np.uint16))
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")
    assert stated_channel_name(tmp_path / "m.tif") == "FITC"
    assert stated_channel_name(tmp_path / "o.tif") == "Phase"
    assert stated_channel_name(tmp_path / "o2.tif") is None  # a stack of two: no one name for the file
    assert stated_channel_name(tmp_path / "plain.tif") is None
    assert stated_channel_name(tmp_path / "broken.tif") is None
    _metaxpress(tmp_path / "long.tif", "TL-20" + "x" * 500)  # an endless name
    assert stated_channel_name(tmp_path / "long.tif") == ("TL-20" + "x" * 500)[:64]
    _metaxpress(tmp_path / "sep.tif", "TL&#x2028;&#x200B;20")  # a line separator, a zero-width space
    assert stated_channel_name(tmp_path / "sep.tif") == "TL20"
    _metaxpress(tmp_path / "escape.tif", "TL\x1b[2J")  # not XML at all: nothing read, nothing raised
    assert stated_channel_name(tmp_path / "escape.tif") in (None, "TL[2J")


def _plate(root: Path) -> Path:
    for well in ("A01", "B02"):
        for w, illum in ((1, "TL-20"), (2, "FITC"), (3, "Texas Red")):
            _metaxpress(root / "PLATE1" / "TimePoint_1" / f"PLATE1_{well}_s1_w{w}.tif", illum)
    return root / "PLATE1"


@pytest.mark.parametrize("setting,mismatch,mixed,says", [
    (None, False, True, "channels 1 (TL-20), 2 (FITC), 3 (Texas Red); every channel is scored into the same "
                        "readouts"),
    ("1", False, False, "; scored: 1 (TL-20)"),
    ("01", False, False, "; scored: 1 (TL-20)"),
    ("fitc", True, False, "the setting channel = 'fitc' matches none of them, so every image is skipped: set "
                          "channel = \"2\" (the names give fitc as 2)"),
    ("phase", True, False, "matches none of them, so every image is skipped: set channel to one of them as the "
                           "names give it"),
])
def test_the_survey_says_which_channel_to_set(tmp_path: Path, setting, mismatch, mixed, says) -> None:
    folder = _plate(tmp_path)
    found = survey(WatchFolder(path=folder, experiment="IMX", channel=setting))
    assert [c[0] for c in found.channels] == ["1", "2", "3"]
    assert (found.mismatch, found.mixed) == (mismatch, mixed)
    assert says in found.note()
    # the survey and intake agree: a mismatch is exactly a setting that skips every channel
    assert found.mismatch == (setting is not None and all(channel_skip(setting, c) for c, _ in found.channels))


def test_names_without_a_channel_and_an_empty_folder(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "scan_0001.tif", np.zeros((16, 16), np.uint16))
    found = survey(WatchFolder(path=tmp_path, experiment="x", channel="phase"))
    assert found.channels == () and not found.mismatch
    assert found.note() == "its file names carry no channel (channel phase is read inside stacks and containers)"
    assert survey(WatchFolder(path=tmp_path / "missing", experiment="x")).channels == ()
    _metaxpress(tmp_path / "flat" / "PLATE1_A01_s1_w1.tif", "TL-20")  # a 2-D name, and a plane asked for
    planar = survey(WatchFolder(path=tmp_path / "flat", experiment="x", z="2"))
    assert planar.mismatch and "no z plane: the setting z = '2' matches none of them" in planar.note()


def test_the_real_imagexpress_output(real_fixtures: Path) -> None:
    found = survey(WatchFolder(path=real_fixtures / "ImageXpress" / "1well-3C-2S-Zmix-T", experiment="x",
                               channel="Cy3"))
    assert found.channels == (("1", "FITC"), ("2", "Cy3"), ("3", "Texas Red"))
    assert found.mismatch and 'set channel = "2"' in found.note()


@pytest.mark.parametrize("z,mixed,mismatch,says", [
    ("all", True, False, "z planes 1 and 2 beside images without one (projections): every plane is scored into the "
                         "same readouts: set z = \"projection\" or the plane to score"),
    ("projection", False, False, "; scored: projection"),
    ("2", False, False, "; scored: 2"),
    ("7", False, True, "the setting z = '7' matches none of them, so every image is skipped"),
])
def test_the_survey_tells_z_planes_beside_a_projection(tmp_path: Path, z, mixed, mismatch, says) -> None:
    root = tmp_path / "PLATE1" / "TimePoint_1"
    _metaxpress(root / "PLATE1_A01_s1_w1.tif", "TL-20")
    for plane in (1, 2):
        _metaxpress(root / f"ZStep_{plane}" / "PLATE1_A01_s1_w1.tif", "TL-20")
    found = survey(WatchFolder(path=tmp_path / "PLATE1", experiment="IMX", channel="1", z=z))
    assert found.planes == (1, 2) and found.unplaned
    assert (found.mixed, found.mismatch) == (mixed, mismatch)
    assert says in found.note()


def test_the_real_projection_beside_its_zsteps(real_fixtures: Path) -> None:
    found = survey(WatchFolder(path=real_fixtures / "ImageXpress" / "Projection-Mix", experiment="x", channel="1"))
    assert found.planes == tuple(range(1, 11)) and found.unplaned and found.z_mixed


def test_the_survey_says_when_names_give_no_time(tmp_path: Path) -> None:
    """An IN Cell run without a time-lapse names no time: without an induction time its images
    would be scored and give no readout, which doctor and run's start now say first."""
    run = tmp_path / "plate7" / "run1"
    run.mkdir(parents=True)
    for well in ("A - 1", "B - 2"):
        tifffile.imwrite(run / f"{well}(fld 1 wv TL-Brightfield - Cy3).tif", np.zeros((16, 16), np.uint16))
    bare = survey(WatchFolder(path=tmp_path / "plate7", experiment="x"))
    assert (bare.clocked, bare.indexed, bare.untimed) == (2, 0, True)
    assert "give no readout; set induction_time" in bare.time_note()
    from datetime import datetime, timezone

    timed = survey(WatchFolder(path=tmp_path / "plate7", experiment="x",
                               induction_time=datetime(2026, 3, 2, tzinfo=timezone.utc)))
    assert not timed.untimed and "timed by its file's modification time" in timed.time_note()
    stamped = tmp_path / "inc"
    stamped.mkdir()
    tifffile.imwrite(stamped / "VID1_A1_1_2026y03m02d_09h00m.tif", np.zeros((16, 16), np.uint16))
    found = survey(WatchFolder(path=stamped, experiment="x"))
    assert found.stamped == 1 and found.untimed and "a wall-clock time only" in found.time_note()


def test_names_with_a_scan_index_need_no_induction_time(tmp_path: Path) -> None:
    found = survey(WatchFolder(path=_plate(tmp_path), experiment="IMX", channel="1"))
    assert found.indexed > 0 and not found.untimed and found.time_note() == "time from the names"
