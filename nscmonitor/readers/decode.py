"""Reading image files read-only into one 2-D plane.

Everything is checked from the header before any pixel is decoded (pixels of the page, bytes
to read, page count, whether the data lies inside the file), and only the page holding the
scored plane is decoded, so a decompression bomb, a 100000 x 100000 header or a thousand-page
stack is refused or read in bounded memory instead of exhausting it.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import re
import stat
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import BinaryIO

import numpy as np

from nscmonitor.core.errors import UNREADABLE
from nscmonitor.core.names import shown
from nscmonitor.core.limits import DEFAULT_MAX_PIXELS

log = logging.getLogger(__name__)


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
    #: when the file says the image was taken (UTC), from its own metadata; None when it does not
    #: say (``acquisition_time``)
    acquired_at: datetime | None = None


TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

#: pixel sizes outside this range (micrometres per pixel) are not believed: an absurd
#: resolution tag would make resampling allocate terabytes or shrink the frame to nothing
PIXEL_SIZE_RANGE_UM = (0.01, 100.0)
#: a TIFF with more pages than this is refused before its series are built: each page costs
#: header parsing and memory even though only one is ever decoded
MAX_PAGES = 100_000
#: compressed data read for a page may exceed its decoded size by at most this factor (plus
#: 1 MiB): no codec expands data this much, so more is a bomb or a broken header
MAX_COMPRESSED_RATIO = 2
HASH_CHUNK = 1 << 20

_BYTES_LITERAL = re.compile(r"""b(['"]).*?(?<!\\)\1""")


def why(exc: BaseException, limit: int = 200) -> str:
    """An exception as one short line for an error column. Readers like to quote the first
    bytes of a file they cannot parse; those bytes are removed, so no file content (a
    symlink's target, a secret) ever reaches logs, status or exports."""
    text = _BYTES_LITERAL.sub("<bytes>", str(exc)).replace("\n", " ").strip() or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _hash(fh: BinaryIO) -> str:
    h = hashlib.sha256()
    fh.seek(0)
    while chunk := fh.read(HASH_CHUNK):
        h.update(chunk)
    return h.hexdigest()


def _plane_index(series, page_axes: str, channel_index: int | None,
                 time_index: int | None = None) -> tuple[int, int | None]:
    """Which page holds the scored plane: the first of every leading axis except C, where
    ``channel_index`` is taken, and T, where ``time_index`` is (a time point of a series).
    Returns the page index and the channel index still to pick inside the page (when C is a
    page axis)."""
    axes, shape = series.axes, series.shape
    n_lead = len(axes) - len(page_axes)
    if time_index and ("T" not in axes[:max(n_lead, 0)] or time_index >= shape[axes.index("T")]):
        raise DecodeError(f"the stack holds no time point {time_index + 1} (axes {axes}, shape {tuple(shape)})",
                          permanent=True)
    if n_lead <= 0 or not axes.endswith(page_axes):
        return 0, channel_index
    lead_axes, lead_shape = axes[:n_lead], shape[:n_lead]
    idx = [channel_index if ax == "C" and channel_index is not None and channel_index < n else
           time_index if ax == "T" and time_index else 0
           for ax, n in zip(lead_axes, lead_shape)]
    inner = None if "C" in lead_axes else channel_index
    return int(np.ravel_multi_index(idx, lead_shape)), inner


_OME_PIXELS = re.compile(r"<(?:\w+:)?Pixels\b[^>]*>")
_OME_SIZE = re.compile(r'\bSize([ZCT])\s*=\s*"(\d+)"')


def declared_planes(tf) -> int:  # tifffile.TiffFile
    """The planes a TIFF's metadata says its series hold (every OME image's SizeZ x SizeC x
    SizeT, or ImageJ's ``images``): tifffile sizes its series by them before reading a page,
    so a stated count far beyond the file's pages would take the memory of the count."""
    total = 0
    if tf.is_ome:
        for tag in _OME_PIXELS.findall(tf.ome_metadata or ""):
            sizes = {k: int(v) for k, v in _OME_SIZE.findall(tag)}
            total += sizes.get("Z", 1) * sizes.get("C", 1) * sizes.get("T", 1)
    if tf.is_imagej:
        try:
            total = max(total, int((tf.imagej_metadata or {}).get("images", 0)))
        except (TypeError, ValueError):
            pass
    return total


def check_declared_planes(tf) -> None:  # tifffile.TiffFile
    planes = declared_planes(tf)
    if planes > MAX_PAGES:
        raise DecodeError(f"the TIFF's metadata declares {planes} planes, above the cap of {MAX_PAGES} "
                          f"(the file holds {len(tf.pages)} pages)", permanent=True)


def _tiff(fh: BinaryIO, path: Path, size: int, channel_index: int | None,
          max_pixels: int, channel: str | None = None,
          time_index: int | None = None) -> tuple[np.ndarray, float | None, datetime | None]:
    """Decode the one page that holds the scored plane; every limit is checked from the
    header first, so memory is bounded by ``max_pixels``, never by the file."""
    import tifffile

    fh.seek(0)
    magic_ok = fh.read(4) in TIFF_MAGIC
    fh.seek(0)
    try:
        tf = tifffile.TiffFile(fh, name=path.name, _multifile=False)
    except Exception as exc:  # tifffile raises TiffFileError, struct.error, IndexError, ValueError...
        # Without a TIFF signature no later retry can help; with one, the writer may still be at work.
        raise DecodeError(f"not a readable TIFF: {why(exc)}", permanent=not magic_ok) from exc
    with tf:
        try:
            n_pages = len(tf.pages)
            if n_pages > MAX_PAGES:
                raise DecodeError(f"TIFF has {n_pages} pages, above the cap of {MAX_PAGES}", permanent=True)
            check_declared_planes(tf)
            if not tf.series:
                raise DecodeError("TIFF holds no image series", permanent=True)
            series = tf.series[0]
            if channel is not None:
                from nscmonitor.readers.formats.ometiff import channel_index as stack_channel

                channel_index = stack_channel(tf, series, channel)
            key = series.keyframe
            page_axes = str(key.axes)
            index, inner_channel = _plane_index(series, page_axes, channel_index, time_index)
            pages = series.pages
            if index < len(pages) and pages[index] is not None:
                page = pages[index]
            elif index == 0:
                page = key
            else:  # a stack still being written, or one missing planes: never score another plane instead
                raise DecodeError(f"file is incomplete: plane {index + 1} of the stack is missing", permanent=False)
            shape = tuple(int(v) for v in key.shape)
            dtype = key.dtype
            offsets, counts = tuple(page.dataoffsets), tuple(page.databytecounts)
            pixel_size = _tiff_pixel_size(tf, key, path)
            acquired = acquisition_time(tf, key, path)
        except DecodeError:
            raise
        except Exception as exc:  # malformed tags surface as many types
            raise DecodeError(f"TIFF header cannot be read: {why(exc)}", permanent=True) from exc
        _check_page_limits(shape, page_axes, dtype, offsets, counts, size, max_pixels)
        try:
            arr = page.asarray()
        except Exception as exc:  # tifffile and imagecodecs raise many types for bad strips
            raise DecodeError(f"TIFF pixel data cannot be decoded (truncated or corrupt): {why(exc)}",
                              permanent=False) from exc
    return _pick_plane(arr, page_axes, inner_channel), pixel_size, acquired


def _check_page_limits(shape: tuple[int, ...], page_axes: str, dtype, offsets: tuple, counts: tuple, size: int,
                       max_pixels: int) -> None:
    """The page's size, pixel type and strip table checked against the caps and the file's
    length, from the header alone, before any pixel is decoded."""
    h, w = (shape[page_axes.index("Y")], shape[page_axes.index("X")]) \
        if "Y" in page_axes and "X" in page_axes else (shape[-2:] if len(shape) >= 2 else (1, shape[0] if shape else 0))
    if h * w > max_pixels:
        raise DecodeError(f"frame of {w} x {h} pixels is above the cap of {max_pixels} pixels", permanent=True)
    values = math.prod(shape)
    if values > 4 * max_pixels:
        raise DecodeError(f"page of shape {shape} holds {values} values, above 4 x the pixel cap", permanent=True)
    if dtype is None:
        raise DecodeError("TIFF pixel type is not supported", permanent=True)
    if np.dtype(dtype).kind not in "uif":  # complex (SampleFormat 6) or anything else that is no intensity
        raise DecodeError(f"unsupported pixel type {np.dtype(dtype)}", permanent=True)
    raw = values * np.dtype(dtype).itemsize
    to_read = sum(int(c) for c in counts)
    if to_read > MAX_COMPRESSED_RATIO * raw + (1 << 20):
        raise DecodeError(f"page claims {to_read} bytes of pixel data for {raw} decoded bytes; header is corrupt",
                          permanent=True)
    if any(c and o + c > size for o, c in zip(offsets, counts)):
        raise DecodeError(f"file is incomplete: pixel data ends past the end of the file ({size} bytes); "
                          "it may still be being written", permanent=False)


#: length units the acquisition software writes, in micrometres: OME-XML's UnitsLength symbols,
#: MetaSeries' spatial-calibration-units, ImageJ's unit (the micro sign as U+00B5 or U+03BC).
#: Pixels, inches and the rest say nothing usable and leave the frame at its own scale.
UM_PER_SYMBOL = {"pm": 1e-6, "\u00c5": 1e-4, "nm": 1e-3, "um": 1.0, "\u00b5m": 1.0, "\u03bcm": 1.0, "mm": 1e3,
                 "cm": 1e4, "m": 1e6}
#: the same as words, any case (ImageJ writes "micron", or the escape "\\u00B5m" as six characters)
UM_PER_WORD = {"micron": 1.0, "microns": 1.0, "micrometer": 1.0, "micrometre": 1.0, "\\u00b5m": 1.0,
               "nanometer": 1e-3, "nanometre": 1e-3, "millimeter": 1e3, "millimetre": 1e3}
#: OME-XML is read in chunks of this many characters until the first image's Pixels element
OME_CHUNK = 1 << 16


def _um_per(unit: object) -> float | None:
    if unit is None:
        return None
    u = str(unit).strip()
    return UM_PER_SYMBOL.get(u, UM_PER_WORD.get(u.lower()))


@functools.lru_cache(maxsize=2)
def _ome_first_image(xml: str) -> tuple[dict[str, str], str | None]:
    """The first image's Pixels attributes and its AcquisitionDate (which the schema puts before
    its Pixels), from the OME-XML parsed only up to that Pixels element: a long acquisition's
    plane list makes the XML megabytes long. Cached, so the pixel size and the acquisition time
    of one decode parse it once."""
    import xml.etree.ElementTree as ET

    parser = ET.XMLPullParser(events=("start", "end"))
    acquired = None
    for i in range(0, len(xml), OME_CHUNK):
        parser.feed(xml[i:i + OME_CHUNK])
        for event, el in parser.read_events():
            tag = el.tag.rsplit("}", 1)[-1]
            if event == "end" and tag == "AcquisitionDate" and el.text and acquired is None:
                acquired = el.text.strip()
            elif event == "start" and tag == "Pixels":
                return dict(el.attrib), acquired
    return {}, acquired


def _ome_um(tf, page) -> float | None:
    """PhysicalSizeX of the first image's Pixels (OME-TIFF: Micro-Manager, scanR, Bio-Formats
    and most converters); the unit defaults to micrometres, as the schema says."""
    xml = tf.ome_metadata if tf.is_ome else None
    if not xml:
        return None
    pixels = _ome_first_image(xml)[0]
    if pixels.get("PhysicalSizeX") is None:
        return None
    factor = _um_per(pixels.get("PhysicalSizeXUnit", "\u00b5m"))
    return None if factor is None else float(pixels["PhysicalSizeX"]) * factor


def _metaseries_um(tf, page) -> float | None:
    """MetaXpress/MetaMorph (ImageXpress): ``spatial-calibration-x`` of the plane, binning
    included, only while ``spatial-calibration-state`` says the image is calibrated (an
    uncalibrated image carries 1 per pixel)."""
    if not tf.is_metaseries:
        return None
    info = (tf.metaseries_metadata or {}).get("PlaneInfo") or {}
    if str(info.get("spatial-calibration-state")).lower() not in ("true", "on", "1"):
        return None
    factor = _um_per(info.get("spatial-calibration-units", "um"))
    return None if factor is None else float(info["spatial-calibration-x"]) * factor


def _imagej_um(tf, page) -> float | None:
    """ImageJ/Fiji: the XResolution tag counts pixels per the description's ``unit``, whatever
    the ResolutionUnit tag says (ImageJ writes none for micrometres)."""
    if not tf.is_imagej:
        return None
    factor = _um_per((tf.imagej_metadata or {}).get("unit"))
    tag = page.tags.get("XResolution")
    if factor is None or tag is None:
        return None
    num, den = tag.value
    return den / num * factor if num else None


def _resolution_um(tf, page) -> float | None:
    """The TIFF resolution tags in centimetres (inch-based tags are almost always a 72-dpi
    default, not a measurement)."""
    tag = page.tags.get("XResolution")
    unit = page.tags.get("ResolutionUnit")
    if tag is None or unit is None or int(unit.value) != 3:
        return None
    num, den = tag.value
    return den / num * 1e4 if num else None


#: where a TIFF states its pixel size, most specific first: what the acquisition software
#: recorded in its own metadata, then the generic tags
PIXEL_SIZE_SOURCES = (("OME-XML", _ome_um), ("MetaSeries", _metaseries_um), ("ImageJ", _imagej_um),
                      ("resolution tag", _resolution_um))


def _tiff_pixel_size(tf, page, path: Path) -> float | None:  # tifffile TiffFile and page
    """Micrometres per pixel from the first source in ``PIXEL_SIZE_SOURCES`` that states a
    believable one. Many instruments write it only in their own metadata: ImageXpress files
    carry it in the MetaSeries XML with no resolution tags, so until 2026-12-05 they were
    served at their own scale, a 4x frame (13.6 um/px) read like a 10x one and never flagged
    (docs/training.md, "Out-of-distribution flag"). A malformed or out-of-range value is logged
    with the file and skipped; with none left the frame is scored at its own scale."""
    lo, hi = PIXEL_SIZE_RANGE_UM
    for source, read in PIXEL_SIZE_SOURCES:
        try:
            um = read(tf, page)
        except Exception as exc:  # other software's metadata is malformed in many ways
            log.warning("%s: ignoring the pixel size in its %s: %s", shown(str(path)), source, why(exc))
            continue
        if um is None:
            continue
        if math.isfinite(um) and lo <= um <= hi:
            return float(um)
        log.warning("%s: ignoring the pixel size in its %s: %.3g um per pixel is outside %g-%g",
                    shown(str(path)), source, um, lo, hi)
    return None


#: acquisition times before this are a camera's unset clock, not a measurement
EARLIEST_ACQUISITION = datetime(2000, 1, 1, tzinfo=timezone.utc)
#: the TIFF DateTime tag as the standard writes it, and as MetaXpress does
_DATETIME_FORMATS = ("%Y:%m:%d %H:%M:%S", "%Y%m%d %H:%M:%S.%f", "%Y%m%d %H:%M:%S")


def _utc(dt: datetime) -> datetime:
    """A time the file gives without a zone is the instrument PC's local time, taken as this
    machine's (the daemon runs beside the instrument)."""
    return (dt if dt.tzinfo is not None else dt.astimezone()).astimezone(timezone.utc)


def _ome_acquired(tf, page) -> datetime | None:
    """``AcquisitionDate`` of the first image."""
    xml = tf.ome_metadata if tf.is_ome else None
    if not xml:
        return None
    text = _ome_first_image(xml)[1]
    return datetime.fromisoformat(text) if text else None


def _metaseries_acquired(tf, page) -> datetime | None:
    """MetaXpress: the plane's ``acquisition-time-local``."""
    if not tf.is_metaseries:
        return None
    value = ((tf.metaseries_metadata or {}).get("PlaneInfo") or {}).get("acquisition-time-local")
    return value if isinstance(value, datetime) else None


def _datetime_tag(tf, page) -> datetime | None:
    """The TIFF DateTime tag (most instruments write it when they save the file)."""
    tag = page.tags.get("DateTime")
    if tag is None or not isinstance(tag.value, str):
        return None
    text = tag.value.strip()
    for fmt in _DATETIME_FORMATS:
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            continue
    raise ValueError(f"unrecognised DateTime {text[:40]!r}")


ACQUISITION_TIME_SOURCES = (("OME-XML", _ome_acquired), ("MetaSeries", _metaseries_acquired),
                            ("DateTime tag", _datetime_tag))


def acquisition_time(tf, page, path: Path) -> datetime | None:  # tifffile TiffFile and page
    """When the file says its image was taken, in UTC, from the first of
    ``ACQUISITION_TIME_SOURCES`` that says it believably (after 2000 and not in the future).
    Intake times an image by its name, else by the file's mtime, and a copy that does not keep
    times makes that the copy's time; the store corrects a scan-indexed image's time from this
    when the two lie further apart than any time-zone difference (``store.writer``). A
    malformed or unbelievable value (a camera's unset clock) is logged with the file at info
    level, not as a warning: the image is served all the same, timed by its mtime, and such a
    clock would repeat it for every file."""
    latest = datetime.now(timezone.utc) + timedelta(days=1)
    for source, read in ACQUISITION_TIME_SOURCES:
        try:
            dt = read(tf, page)
            if dt is None:
                continue
            dt = _utc(dt)
        except Exception as exc:  # other software's metadata is malformed in many ways
            log.info("%s: ignoring the acquisition time in its %s: %s", shown(str(path)), source, why(exc))
            continue
        if EARLIEST_ACQUISITION <= dt <= latest:
            return dt
        log.info("%s: ignoring the acquisition time in its %s: %s is not a believable time",
                 shown(str(path)), source, dt.isoformat())
    return None


#: characters of a stated channel name kept for display
CHANNEL_NAME_MAX = 64


def stated_channel_name(path: str | Path) -> str | None:
    """The channel's name as a single-channel TIFF states it, from its header only: MetaXpress
    writes the illumination setting (``_IllumSetting_``, what its HTD calls the wavelength's
    name) into each plane, while its file names carry only the wavelength's number (``_w2``);
    an OME-TIFF of one channel names it in ``Channel/@Name``. None when the file states none
    or cannot be read: this only explains a folder's channels to the operator (``doctor``,
    ``nscmonitor run``), it never decides what is scored."""
    import tifffile

    try:
        with open_regular(Path(path)) as fh, tifffile.TiffFile(fh, name=Path(path).name, _multifile=False) as tf:
            name = None
            if tf.is_metaseries:
                info = (tf.metaseries_metadata or {}).get("PlaneInfo") or {}
                name = info.get("_IllumSetting_") or info.get("image-name")
            elif tf.is_ome and tf.ome_metadata:
                names = re.findall(r"<(?:\w+:)?Channel\b[^>]*?\bName=\"([^\"]*)\"", tf.ome_metadata[:200_000])
                name = names[0] if len(names) == 1 else None
            # shown on a terminal: printable characters only, and a name's length
            shown_name = "".join(c for c in str(name) if c.isprintable()).strip()[:CHANNEL_NAME_MAX]
            return shown_name or None if name is not None else None
    except Exception as exc:  # other software's files are malformed in many ways
        log.info("%s: no channel name read: %s", shown(str(path)), why(exc))
    return None


def _pick_plane(arr: np.ndarray, axes: str, channel_index: int | None) -> np.ndarray:
    """Reduce a page (RGB, planar samples) to the plane we score."""
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


def _pillow(fh: BinaryIO, max_pixels: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = max_pixels
    fh.seek(0)
    try:
        with Image.open(fh) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise DecodeError(f"frame of {w} x {h} pixels is above the cap of {max_pixels} pixels", permanent=True)
            im.load()
            if im.mode in ("RGB", "RGBA", "P", "CMYK"):
                im = im.convert("L")
            return np.asarray(im)
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"image above the pixel cap: {why(exc)}", permanent=True) from exc
    except UnidentifiedImageError as exc:
        raise DecodeError("not a readable image (no known image format)", permanent=True) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DecodeError(f"image data cannot be decoded (truncated or corrupt): {why(exc)}", permanent=False) from exc


def open_regular(path: str | Path) -> BinaryIO:
    """Open read-only, refusing anything but a regular file without blocking: a FIFO put
    where an image was would otherwise hang the daemon in ``open`` until someone writes."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DecodeError("not a regular file", permanent=True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def decode(path: str | Path, *, channel_index: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
           max_bytes: int = 4 << 30, channel: str | None = None, content_hash: bool = True) -> Decoded:
    """Decode the scored plane, then hash the file, through one read-only handle. Memory is
    the plane plus a 1 MiB hashing buffer, whatever the file's size. If the file's size or
    mtime changed while it was read, the hash may not be of the decoded pixels: that is a
    transient error and the file is read again later. ``channel`` is the watch folder's
    setting: the channel scored inside a multi-channel stack or container (by name or
    1-based number). ND2, CZI and OME-Zarr images go to their readers (``formats``).
    ``content_hash=False`` (training, which hashes its whole data set once beforehand)
    leaves ``sha256`` empty: hashing is about 7 % of training's per-tile load time on a
    simulator export (benchmarks/training_reader.py)."""
    from nscmonitor.readers import formats

    if formats.format_of(str(path)) is not None:
        return formats.decode_native(str(path), channel=channel, max_pixels=max_pixels, max_bytes=max_bytes,
                                     content_hash=content_hash)
    path = Path(path)
    try:
        before = os.stat(path)
        if before.st_size == 0:
            raise DecodeError("empty file (0 bytes)", permanent=True)
        if before.st_size > max_bytes:
            raise DecodeError(f"file of {before.st_size} bytes is above the {max_bytes}-byte cap", permanent=True)
        fh = open_regular(path)
    except FileNotFoundError as exc:
        raise DecodeError("file disappeared before it could be read", permanent=False) from exc
    except PermissionError as exc:
        raise DecodeError(f"{UNREADABLE}: {why(exc)}", permanent=False) from exc
    except OSError as exc:
        raise DecodeError(f"cannot read file: {why(exc)}", permanent=False) from exc
    with fh:
        try:
            head = fh.read(4)
            suffix = path.suffix.lower()
            pixel_size, acquired = None, None
            if suffix in (".tif", ".tiff") or head in TIFF_MAGIC:
                arr, pixel_size, acquired = _tiff(fh, path, before.st_size, channel_index, max_pixels, channel)
            elif suffix in (".c01", ".dib"):
                raise DecodeError("Cellomics .C01/.DIB files need Bio-Formats; export TIFF from HCS Studio",
                                  permanent=True)
            else:
                arr = _pillow(fh, max_pixels)
            digest = _hash(fh) if content_hash else ""
        except OSError as exc:  # e.g. a network share dropped mid-read
            raise DecodeError(f"cannot read file: {why(exc)}", permanent=False) from exc
    try:
        after = os.stat(path)
    except OSError as exc:
        raise DecodeError("file disappeared while it was read", permanent=False) from exc
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        raise DecodeError("file changed while it was read; read again later", permanent=False)
    if arr.ndim != 2 or min(arr.shape) < 8:
        raise DecodeError(f"decoded plane has shape {arr.shape}; expected a 2-D image of at least 8 x 8", permanent=True)
    if arr.dtype.kind not in "uif" or arr.dtype == np.bool_:
        raise DecodeError(f"unsupported pixel type {arr.dtype}", permanent=True)
    return Decoded(arr, str(arr.dtype), pixel_size, digest, acquired)
