"""Colour maps and class colours shared by the plate map, the curves and the tile overlay."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtGui import QColor

# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
CLASS_COLORS = {
    "neuron": (230, 159, 0),
    "astrocyte": (86, 180, 233),
    "oligodendrocyte": (0, 158, 115),
    "undifferentiated": (150, 150, 150),
    "glia": (0, 114, 178),
}
_EXTRA = [(204, 121, 167), (213, 94, 0), (240, 228, 66), (0, 114, 178)]
CONDITION_COLORS = [(0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (230, 159, 0), (86, 180, 233),
                    (120, 120, 120), (240, 228, 66), (100, 60, 160), (160, 80, 40)]


def class_color(name: str, i: int = 0) -> tuple[int, int, int]:
    return CLASS_COLORS.get(name, _EXTRA[i % len(_EXTRA)])


def condition_color(i: int) -> tuple[int, int, int]:
    return CONDITION_COLORS[i % len(CONDITION_COLORS)]


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
