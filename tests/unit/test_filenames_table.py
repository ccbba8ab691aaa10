"""Every row of the shared table of real-world names parses exactly as the table says,
both through the function and through ``nscmonitor parse --json`` (the same code path)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from nscmonitor.intake.filenames import detect_profile, parse_path

from conftest import SHARED

TABLE = SHARED / "fixtures" / "filenames.csv"


def _rows() -> list[dict[str, str]]:
    if not TABLE.is_file():
        return []
    lines = [ln for ln in TABLE.read_text(encoding="utf-8").splitlines() if ln and not ln.startswith("#")]
    return list(csv.DictReader(lines))


ROWS = _rows()
needs_table = pytest.mark.skipif(not ROWS, reason=f"shared name table not found at {TABLE}")


FIELDS = ("plate", "well", "field", "channel", "z", "timepoint", "elapsed_h", "acquired_at")

#: Cells the shared table leaves blank although our parser reads them from the name: Gen5's
#: ``<well>_<step>_<n1>_<n2>_<channel>_<seq>`` is read as n2 = site (field) and seq = image
#: number (timepoint), an interpretation the reference marks unverified (microscopes.md §2).
#: Every other blank cell means the name does not carry the field, so it must parse to None.
BEYOND_TABLE = {
    ("A1_01_1_1_Bright Field_001.tif", "field"): "1",
    ("A1_01_1_1_Bright Field_001.tif", "timepoint"): "1",
    ("B12_02_1_3_Phase Contrast_001.tif", "field"): "3",
    ("B12_02_1_3_Phase Contrast_001.tif", "timepoint"): "1",
}


def check(d: dict[str, str], got: dict) -> None:
    assert got["kind"] == d["expect"], (d["relpath"], got)
    if d["expect"] != "image":
        assert {f: got[f] for f in FIELDS if got[f] is not None} == {}, (d["relpath"], got)
        return
    for f in FIELDS:
        exp = d[f] or BEYOND_TABLE.get((d["relpath"], f), "")
        val = got[f]
        if exp == "":
            assert val is None, (d["relpath"], f, val, "the name does not carry this field")
            continue
        if f in ("field", "z", "timepoint"):
            assert val == int(exp), (d["relpath"], f, val)
        elif f == "elapsed_h":
            assert val == pytest.approx(float(exp), abs=1e-3), (d["relpath"], f)
        elif f == "channel" and exp.isdigit():
            assert val is not None and int(val) == int(exp), (d["relpath"], f, val)
        else:
            assert val == exp, (d["relpath"], f, val)


def as_dict(relpath: str) -> dict:
    r = parse_path(relpath)
    k = r.key
    return {
        "kind": r.kind, "plate": k and k.plate, "well": k and k.well, "field": k and k.field,
        "channel": k and k.channel, "z": k and k.z, "timepoint": k and k.timepoint,
        "elapsed_h": k and k.elapsed_h, "acquired_at": k and k.acquired_at and k.acquired_at.isoformat(),
    }


@needs_table
@pytest.mark.parametrize("row", ROWS, ids=[r["relpath"] for r in ROWS])
def test_table_row_parses(row: dict[str, str]) -> None:
    check(row, as_dict(row["relpath"]))


@needs_table
def test_cli_parse_json_agrees_with_table() -> None:
    paths = [r["relpath"] for r in ROWS]
    out = subprocess.run([sys.executable, "-m", "nscmonitor", "parse", "--json", *paths],
                         capture_output=True, text=True, check=True).stdout
    objs = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert [o["path"] for o in objs] == paths
    for row, obj in zip(ROWS, objs):
        assert set(obj) >= {"path", "kind", "profile", "plate", "well", "field", "channel", "z",
                            "timepoint", "elapsed_h", "acquired_at", "reason"}
        check(row, obj)


@needs_table
def test_cells_beyond_the_table_are_blank_there() -> None:
    """An exception above that the table has since filled in (or a row that left) goes away."""
    blank = {(r["relpath"], f) for r in ROWS for f in FIELDS if r["expect"] == "image" and r[f] == ""}
    assert set(BEYOND_TABLE) <= blank


def test_error_results_carry_a_reason() -> None:
    r = parse_path("IMG_0001.tif")
    assert r.kind == "error" and "profile" in r.reason


def test_sequential_well_index_needs_plate_format() -> None:
    assert parse_path("W0013F0001T0001Z001C1.tif").kind == "error"
    r = parse_path("W0013F0001T0001Z001C1.tif", plate_format=96)
    assert r.kind == "image" and r.key.well == "B01"


def test_well_outside_plate_is_an_error() -> None:
    r = parse_path("VID1_P24_1_00d00h00m.tif", plate_format=96)
    assert r.kind == "error" and "outside" in r.reason


def test_detect_profile_votes_over_folder() -> None:
    names = ["r01c01f01p01-ch1sk1fk1fl1.tiff", "r01c02f01p01-ch1sk1fk1fl1.tiff", "Index.idx.xml"]
    assert detect_profile(names) == "harmony"
    assert detect_profile(["notes.txt"]) is None


def test_custom_profile() -> None:
    from nscmonitor.intake.profiles import CustomProfileSpec, custom_profile

    prof = custom_profile(CustomProfileSpec("lab", r"^(?P<plate>\w+)-(?P<well>[A-H]\d{1,2})-f(?P<field>\d+)-t(?P<timepoint>\d+)\.tif$", index_base=0))
    r = parse_path("exp7-C3-f0-t4.tif", prof)
    assert r.kind == "image" and r.key.well == "C03" and r.key.field == 1 and r.key.timepoint == 5
    with pytest.raises(ValueError, match="named groups"):
        custom_profile(CustomProfileSpec("bad", r"^(?P<plate>\w+)\.tif$"))


def test_harmony_plate_barcode_from_the_measurement_folder() -> None:
    r = parse_path("PLATE-0042__2026-11-02T09_00_00-Measurement 1/Images/r02c03f01p01-ch1sk5fk1fl1.tiff")
    assert r.kind == "image" and r.key.plate == "PLATE-0042" and r.key.well == "B03" and r.key.timepoint == 5


#: IN Cell Analyzer names as public code that reads this instrument's output writes them: the
#: column with or without its zero, runs of one channel without a wave, z planes, and the
#: time-lapse form whose time point and milliseconds since the run began close the brackets.
INCELL = [
    ("B - 03(fld 1 wv DAPI - DAPI).tif", "B03", 1, "DAPI - DAPI", None, None, None),
    ("A - 1(fld 1 wv Cy5 - Cy5).tif", "A01", 1, "Cy5 - Cy5", None, None, None),
    ("A - 01(fld 1 wv Green - dsRed z 3).tif", "A01", 1, "Green - dsRed", 3, None, None),
    ("B - 2(fld 1 wv Cy3 - Cy3 wix 1).tif", "B02", 1, "Cy3 - Cy3 wix 1", None, None, None),
    ("N - 6(fld 1- time 1 - 22858 ms).tif", "N06", 1, None, None, 1, 22858 / 3.6e6),
    ("H - 12(fld 4 z 3- time 50 - 1470000 ms).tif", "H12", 4, None, 3, 50, 1470000 / 3.6e6),
    ("D - 1(fld 2 wv UV - DAPI- time 3 - 7200000 ms).tif", "D01", 2, "UV - DAPI", None, 3, 2.0),
]


def _placed(name: str, profile: str, place: tuple):
    """The key of ``name``, asserted to be an image of ``profile`` at (well, field, channel, z,
    time point) ``place``."""
    r = parse_path(name)
    assert r.kind == "image" and r.profile == profile, (name, r.reason)
    k = r.key
    assert (k.well, k.field, k.channel, k.z, k.timepoint) == place
    return k


@pytest.mark.parametrize("name,well,field,channel,z,t,elapsed", INCELL, ids=[r[0] for r in INCELL])
def test_incell_names(name, well, field, channel, z, t, elapsed) -> None:
    k = _placed(name, "incell", (well, field, channel, z, t))
    assert k.elapsed_h == (None if elapsed is None else pytest.approx(elapsed))


def test_incell_time_points_are_one_channel_not_one_each() -> None:
    """Before, the time token was read as part of the wave, so each time point of a run became a
    channel of its own and the channel rule skipped all but one."""
    keys = [parse_path(f"A - 1(fld 1 wv TL-Brightfield - Cy3- time {t} - {t * 3600000} ms).tif").key
            for t in (1, 2, 3)]
    assert {k.channel for k in keys} == {"TL-Brightfield - Cy3"}
    assert [k.timepoint for k in keys] == [1, 2, 3]
    assert [k.elapsed_h for k in keys] == pytest.approx([1.0, 2.0, 3.0])


#: Nikon NIS-Elements TIFF exports as public code that reads them names them: JOBS runs (the
#: run's start stamp, point and channel by name), ND exports (Wells/Points, xy, t, z, c
#: indices in the order the user chose) and OME-TIFF exports named by well.
NIKON = [
    ("20230223_183729_719__WellI02_PointI02_0002_ChannelFar Red Single_Seq8699.tiff",
     "I02", 2, "Far Red Single", None, None, "2023-02-23T18:37:00"),
    ("20230303_200618_678__WellP24_ChannelMITO,PHAandWGA,SYTO,CONC,HOECHST_Seq0360xy9c5.tif",
     "P24", 9, "5", None, None, "2023-03-03T20:06:00"),
    ("RMS-P01_WellsD8_Points01c5.tif", "D08", 2, "5", None, None, None),
    ("RMS-P01_Points00_WellsJ6c5.tif", "J06", 1, "5", None, None, None),
    ("Well-J18-z1-CONC.ome.tiff", "J18", None, "CONC", 1, None, None),
    ("WellB03_t005xy2z3c1.tif", "B03", 2, "1", 3, 5, None),
]


@pytest.mark.parametrize("name,well,field,channel,z,t,acquired", NIKON, ids=[r[0] for r in NIKON])
def test_nikon_tiff_exports(name, well, field, channel, z, t, acquired) -> None:
    k = _placed(name, "nikon", (well, field, channel, z, t))
    assert (k.acquired_at.isoformat() if k.acquired_at else None) == acquired


def test_names_of_other_vendors_are_not_taken_for_nikon() -> None:
    for name in ("MyPlate_B11_w2.tif", "r01c01f01p01-ch1sk1fk1fl1.tiff", "B2--W00014--P00001--Z00000--T00000--DAPi.tif",
                 "Wellplate_notes.tif"):
        assert parse_path(name).profile != "nikon", name


def test_leica_fields_of_a_well_are_told_apart() -> None:
    """Leica names give a field as its X/Y place in the well's grid; before, every field of a
    well had no number, so nothing told them apart (and status took them for repeated reads)."""
    name = "image--L0000--S00--U01--V02--J08--E00--O00--X{x:02d}--Y{y:02d}--T0003--Z00--C00.ome.tif"
    fields = [parse_path(name.format(x=x, y=y)).key.field for y in range(2) for x in range(3)]
    assert fields == [1, 2, 3, 101, 102, 103]
    assert parse_path(name.format(x=0, y=0)).key.well == "C02"


def test_cq1_plate_is_the_folder_its_images_are_written_into() -> None:
    """CQ1 names carry a well number and no plate: two plates' folders under one watched folder
    were one plate, their wells merged."""
    a, b = (parse_path(f"{p}/W0013F0002T0003Z001C1.tif", plate_format=96).key for p in ("PlateA", "PlateB"))
    assert (a.plate, b.plate, a.well, a.field, a.timepoint) == ("PlateA", "PlateB", "B01", 2, 3)
