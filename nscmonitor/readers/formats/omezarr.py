"""OME-Zarr HCS plates (NGFF 0.4 ``.zattrs`` and 0.5 ``zarr.json``), read with ``zarr`` (the
``zarr`` extra).

The unit of work is one field: an image group ``<plate>.zarr/<row>/<col>/<field>``. Plate,
well, field and time come from the plate's metadata, never from folder names: the plate's
``name`` (else the folder's), the well's ``rowIndex``/``columnIndex``, the field's order
among the well's images of the same acquisition, and the acquisition's position in the
plate's ``acquisitions`` (with its ``starttime``) as the time point. The metadata is plain
JSON, so plates are discovered and placed without the reader; ``read`` needs ``zarr`` and
reads only the chunks of the scored plane of the full-resolution array (first Z of the
chosen channel, at the unit's time point).

A field whose array has a time axis longer than one (a time-lapse converted into OME-Zarr,
``bioformats2raw`` of an ND2 or CZI) gives one image per time point (``FIELD|t=N``), keyed by
its index within the field's acquisition and timed by the acquisition's ``starttime`` plus N
times the axis's scale (in its unit; without a start time, hours from the axis alone). Before
2026-12-05 only its first time point was scored.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

from nscmonitor.core.domain import ImageKey, parse_well, well_name
from nscmonitor.readers.formats import Plane, Unit, check_pixels, make_ref, pick_channel

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


#: seconds per NGFF time unit
TIME_UNITS_S = {"second": 1.0, "millisecond": 1e-3, "microsecond": 1e-6, "minute": 60.0, "hour": 3600.0,
                "day": 86400.0}
#: a field declaring more time points than this is refused (nothing is sized by its claim)
MAX_TIME_POINTS = 100_000


def _array_shape(folder: Path) -> tuple[int, ...] | None:
    """The full-resolution array's shape, from its plain JSON (v2 ``.zarray``, v3 ``zarr.json``)."""
    for name in ("zarr.json", ".zarray"):
        try:
            data = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError):
            continue
        shape = data.get("shape") if isinstance(data, dict) else None
        if isinstance(shape, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in shape):
            return tuple(shape)
    return None


def time_points(field: Path) -> tuple[int, float | None]:
    """(time points, seconds between them or None) of a field's full-resolution array, from
    its metadata alone; (1, None) for a field without a time axis or whose metadata cannot be
    read yet. Raises ValueError for a count no plate is imaged at."""
    try:
        names, ds_path, _, a = _multiscale(field)
    except ValueError:
        return 1, None
    shape = _array_shape(field / ds_path)
    if "t" not in names or shape is None or len(shape) != len(names):
        return 1, None
    n_t = shape[names.index("t")]
    if n_t > MAX_TIME_POINTS:
        raise ValueError(f"the field's array declares {n_t} time points (more than {MAX_TIME_POINTS}): "
                         "corrupt metadata (not read)")
    step = None
    ms = a["multiscales"][0]
    axes = ms.get("axes") if isinstance(ms.get("axes"), list) else []
    unit = axes[names.index("t")].get("unit") if len(axes) == len(names) and isinstance(
        axes[names.index("t")], dict) else None
    for t in (ms["datasets"][0].get("coordinateTransformations") or []):
        if isinstance(t, dict) and t.get("type") == "scale" and isinstance(t.get("scale"), list) \
                and len(t["scale"]) == len(names):
            v = t["scale"][names.index("t")]
            factor = TIME_UNITS_S.get(str(unit).lower()) if unit else None
            if factor and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0:
                step = float(v) * factor
    return max(n_t, 1), step


def time_units(path: str, key: ImageKey) -> list[Unit] | None:
    """The time points of a field placed by its plate's metadata (``key``), each an image of
    its own, counted within the field's acquisition; None for a field of one time point."""
    try:
        n_t, step = time_points(Path(path))
    except ValueError as exc:
        return [Unit(path, error=str(exc))]
    if n_t <= 1:
        return None
    acquisition = f"acquisition {key.timepoint}" if key.timepoint is not None else "acquisition"
    out = []
    for t in range(n_t):
        at = key.acquired_at + timedelta(seconds=t * (step or 0.0)) \
            if key.acquired_at is not None and (step or t == 0) else None
        hours = t * step / 3600.0 if key.acquired_at is None and step else None
        out.append(Unit(make_ref(path, t=t), replace(key, timepoint=t + 1, acquisition=acquisition, acquired_at=at,
                                                     elapsed_h=hours), "ome-zarr"))
    return out


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
    t = unit.get("t", 0)
    if t >= (shape[names.index("t")] if "t" in names else 1):
        from nscmonitor.readers.decode import DecodeError

        raise DecodeError(f"time point {t + 1} is not in this OME-Zarr image", permanent=True)
    index = tuple(slice(None) if ax in ("y", "x") else c if ax == "c" else t if ax == "t" else 0 for ax in names)
    plane = arr[index]
    return Plane(plane, px if px and 0.01 <= px <= 100 else None)
