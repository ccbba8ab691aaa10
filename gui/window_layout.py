"""The dashboard window's widgets and where they sit: browser above, plate map with its time
slider beside the tabs (time courses, images, status, models), status bar and menu. The window
(``main_window.MainWindow``) owns what they show and answers their signals."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (QComboBox, QHBoxLayout, QLabel, QMainWindow, QProgressBar, QPushButton, QSlider, QSplitter,
                               QTabWidget, QVBoxLayout, QWidget)

from nscmonitor.gui.state.actions import label_action, registry_actions, requeue_action
from nscmonitor.gui.widgets.browser import ExperimentBrowser
from nscmonitor.gui.widgets.image_view import ImageView
from nscmonitor.gui.widgets.models_panel import ModelsPanel
from nscmonitor.gui.widgets.plate_map_view import PlateMapView
from nscmonitor.gui.widgets.status_panel import StatusPanel
from nscmonitor.gui.widgets.time_course import TimeCourse


class WindowLayout(QMainWindow):
    """Builds the widgets; the slots they connect to (choose_plate, set_time, refresh, ...) are
    the subclass's."""

    def _build(self) -> None:
        self.browser = ExperimentBrowser()
        self.browser.plate_chosen.connect(self.choose_plate)
        right = QSplitter(Qt.Orientation.Horizontal)
        right.addWidget(self._build_plate())
        right.addWidget(self._build_tabs())
        right.setStretchFactor(0, 5)
        right.setStretchFactor(1, 5)
        outer = QSplitter(Qt.Orientation.Vertical)
        outer.addWidget(self.browser)
        outer.addWidget(right)
        outer.setStretchFactor(0, 1)
        outer.setStretchFactor(1, 6)
        self.setCentralWidget(outer)
        self._build_status_bar()
        self._build_menu()
        self.resize(1500, 940)

    def _build_plate(self) -> QWidget:
        """The centre: colour and model choice, the plate map, the time slider."""
        self.plate_map = PlateMapView()
        self.plate_map.tooltip_fn = self.well_tooltip
        self.plate_map.selection_changed.connect(self.set_selection)
        self.metric_box = QComboBox()
        self.metric_box.currentIndexChanged.connect(lambda _i: self._paint_map())
        self.version_box = QComboBox()
        self.version_box.activated.connect(self._version_chosen)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, 0)
        self.slider.valueChanged.connect(self.set_time)
        self.play = QPushButton("▶ Play")
        self.play.setCheckable(True)
        self.play.toggled.connect(self._toggle_play)
        self.time_label = QLabel("—")
        self.time_label.setMinimumWidth(150)

        top = QHBoxLayout()
        top.addWidget(QLabel("Colour by"))
        top.addWidget(self.metric_box, 2)
        top.addWidget(QLabel("Model"))
        top.addWidget(self.version_box, 1)
        timeline = QHBoxLayout()
        timeline.addWidget(self.play)
        timeline.addWidget(self.slider, 1)
        timeline.addWidget(self.time_label)
        center = QWidget()
        cl = QVBoxLayout(center)
        cl.setContentsMargins(4, 4, 4, 4)
        cl.addLayout(top)
        self.ood_banner = QLabel()
        self.ood_banner.setWordWrap(True)
        self.ood_banner.setStyleSheet("background: #fde2d4; color: #7a2800; padding: 4px; border: 1px solid #eb5014;")
        self.ood_banner.setVisible(False)
        cl.addWidget(self.ood_banner)
        cl.addWidget(self.plate_map, 1)
        cl.addLayout(timeline)
        return center

    def _build_tabs(self) -> QTabWidget:
        self.time_course = TimeCourse()
        self.image_view = ImageView(self.reader, watch=getattr(self.settings, "watch", None) or ())
        self.status_panel = StatusPanel(requeue=requeue_action(self.settings))
        self.status_panel.on_changed = self.refresh
        self.models_panel = ModelsPanel(actions=registry_actions(self.settings), labeller=label_action(self.settings))
        self.models_panel.on_changed = self.refresh
        self.models_panel.label_target = self._label_target
        self.tabs = QTabWidget()
        self.tabs.addTab(self.time_course, "Time courses")
        self.tabs.addTab(self.image_view, "Images")
        self.tabs.addTab(self.status_panel, "Status")
        self.tabs.addTab(self.models_panel, "Models")
        return self.tabs

    def _build_status_bar(self) -> None:
        self.busy = QProgressBar()
        self.busy.setRange(0, 0)
        self.busy.setMaximumWidth(120)
        self.busy.setVisible(False)
        self.daemon_label = QLabel()
        self.message = QLabel()
        self.statusBar().addWidget(self.daemon_label)
        self.statusBar().addWidget(self.message, 1)
        self.statusBar().addPermanentWidget(self.busy)
        self.reader.busy_changed.connect(lambda n: self.busy.setVisible(n > 0))

    def _build_menu(self) -> None:
        menu = self.menuBar().addMenu("&File")
        for text, slot, key in (("Export readouts and reports…", self.open_export, "Ctrl+E"),
                                ("Save plate map as PNG/SVG…", self._save_map, None),
                                ("Save time courses as PNG/SVG…", self._save_plots, None),
                                ("Refresh now", self.refresh, "F5"), ("Quit", self.close, "Ctrl+Q")):
            a = QAction(text, self)
            if key:
                a.setShortcut(QKeySequence(key))
            a.triggered.connect(slot)
            menu.addAction(a)
