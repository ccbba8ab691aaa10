"""Daemon health at a glance: alive or not, what it watches, the queue, throughput, engine
and model, and the last errors with the file and the reason (the facility engineer's view)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QAbstractItemView, QGroupBox, QHeaderView, QLabel, QPlainTextEdit, QTableWidget,
                               QTableWidgetItem, QVBoxLayout, QWidget)

from nscmonitor.gui.state.status import daemon_alive, heartbeat_text
from nscmonitor.store.repo import DaemonInfo, ImageError

QUEUE_STATES = ("pending", "processing", "failed", "done", "quarantined")


@dataclass(frozen=True)
class StatusSnapshot:
    daemons: list[DaemonInfo]
    queue: dict[str, int]
    errors: list[ImageError]
    scored_5min: int
    at: datetime


def read_status(engine) -> StatusSnapshot:  # noqa: ANN001 - SQLAlchemy engine
    from nscmonitor.store.repo import Repo

    repo = Repo(engine)
    return StatusSnapshot(repo.daemons(3), repo.queue_counts(), repo.errors(30), repo.scored_since(300),
                          datetime.now(timezone.utc))


class StatusPanel(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.snapshot: StatusSnapshot | None = None
        lay = QVBoxLayout(self)
        self.daemon = QLabel("No status read yet.")
        self.daemon.setWordWrap(True)
        self.daemon.setTextFormat(Qt.TextFormat.RichText)
        self.daemon.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        box = QGroupBox("Daemon")
        QVBoxLayout(box).addWidget(self.daemon)
        lay.addWidget(box)
        self.queue = QTableWidget(1, len(QUEUE_STATES))
        self.queue.setHorizontalHeaderLabels(list(QUEUE_STATES))
        self.queue.verticalHeader().hide()
        self.queue.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.queue.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.queue.setMaximumHeight(60)
        qbox = QGroupBox("Queue (images by state)")
        QVBoxLayout(qbox).addWidget(self.queue)
        lay.addWidget(qbox)
        self.errors = QTableWidget(0, 4)
        self.errors.setHorizontalHeaderLabels(["state", "file", "reason", "when (UTC)"])
        self.errors.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.errors.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.errors.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.errors.horizontalHeader().setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        self.errors.verticalHeader().hide()
        self.errors.itemSelectionChanged.connect(self._show_error)
        self.detail = QPlainTextEdit()
        self.detail.setReadOnly(True)
        self.detail.setMaximumHeight(90)
        self.detail.setPlaceholderText("Click an error to see the file's full path and the reason.")
        ebox = QGroupBox("Last errors (failed and quarantined files)")
        el = QVBoxLayout(ebox)
        el.addWidget(self.errors, 1)
        el.addWidget(self.detail)
        lay.addWidget(ebox, 1)

    def set_snapshot(self, snap: StatusSnapshot) -> None:
        self.snapshot = snap
        d = snap.daemons[0] if snap.daemons else None
        if d is None:
            self.daemon.setText("<b style='color:#b00'>No daemon has ever run on this database.</b> "
                                "Start one with <tt>nscmonitor run</tt>.")
        else:
            alive = daemon_alive(d.heartbeat_at, d.state, snap.at)
            head = ("<b style='color:#070'>● running</b>" if alive else
                    f"<b style='color:#b00'>● not running</b> (last state: {d.state})")
            watched = "".join(
                f"<br>&nbsp;&nbsp;{w.get('path')} ({w.get('experiment', '')}; "
                f"{'polling' if w.get('polling') else 'events'})"
                + ("" if w.get("reachable", True) else f" <b style='color:#b00'>UNREACHABLE: {w.get('error')}</b>")
                if isinstance(w, dict) else f"<br>&nbsp;&nbsp;{w}" for w in d.watched)
            self.daemon.setText(
                f"{head} — {d.host} pid {d.pid}, heartbeat {heartbeat_text(d.heartbeat_at, snap.at)}<br>"
                f"engine <b>{d.engine or '?'}</b>, model <b>{d.model_version or '?'}</b>, "
                f"{(d.images_per_s or 0.0):.2f} images/s; {snap.scored_5min} scored in the last 5 min<br>"
                f"watching:{watched or ' nothing'}")
        for i, s in enumerate(QUEUE_STATES):
            self.queue.setItem(0, i, QTableWidgetItem(str(snap.queue.get(s, 0))))
        self.errors.setRowCount(len(snap.errors))
        for r, e in enumerate(snap.errors):
            for c, v in enumerate((e.status, Path(e.path).name, e.error, e.updated_at.strftime("%Y-%m-%d %H:%M:%S"))):
                item = QTableWidgetItem(v)
                item.setToolTip(e.path if c == 1 else v)
                self.errors.setItem(r, c, item)
        self.errors.resizeColumnToContents(0)
        self.errors.resizeColumnToContents(1)

    def _show_error(self) -> None:
        rows = {i.row() for i in self.errors.selectedIndexes()}
        if not rows or self.snapshot is None:
            return
        e = self.snapshot.errors[min(rows)]
        self.detail.setPlainText(f"{e.status}: {e.path}\nreason: {e.error}")

    def error_reasons(self) -> dict[str, str]:
        """file name -> reason as shown (for tests and the docs)."""
        return {self.errors.item(r, 1).text(): self.errors.item(r, 2).text() for r in range(self.errors.rowCount())}
