"""Daemon health at a glance: alive or not, what it watches, the queue, throughput, engine
and model, and the last errors with the file and the reason (the facility engineer's view)."""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QAbstractItemView, QGroupBox, QHBoxLayout, QHeaderView, QLabel, QPlainTextEdit,
                               QPushButton, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from nscmonitor.core.queue import QueueState
from nscmonitor.gui.state.actions import RequeueAction
from nscmonitor.gui.state.presenter import StatusSnapshot
from nscmonitor.gui.state.status import daemon_alive, heartbeat_text

QUEUE_STATES = tuple(s.value for s in (QueueState.PENDING, QueueState.PROCESSING, QueueState.FAILED, QueueState.DONE,
                                         QueueState.QUARANTINED))


def _rescan(w: dict) -> str:
    """A watch folder's file count and last full rescan, as ``status`` prints them."""
    if w.get("files") is None or w.get("rescan_s") is None:
        return ""
    return f"; {w['files']:,} files, last rescan {w['rescan_s']:.1f} s"


class StatusPanel(QWidget):
    def __init__(self, parent: QWidget | None = None, *, requeue: RequeueAction | None = None) -> None:
        super().__init__(parent)
        self.snapshot: StatusSnapshot | None = None
        self.requeue = requeue
        self.on_changed: Callable[[], None] | None = None
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
        self.errors.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
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
        buttons = QHBoxLayout()
        self.requeue_selected = QPushButton("Requeue selected")
        self.requeue_selected.setToolTip("Put the selected quarantined files back in the queue (after fixing the cause)")
        self.requeue_selected.clicked.connect(lambda: self._requeue(self.selected_ids()))
        self.requeue_all = QPushButton("Requeue all quarantined")
        self.requeue_all.clicked.connect(lambda: self._requeue(None))
        for b in (self.requeue_selected, self.requeue_all):
            b.setEnabled(requeue is not None)
            if requeue is None:
                b.setToolTip("Requeueing needs a database this dashboard can write to.")
            buttons.addWidget(b)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        buttons.addWidget(self.message, 1)
        el.addLayout(buttons)
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
                f"<br>&nbsp;&nbsp;{html.escape(str(w.get('path')))} ({html.escape(str(w.get('experiment', '')))}; "
                f"{'polling' if w.get('polling') else 'events'}{_rescan(w)})"
                + ("" if w.get("reachable", True)
                   else f" <b style='color:#b00'>UNREACHABLE: {html.escape(str(w.get('error')))}</b>")
                if isinstance(w, dict) else f"<br>&nbsp;&nbsp;{html.escape(str(w))}" for w in d.watched)
            self.daemon.setText(
                f"{head} — {d.host} pid {d.pid}, heartbeat {heartbeat_text(d.heartbeat_at, snap.at)}<br>"
                f"engine <b>{d.engine or '?'}</b>, model <b>{d.model_version or '?'}</b>, "
                f"{(d.images_per_s or 0.0):.2f} images/s; {snap.scored_5min} scored in the last 5 min<br>"
                + (f"engine build: <span style='color:{'#b00' if snap.engine_note_level != 'info' else '#333'}'>"
                   f"{html.escape(snap.engine_note)}</span><br>" if snap.engine_note else "")
                + "".join(f"<b style='color:#b60'>⚠ {html.escape(w)}</b><br>" for w in snap.warnings)
                + f"watching:{watched or ' nothing'}")
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

    def selected_ids(self) -> list[int]:
        if self.snapshot is None:
            return []
        rows = sorted({i.row() for i in self.errors.selectedIndexes()})
        return [self.snapshot.errors[r].id for r in rows if r < len(self.snapshot.errors)]

    def _requeue(self, ids: list[int] | None) -> None:
        if self.requeue is None:
            return
        if ids is not None and not ids:
            self.message.setText("select quarantined files in the table first")
            return
        try:
            self.message.setText(self.requeue(ids))
        except Exception as exc:  # shown to the user; the dashboard keeps running
            self.message.setText(f"requeue failed: {exc}")
            return
        if self.on_changed is not None:
            self.on_changed()

    def error_reasons(self) -> dict[str, str]:
        """file name -> reason as shown (for tests and the docs)."""
        return {self.errors.item(r, 1).text(): self.errors.item(r, 2).text() for r in range(self.errors.rowCount())}
