"""The dashboard on a PostgreSQL store (a real server; skips with the reason without one):
the plate map shows the stored readouts, and new predictions appear while it is open."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")

from test_gui_dashboard import Lab  # noqa: E402 - the dashboard tests' lab


class PgLab(Lab):
    """The dashboard tests' lab, its store on PostgreSQL."""

    def __init__(self, root: Path, model: Path, url: str) -> None:
        super().__init__(root, model)
        self.url = url
        self.settings = replace(self.settings, database_url=url)

    def readout(self, well: str, hours: float) -> dict:
        from sqlalchemy import text

        from nscmonitor.store.db import open_engine

        engine = open_engine(self.url)
        with engine.connect() as c:
            r = c.execute(text("SELECT r.classes, r.prob_mean, r.fraction, r.n_images FROM well_readouts r"
                               " JOIN wells w ON w.id = r.well_id WHERE w.name = :w AND abs(r.elapsed_h - :h) < 0.01"),
                          {"w": well, "h": hours}).one()
        engine.dispose()
        return {"classes": r[0], "prob": r[1], "fraction": r[2], "n_images": r[3]}


def test_dashboard_reads_a_postgresql_store_live(qtbot, tmp_path: Path, tiny_model: Path, pg_url: str) -> None:
    from nscmonitor.gui.app import open_store
    from nscmonitor.gui.main_window import MainWindow

    lab = PgLab(tmp_path, tiny_model, pg_url)
    lab.write((4, 28))
    lab.score()
    win = MainWindow(open_store(lab.url), lab.settings, poll_s=0.2)
    qtbot.addWidget(win)
    win.show()
    try:
        qtbot.waitUntil(lambda: win.cube is not None and win.cube.n_times == 2, timeout=15000)
        win.set_metric("prob:neuron")
        win.set_time(1)
        for well in ("A01", "A02", "B01", "B02"):
            ro = lab.readout(well, 28.0)
            assert win.plate_map.value_of(well) == pytest.approx(ro["prob"][ro["classes"].index("neuron")], abs=1e-6)
        assert "BDNF 50 ng/ml" in win.well_tooltip("A01")
        lab.write((52,), wells=("A1", "C3"))
        lab.score()
        qtbot.waitUntil(lambda: win.cube.n_times == 3 and "C03" in win.plate_map.names, timeout=10000)
    finally:
        win.close()
