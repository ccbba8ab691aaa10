"""OME-Zarr HCS plates (NGFF 0.4 ``.zattrs`` and 0.5 ``zarr.json``), read with ``zarr`` (the
``zarr`` extra).

The unit of work is one field: an image group ``<plate>.zarr/<row>/<col>/<field>``. Plate,
well, field and time come from the plate's metadata, never from folder names: the plate's
``name`` (else the folder's), the well's ``rowIndex``/``columnIndex``, the field's order
among the well's images of the same acquisition, and the acquisition's position in the
plate's ``acquisitions`` (with its ``starttime``) as the time point. The metadata is plain
JSON, so plates are discovered and placed without the reader; ``read`` needs ``zarr`` and
reads only the chunks of the scored plane of the full-resolution array (first T and Z of
the chosen channel).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from nscmonitor.core.domain import ImageKey, parse_well, well_name
from nscmonitor.readers.formats import Plane, check_pixels, pick_channel

#: length units of NGFF axes -> micrometres
UNITS_UM = {"micrometer": 1.0, "nanometer": 1e-3, "millimeter": 1e3, "angstrom": 1e-4, "meter": 1e6}


@dataclass(frozen=True)
class Field:
    """One field image group of a plate, placed by the plate's metadata."""

    path: Path
    key: ImageKey
    plate: str


def attrs(folder: Path) -> dict:
    """The NGFF attributes of a Zarr group (v3 ``zarr.json`` or v2 ``.zattrs``), ``{}`` when
    the group has none yet (a plate still being written)."""
    for name, pick in (("zarr.json", lambda d: d.get("attributes") or {}), (".zattrs", lambda d: d)):
        p = folder / name
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            continue
        except (OSError, ValueError, UnicodeDecodeError):
            return {}  # half-written JSON: read again at the next pass
        if not isinstance(data, dict):
            return {}
        a = pick(data)
        if not isinstance(a, dict):
            return {}
        return a.get("ome") if isinstance(a.get("ome"), dict) else a
    return {}


def is_plate(folder: Path) -> bool:
    return isinstance(attrs(folder).get("plate"), dict)


def _acquired(acq: dict) -> datetime | None:
    t = acq.get("starttime")
    if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t) or t <= 0:
        return None
    if t > 1e11:  # milliseconds, as some converters write
        t /= 1000.0
    try:
        return datetime.fromtimestamp(t, timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None


def plate_fields(root: Path) -> list[Field]:
    """Every field the plate's metadata lists (wells -> images), placed by that metadata."""
    a = attrs(root)
    plate = a.get("plate")
    if not isinstance(plate, dict):
        return []
    name = str(plate.get("name") or root.name[: -len(".zarr")] or root.name)
    acqs = [q for q in plate.get("acquisitions") or [] if isinstance(q, dict)]
    order = {q.get("id"): i + 1 for i, q in enumerate(sorted(acqs, key=lambda q: (str(type(q.get("id"))),
                                                                                   q.get("id"))))}
    when = {q.get("id"): _acquired(q) for q in acqs}
    rows = [r.get("name") for r in plate.get("rows") or [] if isinstance(r, dict)]
    cols = [c.get("name") for c in plate.get("columns") or [] if isinstance(c, dict)]
    out = []
    for w in plate.get("wells") or []:
        if not isinstance(w, dict) or not isinstance(w.get("path"), str):
            continue
        ri, ci = w.get("rowIndex"), w.get("columnIndex")
        if not isinstance(ri, int) or not isinstance(ci, int):  # NGFF 0.3 and older: indices from the names
            parts = w["path"].split("/")
            if len(parts) != 2 or parts[0] not in rows or parts[1] not in cols:
                continue
            ri, ci = rows.index(parts[0]), cols.index(parts[1])
        well = _well(rows, cols, ri, ci)
        if well is None:
            continue
        well_dir = root / w["path"]
        images = (attrs(well_dir).get("well") or {}).get("images") or []
        per_acq: dict[object, int] = {}
        for im in images:
            if not isinstance(im, dict) or not isinstance(im.get("path"), str):
                continue
            acq = im.get("acquisition")
            per_acq[acq] = per_acq.get(acq, 0) + 1
            key = ImageKey(plate=name, well=well_name(*well), row=well[0], col=well[1], field=per_acq[acq],
                           timepoint=order.get(acq) if acqs else None, acquired_at=when.get(acq))
            out.append(Field(well_dir / im["path"], key, name))
    return out


def _well(rows: list, cols: list, ri: int, ci: int) -> tuple[int, int] | None:
    """The well's place on the plate: ``rowIndex``/``columnIndex`` point into the plate's
    rows and columns, whose names (``B``, ``3``) say where on the plate the well is."""
    if not (0 <= ri < len(rows) and 0 <= ci < len(cols)):
        return None
    try:
        return parse_well(f"{rows[ri]}{int(str(cols[ci]))}")
    except ValueError:
        return None


def _multiscale(folder: Path) -> tuple[list[str], str, list[float] | None, dict]:
    a = attrs(folder)
    ms = a.get("multiscales")
    if not isinstance(ms, list) or not ms or not isinstance(ms[0], dict) or not ms[0].get("datasets"):
        raise ValueError("the field has no multiscales metadata yet")
    m = ms[0]
    axes = m.get("axes")
    if isinstance(axes, list) and axes and isinstance(axes[0], dict):
        names = [str(ax.get("name", "")).lower() for ax in axes]
        units = [ax.get("unit") for ax in axes]
    elif isinstance(axes, list):
        names, units = [str(ax).lower() for ax in axes], [None] * len(axes)
    else:
        names, units = [], []
    ds = m["datasets"][0]
    scale = None
    for t in ds.get("coordinateTransformations") or []:
        if isinstance(t, dict) and t.get("type") == "scale" and isinstance(t.get("scale"), list):
            scale = t["scale"]
    px = None
    if scale and "x" in names and len(scale) == len(names):
        unit = units[names.index("x")]
        factor = UNITS_UM.get(str(unit).lower()) if unit else None
        if factor is not None and isinstance(scale[names.index("x")], (int, float)):
            px = float(scale[names.index("x")]) * factor
    return names, str(ds["path"]), px, a


def read(path: str, unit: dict[str, int], *, channel: str | None, max_pixels: int) -> Plane:
    import zarr

    folder = Path(path)
    names, ds_path, px, a = _multiscale(folder)
    arr = zarr.open_array(store=str(folder / ds_path), mode="r")
    shape = tuple(int(s) for s in arr.shape)
    if not names:
        names = ["t", "c", "z", "y", "x"][-len(shape):]
    if len(names) != len(shape) or "y" not in names or "x" not in names:
        raise ValueError(f"axes {names} do not match the array's shape {shape}")
    check_pixels(shape[names.index("x")], shape[names.index("y")], max_pixels)
    labels = [str(c.get("label") or "") if isinstance(c, dict) else ""
              for c in ((a.get("omero") or {}).get("channels") or [])]
    n_c = shape[names.index("c")] if "c" in names else 1
    c = pick_channel(labels, n_c, channel, "OME-Zarr image")
    index = tuple(slice(None) if ax in ("y", "x") else (c if ax == "c" else 0) for ax in names)
    plane = arr[index]
    return Plane(plane, px if px and 0.01 <= px <= 100 else None)
