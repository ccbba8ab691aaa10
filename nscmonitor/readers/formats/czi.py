"""Zeiss CZI through pylibCZIrw (the ``czi`` extra), Zeiss's own maintained reader.

Scenes become wells and fields when ZEN's scene metadata names the well (a well-plate
carrier writes ``Scene Name="B3-1"`` with ``Shape Name="B3"``); a file without such names is
placed by its file name, its scenes fields of that well. A time series (ZEN writes a whole
time-lapse into one file) gives one image per time point and scene that holds sub-blocks,
keyed by the time point's index; as for ND2, a file
whose scenes name the plate's wells is one run of the plate, the acquisition its time points
count in. pylibCZIrw does not expose the sub-blocks' acquisition times, so a time point's hours
are not known from the file (its index orders the time course). The scored plane is the first
Z of the chosen channel at the unit's time point, read for the scene's own rectangle only.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from nscmonitor.core.domain import ImageKey, parse_well
from nscmonitor.readers.formats import Plane, Unit, check_pixels, declared_frames_error, make_ref, pick_channel

WELL_NAME = re.compile(r"^([A-Za-z]{1,2})0?(\d{1,2})(?![0-9])")


def _list(value) -> list:  # xmltodict gives a dict for one element, a list for several
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _image_info(md: dict) -> dict:
    return (((md or {}).get("ImageDocument") or {}).get("Metadata") or {}).get("Information", {}).get("Image") or {}


def scene_wells(md: dict) -> dict[int, str]:
    """Scene index -> well name, for the scenes whose metadata names a well."""
    dims = _image_info(md).get("Dimensions") or {}
    scenes = _list(((dims.get("S") or {}).get("Scenes") or {}).get("Scene"))
    out = {}
    for sc in scenes:
        if not isinstance(sc, dict) or not str(sc.get("@Index", "")).isdigit():
            continue
        shape = sc.get("Shape") if isinstance(sc.get("Shape"), dict) else {}
        for name in (shape.get("@Name"), sc.get("ArrayName"), sc.get("@Name")):
            m = WELL_NAME.match(str(name or ""))
            if m:
                out[int(sc["@Index"])] = f"{m.group(1).upper()}{int(m.group(2)):02d}"
                break
    return out


def channel_names(md: dict) -> list[str]:
    chans = _list(((_image_info(md).get("Dimensions") or {}).get("Channels") or {}).get("Channel"))
    return [str(c.get("@Name") or "") if isinstance(c, dict) else "" for c in chans]


def pixel_size_um(md: dict) -> float | None:
    scaling = (((md or {}).get("ImageDocument") or {}).get("Metadata") or {}).get("Scaling") or {}
    for d in _list((scaling.get("Items") or {}).get("Distance")):
        if isinstance(d, dict) and d.get("@Id") == "X":
            try:
                metres = float(d.get("Value"))
            except (TypeError, ValueError):
                return None
            return metres * 1e6 if metres > 0 else None
    return None


def _present(r, t0: int) -> set[tuple[int | None, int]]:  # czi.CziReader
    """The (scene, time point) pairs the file holds sub-blocks for: an acquisition stopped
    part-way through a time point has some scenes' frames only, and a missing one would read
    as the blank background."""
    found: set[tuple[int | None, int]] = set()

    def seen(_index: int, info) -> bool:
        at = info.coordinate.to_dict()
        found.add((at.get("S"), at.get("T", t0) - t0))
        return True

    r.enumerate_subblocks(seen)
    return found


def units(path: str) -> list[Unit]:
    """One unit per scene (and time point) when the scenes name wells, field = order of the
    scene in its well; per scene and time point of a file placed by its name; none for a file
    of one scene and time point (it is then one image)."""
    from pylibCZIrw import czi

    with czi.open_czi(path) as r:
        wells = scene_wells(r.metadata)
        scenes = sorted(r.scenes_bounding_rectangle)
        t0, t1 = r.total_bounding_box.get("T", (0, 1))
        n_t = max(t1 - t0, 1)
        refused = declared_frames_error(n_t * max(len(scenes), 1), path, "CZI")
        if refused:
            return [Unit(path, error=refused)]
        present = _present(r, t0) if n_t > 1 else None
    placed = [s for s in scenes if s in wells]
    if not placed:  # placed by the file's name: its scenes are fields of the name's well
        if n_t <= 1 and len(scenes) <= 1:
            return []
        several = len(scenes) > 1
        return [Unit(make_ref(path, **({"scene": sc} if several else {}), **({"t": t} if n_t > 1 else {})),
                     timepoint=t + 1 if n_t > 1 else None,
                     **({"position": i, "positions": len(scenes)} if several else {}))
                for t in range(n_t) for i, sc in enumerate(scenes or [None])
                if present is None or (sc, t) in present]
    field_of, seen = {}, {}
    for s in placed:
        seen[wells[s]] = seen.get(wells[s], 0) + 1
        field_of[s] = seen[wells[s]]
    acquisition = Path(path).name
    out = []
    for t in range(n_t):
        for s in placed:
            if present is not None and (s, t) not in present:
                continue
            row, col = parse_well(wells[s])
            timed = {"timepoint": t + 1, "acquisition": acquisition} if n_t > 1 else {}
            key = ImageKey(plate=None, well=wells[s], row=row, col=col, field=field_of[s], **timed)
            out.append(Unit(make_ref(path, scene=s, t=t) if n_t > 1 else make_ref(path, scene=s), key, profile="czi"))
    return out


def read(path: str, unit: dict[str, int], *, channel: str | None, max_pixels: int) -> Plane:
    from pylibCZIrw import czi

    with czi.open_czi(path) as r:
        md = r.metadata
        box = r.total_bounding_box
        scenes = r.scenes_bounding_rectangle
        scene = unit.get("scene", min(scenes) if scenes else None)
        if scene is not None and scene not in scenes:
            from nscmonitor.readers.decode import DecodeError

            raise DecodeError(f"scene {scene} is not in this CZI file (scenes: {sorted(scenes)})", permanent=True)
        rect = scenes[scene] if scene is not None else r.total_bounding_rectangle
        check_pixels(rect.w, rect.h, max_pixels)
        c0, c1 = box.get("C", (0, 1))
        c = pick_channel(channel_names(md), c1 - c0, channel, "CZI file")
        t0, t1 = box.get("T", (0, 1))
        t = unit.get("t", 0)
        if t >= max(t1 - t0, 1):
            from nscmonitor.readers.decode import DecodeError

            raise DecodeError(f"time point {t + 1} is not in this CZI file ({max(t1 - t0, 1)} time points)",
                              permanent=True)
        plane = {"C": c0 + c, "T": t0 + t, "Z": box.get("Z", (0, 1))[0]}
        arr = r.read(plane=plane, scene=scene)
    arr = np.asarray(arr)
    if arr.ndim == 3:
        arr = arr[..., 0] if arr.shape[-1] == 1 else arr[..., :3].mean(axis=-1).astype(np.float32)
    return Plane(arr, pixel_size_um(md))
