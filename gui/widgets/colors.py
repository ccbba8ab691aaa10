"""Colour maps and class colours shared by the plate map, the curves and the tile overlay."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtGui import QColor

from nscmonitor.core.palette import class_color, condition_color  # noqa: F401  (re-exported for the widgets)


class ValueColormap:
    """Values -> RGB with a fixed or data-driven range; NaN stays NaN (drawn as 'no data')."""

    def __init__(self, name: str = "viridis") -> None:
        self.cmap = pg.colormap.get(name)
        self.lut = self.cmap.getLookupTable(0.0, 1.0, 256, alpha=False)

    def rgb(self, values: np.ndarray, lo: float, hi: float) -> np.ndarray:
        span = hi - lo if hi > lo else 1.0
        x = np.clip((np.nan_to_num(values, nan=lo) - lo) / span, 0.0, 1.0)
        return self.lut[(x * 255).round().astype(int)]

    def qcolor(self, frac: float) -> QColor:
        r, g, b = self.lut[int(round(np.clip(frac, 0, 1) * 255))]
        return QColor(int(r), int(g), int(b))
