"""The dashboard window: browser | plate map with time slider | time courses, images,
status, models. All store reads go through ``Reader`` (worker threads); the GUI thread only
indexes arrays and paints."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
from PySide6.QtCore import QTimer, Signal
from PySide6.QtGui import QCloseEvent
from sqlalchemy.engine import Engine

from nscmonitor.config import Settings
from nscmonitor.gui.export_dialog import ExportDialog, save_map_as, save_time_courses_as
from nscmonitor.gui.state.forecasts import (FORECAST_KEY, flagged_forecasts, forecast_at, forecast_flagged,
                                            forecast_metrics, forecast_note, serving_line)
from nscmonitor.gui.state.presenter import (ModelMetaCache, Overview, PlateLoad, PollResult, WellImages, daemon_line,
                                            export_counts, load_plate, poll, read_overview)
from nscmonitor.gui.state.readouts import (Metric, PlateCube, ReadoutRows, merge, metric_at, metrics_for, nearest_time,
                                           well_tooltip)
from nscmonitor.gui.widgets.browser import first_plate
from nscmonitor.gui.window_layout import WindowLayout
from nscmonitor.gui.workers import Reader
from nscmonitor.ops.health import forecast_state
from nscmonitor.store import plate_reads as db
from nscmonitor.store import reads


class MainWindow(WindowLayout):
    plate_loaded = Signal()
    polled = Signal()

    def __init__(self, engine: Engine, settings: Settings, *, experiment: str | None = None,
                 poll_s: float = 2.0) -> None:
        super().__init__()
        self.engine, self.settings = engine, settings
        self.want_experiment = experiment
        self.reader = Reader(self)
        self.meta_cache = ModelMetaCache(engine, settings)
        self.overview: Overview | None = None
        self.experiment: reads.ExperimentOverview | None = None
        self.plate: reads.PlateInfo | None = None
        self.load: PlateLoad | None = None
        self.forecasts: dict = {}
        self.cube: PlateCube | None = None
        self.version: str | None = None
        self.marks: db.Marks | None = None
        self.t_index = 0
        self.selection: list[str] = []
        # Combo values live here, not as Qt item data: reading an empty QVariant back
        # (currentData() on an empty combo) loses a reference to None in PySide6 6.12 on
        # Python 3.11, and enough of those abort the interpreter at exit.
        self._metrics: list[Metric] = []
        self._versions: list[str] = []
        self.errors: list[str] = []
        self.last_load_s = float("nan")
        self._polling = False
        self.setWindowTitle("nscmonitor — NSC differentiation dashboard")
        self._build()
        self.poll_timer = QTimer(self)
        self.poll_timer.setInterval(int(poll_s * 1000))
        self.poll_timer.timeout.connect(self.poll_now)
        self.play_timer = QTimer(self)
        self.play_timer.setInterval(400)
        self.play_timer.timeout.connect(self._play_step)
        self.reader.submit(reads.first_plate, engine, experiment, done=self._first_plate, failed=self._failed,
                           channel="first")
        self.refresh()
        self.poll_timer.start()

    # --- overview, status, polling -----------------------------------------------------------
    def refresh(self) -> None:
        self.reader.submit(read_overview, self.engine, done=self._overview, failed=self._failed, channel="overview")

    def _overview(self, ov: Overview) -> None:
        self.overview = ov
        # which well forecast serves is a file beside the models, read off the GUI thread as well
        self.reader.submit(forecast_state, self.settings, channel="forecast",
                           done=lambda st: self.models_panel.set_forecast(serving_line(st)),
                           failed=lambda msg: self.models_panel.set_forecast(serving_line({"problem": msg})))
        now = datetime.now(timezone.utc)
        daemon = daemon_line(ov.status, now)
        self.browser.set_experiments(ov.experiments, now, daemon.watched, self.plate.id if self.plate else None)
        if self.experiment is not None:
            self.experiment = next((e for e in ov.experiments if e.id == self.experiment.id), self.experiment)
        self.status_panel.set_snapshot(ov.status)
        self.daemon_label.setText(daemon.text)
        self.daemon_label.setStyleSheet("color: #070" if daemon.alive else "color: #b00")
        self._models()
        if self.plate is None:
            picked = first_plate(ov.experiments, self.want_experiment)
            if picked is None and self.want_experiment and not any(e.name == self.want_experiment
                                                                   for e in ov.experiments):
                self.message.setText(f"No experiment named {self.want_experiment!r} in this database.")
            if picked is not None:
                self.choose_plate(*picked)
            elif not ov.experiments:
                self.message.setText("The database holds no experiment yet: start 'nscmonitor run' on a folder.")

    def _first_plate(self, picked: tuple | None) -> None:
        if picked is not None and self.plate is None:
            self.choose_plate(*picked)

    def serving_version(self) -> str | None:
        ov = self.overview
        if ov is None or not ov.status.daemons:
            return None
        return ov.status.daemons[0].model_version

    def _models(self) -> None:
        if self.overview is None:
            return
        used = [v.version for v in self.load.versions] if self.load else []
        self.models_panel.set_versions(self.overview.versions, self.serving_version(), used, self.overview.served)

    def poll_now(self) -> None:
        if self._polling:
            return
        self._polling = True
        self.reader.submit(poll, self.engine, self.plate, self.version, self.marks, self.serving_version(),
                           done=self._polled, failed=self._poll_failed, channel="poll")

    def _poll_failed(self, msg: str) -> None:
        self._polling = False
        self._failed(msg)

    def _polled(self, r: PollResult) -> None:
        self._polling = False
        if r.overview is not None:
            self._overview(r.overview)
        if r.forecasts is not None:
            self._set_forecasts(r.forecasts)
        if r.full is not None:
            self._plate_loaded(r.full, keep_time=True)
        elif self.cube is not None and (r.rows is not None or r.wells is not None):
            at_end = self.t_index >= self.cube.n_times - 1
            hours = self.cube.elapsed_h[self.t_index] if self.cube.n_times else np.nan
            rows = r.rows if r.rows is not None else ReadoutRows.empty(self.cube.classes)
            cube = merge(self.cube, rows, r.wells)
            if r.wells is not None and len(r.wells) != len(self.plate_map.names):
                self._set_plate_wells(cube)
            self._set_cube(cube, None if at_end else float(hours))
        if self.load is not None or r.overview is not None:
            self.marks = r.marks
        self.polled.emit()

    def _failed(self, msg: str) -> None:
        self.errors.append(msg)
        self.message.setText(f"Read failed (will retry): {msg}")

    # --- plate ---------------------------------------------------------------------------------
    def choose_plate(self, exp: reads.ExperimentOverview, plate: reads.PlateInfo, version: str | None = None) -> None:
        self.experiment, self.plate = exp, plate
        self.message.setText(f"Loading {exp.name} / {plate.name} …")
        self.reader.submit(load_plate, self.engine, plate, self.serving_version(), version, latest_only=True,
                           done=self._plate_loaded, failed=self._failed, channel="plate")

    def _version_chosen(self, _i: int) -> None:
        i = self.version_box.currentIndex()
        v = self._versions[i] if 0 <= i < len(self._versions) else None
        if v and v != self.version and self.experiment and self.plate:
            self.choose_plate(self.experiment, self.plate, v)

    def _plate_loaded(self, pl: PlateLoad, keep_time: bool = False) -> None:
        self.load, self.version, self.last_load_s = pl, pl.version, pl.seconds
        self.forecasts = pl.forecasts
        self.time_course.set_forecasts(self.forecasts)
        if self.marks is None or pl.marks.prediction_id < self.marks.prediction_id or not keep_time:
            self.marks = pl.marks
        self.version_box.blockSignals(True)
        self.version_box.clear()
        self._versions = [v.version for v in pl.versions]
        for v in pl.versions:
            self.version_box.addItem(f"{v.version} ({v.n_readouts} readouts)")
        self.version_box.setCurrentIndex(self._versions.index(pl.version) if pl.version in self._versions else 0)
        self.version_box.blockSignals(False)
        self._fill_metrics(pl.cube.classes)
        self._set_plate_wells(pl.cube)
        self.time_course.set_call_rule(pl.call_rule)
        self._set_cube(pl.cube, None)
        self._models()
        self.message.setText(f"{self.experiment.name if self.experiment else ''} / {pl.plate.name}: "
                             f"{len(pl.wells)} wells, {pl.cube.n_times} time points, model {pl.version or 'none'} "
                             f"(loaded in {pl.seconds:.2f} s)")
        self.time_course.set_wells(self.selection)
        if pl.partial:
            self.message.setText(self.message.text() + " — loading all time points …")
            self.slider.setEnabled(False)
            self.reader.submit(load_plate, self.engine, pl.plate, None, pl.version, done=self._plate_loaded,
                               failed=self._failed, channel="plate")
            return
        self.slider.setEnabled(True)
        self.plate_loaded.emit()

    def _fill_metrics(self, classes: tuple[str, ...]) -> None:
        """The map's choices: the tile model's readouts, then the forecast's classes when the
        plate has forecasts; the chosen one is kept when it is still offered."""
        prev = self.current_metric()
        self.metric_box.blockSignals(True)
        self.metric_box.clear()
        self._metrics = metrics_for(classes) + forecast_metrics(self.forecasts)
        for m in self._metrics:
            self.metric_box.addItem(m.label)
        keys = [m.key for m in self._metrics]
        self.metric_box.setCurrentIndex(keys.index(prev.key) if prev is not None and prev.key in keys else 0)
        self.metric_box.blockSignals(False)

    def _set_forecasts(self, cells: dict) -> None:
        """New forecasts from a poll: the time course redraws, the map's choices follow the
        forecast model's classes (the first forecasts of a plate add them), and a map coloured
        by the forecast is repainted."""
        offered = [m.key for m in forecast_metrics(self.forecasts)]
        self.forecasts = cells
        self.time_course.set_forecasts(cells)
        if self.cube is not None and [m.key for m in forecast_metrics(cells)] != offered:
            self._fill_metrics(self.cube.classes)
        m = self.current_metric()
        if m is not None and m.key.startswith(FORECAST_KEY):
            self._paint_map()

    def _set_plate_wells(self, cube: PlateCube) -> None:
        self.plate_map.set_plate(self.load.plate_format if self.load else 96,
                                 [(w.name, w.row, w.col, w.condition) for w in cube.wells])
        self.selection = [w for w in self.selection if w in self.plate_map.rowcol]

    def _set_cube(self, cube: PlateCube, hours: float | None) -> None:
        """New data: keep the slider on the same hour, or follow the newest time point when it
        was already at the end (the live case)."""
        self.cube = cube
        t = cube.n_times - 1 if hours is None or not np.isfinite(hours) else nearest_time(cube, hours)
        self.slider.blockSignals(True)
        self.slider.setRange(0, max(0, cube.n_times - 1))
        self.slider.setValue(max(0, t))
        self.slider.blockSignals(False)
        self.t_index = max(0, t)
        self.time_course.set_cube(cube)
        self._paint_map()
        self.time_course.set_time(self.t_index)
        self._load_images()

    def set_time(self, t: int) -> None:
        if self.cube is None:
            return
        self.t_index = int(np.clip(t, 0, max(0, self.cube.n_times - 1)))
        if self.slider.value() != self.t_index:
            self.slider.setValue(self.t_index)
            return
        self._paint_map()
        self.time_course.set_time(self.t_index)
        self._load_images()

    def current_metric(self) -> Metric | None:
        i = self.metric_box.currentIndex()
        return self._metrics[i] if 0 <= i < len(self._metrics) else None

    def set_metric(self, key: str) -> None:
        self.metric_box.setCurrentIndex([m.key for m in self._metrics].index(key))

    def _paint_map(self) -> None:
        cube, m = self.cube, self.current_metric()
        if cube is None or m is None:
            return
        if m.key.startswith(FORECAST_KEY):
            key = int(cube.time_keys[self.t_index]) if cube.n_times else None
            values = forecast_at(self.forecasts, [w.name for w in cube.wells], key, m.key)
        else:
            values = metric_at(cube, m.key, self.t_index)
        when = cube.time_label(self.t_index) if cube.n_times else "no data yet"
        self.time_label.setText(f"{when}  ({self.t_index + 1 if cube.n_times else 0}/{cube.n_times})")
        title = f"{self.experiment.name if self.experiment else ''} / {self.plate.name if self.plate else ''} — " \
                f"{m.label} at {when}"
        self.plate_map.set_values(values, label=m.label, unit=m.unit, fixed_range=m.fixed_range, title=title)
        if m.key.startswith(FORECAST_KEY):
            self.plate_map.set_flagged(forecast_flagged(self.forecasts, [w.name for w in cube.wells], key))
            self._show_forecast_banner()
        else:
            self.plate_map.set_flagged([w.name for w, f in zip(cube.wells, cube.flagged_at(self.t_index)) if f])
            self._show_ood_banner(cube)

    def _show_ood_banner(self, cube: PlateCube) -> None:
        """A banner above the map while the shown plate has images flagged out of distribution."""
        n = cube.flagged_images()
        self.ood_banner.setVisible(n > 0)
        if n:
            self.ood_banner.setText(f"⚠ {n} image(s) on this plate are unlike the model's training data "
                                    "(cross-hatched wells): their readouts mean little and are left out of calls.")

    def _show_forecast_banner(self) -> None:
        """The banner while the map shows the forecast: the forecast model's own flag, which
        judges frames against its training images, not the tile model's."""
        n = flagged_forecasts(self.forecasts)
        self.ood_banner.setVisible(n > 0)
        if n:
            self.ood_banner.setText(f"⚠ {n} well forecast(s) on this plate rest on frames unlike the forecast model's "
                                    "training images (cross-hatched wells): they mean little and are left out of calls.")

    def _toggle_play(self, on: bool) -> None:
        self.play.setText("⏸ Pause" if on else "▶ Play")
        if on:
            if self.cube is not None and self.t_index >= self.cube.n_times - 1:
                self.set_time(0)
            self.play_timer.start()
        else:
            self.play_timer.stop()

    def _play_step(self) -> None:
        if self.cube is None or self.t_index >= self.cube.n_times - 1:
            self.play.setChecked(False)
            return
        self.set_time(self.t_index + 1)

    # --- selection, tooltips, images ----------------------------------------------------------
    def _label_target(self) -> tuple[str, str, list[str]] | None:
        if self.experiment is None or self.plate is None:
            return None
        return self.experiment.name, self.plate.name, list(self.selection)

    def set_selection(self, wells: list[str]) -> None:
        self.selection = list(wells)
        self.time_course.set_wells(self.selection)
        self._load_images()

    def well_tooltip(self, well: str) -> str:
        m = self.current_metric()
        cube = self.cube
        key = int(cube.time_keys[self.t_index]) if cube is not None and 0 <= self.t_index < cube.n_times else None
        return well_tooltip(cube, well, self.t_index, self.plate_map.conditions.get(well),
                            m.label if m is not None else "", self.plate_map.value_of(well)) + \
            forecast_note(self.forecasts, well, key)

    def _load_images(self) -> None:
        cube = self.cube
        if cube is None or not self.selection or cube.n_times == 0:
            self.image_view.set_images([])
            return
        w = cube.wells[cube.well_index(self.selection[0])]
        tk = int(cube.time_keys[self.t_index])
        title = f"{w.name} ({w.condition or 'no condition'}) at {cube.time_label(self.t_index)}"
        self.reader.submit(self.meta_cache.well_images, w.id, tk, self.version,
                           done=lambda r, title=title: self._images(r, title), failed=self._failed, channel="images")

    def _images(self, r: WellImages, title: str) -> None:
        self.image_view.set_model(r.model_meta, r.model_path)
        self.image_view.set_images(r.images, title)

    # --- export --------------------------------------------------------------------------------
    def open_export(self) -> ExportDialog:
        exps = [e.name for e in self.overview.experiments] if self.overview else []
        counts = export_counts(self.overview, self.load, self.experiment.name if self.experiment else None,
                               self.version)
        dlg = ExportDialog(self.reader, self.engine, self.settings, exps,
                           self.experiment.name if self.experiment else None, counts, self)
        dlg.show()
        return dlg

    def _save_map(self) -> None:
        saved = save_map_as(self, self.plate_map)
        if saved:
            self.message.setText(saved)

    def _save_plots(self) -> None:
        saved = save_time_courses_as(self, self.time_course.well_plot, self.time_course.cond_plot)
        if saved:
            self.message.setText(saved)

    def closeEvent(self, e: QCloseEvent) -> None:  # noqa: N802 - Qt API
        self.poll_timer.stop()
        self.play_timer.stop()
        self.reader.shutdown(5000)
        super().closeEvent(e)
