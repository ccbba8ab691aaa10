"""The plate drawn like the real one: row letters, column numbers, round wells coloured by
the chosen readout, a colour bar, hatched wells where there is no data, condition outlines.

Painted with QPainter rather than a grid of widgets: a 1536-well plate is one widget and a
time-slider step is one ``update()``. The values are kept as an array so tests (and the
tooltip) read back exactly what is drawn.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PySide6.QtCore import QPoint, QPointF, QRect, QRectF, QSize, Qt, Signal
from PySide6.QtGui import (QBrush, QColor, QContextMenuEvent, QFont, QLinearGradient, QMouseEvent, QPainter, QPaintEvent,
                           QPen)
from PySide6.QtWidgets import QMenu, QSizePolicy, QToolTip, QWidget

from nscmonitor.core.domain import PLATE_SHAPES, well_name
from nscmonitor.core.palette import OOD_RGB
from nscmonitor.gui.widgets.chart_menu import add_save_actions
from nscmonitor.gui.widgets.colors import ValueColormap, condition_color


#: the out-of-distribution flag's hatch and outline, as the report draws it
OOD_COLOR = QColor(*OOD_RGB)


class PlateMapView(QWidget):
    selection_changed = Signal(list)  # well names
    hovered = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMouseTracking(True)
        self.setMinimumSize(420, 300)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.cmap = ValueColormap("viridis")
        self.plate_format = 96
        self.shape = PLATE_SHAPES[96]
        self.names: list[str] = []  # well index -> name (only wells known to the store)
        self.rowcol: dict[str, tuple[int, int]] = {}
        self.conditions: dict[str, str | None] = {}
        self.values = np.zeros(0)
        self.value_label = ""
        self.unit = ""
        self.range: tuple[float, float] = (0.0, 1.0)
        self.selected: list[str] = []
        self.title = ""
        self.tooltip_fn: Callable[[str], str] | None = None
        self._drag_from: QPoint | None = None
        self._drag_to: QPoint | None = None
        self._cond_index: dict[str, int] = {}
        #: wells whose readout rests on images flagged out of distribution: cross-hatched
        self.flagged: set[str] = set()

    # --- model ----------------------------------------------------------------------------
    def set_plate(self, plate_format: int, wells: list[tuple[str, int, int, str | None]]) -> None:
        self.plate_format = plate_format
        self.shape = PLATE_SHAPES.get(plate_format, PLATE_SHAPES[96])
        self.names = [w[0] for w in wells]
        self.rowcol = {w[0]: (w[1], w[2]) for w in wells}
        self.conditions = {w[0]: w[3] for w in wells}
        conds = sorted({c for c in self.conditions.values() if c})
        self._cond_index = {c: i for i, c in enumerate(conds)}
        self.values = np.full(len(self.names), np.nan)
        self.selected = [n for n in self.selected if n in self.rowcol]
        self.update()

    def set_values(self, values: np.ndarray, *, label: str, unit: str,
                   fixed_range: tuple[float, float] | None, title: str = "") -> None:
        self.values = np.asarray(values, dtype=np.float64)
        self.value_label, self.unit, self.title = label, unit, title
        if fixed_range is not None:
            self.range = fixed_range
        else:
            finite = self.values[np.isfinite(self.values)]
            hi = float(finite.max()) if finite.size else 1.0
            self.range = (0.0, max(hi, 1.0))
        self.update()

    def set_flagged(self, wells: list[str]) -> None:
        """Wells to cross-hatch in the flag colour over their value (their images are unlike
        the model's training data, so the colour underneath means little)."""
        self.flagged = {w for w in wells if w in self.rowcol}
        self.update()

    def value_of(self, well: str) -> float | None:
        """The value drawn for ``well``; None when the well shows 'no data'."""
        try:
            v = self.values[self.names.index(well)]
        except ValueError:
            return None
        return None if not np.isfinite(v) else float(v)

    def condition_legend(self) -> list[tuple[int, str]]:
        return [(i + 1, c) for c, i in sorted(self._cond_index.items(), key=lambda kv: kv[1])]

    def set_selection(self, wells: list[str]) -> None:
        self.selected = [w for w in wells if w in self.rowcol]
        self.update()
        self.selection_changed.emit(list(self.selected))

    # --- geometry ---------------------------------------------------------------------------
    def _layout(self) -> tuple[QRectF, float]:
        rows, cols = self.shape
        legend_h = 18 * ((len(self._cond_index) + 2) // 3) + 6 if self._cond_index else 0
        left, top, right, bottom = 30.0, 40.0, 110.0, 10.0 + legend_h
        w = max(10.0, self.width() - left - right)
        h = max(10.0, self.height() - top - bottom)
        pitch = min(w / cols, h / rows)
        return QRectF(left, top, pitch * cols, pitch * rows), pitch

    def _well_rect(self, row: int, col: int) -> QRectF:
        grid, pitch = self._layout()
        return QRectF(grid.left() + col * pitch, grid.top() + row * pitch, pitch, pitch)

    def well_at(self, pos: QPointF | QPoint) -> str | None:
        grid, pitch = self._layout()
        x, y = pos.x() - grid.left(), pos.y() - grid.top()
        if x < 0 or y < 0:
            return None
        col, row = int(x // pitch), int(y // pitch)
        rows, cols = self.shape
        if row >= rows or col >= cols:
            return None
        return well_name(row, col)

    def well_center(self, well: str) -> QPoint:
        r, c = self.rowcol.get(well) or _parse(well)
        return self._well_rect(r, c).center().toPoint()

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt API
        return QSize(640, 460)

    # --- painting ----------------------------------------------------------------------------
    def paintEvent(self, _event: QPaintEvent) -> None:  # noqa: N802 - Qt API
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.fillRect(self.rect(), self.palette().window())
        grid, pitch = self._layout()
        fg = self.palette().windowText().color()
        font = QFont(self.font())
        font.setPointSizeF(max(6.0, min(10.0, pitch * 0.38)))
        p.setFont(font)
        p.setPen(fg)
        tf = QFont(self.font())
        tf.setBold(True)
        p.setFont(tf)
        p.drawText(QRectF(0, 2, self.width(), 18), Qt.AlignmentFlag.AlignHCenter, self.title)
        p.setFont(font)
        self._paint_axis_labels(p, grid, pitch)
        plate_outline = QRectF(grid).adjusted(-3, -3, 3, 3)
        p.setPen(QPen(fg, 1.2))
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawRoundedRect(plate_outline, 6, 6)
        inset = max(1.0, pitch * 0.08)
        self._paint_wells(p, pitch, inset)
        self._paint_conditions(p, grid, pitch)
        sel_pen = QPen(QColor(220, 20, 60), max(2.0, pitch * 0.1))
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.setPen(sel_pen)
        for name in self.selected:
            r, c = self.rowcol[name]
            p.drawEllipse(self._well_rect(r, c).adjusted(inset / 2, inset / 2, -inset / 2, -inset / 2))
        if self._drag_from is not None and self._drag_to is not None:
            p.setPen(QPen(fg, 1, Qt.PenStyle.DashLine))
            p.drawRect(QRect(self._drag_from, self._drag_to).normalized())
        self._paint_colorbar(p, grid, fg)
        self._paint_legend(p, grid, fg)
        p.end()

    def _paint_wells(self, p: QPainter, pitch: float, inset: float) -> None:
        """Each well filled with its value's colour; a well without a value is grey and
        hatched (empty wells are left clear), a flagged one cross-hatched over its colour."""
        rows, cols = self.shape
        lo, hi = self.range
        colors = self.cmap.rgb(self.values, lo, hi) if len(self.values) else np.zeros((0, 3))
        index = {n: i for i, n in enumerate(self.names)}
        empty_pen = QPen(QColor(170, 170, 170), 1)
        hatch = QBrush(QColor(150, 150, 150), Qt.BrushStyle.BDiagPattern)
        ood_hatch = QBrush(OOD_COLOR, Qt.BrushStyle.DiagCrossPattern)
        for r in range(rows):
            for c in range(cols):
                name = well_name(r, c)
                rect = self._well_rect(r, c).adjusted(inset, inset, -inset, -inset)
                i = index.get(name)
                if i is not None and np.isfinite(self.values[i]):
                    p.setPen(Qt.PenStyle.NoPen)
                    p.setBrush(QColor(*[int(v) for v in colors[i]]))
                    p.drawEllipse(rect)
                else:
                    p.setPen(empty_pen)
                    p.setBrush(QColor(235, 235, 235) if i is not None else Qt.GlobalColor.transparent)
                    p.drawEllipse(rect)
                    if i is not None:
                        p.setBrush(hatch)
                        p.drawEllipse(rect)
                if name in self.flagged:
                    p.setPen(QPen(OOD_COLOR, max(1.5, pitch * 0.06)))
                    p.setBrush(ood_hatch)
                    p.drawEllipse(rect)

    def _paint_axis_labels(self, p: QPainter, grid: QRectF, pitch: float) -> None:
        """Column numbers above and row letters left of the plate; every 2nd or 4th when
        the wells are too small for all of them."""
        rows, cols = self.shape
        step = 1 if pitch >= 14 else (2 if pitch >= 8 else 4)
        for c in range(0, cols, step):
            p.drawText(QRectF(grid.left() + c * pitch, grid.top() - 18, pitch * step if step > 1 else pitch, 16),
                       Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignBottom, str(c + 1))
        for r in range(0, rows, step):
            p.drawText(QRectF(2, grid.top() + r * pitch, 24, pitch), Qt.AlignmentFlag.AlignVCenter
                       | Qt.AlignmentFlag.AlignRight, well_name(r, 0)[:-2])

    def _paint_conditions(self, p: QPainter, grid: QRectF, pitch: float) -> None:
        """Thick lines where neighbouring wells hold different conditions, and each well's
        condition number when the wells are large enough to carry it legibly."""
        if not self._cond_index:
            return
        cond_at = {self.rowcol[n]: self.conditions.get(n) for n in self.names}
        p.setPen(QPen(self.palette().windowText().color(), max(1.5, pitch * 0.06)))
        rows, cols = self.shape
        for (r, c), cond in cond_at.items():
            x0, y0 = grid.left() + c * pitch, grid.top() + r * pitch
            if c + 1 < cols and cond_at.get((r, c + 1), cond) != cond:
                p.drawLine(QPointF(x0 + pitch, y0), QPointF(x0 + pitch, y0 + pitch))
            if r + 1 < rows and cond_at.get((r + 1, c), cond) != cond:
                p.drawLine(QPointF(x0, y0 + pitch), QPointF(x0 + pitch, y0 + pitch))
        if pitch < 26:
            return
        f = QFont(self.font())
        f.setPointSizeF(max(6.0, pitch * 0.24))
        f.setBold(True)
        p.setFont(f)
        for n in self.names:
            cond = self.conditions.get(n)
            if not cond:
                continue
            r, c = self.rowcol[n]
            rect = self._well_rect(r, c)
            v = self.value_of(n)
            light = v is not None and (v - self.range[0]) / max(self.range[1] - self.range[0], 1e-9) > 0.6
            p.setPen(QColor(20, 20, 20) if light or v is None else QColor(250, 250, 250))
            p.drawText(rect, Qt.AlignmentFlag.AlignCenter, str(self._cond_index[cond] + 1))

    def _paint_colorbar(self, p: QPainter, grid: QRectF, fg: QColor) -> None:
        f = QFont(self.font())
        f.setPointSizeF(9)
        p.setFont(f)
        x = grid.right() + 22
        top, h = grid.top(), grid.height()
        grad = QLinearGradient(QPointF(x, top + h), QPointF(x, top))
        for k in range(11):
            grad.setColorAt(k / 10, self.cmap.qcolor(k / 10))
        p.fillRect(QRectF(x, top, 14, h), grad)
        p.setPen(fg)
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawRect(QRectF(x, top, 14, h))
        lo, hi = self.range
        integer = self.unit == "images"
        for k in range(5):
            v = lo + (hi - lo) * k / 4
            y = top + h - h * k / 4
            p.drawLine(QPointF(x + 14, y), QPointF(x + 18, y))
            text = f"{v:.0f}" if integer else f"{v:.2f}"
            p.drawText(QRectF(x + 20, y - 8, 50, 16), Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft, text)
        p.save()
        p.translate(x + 70, top + h / 2)
        p.rotate(-90)
        p.drawText(QRectF(-h / 2, -10, h, 20), Qt.AlignmentFlag.AlignCenter, f"{self.value_label} ({self.unit})")
        p.restore()
        # the key for 'no data'
        y = grid.top() - 30
        p.setPen(QPen(QColor(170, 170, 170), 1))
        p.setBrush(QBrush(QColor(150, 150, 150), Qt.BrushStyle.BDiagPattern))
        p.drawEllipse(QRectF(grid.right() + 10, y + 2, 12, 12))
        p.setPen(fg)
        p.drawText(QRectF(grid.right() + 26, y, 80, 16), Qt.AlignmentFlag.AlignVCenter, "no data")

    def _paint_legend(self, p: QPainter, grid: QRectF, fg: QColor) -> None:
        if not self._cond_index:
            return
        f = QFont(self.font())
        f.setPointSizeF(9)
        p.setFont(f)
        col_w = max(120.0, (grid.width() + 80) / 3)
        for n, (num, cond) in enumerate(self.condition_legend()):
            x = grid.left() + (n % 3) * col_w
            y = grid.bottom() + 8 + (n // 3) * 18
            p.setPen(Qt.PenStyle.NoPen)
            p.setBrush(QColor(*condition_color(num - 1)))
            p.drawRoundedRect(QRectF(x, y + 2, 18, 13), 3, 3)
            p.setPen(QColor(255, 255, 255))
            p.drawText(QRectF(x, y + 2, 18, 13), Qt.AlignmentFlag.AlignCenter, str(num))
            p.setPen(fg)
            p.drawText(QRectF(x + 22, y, col_w - 26, 17), Qt.AlignmentFlag.AlignVCenter, cond)

    # --- interaction ----------------------------------------------------------------------------
    def context_menu(self) -> QMenu:
        """Save the plate map as PNG or SVG (the chart's own context menu, like the time courses)."""
        from nscmonitor.gui.export_dialog import save_widget

        menu = QMenu(self)
        add_save_actions(menu, self, lambda p: save_widget(self, p), lambda: "plate_map")
        return menu

    def contextMenuEvent(self, e: QContextMenuEvent) -> None:  # noqa: N802 - Qt API
        menu = self.context_menu()
        menu.exec(e.globalPos())
        menu.deleteLater()

    def mousePressEvent(self, e: QMouseEvent) -> None:  # noqa: N802 - Qt API
        if e.button() == Qt.MouseButton.LeftButton:
            self._drag_from = e.position().toPoint()
            self._drag_to = None

    def mouseMoveEvent(self, e: QMouseEvent) -> None:  # noqa: N802 - Qt API
        pos = e.position().toPoint()
        if self._drag_from is not None and (pos - self._drag_from).manhattanLength() > 4:
            self._drag_to = pos
            self.update()
            return
        well = self.well_at(pos)
        if well is not None and well in self.rowcol:
            self.hovered.emit(well)
            text = self.tooltip_fn(well) if self.tooltip_fn else well
            QToolTip.showText(e.globalPosition().toPoint(), text, self)
        else:
            QToolTip.hideText()

    def mouseReleaseEvent(self, e: QMouseEvent) -> None:  # noqa: N802 - Qt API
        if e.button() != Qt.MouseButton.LeftButton or self._drag_from is None:
            return
        start, end = self._drag_from, self._drag_to
        self._drag_from = self._drag_to = None
        add = bool(e.modifiers() & (Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier))
        if end is None:
            well = self.well_at(e.position())
            picked = [well] if well in self.rowcol else []
            if add and picked:
                sel = [w for w in self.selected if w != well] if well in self.selected else self.selected + picked
            else:
                sel = picked
        else:
            rect = QRectF(QRect(start, end).normalized())
            picked = [n for n in self.names if rect.intersects(self._well_rect(*self.rowcol[n]))]
            sel = list(dict.fromkeys(self.selected + picked)) if add else picked
        self.set_selection(sel)


def _parse(well: str) -> tuple[int, int]:
    from nscmonitor.core.domain import parse_well

    return parse_well(well)
