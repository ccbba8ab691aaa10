"""Channel selection inside OME-TIFF (and ImageJ) stacks, and the time points of an OME-TIFF
time series.

The watch folder's ``channel`` setting names the channel that is scored. A file holding one
channel is scored as it is; in a stack with several, the channel is found by its OME-XML
name or by its 1-based number, and a setting the stack does not have is refused with the
channels it does have, never answered with the first plane.

A time series in one OME-TIFF (a Micro-Manager ``_MMStack_`` position, a Bio-Formats or Fiji
export) held a whole time-lapse of which only the first plane was scored. Each of its time
points is an image of its own (``FILE.ome.tif|t=N``), placed by the file's name, keyed by its
time point, and timed by the stack's acquisition date plus the plane's ``DeltaT``.
Micro-Manager writes the OME-XML when the acquisition ends: a stack still being written is one
image (its first plane) until then.
"""

from __future__ import annotations

import math
import os
import re
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone
from pathlib import Path

from nscmonitor.readers.formats import Plane, Unit, make_ref, pick_channel

_SIZE_T = re.compile(r'\bSizeT\s*=\s*"(\d+)"')
#: seconds per OME time unit (``DeltaTUnit``; seconds when not given)
#: acquisition dates from this on are not believed (a date a year's offsets cannot be added to)
LATEST_ACQUISITION = datetime(9000, 1, 1, tzinfo=timezone.utc)
#: plane offsets beyond a year are not believed (an unset or corrupt DeltaT)
MAX_OFFSET_S = 366 * 86400.0
_TIME_UNITS = {"s": 1.0, "ms": 1e-3, "µs": 1e-6, "us": 1e-6, "ns": 1e-9, "min": 60.0, "h": 3600.0}


def channel_names(tf, image: int = 0) -> list[str]:  # tifffile.TiffFile
    """The channel names of the first OME image (empty when the file has no OME-XML)."""
    xml = tf.ome_metadata if tf.is_ome else None
    if not xml:
        return []
    try:
        root = ET.fromstring(xml)  # noqa: S314 - the file is read-only data; no entities are resolved
    except ET.ParseError:
        return []
    images = [el for el in root if el.tag.rsplit("}", 1)[-1] == "Image"]
    if len(images) <= image:
        return []
    names: list[str] = []
    for el in images[image].iter():
        if el.tag.rsplit("}", 1)[-1] == "Channel":
            names.append(el.get("Name") or el.get("Fluor") or "")
    return names


def channel_index(tf, series, channel: str | None) -> int | None:  # tifffile objects
    """The index on the stack's C axis to score, or None when there is nothing to choose
    (no setting, or one channel)."""
    if channel is None:
        return None
    axes, shape = str(series.axes), tuple(series.shape)
    count = shape[axes.index("C")] if "C" in axes else 1
    if count <= 1:
        return None
    return pick_channel(channel_names(tf), count, channel, "TIFF stack")


def _plane_offsets(xml: str, n_t: int) -> list[float | None]:
    """Seconds since the series began of each time point: the earliest ``DeltaT`` of the first
    image's planes at that ``TheT``; None where no plane states it."""
    try:
        root = ET.fromstring(xml)  # noqa: S314 - the file is read-only data; no entities are resolved
    except ET.ParseError:
        return [None] * n_t
    image = next((el for el in root if el.tag.rsplit("}", 1)[-1] == "Image"), None)
    out: list[float | None] = [None] * n_t
    for el in image.iter() if image is not None else ():
        if el.tag.rsplit("}", 1)[-1] != "Plane" or el.get("DeltaT") is None:
            continue
        try:
            t = int(el.get("TheT", "0"))
            dt = float(el.get("DeltaT")) * _TIME_UNITS.get(el.get("DeltaTUnit", "s"), 1.0)
        except ValueError:
            continue
        if not math.isfinite(dt) or not 0 <= dt < MAX_OFFSET_S:  # not a time a plate was imaged at
            continue
        if 0 <= t < n_t and (out[t] is None or dt < out[t]):
            out[t] = dt
    return out


def time_units(path: str) -> list[Unit] | None:
    """One unit per time point of an OME-TIFF time series; None for a file of one time point
    (or without OME-XML yet), which is scored as one image. Reads the first page's
    description, and the series only when it states more than one time point."""
    import tifffile

    from nscmonitor.readers.decode import EARLIEST_ACQUISITION, MAX_PAGES, _ome_acquired, _utc, declared_planes

    with tifffile.TiffFile(path, _multifile=False) as tf:
        xml = tf.ome_metadata if tf.is_ome else None
        m = _SIZE_T.search(xml or "")
        if not xml or m is None or int(m.group(1)) <= 1 or len(tf.pages) > MAX_PAGES \
                or declared_planes(tf) > MAX_PAGES:
            return None  # a stack over the caps is refused with the reason when decoded
        series = tf.series[0]
        axes, shape = str(series.axes), tuple(series.shape)
        if "T" not in axes or shape[axes.index("T")] <= 1:
            return None
        n_t = min(shape[axes.index("T")], len(tf.pages))  # never more time points than planes
        try:
            start = _ome_acquired(tf, tf.pages.first)
        except ValueError:  # an AcquisitionDate that is not a date: the offsets alone
            start = None
    try:
        start = _utc(start) if start is not None else None
    except (ValueError, OverflowError):  # a date no clock gives: the offsets alone
        start = None
    if start is not None and not EARLIEST_ACQUISITION <= start < LATEST_ACQUISITION:
        start = None
    offsets = _plane_offsets(xml, n_t)
    return [Unit(make_ref(path, t=i), timepoint=i + 1,
                 acquired_at=start + timedelta(seconds=dt) if start is not None and dt is not None else None,
                 elapsed_h=dt / 3600.0 if start is None and dt is not None else None)
            for i, dt in enumerate(offsets)]


def read(path: str, unit: dict[str, int], *, channel: str | None, max_pixels: int) -> Plane:
    """The plane of time point ``unit["t"]`` (0-based), at the folder's channel, first z."""
    from nscmonitor.readers.decode import _tiff, open_regular

    with open_regular(path) as fh:
        arr, pixel_size, _ = _tiff(fh, Path(path), os.path.getsize(path), None, max_pixels,
                                   channel, time_index=unit.get("t", 0))
    return Plane(arr, pixel_size)
