"""Nikon ND2 through the ``nd2`` package (the ``nd2`` extra).

Positions of an XY loop become wells and fields when NIS-Elements named them by well
(JOBS and the well-plate dialog name points ``B3``, ``B03`` or ``WellB03``); otherwise the
file is placed by its file name (``{prefix}WellA01{suffix}.nd2``) and its positions are fields
of that well (several points in one well).

A time loop (NIS-Elements writes a whole time-lapse into one file) gives one image per time
point and position, timed by the frame's own acquisition time (the file's start date plus the
frame's offset; without a start date, the hours since the file's first frame). A file whose
positions name the plate's wells is one run of the plate: its time points count in it (the
file is their acquisition), so a plate imaged again into a second file gets time points of its
own instead of falling into the first file's.

The scored plane is the first Z of the chosen channel at the unit's position and time point:
one frame is read from the file after its size has been checked against the pixel cap.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from nscmonitor.core.domain import ImageKey, parse_well
from nscmonitor.readers.formats import Plane, Unit, check_pixels, declared_frames_error, make_ref, pick_channel

log = logging.getLogger(__name__)

WELL_NAME = re.compile(r"^(?:Wells?_?)?([A-Za-z]{1,2})0?(\d{1,2})(?![0-9])")
#: Julian day number of 1970-01-01T00:00Z; NIS-Elements stores the start as a Julian day (UTC)
JDN_UNIX_EPOCH = 2440587.5
#: start dates before this are not believed (files without a start store 0 or -1)
EARLIEST = datetime(1990, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(9000, 1, 1, tzinfo=timezone.utc)
#: frame offsets beyond a year are not believed
MAX_OFFSET_MS = 366 * 86400e3


def position_wells(names: list[str | None]) -> dict[int, str]:
    """Position index -> well, for positions named by well."""
    out = {}
    for i, name in enumerate(names):
        m = WELL_NAME.match((name or "").strip())
        if m:
            out[i] = f"{m.group(1).upper()}{int(m.group(2)):02d}"
    return out


def _position_names(f) -> list[str | None]:  # nd2.ND2File
    for loop in f.experiment:
        if getattr(loop, "type", None) == "XYPosLoop":
            return [p.name for p in loop.parameters.points]
    return []


def _declared(f) -> int:  # nd2.ND2File
    """The frames the file's loops declare (time points x positions x z planes ...): the
    package builds an index entry per declared frame when asked for ``loop_indices``."""
    return math.prod(int(v) for k, v in f.sizes.items() if k not in ("X", "Y", "C", "S"))


def start_date(jdn: float) -> datetime | None:
    """A Julian day number as a UTC date; None for the 0 or -1 of a file without one, or a
    day no acquisition was taken on."""
    if not math.isfinite(jdn):
        return None
    try:
        when = datetime.fromtimestamp((jdn - JDN_UNIX_EPOCH) * 86400.0, timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None
    return when if EARLIEST <= when < LATEST else None


def frame_time(start: datetime | None, offset_ms: float | None) -> tuple[datetime | None, float | None]:
    """(acquired_at, hours since the file's first frame) of a frame: the date when the file
    has a start date, else the offset alone; (None, None) for an offset no clock gives."""
    if offset_ms is None or not math.isfinite(offset_ms) or not 0 <= offset_ms < MAX_OFFSET_MS:
        return None, None
    if start is not None:
        return start + timedelta(milliseconds=offset_ms), None
    return None, offset_ms / 3.6e6


def _frame_times(f, points: list[tuple[int, int]]) -> list[tuple[datetime | None, float | None]]:
    """The time of the first frame (first channel and z plane) at each (position, time
    point). A file without NIS-Elements' frame-time record gives (None, None) for each."""
    first: dict[tuple[int, int], int] = {}
    for i, loop in enumerate(f.loop_indices):
        if all(v == 0 for k, v in loop.items() if k not in ("P", "T")):
            first.setdefault((loop.get("P", 0), loop.get("T", 0)), i)
    start, untimed = None, False
    out = []
    for point in points:
        seq, offset = first.get(point), None
        if seq is not None and not untimed:
            try:
                with warnings.catch_warnings():  # the package warns once per frame of a file without them
                    warnings.simplefilter("ignore")
                    t = f.frame_metadata(seq).channels[0].time
                offset = float(t.relativeTimeMs)
                if start is None:
                    start = start_date(float(t.absoluteJulianDayNumber) - offset / 86_400_000)
            except Exception as exc:  # noqa: BLE001 - the package raises many types for a file without frame times
                log.info("%s records no frame times (%s): its time points are keyed by index, without hours",
                         f.path, exc)
                untimed = True
        out.append(frame_time(start, offset))
    return out


def units(path: str) -> list[Unit]:
    """One unit per named position and time point; for a file whose positions name no wells,
    one per position and time point, placed by the file's name (none for a file of one
    position and time point: the file is then one image)."""
    import nd2

    with nd2.ND2File(path) as f:
        refused = declared_frames_error(_declared(f), path, "ND2")
        if refused:
            return [Unit(path, error=refused)]
        wells = position_wells(_position_names(f))
        n_pos = int(f.sizes.get("P", 1))
        n_t = int(f.sizes.get("T", 1))
        placed = [p for p in range(n_pos) if p in wells]
        points = [(p, t) for t in range(n_t) for p in (placed or range(n_pos))]
        times = _frame_times(f, points)
    if n_t <= 1:  # one time point: when each frame was taken, never hours since the first
        times = [(at, None) for at, _ in times]
    if not placed and n_t <= 1 and n_pos <= 1:
        # one image placed by its name, taken when the file's own record says (a copy that did
        # not keep the file's time would date it by the copy), else by its mtime
        return [Unit(path, acquired_at=times[0][0])] if times[0][0] is not None else []
    if not placed:  # placed by the file's name: its positions are fields of the name's well
        out = []
        for (p, t), (at, h) in zip(points, times):
            unit = {"position": p} if n_pos > 1 else {}
            timed = {"timepoint": t + 1, "acquired_at": at, "elapsed_h": h} if n_t > 1 else {"acquired_at": at}
            out.append(Unit(make_ref(path, **unit, **({"t": t} if n_t > 1 else {})), **timed,
                            **({"position": p, "positions": n_pos} if n_pos > 1 else {})))
        return out
    field_of, seen = {}, {}
    for p in placed:
        seen[wells[p]] = seen.get(wells[p], 0) + 1
        field_of[p] = seen[wells[p]]
    acquisition = Path(path).name if n_t > 1 else None
    out = []
    for (p, t), (at, h) in zip(points, times):
        row, col = parse_well(wells[p])
        timed = ({"timepoint": t + 1, "elapsed_h": h, "acquired_at": at, "acquisition": acquisition} if n_t > 1
                 else {"acquired_at": at})
        key = ImageKey(plate=None, well=wells[p], row=row, col=col, field=field_of[p], **timed)
        out.append(Unit(make_ref(path, position=p, t=t) if n_t > 1 else make_ref(path, position=p), key,
                        profile="nd2"))
    return out


def read(path: str, unit: dict[str, int], *, channel: str | None, max_pixels: int) -> Plane:
    import nd2

    from nscmonitor.readers.decode import DecodeError

    with nd2.ND2File(path) as f:
        sizes = dict(f.sizes)
        refused = declared_frames_error(_declared(f), path, "ND2")
        if refused:
            raise DecodeError(refused, permanent=True)
        check_pixels(int(sizes.get("X", 0)), int(sizes.get("Y", 0)), max_pixels)
        names = [ch.channel.name for ch in (f.metadata.channels or [])]
        c = pick_channel(names, int(sizes.get("C", 1)), channel, "ND2 file")
        position, t = unit.get("position", 0), unit.get("t", 0)
        for axis, at, what in (("P", position, "position"), ("T", t, "time point")):
            if at >= int(sizes.get(axis, 1)):
                raise DecodeError(f"{what} {at} is not in this ND2 file ({sizes.get(axis, 1)} {what}s)",
                                  permanent=True)
        want = {"P": position, "C": c, "T": t}
        index = next((i for i, loop in enumerate(f.loop_indices)
                      if all(v == want.get(k, 0) for k, v in loop.items())), None)
        if index is None:
            raise DecodeError(f"the ND2 file holds no frame for time point {t + 1} and the first z plane",
                              permanent=False)
        frame = f.read_frame(index)  # a view on the file's memory map: only the scored plane is copied
        in_loop = any("C" in loop for loop in f.loop_indices[:1])
        if frame.ndim == 3 and not in_loop and "C" in sizes and frame.shape[0] == sizes["C"]:
            frame = frame[c]
        # copied before the file closes: a view would outlive its memory map
        frame = frame[..., :3].mean(axis=-1).astype(np.float32) if frame.ndim == 3 else np.array(frame, copy=True)
        px = f.voxel_size().x
    return Plane(frame, float(px) if px and 0 < px < 1e3 else None)
