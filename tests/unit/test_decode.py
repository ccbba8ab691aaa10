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
