"""Where the stored tile probabilities sit on the original frame, and their overlay colours.

The daemon stores per-tile probabilities with the grid's rows, cols and kept mask but not
the grid's origin and tile size. They are recomputed here the way ``scoring.preprocess.Preprocess``
made them: the frame is resampled by ``src_um / dst_um`` (model pixel size), cut into tiles of
the model's input size on a grid centred in the resampled frame. Without the model's
metadata the grid is inferred from rows/cols and the frame size, and flagged as approximate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class OverlayGeometry:
    x0: float  # original-frame pixels
    y0: float
    tile_w: float
    tile_h: float
    exact: bool  # False: inferred without the model's input size


def overlay_geometry(width: int, height: int, rows: int, cols: int, *, input_size: int | None = None,
                     src_um: float | None = None, dst_um: float | None = None) -> OverlayGeometry:
    factor = 1.0
    if src_um and dst_um and abs(src_um / dst_um - 1.0) >= 0.02:
        factor = src_um / dst_um
    if input_size:
        h, w = int(round(height * factor)), int(round(width * factor))
        s = input_size
        if h // s == rows and w // s == cols:
            y0, x0 = (h - rows * s) // 2, (w - cols * s) // 2
            return OverlayGeometry(x0 / factor, y0 / factor, s / factor, s / factor, True)
        if rows == 1 and cols == 1 and (h < s or w < s):  # a frame smaller than one tile was padded
            return OverlayGeometry(0.0, 0.0, s / factor, s / factor, True)
    if rows <= 0 or cols <= 0:
        return OverlayGeometry(0.0, 0.0, float(width), float(height), False)
    size = min(height / rows, width / cols)
    return OverlayGeometry((width - cols * size) / 2, (height - rows * size) / 2, size, size, False)


def tile_rgba(probs: np.ndarray, kept: np.ndarray, rows: int, cols: int, colors: np.ndarray,
              max_alpha: float = 0.6) -> np.ndarray:
    """rows x cols x 4 uint8: each scored tile in its top class's colour with opacity equal to
    that class's probability (times ``max_alpha`` so the cells stay visible); dropped tiles
    (empty background) are transparent."""
    out = np.zeros((rows * cols, 4), np.uint8)
    if probs.size:
        top = probs.argmax(axis=1)
        p = probs[np.arange(len(top)), top]
        rgb = np.asarray(colors, np.uint8)[top]
        out[kept, :3] = rgb
        out[kept, 3] = np.clip(p * max_alpha * 255, 0, 255).astype(np.uint8)
    return out.reshape(rows, cols, 4)
