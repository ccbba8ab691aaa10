"""Export the experiment's CSV reports with the very code behind ``nscmonitor export``, in a
worker thread with progress, plus the plate map and plots as PNG or SVG."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QRectF, QSize
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDialog, QDialogButtonBox, QFileDialog, QFormLayout,
                               QHBoxLayout, QLabel, QLineEdit, QProgressBar, QPushButton, QVBoxLayout, QWidget)

from nscmonitor.gui.workers import Reader


def export_csv(engine, settings, experiment: str, out: Path, per_image: bool, *, total: int = 0,  # noqa: ANN001
               progress=None) -> tuple[int, int, str | None, Path | None]:  # noqa: ANN001
    """The CLI's export: same functions, same version choice (the registry's active model)."""
    from nscmonitor.commands import active_version
    from nscmonitor.report.export import default_images_path, export_images, export_readouts
    from nscmonitor.store.repo import Repo

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


class ExportDialog(QDialog):
    def __init__(self, reader: Reader, engine, settings, experiments: list[str], current: str | None,  # noqa: ANN001
                 readout_counts: dict[str, int], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Export CSV reports")
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
        row = QHBoxLayout()
        self.path = QLineEdit(str(Path.cwd() / f"{current or 'experiment'}_readouts.csv"))
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        row.addWidget(self.path, 1)
        row.addWidget(browse)
        form.addRow("Readouts CSV", row)
        self.per_image = QCheckBox("also the per-image CSV beside it (…_images.csv)")
        self.per_image.setChecked(True)
        form.addRow("", self.per_image)
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

    def _browse(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Readouts CSV", self.path.text(), "CSV (*.csv)")
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


def save_plot(plot_widget, path: str | Path) -> Path:  # noqa: ANN001 - pyqtgraph PlotWidget
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
