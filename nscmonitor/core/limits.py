"""Limits checked before an allocation whose size a file controls.

Decoding checks the file's own header (``decode``); this checks what resampling will make
of the decoded frame, since the factor comes from the file's pixel-size tag: a frame whose
tag claims a millionth of a micrometre would otherwise be zoomed to terabytes, and one
claiming kilometres shrunk to an empty array.
"""

from __future__ import annotations

import math

#: the default cap on a decoded frame (``max_pixels``): an 8000 x 8000 frame, far above any single
#: field of the supported imagers; it bounds the daemon at about 1.0-1.4 GiB (docs/reliability.md)
DEFAULT_MAX_PIXELS = 64_000_000


def resample_refusal(shape: tuple[int, ...], factor: float, max_pixels: int, tile: int) -> str | None:
    """Why resampling a frame of ``shape`` by ``factor`` must not happen, or None."""
    if not math.isfinite(factor) or factor <= 0:
        return f"resampling factor {factor!r} from the pixel size is not a positive number"
    h, w = shape[-2:]
    out_h, out_w = h * factor, w * factor
    if out_h * out_w > max_pixels:
        return (f"resampling {w} x {h} pixels by {factor:.3g} to the model's pixel size would make "
                f"{out_w:.0f} x {out_h:.0f} pixels, above the cap of {max_pixels}")
    if min(out_h, out_w) < 1:
        return (f"resampling {w} x {h} pixels by {factor:.3g} to the model's pixel size leaves less than one "
                f"pixel; the frame covers under one {tile}-pixel tile")
    return None
