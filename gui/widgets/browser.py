"""Experiments and plates in the store, with each one's state: acquiring, idle, finished or daemon stopped."""

from __future__ import annotations

from datetime import datetime

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import QHeaderView, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget

from nscmonitor.gui.state.status import experiment_state
from nscmonitor.store.reads import ExperimentOverview, PlateInfo

COLUMNS = ["experiment / plate", "status", "last image (UTC)", "images", "scored", "QC failed", "quarantined"]
STATE_COLORS = {"acquiring": QColor(0, 120, 0), "idle": QColor(0, 90, 160), "finished": QColor(60, 60, 60),
                "daemon stopped": QColor(180, 0, 30), "empty": QColor(150, 150, 150)}


class ExperimentBrowser(QWidget):
    plate_chosen = Signal(object, object)  # ExperimentOverview, PlateInfo

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(COLUMNS)
        self.tree.setRootIsDecorated(True)
        self.tree.setUniformRowHeights(True)
        self.tree.header().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.tree.itemActivated.connect(self._activated)
        self.tree.itemClicked.connect(self._activated)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.tree)
        self.experiments: list[ExperimentOverview] = []
        self.states: dict[str, str] = {}
        self._items: dict[str, tuple[ExperimentOverview, PlateInfo | None]] = {}

    def set_experiments(self, exps: list[ExperimentOverview], now: datetime, live_watched: list[str],
                        current_plate: int | None) -> None:
        self.experiments = exps
        open_names = {self.tree.topLevelItem(i).text(0) for i in range(self.tree.topLevelItemCount())
                      if self.tree.topLevelItem(i).isExpanded()}
        self.tree.clear()
        self._items = {}
        for e in exps:
            state = experiment_state(e.last_image_at, now, watch_path=e.watch_path, watched_by_live_daemon=live_watched,
                                     pending=e.n_pending)
            self.states[e.name] = state
            last = e.last_image_at.strftime("%Y-%m-%d %H:%M") if e.last_image_at else "—"
            item = QTreeWidgetItem([e.name, state, last, str(e.n_images), str(e.n_done), str(e.n_qc_failed),
                                    str(e.n_quarantined)])
            item.setForeground(1, QBrush(STATE_COLORS.get(state, QColor(0, 0, 0))))
            item.setToolTip(0, e.watch_path or "")
            item.setData(0, Qt.ItemDataRole.UserRole, f"e{e.id}")
            self._items[f"e{e.id}"] = (e, None)
            for p in e.plates:
                child = QTreeWidgetItem([f"{p.name} ({p.plate_format}-well, {p.n_wells} wells seen)"])
                child.setData(0, Qt.ItemDataRole.UserRole, f"p{p.id}")
                self._items[f"p{p.id}"] = (e, p)
                item.addChild(child)
                if p.id == current_plate:
                    f = child.font(0)
                    f.setBold(True)
                    child.setFont(0, f)
            self.tree.addTopLevelItem(item)
            item.setExpanded(e.name in open_names or len(exps) <= 5)

    def _activated(self, item: QTreeWidgetItem, _col: int = 0) -> None:
        e, p = self._items[item.data(0, Qt.ItemDataRole.UserRole)]
        if p is None and e.plates:
            p = e.plates[0]
        if p is not None:
            self.plate_chosen.emit(e, p)

    def state_of(self, name: str) -> str | None:
        return self.states.get(name)


def first_plate(exps: list[ExperimentOverview], name: str | None) -> tuple[ExperimentOverview, PlateInfo] | None:
    for e in exps:
        if (name is None or e.name == name) and e.plates:
            return e, e.plates[0]
    return None
