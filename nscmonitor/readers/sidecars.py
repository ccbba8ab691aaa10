"""The pixel size an acquisition states beside its images, for folders whose TIFFs state none.

CellVoyager writes TIFFs without any pixel size and records it, per channel, in
``MeasurementDetail.mrf`` (``bts:HorizontalPixelDimension``, micrometres; the real CV8000
output in the shared fixtures says 0.325); Harmony (Operetta/Opera Phenix) records it per image
in ``Index.idx.xml`` (``ImageResolutionX`` with its unit, usually metres). ``nscmonitor doctor``
quotes it in its advice to set the folder's ``pixel_size_um``. The daemon does not serve from
it: Harmony writes its index when the measurement ends, so the first scans of a plate would be
read at their own scale and the later ones resampled; a setting the user confirms once holds for
every file of the folder alike.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from nscmonitor.readers.decode import PIXEL_SIZE_RANGE_UM, UM_PER_SYMBOL

log = logging.getLogger(__name__)

CELLVOYAGER = ("MeasurementDetail.mrf",)
HARMONY = ("Index.idx.xml", "Index.xml", "Index.ref.xml")
#: folders above the image searched for a sidecar (CellVoyager: the image's own; Harmony: ``Images/``)
MAX_LEVELS = 2
#: sidecars longer than this are not read for advice (a large plate's Harmony index is tens of MB;
#: its first images say what all of them do)
MAX_BYTES = 64 << 20
#: Harmony values read before deciding (they repeat for every image of a channel)
MAX_VALUES = 512
_CHANNEL = re.compile(r"C(\d{2})\.tiff?$", re.IGNORECASE)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _attr(el: ET.Element, name: str) -> str | None:
    """An attribute by its local name, whatever its namespace (``bts:Ch``)."""
    for k, v in el.attrib.items():
        if _local(k) == name:
            return v
    return None


def _cellvoyager(path: Path, image: Path) -> float | None:
    """The image's channel's pixel size (its name's ``Cnn``), or the one all channels share."""
    sizes: dict[str, float] = {}
    for _, el in ET.iterparse(path, events=("start",)):
        if _local(el.tag) == "MeasurementChannel":
            ch, um = _attr(el, "Ch"), _attr(el, "HorizontalPixelDimension")
            if ch is not None and um is not None:
                sizes[str(int(ch))] = float(um)
    m = _CHANNEL.search(image.name)
    if m and str(int(m.group(1))) in sizes:
        return sizes[str(int(m.group(1)))]
    values = set(sizes.values())
    return values.pop() if len(values) == 1 else None


def _harmony(path: Path, image: Path) -> float | None:
    """The pixel size every image of the index states (the first ``MAX_VALUES``), or None when
    they differ (channels of several binnings: the folder then needs one setting per channel
    folder)."""
    values: list[float] = []
    for _, el in ET.iterparse(path, events=("end",)):
        if _local(el.tag) == "ImageResolutionX" and el.text:
            factor = UM_PER_SYMBOL.get((el.get("Unit") or "m").strip())
            if factor is None:
                return None
            values.append(float(el.text) * factor)
            if len(values) >= MAX_VALUES:
                break
        el.clear()
    if not values or max(values) > min(values) * 1.01:
        return None
    return values[0]


def stated_pixel_size(image: Path, root: Path) -> tuple[float, Path] | None:
    """Micrometres per pixel and the sidecar that states it, from the image's folder or up to
    ``MAX_LEVELS`` folders above it (never above ``root``); None when no sidecar says, or one
    cannot be read (logged with the file and the reason)."""
    lo, hi = PIXEL_SIZE_RANGE_UM
    folder = image.parent
    for _ in range(MAX_LEVELS + 1):
        for names, read in ((CELLVOYAGER, _cellvoyager), (HARMONY, _harmony)):
            for name in names:
                side = folder / name
                try:
                    if not side.is_file() or side.stat().st_size > MAX_BYTES:
                        continue
                    um = read(side, image)
                except (OSError, ET.ParseError, ValueError) as exc:
                    log.warning("%s: its pixel size cannot be read: %s", side, exc)
                    continue
                if um is not None and lo <= um <= hi:
                    return um, side
        if folder == root or root not in folder.parents:
            break
        folder = folder.parent
    return None
