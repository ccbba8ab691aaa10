"""Reading image files read-only into one 2-D plane.

Size is checked from the header before any pixel is decoded, so a decompression bomb or a
100000 x 100000 header is refused in microseconds instead of exhausting memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class DecodeError(Exception):
    """The file cannot be turned into an image plane. ``permanent`` errors are quarantined
    at once; others (possibly a half-written or locked file) are retried with backoff."""

    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


@dataclass(frozen=True)
class Decoded:
    pixels: np.ndarray
    dtype: str
    pixel_size_um: float | None
    sha256: str


def _hash(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _tiff(data: bytes, path: Path, channel_index: int | None, max_pixels: int) -> tuple[np.ndarray, float | None]:
    import io

    import tifffile

    magic_ok = data[:4] in TIFF_MAGIC
    try:
        tf = tifffile.TiffFile(io.BytesIO(data), name=path.name)
    except Exception as exc:  # tifffile raises TiffFileError, struct.error, IndexError, ValueError...
        # Without a TIFF signature no later retry can help; with one, the writer may still be at work.
        raise DecodeError(f"not a readable TIFF: {exc}", permanent=not magic_ok) from exc
    with tf:
        if not tf.series:
            raise DecodeError("TIFF holds no image series", permanent=True)
        series = tf.series[0]
        shape = series.shape
        n_px = int(np.prod(shape[-2:]))
        if n_px > max_pixels:
            raise DecodeError(f"frame of {shape[-1]} x {shape[-2]} pixels is above the cap of {max_pixels} pixels",
                              permanent=True)
        try:
            arr = series.asarray()
        except Exception as exc:  # tifffile and imagecodecs raise many types for bad strips
            raise DecodeError(f"TIFF pixel data cannot be decoded (truncated or corrupt): {exc}",
                              permanent=False) from exc
        axes = series.axes
        pixel_size = _tiff_pixel_size(tf)
    return _pick_plane(arr, axes, channel_index), pixel_size


def _tiff_pixel_size(tf) -> float | None:  # noqa: ANN001 - tifffile object
    try:
        page = tf.pages[0]
        tag = page.tags.get("XResolution")
        unit = page.tags.get("ResolutionUnit")
        if tag is None or unit is None:
            return None
        num, den = tag.value
        if not num:
            return None
        per_unit = den / num
        u = int(unit.value)
        if u == 3:  # centimetre
            return per_unit * 1e4
        return None
    except (AttributeError, TypeError, ValueError, ZeroDivisionError):
        return None


def _pick_plane(arr: np.ndarray, axes: str, channel_index: int | None) -> np.ndarray:
    """Reduce a multi-dimensional series (OME stacks, RGB) to the plane we score."""
    arr = np.asarray(arr)
    axes = axes[-arr.ndim:] if len(axes) >= arr.ndim else axes
    while arr.ndim > 2:
        ax = axes[0] if axes else "Q"
        if ax in "C" and channel_index is not None and channel_index < arr.shape[0]:
            arr, axes = arr[channel_index], axes[1:]
        elif ax == "S" or (arr.ndim == 3 and arr.shape[-1] in (3, 4) and axes.endswith("S")):
            arr, axes = arr[..., :3].mean(axis=-1).astype(np.float32), axes[:-1]
        else:
            arr, axes = arr[0], axes[1:]
    return arr


def _pillow(data: bytes, max_pixels: int) -> np.ndarray:
    import io

    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise DecodeError(f"frame of {w} x {h} pixels is above the cap of {max_pixels} pixels", permanent=True)
            im.load()
            if im.mode in ("RGB", "RGBA", "P", "CMYK"):
                im = im.convert("L")
            return np.asarray(im)
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"image above the pixel cap: {exc}", permanent=True) from exc
    except UnidentifiedImageError as exc:
        raise DecodeError(f"not a readable image: {exc}", permanent=True) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DecodeError(f"image data cannot be decoded (truncated or corrupt): {exc}", permanent=False) from exc


def decode(path: str | Path, *, channel_index: int | None = None, max_pixels: int = 200_000_000,
           max_bytes: int = 4 << 30) -> Decoded:
    """Read the file once (read-only), hash those bytes and decode them, so the hash always
    matches the pixels that were scored even if the file changes meanwhile."""
    path = Path(path)
    try:
        size = os.stat(path).st_size
        if size == 0:
            raise DecodeError("empty file (0 bytes)", permanent=True)
        if size > max_bytes:
            raise DecodeError(f"file of {size} bytes is above the {max_bytes}-byte cap", permanent=True)
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError as exc:
        raise DecodeError("file disappeared before it could be read", permanent=False) from exc
    except PermissionError as exc:
        raise DecodeError(f"file is locked or not readable: {exc}", permanent=False) from exc
    except OSError as exc:
        raise DecodeError(f"cannot read file: {exc}", permanent=False) from exc
    digest = _hash(data)
    suffix = path.suffix.lower()
    pixel_size = None
    if suffix in (".tif", ".tiff") or data[:4] in TIFF_MAGIC:
        arr, pixel_size = _tiff(data, path, channel_index, max_pixels)
    elif suffix in (".c01", ".dib"):
        raise DecodeError("Cellomics .C01/.DIB files need Bio-Formats; export TIFF from HCS Studio", permanent=True)
    else:
        arr = _pillow(data, max_pixels)
    if arr.ndim != 2 or min(arr.shape) < 8:
        raise DecodeError(f"decoded plane has shape {arr.shape}; expected a 2-D image of at least 8 x 8", permanent=True)
    if arr.dtype.kind not in "uif" or arr.dtype == np.bool_:
        raise DecodeError(f"unsupported pixel type {arr.dtype}", permanent=True)
    return Decoded(arr, str(arr.dtype), pixel_size, digest)
