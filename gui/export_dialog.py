"""Export the experiment's readouts with the very code behind ``nscmonitor export`` and
``nscmonitor report`` (tidy CSV, Incucyte-style wide sheets, Prism tables, the HTML report and
its PDF), in a worker thread with progress, plus the plate map and plots as PNG or SVG."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QRectF, QSize
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDialog, QDialogButtonBox, QFileDialog, QFormLayout, QHBoxLayout,
                               QLabel, QLineEdit, QMessageBox, QProgressBar, QPushButton, QVBoxLayout, QWidget)

from nscmonitor.gui.workers import Reader
from nscmonitor.ops.health import active_version
from nscmonitor.report.times import parse_hours

if TYPE_CHECKING:
    from pyqtgraph import PlotWidget
    from sqlalchemy.engine import Engine

    from nscmonitor.config import Settings


def export_csv(engine: Engine, settings: Settings, experiment: str, out: Path, per_image: bool, *, total: int = 0,
               progress: Callable[[int, int], None] | None = None) -> tuple[int, int, str | None, Path | None]:
    """The CLI's export: same functions, same version choice (the registry's active model)."""
    from nscmonitor.report.export import default_images_path, export_images, export_readouts
    from nscmonitor.store.reads import Repo

    repo = Repo(engine)
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None and done % 200 == 0:
            progress(done, total)

    n, version = export_readouts(repo, experiment, out, active=active_version(settings), progress=tick)
    k, img_path = 0, None
    if per_image:
        img_path = default_images_path(out)
        k = export_images(repo, experiment, img_path)
    if progress is not None:
        progress(total, total)
    return n, k, version, img_path


FORMATS = (("tidy", "Tidy CSV (one row per well × time point × class)", ".csv"),
           ("wide", "Incucyte-style wide sheets (one per readout: time points × wells)", ".txt"),
           ("prism", "Prism tables (one per readout: replicate wells side by side per condition)", ".csv"),
           ("report", "HTML report (plate maps, time courses, calls, QC, provenance)", ".html"))


def export_sheets(engine: Engine, settings: Settings, experiment: str, out: Path, kind: str, *, sep: str | None = None,
                  with_sd: bool = False, with_n: bool = False, pdf: bool = False,
                  times: list[float] | None = None) -> tuple[list[Path], str | None]:
    """The CLI's wide/prism export and report: (files written, model version)."""
    from nscmonitor.store.reads import Repo

    repo = Repo(engine)
    active = active_version(settings)
    if kind == "wide":
        from nscmonitor.report.wide import export_wide

        return export_wide(repo, experiment, out, sep=sep or "tab", with_sd=with_sd, with_n=with_n, active=active)
    if kind == "prism":
        from nscmonitor.report.prism import export_prism

        return export_prism(repo, experiment, out, sep=sep or "comma", active=active)
    from nscmonitor.report.browser import print_pdf
    from nscmonitor.report.html import write_report

    html, version = write_report(repo, experiment, out, active=active, times=times)
    paths = [html]
    if pdf:
        paths.append(print_pdf(out, out.with_suffix(".pdf")))
    return paths, version


