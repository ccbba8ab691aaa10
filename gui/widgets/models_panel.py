"""Model versions with their validation metrics, engine and out-of-distribution tests, which
one the daemon serves, and the registry actions (promote, roll back, retrain now) and hand
labelling, as buttons over the callables of ``gui.state.actions`` (the retrain runs in a
background process so the window never waits for training).
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtGui import QColor
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QHBoxLayout, QHeaderView, QLabel, QPushButton,
                               QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from nscmonitor.core import ood_record
from nscmonitor.gui.state.actions import LabelTarget, ModelAction
from nscmonitor.registry.prune import REMOVED_NOTE
from nscmonitor.store.registry import SERVED_FILE, ModelInfo

ACTIONS: dict[str, ModelAction] = {
    "promote": ModelAction("Promote", "Promoting needs a database the registry can write to."),
    "rollback": ModelAction("Roll back", "Rolling back needs a database the registry can write to."),
    "retrain": ModelAction("Retrain now", "Retraining needs a database the registry can write to."),
}


def _metric_text(meta: dict) -> str:
    """Our own validation figures from the model's metadata, never the source paper's."""
    m = meta.get("metrics") or meta.get("validation") or {}
    if not isinstance(m, dict) or not m:
        return "no validation metrics recorded"
    parts = []
    for key in ("accuracy", "balanced_accuracy", "macro_f1"):
        v = m.get(key)
        if isinstance(v, (int, float)):
            parts.append(f"{key.replace('_', ' ')} {v:.3f}")
    recall = m.get("recall") or m.get("per_class_recall")
    if isinstance(recall, dict):
        parts.append("recall " + ", ".join(f"{k} {v:.2f}" for k, v in recall.items() if isinstance(v, (int, float))))
    return "; ".join(parts) or ", ".join(sorted(m))[:120]


#: the text colour of a version whose files were pruned
REMOVED_GREY = "#808080"


def engine_here(path: str, version: str) -> tuple[str, bool]:
    """This machine's engine for a version (its engine-status.json) and whether it is a
    problem worth colouring: a failed gate or a missing calibration set means fp32 serves."""
    from pathlib import Path

    from nscmonitor.engines.autobuild import summary

    try:
        info = summary(Path(path))
    except OSError as exc:  # a version folder on an unreachable share
        return f"unknown: {exc}", True
    if info["state"] == "ready":
        return info["message"], False
    return info["message"], info["state"] in ("failed", "no-calibration", "interrupted")


class ModelsPanel(QWidget):
    def __init__(self, parent: QWidget | None = None, actions: dict[str, ModelAction] | None = None,
                 labeller: Callable[[LabelTarget | None, str], str] | None = None) -> None:
        super().__init__(parent)
        self.actions = actions or ACTIONS
        self.labeller = labeller
        self.label_target: Callable[[], LabelTarget | None] = lambda: None
        self.on_changed: Callable[[], None] | None = None
        self.versions: list[ModelInfo] = []
        lay = QVBoxLayout(self)
        self.serving = QLabel("The daemon's model is not known yet.")
        self.serving.setWordWrap(True)
        lay.addWidget(self.serving)
        self.table = QTableWidget(0, 8)
        self.table.setHorizontalHeaderLabels(["version", "state", "scheme", "classes", "created (UTC)",
                                              "validation (our data)", "engine on this machine",
                                              "out-of-distribution flag"])
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.horizontalHeader().setSectionResizeMode(5, QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().hide()
        lay.addWidget(self.table, 1)
        self.forecast = QLabel("")
        self.forecast.setWordWrap(True)
        lay.addWidget(self.forecast)
        note = QLabel("Accuracy figures are this lab's own validation results. The source paper's reported "
                      "accuracies are not calibrated confidence for your plates.")
        note.setWordWrap(True)
        note.setStyleSheet("color: #555")
        lay.addWidget(note)
        row = QHBoxLayout()
        self.buttons: dict[str, QPushButton] = {}
        for key, action in self.actions.items():
            b = QPushButton(action.label)
            b.clicked.connect(lambda _c=False, k=key: self._run(k))
            self.buttons[key] = b
            row.addWidget(b)
        row.addStretch(1)
        lay.addLayout(row)
        lab_row = QHBoxLayout()
        self.label_box = QComboBox()
        from nscmonitor.labels import KNOWN_CLASSES

        self.label_box.addItems(list(KNOWN_CLASSES))
        self.label_btn = QPushButton("Label selected wells")
        self.label_btn.setToolTip("End-point label (e.g. from a Tuj1/GFAP/O4 stain) for the wells selected in the "
                                  "plate map; bulk labels: nscmonitor labels import FILE.csv")
        self.label_btn.setEnabled(labeller is not None)
        self.label_btn.clicked.connect(self._label)
        lab_row.addWidget(QLabel("End-point label"))
        lab_row.addWidget(self.label_box)
        lab_row.addWidget(self.label_btn)
        lab_row.addStretch(1)
        lay.addLayout(lab_row)
        self.message = QLabel("")  # not a modal box: the window keeps updating while it is read
        self.message.setWordWrap(True)
        lay.addWidget(self.message)
        self._refresh_buttons()

    def _refresh_buttons(self) -> None:
        for key, b in self.buttons.items():
            a = self.actions[key]
            b.setEnabled(a.run is not None)
            b.setToolTip(a.missing if a.run is None else a.label)

    def _selected(self) -> ModelInfo | None:
        rows = {i.row() for i in self.table.selectedIndexes()}
        return self.versions[min(rows)] if rows else None

    def _selected_version(self) -> str | None:
        v = self._selected()
        return v.version if v is not None else None

    def _run(self, key: str) -> None:
        a = self.actions[key]
        if a.run is None:
            return
        v = self._selected()
        if key == "promote" and v is not None and v.state == SERVED_FILE:
            self.message.setStyleSheet("color: #b00020")
            self.message.setText(f"{a.label}: {v.version} is a model file the daemon served directly, not a "
                                 f"registered version; register it first: nscmonitor models register {v.path}")
            return
        try:
            msg = a.run(self._selected_version())
        except Exception as exc:  # the registry refuses with a reason: show it
            self.message.setStyleSheet("color: #b00020")
            self.message.setText(f"{a.label}: {exc}")
            return
        self.message.setStyleSheet("color: #1b5e20")
        self.message.setText(msg)
        if self.on_changed is not None:
            self.on_changed()

    def _label(self) -> None:
        if self.labeller is None:
            return
        try:
            msg = self.labeller(self.label_target(), self.label_box.currentText())
        except Exception as exc:  # unknown wells, nothing selected: say why
            self.message.setStyleSheet("color: #b00020")
            self.message.setText(f"Label: {exc}")
            return
        self.message.setStyleSheet("color: #1b5e20")
        self.message.setText(msg)

    def set_forecast(self, line: str) -> None:
        self.forecast.setText(line)

    def set_versions(self, versions: list[ModelInfo], serving: str | None, used: list[str],
                     served: list[ModelInfo] | None = None) -> None:
        """The registry's versions, then the model files the daemon served without it (their
        metadata kept in the store), which the registry's actions do not apply to."""
        registered = {v.version for v in versions}
        files = [v for v in served or [] if v.version not in registered]
        self.versions = versions + files
        self.serving.setText(
            f"The daemon serves <b>{serving or 'unknown'}</b>. Readouts in this plate come from: "
            f"{', '.join(used) or 'none yet'}." + ("" if versions else
                                                   "<br>No registered model versions (the daemon runs a model file "
                                                   "given directly; 'nscmonitor models register' puts one under "
                                                   "promotion and rollback)."))
        self.table.setRowCount(len(self.versions))
        for r, v in enumerate(self.versions):
            active = v.state == "active" or (v.state == SERVED_FILE and v.version == serving)
            # a pruned version's folder is gone on purpose: its record stays, nothing is wrong
            engine, problem = ((REMOVED_NOTE, False) if v.state == "removed" else engine_here(v.path, v.version))
            ood = ood_record.summary((v.meta or {}).get("ood"))
            mark = ("  ◀ serving" if v.state == SERVED_FILE else "  ◀ active") if active else ""
            cells = (v.version + mark, v.state, v.scheme, ", ".join(v.classes),
                     v.created_at.strftime("%Y-%m-%d %H:%M") if v.created_at else "", _metric_text(v.meta), engine,
                     ood_record.short(ood))
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if active:
                    f = item.font()
                    f.setBold(True)
                    item.setFont(f)
                elif v.state == "removed":
                    item.setForeground(QColor(REMOVED_GREY))
                if c == 6:
                    item.setToolTip(text)
                    if problem:
                        item.setForeground(QColor("#b00020"))
                if c == 7:
                    item.setToolTip(ood_record.line(ood))
                self.table.setItem(r, c, item)
        self.table.resizeColumnsToContents()
        self._refresh_buttons()
