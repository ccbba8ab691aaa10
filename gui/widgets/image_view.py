"""The images of the selected well at the selected time, with the tile predictions on top.

Pixels are read from the original file read-only (``readers.decode``) in a worker thread;
contrast comes from the same percentiles the daemon used. The overlay is one small RGBA image
(rows x cols) stretched over the tile grid, so zooming and panning cost nothing extra.
The Grad-CAM button runs ``nscmonitor explain`` as a subprocess: torch never enters the GUI.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QProcess, QRectF, Qt
from PySide6.QtWidgets import (QCheckBox, QComboBox, QHBoxLayout, QLabel, QPushButton, QSlider, QVBoxLayout,
                               QWidget)

from nscmonitor.core.queue import QueueState
from nscmonitor.gui.state.tile_overlay import OverlayGeometry, overlay_geometry, tile_rgba
from nscmonitor.gui.widgets.colors import class_color
from nscmonitor.gui.workers import Reader
from nscmonitor.store.plate_reads import WellImage


@dataclass(frozen=True)
class LoadedImage:
    pixels: np.ndarray
    levels: tuple[float, float]
    pixel_size_um: float | None
    rows: int
    cols: int
    kept: np.ndarray
    probs: np.ndarray


def load_image(img: WellImage, p_low: float = 1.0, p_high: float = 99.8, *, channel: str | None = None,
               pixel_size_um: float | None = None) -> LoadedImage:
    """The image as it was scored: ``channel`` is its watch folder's setting, so a stack or
    container shows the plane the tiles were computed on, and ``pixel_size_um`` the folder's
    pixel size for a file that states none, so the tile overlay has the geometry the daemon
    cut."""
    from nscmonitor.core.aggregate import unpack_tiles
    from nscmonitor.core.names import from_db
    from nscmonitor.readers.decode import decode
    from nscmonitor.scoring.preprocess import percentiles

    dec = decode(from_db(img.path), channel=channel)  # the stored form of a name that is not valid UTF-8 is escaped
    lo, hi = percentiles(dec.pixels, (p_low, p_high))
    rows = cols = 0
    kept = np.zeros(0, bool)
    probs = np.zeros((0, 0), np.float32)
    if img.tiles:
        rows, cols, kept, probs = unpack_tiles(img.tiles)
    return LoadedImage(dec.pixels, (lo, hi if hi > lo else lo + 1), dec.pixel_size_um or pixel_size_um, rows, cols,
                       kept, probs)


def explain_available(model_path: str | None) -> tuple[bool, str]:
    """Grad-CAM needs torch (the training extra) and the torch checkpoint beside the model."""
    if importlib.util.find_spec("torch") is None:
        return False, "Heat maps need the training extra (pip install 'nscmonitor[train]')."
    if not model_path:
        return False, "The model in use is not known to this dashboard."
    run_dir = Path(model_path).parent
    if not (run_dir / "best.pt").is_file():
        return False, f"No torch checkpoint (best.pt) beside {model_path}."
    return True, f"Grad-CAM of {run_dir} over this image (runs 'nscmonitor explain')."


class ImageView(QWidget):
    def __init__(self, reader: Reader, parent: QWidget | None = None, *, watch: tuple = ()) -> None:
        super().__init__(parent)
        self.reader = reader
        self.watch = tuple(watch)  # the configured watch folders: their ``channel`` is the plane shown
        self.images: list[WellImage] = []
        self.model_meta: dict | None = None
        self.model_path: str | None = None
        self.loaded: LoadedImage | None = None
        self.geometry_used: OverlayGeometry | None = None
        self._proc: QProcess | None = None
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        bar = QHBoxLayout()
        bar.addWidget(QLabel("Field"))
        self.field = QComboBox()
        self.field.currentIndexChanged.connect(self._show_current)
        bar.addWidget(self.field)
        self.overlay_box = QCheckBox("Tile predictions")
        self.overlay_box.setChecked(True)
        self.overlay_box.toggled.connect(lambda on: self.overlay.setVisible(on))
        bar.addWidget(self.overlay_box)
        bar.addWidget(QLabel("opacity"))
        self.opacity = QSlider(Qt.Orientation.Horizontal)
        self.opacity.setRange(10, 100)
        self.opacity.setValue(60)
        self.opacity.setMaximumWidth(100)
        self.opacity.valueChanged.connect(lambda _v: self._draw_overlay())
        bar.addWidget(self.opacity)
        self.explain_btn = QPushButton("Heat map…")
        self.explain_btn.clicked.connect(self._explain)
        bar.addWidget(self.explain_btn)
        bar.addStretch(1)
        lay.addLayout(bar)
        self.canvas = pg.GraphicsLayoutWidget()
        self.vb = self.canvas.addViewBox(lockAspect=True, invertY=True, enableMenu=False)
        self.image_item = pg.ImageItem(axisOrder="row-major")
        self.overlay = pg.ImageItem(axisOrder="row-major")
        self.heat = pg.ImageItem(axisOrder="row-major")
        self.heat.setVisible(False)
        for item in (self.image_item, self.overlay, self.heat):
            self.vb.addItem(item)
        lay.addWidget(self.canvas, 1)
        self.legend = QLabel()
        lay.addWidget(self.legend)
        self.info = QLabel("Select a well to see its images.")
        self.info.setWordWrap(True)
        self.info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        lay.addWidget(self.info)
        self._update_explain()

    def set_model(self, meta: dict | None, path: str | None) -> None:
        self.model_meta, self.model_path = meta, path
        self._update_explain()

    def set_images(self, images: list[WellImage], title: str = "") -> None:
        self.images = images
        self.title = title
        self.field.blockSignals(True)
        self.field.clear()
        for im in images:
            self.field.addItem(f"{im.field if im.field is not None else '?'}" + ("" if im.status == QueueState.DONE else
                                                                                  f" ({im.status})"))
        self.field.blockSignals(False)
        if not images:
            self.image_item.clear()
            self.overlay.clear()
            self.info.setText(f"{title}: no images at this time." if title else "Select a well to see its images.")
            return
        self._show_current()

    def _show_current(self) -> None:
        i = self.field.currentIndex()
        if not (0 <= i < len(self.images)):
            return
        img = self.images[i]
        self.info.setText(f"Loading {img.path} …")
        from functools import partial

        from nscmonitor.core.names import from_db
        from nscmonitor.readers.formats import channel_for, pixel_size_for

        scored = channel_for(self.watch, from_db(img.path))
        folder_um = pixel_size_for(self.watch, from_db(img.path))
        self.reader.submit(partial(load_image, channel=scored, pixel_size_um=folder_um), img, done=lambda r, img=img: self._loaded(img, r),
                           failed=lambda msg, img=img: self.info.setText(f"{img.path}: cannot show the image: {msg}"),
                           channel="image")

    def _loaded(self, img: WellImage, r: LoadedImage) -> None:
        self.loaded = r
        self.heat.setVisible(False)
        self.image_item.setImage(r.pixels, levels=r.levels, autoLevels=False)
        self.image_item.setRect(QRectF(0, 0, r.pixels.shape[1], r.pixels.shape[0]))
        self._draw_overlay(img)
        self.vb.autoRange(padding=0.01)
        qc = img.qc or {}
        verdict = "QC passed" if img.qc_passed else f"QC failed: {qc.get('reason') or 'see metrics'}"
        preds = ", ".join(f"{c} {p:.2f}" for c, p in zip(img.classes, img.prob_mean)) or "not scored"
        geo = self.geometry_used
        note = "" if geo is None or geo.exact else " (tile grid inferred: model metadata unavailable)"
        if "fine detail" in verdict:  # the reason gives the frame's share of its field's detail already
            focus = ""
        elif isinstance(qc.get("focus_ratio"), (int, float)):  # a damaged row's text is not shown as a figure
            focus = f"fine detail {qc['focus_ratio']:.2f} of its field's nearest scans, "
        else:
            focus = f"focus {qc.get('focus', float('nan')):.3g}, "
        self.info.setText(
            f"<b>{self.title}</b> field {img.field} — {Path(img.path).name}<br>"
            f"{r.pixels.shape[1]}×{r.pixels.shape[0]} px, contrast {r.levels[0]:.0f}–{r.levels[1]:.0f} "
            f"(1st–99.8th percentile); {verdict}; {focus}saturation {qc.get('saturation', 0.0):.1%}<br>"
            f"prediction: {preds}; {img.n_tiles} tiles{note}"
            + (f"; engine {img.engine}" if img.engine else ""))

    def _draw_overlay(self, img: WellImage | None = None) -> None:
        r = self.loaded
        if r is None or r.rows == 0 or r.probs.size == 0:
            self.overlay.clear()
            self.legend.setText("")
            return
        i = self.field.currentIndex()
        img = img or (self.images[i] if 0 <= i < len(self.images) else None)
        classes = img.classes if img else ()
        colors = np.array([class_color(c, k) for k, c in enumerate(classes)] or [(255, 0, 0)], np.uint8)
        rgba = tile_rgba(r.probs, r.kept, r.rows, r.cols, colors, self.opacity.value() / 100)
        meta = self.model_meta or {}
        geo = overlay_geometry(r.pixels.shape[1], r.pixels.shape[0], r.rows, r.cols,
                               input_size=meta.get("input_size"), src_um=r.pixel_size_um,
                               dst_um=meta.get("pixel_size_um"))
        self.geometry_used = geo
        self.overlay.setImage(rgba, levels=(0, 255), autoLevels=False)
        self.overlay.setRect(QRectF(geo.x0, geo.y0, geo.tile_w * r.cols, geo.tile_h * r.rows))
        self.overlay.setVisible(self.overlay_box.isChecked())
        self.legend.setText("Tiles: " + "  ".join(
            f"<span style='color: rgb{tuple(int(v) for v in colors[k])}'>■</span> {c}" for k, c in enumerate(classes))
            + "  (opacity = probability of the top class)")

    # --- Grad-CAM in a subprocess -------------------------------------------------------------
    def _update_explain(self) -> None:
        ok, why = explain_available(self.model_path)
        self.explain_btn.setEnabled(ok)
        self.explain_btn.setToolTip(why)

    def _explain(self) -> None:
        i = self.field.currentIndex()
        if not (0 <= i < len(self.images)) or self.model_path is None or self._proc is not None:
            return
        out = Path(tempfile.mkdtemp(prefix="nscmonitor-explain-")) / "heat.png"
        proc = QProcess(self)
        proc.finished.connect(lambda code, _status: self._explained(code, out))
        self._proc = proc
        self.info.setText("Computing the heat map (nscmonitor explain) …")
        proc.start(sys.executable, ["-m", "nscmonitor", "explain", str(Path(self.model_path).parent),
                                    self.images[i].path, "-o", str(out)])

    def _explained(self, code: int, out: Path) -> None:
        proc, self._proc = self._proc, None
        if code != 0 or not out.is_file():
            err = bytes(proc.readAllStandardError()).decode(errors="replace") if proc else ""
            self.info.setText(f"The heat map failed: {err.strip()[-400:]}")
            return
        from PySide6.QtGui import QImage

        qimg = QImage(str(out))
        arr = pg.imageToArray(qimg, copy=True, transpose=False)
        self.heat.setImage(arr, autoLevels=False, levels=(0, 255))
        if self.loaded is not None:
            self.heat.setRect(QRectF(0, 0, self.loaded.pixels.shape[1], self.loaded.pixels.shape[0]))
        self.heat.setVisible(True)
        self.info.setText(f"Heat map from {out}")