class ExportDialog(QDialog):
    def __init__(self, reader: Reader, engine: Engine, settings: Settings, experiments: list[str], current: str | None,
                 readout_counts: dict[str, int], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Export readouts and reports")
        self.reader, self.engine, self.settings = reader, engine, settings
        self.counts = readout_counts
        self.result: tuple | None = None
        lay = QVBoxLayout(self)
        form = QFormLayout()
        self.experiment = QComboBox()
        self.experiment.addItems(experiments)
        if current in experiments:
            self.experiment.setCurrentText(current)
        form.addRow("Experiment", self.experiment)
        self.kind = QComboBox()
        for _, label, _ in FORMATS:
            self.kind.addItem(label)
        self.kind.currentIndexChanged.connect(self._kind_changed)
        form.addRow("Format", self.kind)
        row = QHBoxLayout()
        self.path = QLineEdit(str(Path.cwd() / f"{current or 'experiment'}_readouts.csv"))
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        row.addWidget(self.path, 1)
        row.addWidget(browse)
        form.addRow("File", row)
        self.per_image = QCheckBox("also the per-image CSV beside it (…_images.csv)")
        self.per_image.setChecked(True)
        form.addRow("", self.per_image)
        self.sep = QComboBox()
        self.sep.addItems(["tab", "comma"])
        form.addRow("Separator", self.sep)
        self.with_sd = QCheckBox("sd column (across fields) after each well")
        self.with_n = QCheckBox("n column (images scored) after each well")
        form.addRow("", self.with_sd)
        form.addRow("", self.with_n)
        self.pdf = QCheckBox("also the PDF (needs Chromium or Chrome)")
        form.addRow("", self.pdf)
        self.times = QLineEdit()
        self.times.setPlaceholderText("e.g. 24, 48, 72 (default: first, middle and last time point)")
        form.addRow("Plate maps at (h)", self.times)
        lay.addLayout(form)
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        lay.addWidget(self.progress)
        self.message = QLabel("One row per well × time point × class, as 'nscmonitor export' writes it.")
        self.message.setWordWrap(True)
        lay.addWidget(self.message)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.export_btn = self.buttons.addButton("Export", QDialogButtonBox.ButtonRole.ActionRole)
        self.export_btn.clicked.connect(self.start)
        self.buttons.rejected.connect(self.reject)
        lay.addWidget(self.buttons)
        self._kind_changed()

    def format(self) -> str:
        return FORMATS[max(0, self.kind.currentIndex())][0]

    def set_format(self, kind: str) -> None:
        self.kind.setCurrentIndex([k for k, _, _ in FORMATS].index(kind))

    def _kind_changed(self) -> None:
        kind = self.format()
        suffix = next(s for k, _, s in FORMATS if k == kind)
        self.path.setText(str(Path(self.path.text()).with_suffix(suffix)))
        self.sep.setCurrentText("tab" if kind == "wide" else "comma")
        for w, on in ((self.per_image, kind == "tidy"), (self.sep, kind in ("wide", "prism")),
                      (self.with_sd, kind == "wide"), (self.with_n, kind == "wide"), (self.pdf, kind == "report"),
                      (self.times, kind == "report")):
            w.setEnabled(on)
        self.message.setText({"tidy": "One row per well × time point × class, as 'nscmonitor export' writes it.",
                              "wide": "One sheet per plate and readout, named after the file: <name>_prob_neuron.txt …",
                              "prism": "One table per plate and readout, named after the file: <name>_prob_neuron.csv …",
                              "report": "One self-contained HTML file, as 'nscmonitor report' writes it."}[kind])

    def _browse(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export to", self.path.text())
        if path:
            self.path.setText(path)

    def start(self) -> None:
        exp = self.experiment.currentText()
        out = Path(self.path.text()).expanduser()
        total = max(1, self.counts.get(exp, 0))
        self.export_btn.setEnabled(False)
        self.progress.setVisible(True)
        self.progress.setRange(0, total)
        self.progress.setValue(0)
        self.message.setText(f"Exporting {exp} …")
        kind = self.format()
        if kind != "tidy":
            try:
                times = parse_hours(self.times.text()) if kind == "report" and self.times.text().strip() else None
            except ValueError as exc:
                self._failed(str(exc))
                return
            self.progress.setRange(0, 0)
            self.reader.submit(export_sheets, self.engine, self.settings, exp, out, kind, sep=self.sep.currentText(),
                               with_sd=self.with_sd.isChecked(), with_n=self.with_n.isChecked(),
                               pdf=self.pdf.isChecked(), times=times, done=self._done_files, failed=self._failed)
            return
        self.reader.submit(export_csv, self.engine, self.settings, exp, out, self.per_image.isChecked(), total=total,
                           progress=lambda d, t: self.progress.setValue(min(d, t)), done=self._done,
                           failed=self._failed)

    def _done(self, result: tuple) -> None:
        self.result = result
        n, k, version, img_path = result
        self.export_btn.setEnabled(True)
        self.progress.setValue(self.progress.maximum())
        self.message.setText(f"Wrote {n} readout rows (model {version or 'none'}) to {self.path.text()}"
                             + (f" and {k} image rows to {img_path}" if img_path else "") + ".")

    def _done_files(self, result: tuple[list[Path], str | None]) -> None:
        self.result = result
        paths, version = result
        self.export_btn.setEnabled(True)
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        names = ", ".join(p.name for p in paths[:4]) + (f" … ({len(paths)} files)" if len(paths) > 4 else "")
        self.message.setText(f"Wrote {names} (model {version or 'none'}) in {paths[0].parent if paths else '-'}.")

    def _failed(self, msg: str) -> None:
        self.export_btn.setEnabled(True)
        self.progress.setVisible(False)
        self.message.setText(f"Export failed: {msg}")


def save_widget(widget: QWidget, path: str | Path) -> Path:
    """A widget (the plate map) as PNG, or as SVG through QSvgGenerator for publication."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".svg":
        from PySide6.QtSvg import QSvgGenerator

        gen = QSvgGenerator()
        gen.setFileName(str(path))
        gen.setSize(QSize(widget.width(), widget.height()))
        gen.setViewBox(QRectF(0, 0, widget.width(), widget.height()))
        gen.setTitle(widget.windowTitle() or "nscmonitor plate map")
        QWidget.render(widget, gen)  # pyqtgraph views override render() with another signature
    else:
        if not widget.grab().save(str(path)):
            raise OSError(f"cannot write {path}")
    return path


def save_plot(plot_widget: PlotWidget, path: str | Path) -> Path:
    """A time-course plot: PNG through pyqtgraph's ImageExporter (at twice the on-screen width);
    SVG through Qt's SVG generator, because pyqtgraph 0.14's SVGExporter fails on the path
    data Qt 6.12 writes (ValueError while unpacking coordinates)."""
    path = Path(path)
    if path.suffix.lower() == ".svg":
        return save_widget(plot_widget, path)
    import pyqtgraph.exporters as ex

    path.parent.mkdir(parents=True, exist_ok=True)
    item = plot_widget.getPlotItem()
    e = ex.ImageExporter(item)
    e.parameters()["width"] = max(800, int(item.width() * 2))
    e.export(str(path))
    return path


def save_map_as(parent: QWidget, plate_map: QWidget) -> str | None:
    """Asks where, saves the plate map there; the status line to show, or None when cancelled."""
    path, _ = QFileDialog.getSaveFileName(parent, "Save plate map", str(Path.cwd() / "plate_map.png"),
                                          "PNG (*.png);;SVG (*.svg)")
    if not path:
        return None
    save_widget(plate_map, path)
    return f"Saved {path}"


def save_time_courses_as(parent: QWidget, well_plot: QWidget, cond_plot: QWidget) -> str | None:
    """Asks for one name, saves the wells' and the conditions' plots beside each other under it;
    the status line to show, or None when cancelled or refused (the reason in a message box)."""
    path, _ = QFileDialog.getSaveFileName(parent, "Save time courses", str(Path.cwd() / "time_course.png"),
                                          "PNG (*.png);;SVG (*.svg)")
    if not path:
        return None
    p = Path(path)
    try:
        save_plot(well_plot, p.with_name(p.stem + "_wells" + p.suffix))
        save_plot(cond_plot, p.with_name(p.stem + "_conditions" + p.suffix))
    except OSError as exc:
        QMessageBox.warning(parent, "Save time courses", str(exc))
        return None
    return f"Saved {p.stem}_wells{p.suffix} and {p.stem}_conditions{p.suffix}"
