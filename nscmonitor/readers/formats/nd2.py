"""Nikon ND2 through the ``nd2`` package (the ``nd2`` extra).

Positions of an XY loop become wells and fields when NIS-Elements named them by well
(JOBS and the well-plate dialog name points ``B3``, ``B03`` or ``WellB03``); otherwise the
file is one image, its first position, placed by its file name (``{prefix}WellA01{suffix}.nd2``).
The scored plane is the first T and Z of the chosen channel: one frame is read from the file
after its size has been checked against the pixel cap.
"""

from __future__ import annotations

import re

import numpy as np

from nscmonitor.core.domain import ImageKey, parse_well
from nscmonitor.readers.formats import Plane, Unit, check_pixels, make_ref, pick_channel

WELL_NAME = re.compile(r"^(?:Wells?_?)?([A-Za-z]{1,2})0?(\d{1,2})(?![0-9])")


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


def units(path: str) -> list[Unit]:
    import nd2

    with nd2.ND2File(path) as f:
        wells = position_wells(_position_names(f))
        n_pos = int(f.sizes.get("P", 1))
    placed = [p for p in range(n_pos) if p in wells]
    if not placed:
        return []
    out, seen = [], {}
    for p in placed:
        well = wells[p]
        seen[well] = seen.get(well, 0) + 1
        row, col = parse_well(well)
        out.append(Unit(make_ref(path, position=p), ImageKey(plate=None, well=well, row=row, col=col,
                                                               field=seen[well]), profile="nd2"))
    return out


def read(path: str, unit: dict[str, int], *, channel: str | None, max_pixels: int) -> Plane:
    import nd2

    from nscmonitor.readers.decode import DecodeError

    with nd2.ND2File(path) as f:
        sizes = dict(f.sizes)
        check_pixels(int(sizes.get("X", 0)), int(sizes.get("Y", 0)), max_pixels)
        names = [ch.channel.name for ch in (f.metadata.channels or [])]
        c = pick_channel(names, int(sizes.get("C", 1)), channel, "ND2 file")
        position = unit.get("position", 0)
        if position >= int(sizes.get("P", 1)):
            raise DecodeError(f"position {position} is not in this ND2 file ({sizes.get('P', 1)} positions)",
                              permanent=True)
        want = {"P": position, "C": c}
        index = next((i for i, loop in enumerate(f.loop_indices)
                      if all(v == want.get(k, 0) for k, v in loop.items())), None)
        if index is None:
            raise DecodeError("the ND2 file holds no frame for the first time point and z plane", permanent=False)
        frame = f.read_frame(index)  # a view on the file's memory map: only the scored plane is copied
        in_loop = any("C" in loop for loop in f.loop_indices[:1])
        if frame.ndim == 3 and not in_loop and "C" in sizes and frame.shape[0] == sizes["C"]:
            frame = frame[c]
        # copied before the file closes: a view would outlive its memory map
        frame = frame[..., :3].mean(axis=-1).astype(np.float32) if frame.ndim == 3 else np.array(frame, copy=True)
        px = f.voxel_size().x
    return Plane(frame, float(px) if px and 0 < px < 1e3 else None)
