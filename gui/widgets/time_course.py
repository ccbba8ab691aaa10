"""Time courses: the selected wells (one curve per class, band = sd; dashed, the time-aware well
model's forecast where one is stored) and the conditions
(mean ± sd across replicate wells), each with the time the call became confident and stable
under the call rule of the model whose readouts are shown (``set_call_rule``), the rule the
report uses too; the label under the plots says which rule that is and where it comes from.

Curves are kept in ``self.curves`` (name -> x, y) so tests compare them with the store.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from nscmonitor.gui.state.forecasts import forecast_series
from nscmonitor.gui.state.readouts import (ConfidentCall, PlateCube, class_series, condition_series, confident_call,
                                           flagged_over, mean_over_wells, metric_series, metrics_for)
from nscmonitor.gui.widgets.chart_menu import add_save_actions
from nscmonitor.gui.widgets.colors import class_color, condition_color
from nscmonitor.report.calls import RuleInUse, rule_in_use
from nscmonitor.report.times import TimeAxis, time_axis

pg.setConfigOptions(antialias=True, background="w", foreground="k")


def _nan_break(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ok = np.isfinite(x) & np.isfinite(y)
    return x[ok], y[ok]


class TimeCourse(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.cube: PlateCube | None = None
        self.wells: list[str] = []
        self.t_index = 0
        self.rule: RuleInUse = rule_in_use(None, None)
        self.axis: TimeAxis = time_axis(np.zeros(0), np.zeros(0))
        self.curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.calls: dict[str, object] = {}
        self.bands: dict[str, pg.FillBetweenItem] = {}  # same keys as curves: the sd band drawn
        self.cond_keys: list[str] = []  # combo values kept in Python (see MainWindow._metrics)
        self.forecasts: dict = {}  # (well, time key) -> ForecastCell, as MainWindow holds them
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        bar = QHBoxLayout()
        bar.addWidget(QLabel("Wells show"))
        self.kind = QComboBox()
        self.kind.addItem("class probability (mean ± sd across fields)")
        self.kind.addItem("predicted class fraction of tiles")
        self.kind.currentIndexChanged.connect(self.redraw)
        bar.addWidget(self.kind)
        bar.addSpacing(12)
        bar.addWidget(QLabel("Conditions compare"))
        self.cond_metric = QComboBox()
        self.cond_metric.currentIndexChanged.connect(self.redraw)
        bar.addWidget(self.cond_metric, 1)
        lay.addLayout(bar)
        self.well_plot = pg.PlotWidget()
        self.cond_plot = pg.PlotWidget()
        for plot, title in ((self.well_plot, "Selected wells"), (self.cond_plot, "Conditions")):
            pi = plot.getPlotItem()
            self._save_menu(plot, "time_course_wells" if plot is self.well_plot else "time_course_conditions")
            pi.setTitle(title)
            pi.setLabel("bottom", "Time since induction", units="h")
            pi.showGrid(x=True, y=True, alpha=0.2)
            pi.addLegend(offset=(-10, 10), labelTextSize="8pt")
            lay.addWidget(plot, 1)
        self.call_label = QLabel()
        self.call_label.setWordWrap(True)
        self.call_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        lay.addWidget(self.call_label)

    def _save_menu(self, plot: pg.PlotWidget, name: str) -> None:
        """Save actions in the plot's own context menu (pyqtgraph's ViewBox menu)."""
        from nscmonitor.gui.export_dialog import save_plot

        add_save_actions(plot.getPlotItem().getViewBox().menu, self, lambda p: save_plot(plot, p), lambda: name)

    # --- inputs --------------------------------------------------------------------------
    def condition_metric(self) -> str | None:
        i = self.cond_metric.currentIndex()
        return self.cond_keys[i] if 0 <= i < len(self.cond_keys) else None

    def set_condition_metric(self, key: str) -> None:
        self.cond_metric.setCurrentIndex(self.cond_keys.index(key))

    def set_cube(self, cube: PlateCube | None) -> None:
        first = self.cube is None or cube is None or self.cube.classes != cube.classes
        self.cube = cube
        if first and cube is not None:
            self.cond_metric.blockSignals(True)
            prev = self.condition_metric()
            self.cond_metric.clear()
            self.cond_keys = [m.key for m in metrics_for(cube.classes) if m.fixed_range is not None]
            for m in metrics_for(cube.classes):
                if m.fixed_range is not None:
                    self.cond_metric.addItem(m.label)
            self.cond_metric.setCurrentIndex(self.cond_keys.index(prev) if prev in self.cond_keys else 0)
            self.cond_metric.blockSignals(False)
        self.redraw()

    def set_call_rule(self, rule: RuleInUse) -> None:
        """The rule of the model version shown; redraws when it changes the calls."""
        if rule != self.rule:
            self.rule = rule
            self.redraw()

    def set_forecasts(self, cells: dict) -> None:
        """The plate's stored well forecasts; redraws only when they changed."""
        if cells != self.forecasts:
            self.forecasts = dict(cells)
            self.redraw()

    def set_wells(self, wells: list[str]) -> None:
        self.wells = list(wells)
        self.redraw()

    def set_time(self, t: int) -> None:
        self.t_index = t
        self._time_lines()

    # --- drawing -------------------------------------------------------------------------
    def redraw(self) -> None:
        self.curves.clear()
        self.calls.clear()
        self.bands.clear()
        for plot in (self.well_plot, self.cond_plot):
            plot.clear()
        cube = self.cube
        if cube is None or cube.n_times == 0:
            self.call_label.setText("No readouts yet for this plate.")
            return
        self.axis = time_axis(cube.elapsed_h, cube.time_keys)
        for plot in (self.well_plot, self.cond_plot):
            plot.getPlotItem().setLabel("bottom", "Time since induction" if self.axis.hours else
                                        "Time point (set the folder's induction_time for hours since induction)",
                                        units="h" if self.axis.hours else None)
        notes = [self._draw_wells(cube), self._draw_conditions(cube), f"Call rule: {self.rule.text()}."]
        self.call_label.setText("  ".join(n for n in notes if n))
        self._time_lines()

    def _draw_wells(self, cube: PlateCube) -> str:
        pi = self.well_plot.getPlotItem()
        idx = [cube.well_index(w) for w in self.wells if any(x.name == w for x in cube.wells)]
        which = ("prob", "fraction")[max(0, self.kind.currentIndex())]
        pi.setLabel("left", "P(class)" if which == "prob" else "Fraction of tiles")
        pi.setYRange(0, 1, padding=0.02)
        if not idx:
            pi.setTitle("Selected wells: click a well, or drag across several")
            return ""
        names = ", ".join(cube.wells[i].name for i in idx[:6]) + (" …" if len(idx) > 6 else "")
        single = len(idx) == 1
        cond = cube.wells[idx[0]].condition if single else None
        pi.setTitle(f"{names}" + (f" — {cond}" if cond else "") +
                    (" (band: sd across fields)" if single and which == "prob" else
                     "" if single else f" (mean of {len(idx)} wells; band: sd across wells)"))
        x = self.axis.x
        means = []
        for k, cls in enumerate(cube.classes):
            v, sd = class_series(cube, which, cls)
            v, sd = v[idx], sd[idx]
            if single:
                y, band = v[0], sd[0]
            else:
                n = np.isfinite(v).sum(axis=0)
                with np.errstate(invalid="ignore"):
                    y = np.where(n > 0, np.nansum(v, axis=0) / np.maximum(n, 1), np.nan)
                    band = np.where(n > 1, np.nanstd(np.where(np.isfinite(v), v, np.nan), axis=0, ddof=1), 0.0) \
                        if len(idx) > 1 else np.zeros_like(y)
            means.append(y)
            color = class_color(cls, k)
            xs, ys = _nan_break(x, y)
            self.curves[cls] = (xs, ys)
            self._band(pi, x, y, band, color, cls)
            pi.plot(xs, ys, pen=pg.mkPen(color, width=2), symbol="o", symbolSize=4, symbolBrush=color,
                    symbolPen=None, name=cls)
        if which != "prob":
            return ""
        forecast = self._draw_forecast(pi, cube, [cube.wells[i].name for i in idx])
        call = confident_call(np.stack(means, axis=1), cube.elapsed_h, cube.classes, threshold=self.rule.rule.threshold,
                              min_points=self.rule.rule.min_points, flagged=flagged_over(cube, idx))
        self.calls["wells"] = call
        if call is None:
            return (f"Selected wells: no confident, stable call yet (top class ≥ {self.rule.rule.threshold:.0%} "
                    "until the last time point)." + forecast)
        self._call_marker(pi, call, class_color(call.cls, cube.classes.index(call.cls)))
        return (f"Selected wells: confident call <b>{call.cls}</b> from {self.axis.at(call.index)} "
                f"(P = {call.probability:.2f})" + (" — before 24 h: treat as early" if call.early else "") + "."
                + forecast)

    def _draw_forecast(self, pi: pg.PlotItem, cube: PlateCube, wells: list[str]) -> str:
        """Dashed curves of the well forecast (each point from the well's frames up to that time,
        so the curve is what the forecast said then, not a fit to the whole run); returns the
        note under the plots."""
        series = forecast_series(self.forecasts, wells, cube.time_keys)
        if series is None:
            return ""
        for k, cls in enumerate(series.classes):
            xs, ys = _nan_break(self.axis.x, series.probs[:, k])
            self.curves[f"forecast:{cls}"] = (xs, ys)
            slot = cube.classes.index(cls) if cls in cube.classes else k  # the tile curve's colour
            pi.plot(xs, ys, pen=pg.mkPen(class_color(cls, slot), width=1.5, style=Qt.PenStyle.DashLine),
                    name=f"forecast: {cls}")
        return (f" Dashed: the well forecast ({series.model_version}), each point from the well's frames up to "
                "that time.")

    def _draw_conditions(self, cube: PlateCube) -> str:
        pi = self.cond_plot.getPlotItem()
        key = self.condition_metric() or "prob:neuron"
        label = self.cond_metric.currentText()
        pi.setTitle(f"Conditions: {label} (mean ± sd across replicate wells)")
        pi.setLabel("left", label)
        pi.setYRange(0, 1, padding=0.02)
        series = condition_series(cube, metric_series(cube, key))
        named = sorted({w.condition for w in cube.wells if w.condition})
        order = {c: i for i, c in enumerate(named)}
        x = self.axis.x
        calls = []
        for s in series:
            i = order.get(s.condition, len(order))
            color = condition_color(i)
            xs, ys = _nan_break(x, s.mean)
            self.curves[f"condition:{s.condition}"] = (xs, ys)
            self._band(pi, x, s.mean, s.sd, color, f"condition:{s.condition}")
            label = f"{i + 1}. {s.condition}" if s.condition in order else s.condition
            pi.plot(xs, ys, pen=pg.mkPen(color, width=2), name=f"{label} (n={len(s.wells)})")
            probs = mean_over_wells(cube, s.wells)
            call = confident_call(probs, cube.elapsed_h, cube.classes, threshold=self.rule.rule.threshold,
                                  min_points=self.rule.rule.min_points,
                                  flagged=flagged_over(cube, [cube.well_index(w) for w in s.wells]))
            self.calls[f"condition:{s.condition}"] = call
            if call is not None:
                y = s.mean[call.index]
                pi.plot([x[call.index]], [y], pen=None, symbol="star", symbolSize=14, symbolBrush=color,
                        symbolPen=pg.mkPen("k", width=0.8))
                calls.append(f"{s.condition} → {call.cls} from {self.axis.at(call.index)}")
        return ("Condition calls (★): " + "; ".join(calls) + ".") if calls else ""

    def _band(self, pi: pg.PlotItem, x: np.ndarray, y: np.ndarray, sd: np.ndarray, color: tuple[int, int, int],
              name: str) -> None:
        """Shaded mean ± sd. The edges are PlotCurveItems: a PlotDataItem drawn without a pen
        keeps no path, so a FillBetweenItem between two of them filled nothing."""
        ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(sd)
        if ok.sum() < 2:
            return
        lo = pg.PlotCurveItem(x[ok], (y - sd)[ok])
        hi = pg.PlotCurveItem(x[ok], (y + sd)[ok])
        fill = pg.FillBetweenItem(lo, hi, brush=pg.mkBrush(*color, 60))
        self.bands[name] = fill
        pi.addItem(fill)

    def _call_marker(self, pi: pg.PlotItem, call: ConfidentCall, color: tuple[int, int, int]) -> None:
        line = pg.InfiniteLine(pos=self.axis.x[call.index], angle=90,
                               pen=pg.mkPen(color, width=1.5, style=Qt.PenStyle.DashLine),
                               label=f"call: {call.cls} @ {self.axis.at(call.index)}",
                               labelOpts={"position": 0.08, "color": (40, 40, 40), "fill": (255, 255, 255, 200)})
        pi.addItem(line)

    def _time_lines(self) -> None:
        cube = self.cube
        if cube is None or not (0 <= self.t_index < cube.n_times):
            return
        h = self.axis.x[self.t_index]  # set by redraw, which every new cube goes through
        if not np.isfinite(h):
            return
        for plot in (self.well_plot, self.cond_plot):
            pi = plot.getPlotItem()
            old = getattr(pi, "_now_line", None)
            if old is not None and old.scene() is not None:
                old.setValue(h)
                continue
            line = pg.InfiniteLine(pos=h, angle=90, pen=pg.mkPen((120, 120, 120), width=1))
            pi._now_line = line
            pi.addItem(line)

