"""Channel selection inside OME-TIFF (and ImageJ) stacks.

The watch folder's ``channel`` setting names the channel that is scored. A file holding one
channel is scored as it is; in a stack with several, the channel is found by its OME-XML
name or by its 1-based number, and a setting the stack does not have is refused with the
channels it does have, never answered with the first plane.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from nscmonitor.readers.formats import pick_channel


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
