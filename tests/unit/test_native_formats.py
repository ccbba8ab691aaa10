"""Native format readers on real files written by the formats' own libraries: the pixel cap
is applied from the metadata before any pixel is read, OME-Zarr 0.4 (Zarr v2) plates are
placed like 0.5 ones, and well names in scene/position metadata are read as wells."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nscmonitor.readers.decode import DecodeError, decode
from nscmonitor.readers.formats import format_of, make_ref, pick_channel, split_ref
from nscmonitor.readers.formats.czi import scene_wells
from nscmonitor.readers.formats.nd2 import position_wells


def test_pick_channel_by_name_number_or_refusal() -> None:
    names = ["DAPI", "Brightfield", "GFP"]
    assert pick_channel(names, 3, "brightfield ", "x") == 1
    assert pick_channel(names, 3, "3", "x") == 2
    assert pick_channel(names, 3, None, "x") == 0
    assert pick_channel(["DAPI"], 1, "GFP", "x") == 0  # one channel: nothing to choose
    with pytest.raises(DecodeError) as e:
        pick_channel(names, 3, "4", "ND2 file")
    assert e.value.permanent
    assert e.value.reason == "channel '4' is not in this ND2 file; channels present: 1=DAPI, 2=Brightfield, 3=GFP"


def test_refs_round_trip_and_a_real_file_named_like_a_ref_stays_a_file(tmp_path: Path) -> None:
    ref = make_ref(str(tmp_path / "a#1.czi"), scene=3)
    assert split_ref(ref) == (str(tmp_path / "a#1.czi"), {"scene": 3})
    odd = tmp_path / "x.tif|scene=1"
    odd.write_bytes(b"II*\x00")
    assert split_ref(str(odd)) == (str(odd), {})
    assert format_of(str(odd)) is None  # read as the TIFF it is


def test_well_names_in_scene_and_position_metadata() -> None:
    md = {"ImageDocument": {"Metadata": {"Information": {"Image": {"Dimensions": {"S": {"Scenes": {"Scene": [
        {"@Index": "0", "@Name": "B3-1", "Shape": {"@Name": "B3"}},
        {"@Index": "1", "@Name": "Scene 2"},
        {"@Index": "2", "@Name": "P24-4"},
    ]}}}}}}}}
    assert scene_wells(md) == {0: "B03", 2: "P24"}
    assert position_wells(["B3", "WellC04", "#3", None, "Wells_D12"]) == {0: "B03", 1: "C04", 4: "D12"}


def test_ome_zarr_04_plate_is_placed_and_read(tmp_path: Path) -> None:
    pytest.importorskip("ome_zarr")
    import zarr
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_image, write_plate_metadata, write_well_metadata

    from nscmonitor.readers.formats.omezarr import plate_fields

    root = zarr.open_group(str(tmp_path / "p.zarr"), mode="w", zarr_format=2)
    write_plate_metadata(root, ["A", "B"], ["1", "2"], ["B/2"], fmt=FormatV04(), name="v04")
    well = root.require_group("B").require_group("2")
    write_well_metadata(well, [{"path": "0"}, {"path": "1"}], fmt=FormatV04())
    planes = [np.full((1, 1, 24, 32), v, np.uint16) for v in (5, 9)]
    for i, p in enumerate(planes):
        write_image(p, well.require_group(str(i)), axes="czyx", scale_factors=[], fmt=FormatV04())
    assert (tmp_path / "p.zarr" / ".zattrs").exists()
    fields = plate_fields(tmp_path / "p.zarr")
    assert [(f.key.plate, f.key.well, f.key.field, f.key.timepoint) for f in fields] == \
        [("v04", "B02", 1, None), ("v04", "B02", 2, None)]
    got = decode(str(fields[1].path))
    assert got.pixels.shape == (24, 32) and int(got.pixels[0, 0]) == 9


def test_zarr_plane_above_the_pixel_cap_is_refused_before_reading(tmp_path: Path) -> None:
    pytest.importorskip("ome_zarr")
    import zarr
    from ome_zarr.writer import write_plate_metadata, write_well_metadata

    from nscmonitor.readers.formats.omezarr import plate_fields

    root = zarr.open_group(str(tmp_path / "big.zarr"), mode="w")
    write_plate_metadata(root, ["A"], ["1"], ["A/1"], name="big")
    well = root.require_group("A").require_group("1")
    write_well_metadata(well, [{"path": "0"}])
    field = well.require_group("0")
    # 60000 x 60000 declared, no chunk written: reading it would allocate 7 GB
    field.create_array("0", shape=(1, 60000, 60000), chunks=(1, 1024, 1024), dtype="uint16")
    field.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0, 1.0]}]}]}]}
    (f,) = plate_fields(tmp_path / "big.zarr")
    with pytest.raises(DecodeError) as e:
        decode(str(f.path), max_pixels=10_000_000)
    assert e.value.permanent and "60000 x 60000" in e.value.reason


def test_czi_scene_above_the_pixel_cap_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("pylibCZIrw")
    from pylibCZIrw import czi

    path = tmp_path / "a.czi"
    with czi.create_czi(str(path), exist_ok=True) as w:
        w.write(np.ones((40, 50), np.uint16), plane={"C": 0, "T": 0, "Z": 0})
        w.write_metadata(document_name="a")
    with pytest.raises(DecodeError) as e:
        decode(str(path), max_pixels=1000)
    assert e.value.permanent and "50 x 40" in e.value.reason
    assert decode(str(path)).pixels.shape == (40, 50)
