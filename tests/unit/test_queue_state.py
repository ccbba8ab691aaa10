"""Queue states are stored as their plain words: rows written before the enum existed, and
rows written through it, read and compare the same (no migration)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from nscmonitor.core.queue import PROBLEMS, WAITING, QueueState
from nscmonitor.store.db import open_engine
from nscmonitor.store.schema import ensure_schema
from nscmonitor.store.writer import Discovered, Writer


def test_states_are_the_stored_words() -> None:
    assert [s.value for s in QueueState] == ["pending", "processing", "done", "failed", "quarantined", "skipped",
                                             "rescore"]
    assert f"{QueueState.DONE}" == str(QueueState.DONE) == "done"
    assert QueueState("quarantined") is QueueState.QUARANTINED
    assert set(WAITING) == {"pending", "processing", "failed"} and set(PROBLEMS) == {"quarantined", "failed"}


def test_rows_hold_the_plain_word_and_old_rows_compare_equal(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'q.db'}")
    ensure_schema(engine)
    writer = Writer(engine)
    exp = writer.ensure_experiment("E")
    files = [Discovered(path=str(tmp_path / f"{name}.tif"), relpath=f"{name}.tif", size=1, mtime=1.0,
                        experiment_id=exp, profile=None, key=None, plate=None, plate_format=96, elapsed_h=None,
                        acquired_at=None, error=error)
             for name, error in (("good", None), ("bad", "cannot place this name on a plate"))]
    assert writer.enqueue(files) == (2, 0)
    with engine.begin() as c:
        stored = dict(c.execute(text("SELECT relpath, status FROM images")).all())
        assert stored == {"good.tif": "pending", "bad.tif": "quarantined"}
        assert all(type(v) is str for v in stored.values())
        # a state as an older version wrote it
        c.execute(text("UPDATE images SET status = 'failed' WHERE relpath = 'good.tif'"))
    claimed = writer.claim(5, now_ts=1e12)
    assert [c.relpath for c in claimed] == ["good.tif"]
    with engine.connect() as c:
        assert c.execute(text("SELECT status FROM images WHERE relpath = 'good.tif'")).scalar() == QueueState.PROCESSING
    engine.dispose()
