"""'Save as PNG…' / 'Save as SVG…' in every chart's context menu, so a figure goes from the
dashboard to a slide without the File menu (which saves all charts at once)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtGui import QAction
from PySide6.QtWidgets import QFileDialog, QMenu, QMessageBox, QWidget

SAVE_FORMATS = (("PNG", ".png"), ("SVG", ".svg"))


def add_save_actions(menu: QMenu, owner: QWidget, save: Callable[[Path], Path], name: Callable[[], str]) -> list[QAction]:
    """Two actions at the end of ``menu``; ``save(path)`` writes the chart (the suffix picks the
    format), ``name()`` proposes the file name."""
    menu.addSeparator()
    actions = []
    for label, suffix in SAVE_FORMATS:
        a = QAction(f"Save chart as {label}…", menu)
        a.setObjectName(f"save_chart_{suffix[1:]}")
        a.triggered.connect(lambda _=False, s=suffix, lb=label: _save(owner, save, name() + s, lb))
        menu.addAction(a)
        actions.append(a)
    return actions


def _save(owner: QWidget, save: Callable[[Path], Path], proposed: str, label: str) -> None:
    path, _ = QFileDialog.getSaveFileName(owner, f"Save chart as {label}", str(Path.cwd() / proposed),
                                          f"{label} (*{Path(proposed).suffix})")
    if not path:
        return
    p = Path(path)
    if p.suffix.lower() != Path(proposed).suffix:
        p = p.with_name(p.name + Path(proposed).suffix)
    try:
        save(p)
    except OSError as exc:
        QMessageBox.warning(owner, "Save chart", f"cannot write {p}: {exc}")
