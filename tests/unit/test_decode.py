"""Decoding what instruments write: bit depths, signed data, stacks, other formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from nscmonitor.readers.decode import DecodeError, decode


def test_bit_depths_and_signed_int16(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for dtype, hi in (("uint8", 255), ("uint16", 4095), ("int16", 2000)):
        arr = rng.integers(-hi if dtype == "int16" else 0, hi, (40, 50)).astype(dtype)
        p = tmp_path / f"{dtype}.tif"
        tifffile.imwrite(p, arr)
        d = decode(p)
        assert d.dtype == dtype and np.array_equal(d.pixels, arr)


def test_multipage_picks_the_first_plane_or_the_requested_channel(tmp_path: Path) -> None:
    stack = np.stack([np.full((32, 32), v, np.uint16) for v in (10, 20, 30)])
    stack[:, 0, 0] = 0
    p = tmp_path / "stack.ome.tif"
    tifffile.imwrite(p, stack, metadata={"axes": "CYX"})
    assert decode(p).pixels[1, 1] == 10
    assert decode(p, channel_index=2).pixels[1, 1] == 30


def test_pixel_size_from_resolution_tags(tmp_path: Path) -> None:
    p = tmp_path / "px.tif"
    tifffile.imwrite(p, np.zeros((16, 16), np.uint8), resolution=(1e4 / 1.24, 1e4 / 1.24), resolutionunit="CENTIMETER")
    assert decode(p).pixel_size_um == pytest.approx(1.24)


def _metaseries(state: str = "on", x: str = "1.3668", units: str = "um") -> str:
    """A MetaXpress plane description, as ImageXpress writes it (the real ones hold some fifty
    more properties)."""
    return ("<MetaData>\n<prop id=\"Description\" type=\"string\" value=\"\"/>\n<PlaneInfo>\n"
            f"<prop id=\"spatial-calibration-state\" type=\"bool\" value=\"{state}\"/>\n"
            f"<prop id=\"spatial-calibration-x\" type=\"float\" value=\"{x}\"/>\n"
            f"<prop id=\"spatial-calibration-units\" type=\"string\" value=\"{units}\"/>\n</PlaneInfo>\n</MetaData>")


@pytest.mark.parametrize("write,um", [
    (dict(description=_metaseries(), software="MetaSeries", metadata=None), 1.3668),
    (dict(description=_metaseries(x="650", units="nm"), software="MetaSeries", metadata=None), 0.65),
    (dict(description=_metaseries(state="off"), software="MetaSeries", metadata=None), None),
    (dict(imagej=True, resolution=(1 / 0.65, 1 / 0.65), metadata={"unit": "micron"}), 0.65),
    (dict(imagej=True, resolution=(1 / 0.65, 1 / 0.65), metadata={"unit": "\\u00B5m"}), 0.65),
    (dict(imagej=True, resolution=(1 / 0.65, 1 / 0.65), metadata={"unit": "pixel"}), None),
    (dict(ome=True, metadata={"PhysicalSizeX": 0.325}), 0.325),
    (dict(ome=True, metadata={"PhysicalSizeX": 325, "PhysicalSizeXUnit": "nm"}), 0.325),
    (dict(ome=True, metadata={"PhysicalSizeX": 1, "PhysicalSizeXUnit": "pixel"}), None),
    (dict(ome=True, metadata={"axes": "YX"}), None),
    (dict(resolution=(1.0, 1.0), resolutionunit="INCH"), None),
], ids=["metaseries", "metaseries-nm", "metaseries-uncalibrated", "imagej-micron", "imagej-escaped-mu",
        "imagej-pixel", "ome-default-unit", "ome-nm", "ome-pixel", "ome-without", "inch-tag"])
def test_pixel_size_from_what_the_acquisition_software_writes(tmp_path: Path, write: dict, um) -> None:
    """MetaXpress (ImageXpress), Fiji and OME-TIFF writers state the pixel size in their own
    metadata and often write no centimetre resolution tags: read from there, a 4x frame is
    resampled and flagged as another magnification instead of served at its own scale."""
    p = tmp_path / "px.tif"
    tifffile.imwrite(p, np.zeros((16, 16), np.uint16), **write)
    got = decode(p).pixel_size_um
    assert got == (None if um is None else pytest.approx(um))


def test_the_software_s_own_pixel_size_wins_and_a_bad_one_is_logged_and_skipped(tmp_path: Path, caplog) -> None:
    tags = dict(resolution=(1e4 / 1.24, 1e4 / 1.24), resolutionunit="CENTIMETER", software="MetaSeries", metadata=None)
    p = tmp_path / "both.tif"
    tifffile.imwrite(p, np.zeros((16, 16), np.uint16), description=_metaseries(x="2.48"), **tags)
    assert decode(p).pixel_size_um == pytest.approx(2.48)
    for bad, why in (("abc", "could not convert"), ("1e9", "outside")):
        q = tmp_path / f"bad-{bad}.tif"
        tifffile.imwrite(q, np.zeros((16, 16), np.uint16), description=_metaseries(x=bad), **tags)
        with caplog.at_level("WARNING", logger="nscmonitor.readers.decode"):
            caplog.clear()
            d = decode(q)
        assert d.pixel_size_um == pytest.approx(1.24) and d.pixels.shape == (16, 16)
        assert any(q.name in r.getMessage() and "MetaSeries" in r.getMessage() and why in r.getMessage()
                   for r in caplog.records), caplog.text


def test_png_and_rgb_jpeg(tmp_path: Path) -> None:
    Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)).save(tmp_path / "a.png")
    assert decode(tmp_path / "a.png").pixels.shape == (64, 64)
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "b.jpg")
    assert decode(tmp_path / "b.jpg").pixels.shape == (20, 30)


def test_pixel_cap_refuses_from_the_header(tmp_path: Path) -> None:
    p = tmp_path / "big.tif"
    tifffile.imwrite(p, np.zeros((300, 400), np.uint8))
    with pytest.raises(DecodeError, match="above the cap") as exc:
        decode(p, max_pixels=100_000)
    assert exc.value.permanent


def test_hash_is_of_the_bytes_that_were_decoded(tmp_path: Path) -> None:
    import hashlib

    p = tmp_path / "h.tif"
    tifffile.imwrite(p, np.ones((16, 16), np.uint8))
    assert decode(p).sha256 == hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.mark.parametrize("shape", [(8, 8), (8, 8, 3)])
def test_complex_pixels_are_refused_from_the_header(tmp_path: Path, shape: tuple[int, ...]) -> None:
    """SampleFormat 6 (complex floats) is no intensity: refused with the reason before any
    plane is averaged (found by the fuzzed-header test: averaging RGB samples raised a numpy
    warning instead)."""
    p = tmp_path / "complex.tif"
    tifffile.imwrite(p, np.ones(shape, np.complex64), photometric="rgb" if len(shape) == 3 else "minisblack")
    with pytest.raises(DecodeError, match="unsupported pixel type complex64") as exc:
        decode(p, max_pixels=1_000_000)
    assert exc.value.permanent


def test_an_entity_bomb_in_the_ome_xml_is_refused_and_the_frame_still_decodes(tmp_path: Path, caplog) -> None:
    """A hostile OME-XML (a billion-laughs entity chain in the pixel size): the parser's
    amplification limit stops it, the warning names the file, and the pixels are served."""
    chain = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    xml = ('<?xml version="1.0"?><!DOCTYPE OME [<!ENTITY l0 "lol">' + chain + ']>'
           '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image ID="Image:0">'
           '<Pixels ID="Pixels:0" PhysicalSizeX="&l9;" DimensionOrder="XYCZT" Type="uint16" SizeX="16" SizeY="16" '
           'SizeC="1" SizeZ="1" SizeT="1"/></Image></OME>')
    p = tmp_path / "bomb.tif"
    tifffile.imwrite(p, np.full((16, 16), 7, np.uint16), description=xml, metadata=None)
    with caplog.at_level("WARNING", logger="nscmonitor.readers.decode"):
        d = decode(p)
    assert d.pixel_size_um is None and int(d.pixels[0, 0]) == 7
    assert any("bomb.tif" in r.getMessage() and "OME-XML" in r.getMessage() for r in caplog.records), caplog.text


def _local_naive(dt):
    return dt.astimezone().replace(tzinfo=None)


@pytest.mark.parametrize("write,want", [
    (lambda p, t: tifffile.imwrite(p, np.zeros((16, 16), np.uint16), datetime=_local_naive(t)), True),
    (lambda p, t: tifffile.imwrite(p, np.zeros((16, 16), np.uint16), metadata=None, software="MetaSeries",
                                   description="<MetaData>\n<PlaneInfo>\n<prop id=\"acquisition-time-local\" "
                                   f"type=\"time\" value=\"{_local_naive(t):%Y%m%d %H:%M:%S.%f}\"/>\n</PlaneInfo>\n"
                                   "</MetaData>"), True),
    (lambda p, t: tifffile.imwrite(p, np.zeros((16, 16), np.uint16), ome=True,
                                   metadata={"AcquisitionDate": t.isoformat()}), True),
    (lambda p, t: tifffile.imwrite(p, np.zeros((16, 16), np.uint16), datetime="1970:01:01 00:00:00"), False),
    (lambda p, t: tifffile.imwrite(p, np.zeros((16, 16), np.uint16), extratags=[(306, "s", 0, "not a time", True)]),
     False),
    (lambda p, t: tifffile.imwrite(p, np.zeros((16, 16), np.uint16)), False),
], ids=["datetime-tag", "metaseries", "ome", "unset-clock", "malformed", "none"])
def test_acquisition_time_from_the_file(tmp_path: Path, write, want: bool) -> None:
    """When the file says its image was taken, in UTC (a time without a zone is this
    machine's local time); an unset camera clock or an unreadable value says nothing."""
    from datetime import datetime, timezone

    taken = datetime(2026, 3, 2, 11, 30, 5, tzinfo=timezone.utc)
    p = tmp_path / "t.tif"
    write(p, taken)
    got = decode(p).acquired_at
    assert got == (taken if want else None)
