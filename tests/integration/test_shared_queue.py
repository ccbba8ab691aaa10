"""The shared queue: claims, leases, re-queueing after a lease runs out, and results of a lost
lease dropped. On a real SQLite file and a real PostgreSQL server (that leg skips with the
reason when none is reachable); concurrent claims by several writers only on PostgreSQL,
where several daemons may share a database."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError

from nscmonitor.cli import main
from nscmonitor.core.aggregate import image_score
from nscmonitor.core.domain import ImageKey, QCMetrics
from nscmonitor.store.db import ensure_schema, open_engine
from nscmonitor.store.instance import AlreadyRunning, acquire, acquire_daemon
from nscmonitor.store.leases import reap_expired, renew
from nscmonitor.store.writer import Discovered, Scored, Writer

NOW = 1_000_000.0
QC = QCMetrics(10.0, 0.0, False, "uint16", 0.0, 4095.0, 5.0, 4000.0, True, None)


def _store(url: str, n: int, lease_s: float = 10.0) -> Writer:
    engine = open_engine(url)
    ensure_schema(engine)
    w = Writer(engine, lease_s=lease_s)
    exp = w.ensure_experiment("E")
    w.enqueue([Discovered(f"/data/E/A01_f{i}_t1.tif", f"A01_f{i}_t1.tif", 10, 1.0, exp, None,
                          ImageKey("P", "A01", 0, 0, field=i, timepoint=1), "P", 96, None, None)
               for i in range(n)])
    return w


def _scored(image_id: int, version: str = "v1") -> Scored:
    return Scored(image_id, f"h{image_id}", QC, 64, 64, image_score(np.full((4, 2), 0.5)), None, version,
                  ("neuron", "glia"), "ort-fp32")


def _row(w: Writer, image_id: int) -> tuple:
    with w.engine.connect() as c:
        return tuple(c.execute(text("SELECT status, lease_owner, lease_expires_at FROM images WHERE id = :i"),
                               {"i": image_id}).one())


def _predictions(w: Writer) -> int:
    with w.engine.connect() as c:
        return c.execute(text("SELECT count(*) FROM predictions")).scalar()


def test_a_claim_holds_a_lease_that_renewal_extends(db_url: str) -> None:
    w = _store(db_url, 3, lease_s=10.0)
    claimed = w.claim(2, NOW, "v1")
    assert len(claimed) == 2
    assert _row(w, claimed[0].id) == ("processing", w.owner, NOW + 10.0)
    assert _row(w, 3)[1:] == (None, None)  # not claimed, not leased
    assert renew(w.engine, w.owner, NOW + 5.0, w.lease_s) == 2
    assert _row(w, claimed[1].id)[2] == NOW + 15.0
    assert reap_expired(w.engine, NOW + 12.0) == 0  # renewed: not expired yet
    w.complete([_scored(claimed[0].id)])
    assert _row(w, claimed[0].id) == ("done", None, None)
    w.release([claimed[1].id])
    assert _row(w, claimed[1].id) == ("pending", None, None)


def test_an_expired_lease_goes_back_and_the_late_result_is_dropped(db_url: str, caplog) -> None:
    first = _store(db_url, 2, lease_s=5.0)
    second = Writer(open_engine(db_url), lease_s=5.0)  # another daemon on the same database
    assert first.owner != second.owner
    mine = first.claim(2, NOW, "v1")
    assert second.claim(2, NOW + 1.0, "v1") == []  # held: nothing for the second daemon
    assert reap_expired(second.engine, NOW + 4.0) == 0
    assert reap_expired(second.engine, NOW + 6.0) == 2  # the first stopped renewing: both back
    theirs = second.claim(2, NOW + 6.0, "v1")
    assert sorted(c.id for c in theirs) == sorted(c.id for c in mine)
    assert all(c.attempts == 2 for c in theirs)  # the lost attempt still counts
    with caplog.at_level("WARNING"):
        first.complete([_scored(c.id) for c in mine])  # the first comes back late: dropped
        assert first.fail(mine[0].id, "late", permanent=True, retry_at=0.0, max_attempts=5) == "lease lost"
        first.unchanged(mine[1].id)
    assert _predictions(first) == 0 and "claim on it was lost" in caplog.text
    assert {_row(first, c.id) for c in theirs} == {("processing", second.owner, NOW + 11.0)}
    second.complete([_scored(c.id) for c in theirs])
    assert _predictions(second) == 2
    assert {_row(second, c.id)[0] for c in theirs} == {"done"}


def test_a_prediction_is_stored_once_per_image_and_model_version(db_url: str) -> None:
    w = _store(db_url, 1)
    (c,) = w.claim(1, NOW, "v1")
    w.complete([_scored(c.id, "v1")])
    from nscmonitor.store import models as m

    with w.Session() as s:
        s.add(m.Prediction(image_id=c.id, model_version="v1", classes=[], prob_mean=[], prob_sd=[], fraction=[],
                           n_tiles=0, confidence=0.0, created_at=_now()))
        with pytest.raises(IntegrityError):
            s.commit()
    assert _predictions(w) == 1


def _now():
    from datetime import datetime, timezone

    return datetime.now(timezone.utc)


def test_concurrent_claims_never_hand_out_an_image_twice(pg_url: str) -> None:
    _store(pg_url, 200)
    writers = [Writer(open_engine(pg_url)) for _ in range(4)]
    got: list[list[int]] = [[] for _ in writers]
    start = threading.Barrier(len(writers))

    def work(i: int) -> None:
        start.wait()
        while batch := writers[i].claim(3, NOW, "v1"):
            got[i].extend(c.id for c in batch)
            writers[i].complete([_scored(c.id) for c in batch])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(writers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    ids = [i for g in got for i in g]
    assert sorted(ids) == list(range(1, 201))  # every image once, none twice
    assert sum(1 for g in got if g) >= 2  # the claims really were spread
    with writers[0].Session() as s:
        from nscmonitor.store import models as m

        assert s.scalar(select(func.count()).select_from(m.Prediction)) == 200
    for w in writers:
        w.engine.dispose()


def test_daemons_share_a_postgresql_database_but_not_a_copy(pg_url: str) -> None:
    ensure_schema(open_engine(pg_url))
    a, b = acquire_daemon(pg_url), acquire_daemon(pg_url)  # two daemons on one database: allowed
    with pytest.raises(AlreadyRunning, match="already running"):
        acquire(pg_url)  # db copy needs it to itself
    a.release()
    b.release()
    acquire(pg_url).release()


def test_score_only_and_watch_only_are_refused_on_sqlite(tmp_path: Path, tiny_model: Path, capsys) -> None:
    db = f"sqlite:///{tmp_path / 'nsc.db'}"
    (tmp_path / "w").mkdir()
    for opt in ("--score-only", "--watch-only"):
        rc = main(["run", "--db", db, "--watch", str(tmp_path / "w"), "--model", str(tiny_model), opt, "--once",
                   "--no-schedule"])
        err = capsys.readouterr().err
        assert rc == 2 and f"{opt} needs a PostgreSQL database" in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1


def test_the_lease_keeper_renews_its_own_and_takes_back_the_dead(pg_url: str) -> None:
    from nscmonitor.scoring.lease_keeper import LeaseKeeper

    alive = _store(pg_url, 4, lease_s=6.0)
    dead = Writer(open_engine(pg_url), lease_s=6.0)
    mine = alive.claim(2, NOW, "v1")
    lost = dead.claim(2, NOW, "v1")
    clock = [NOW + 5.0]
    keeper = LeaseKeeper(alive, wall=lambda: clock[0])
    assert keeper.every_s == 2.0  # three rounds per lease
    assert keeper.tick() == 0  # at +5 s nothing has expired; its own leases now run to +11 s
    clock[0] = NOW + 7.0
    assert keeper.tick() == 2  # the other writer stopped renewing at +6 s
    assert {_row(alive, c.id) for c in mine} == {("processing", alive.owner, NOW + 13.0)}
    assert {_row(alive, c.id) for c in lost} == {("pending", None, None)}
    keeper.start()
    keeper.stop()  # the thread ends when told, however long its wait


def test_lease_seconds_is_checked_once_at_the_edge() -> None:
    from nscmonitor.config import ConfigError, parse_settings

    assert parse_settings({"lease_seconds": 5}, env={}).lease_seconds == 5.0
    assert parse_settings({}, env={}).lease_seconds == 60.0
    with pytest.raises(ConfigError, match=r"lease_seconds: must be 2\.\.86400 seconds, got 1\.0"):
        parse_settings({"lease_seconds": 1}, env={})


def test_watch_only_queues_and_score_only_scores(tmp_path: Path, pg_url: str, tiny_model: Path) -> None:
    from conftest import cells_image, write_tiff

    folder = tmp_path / "imager"
    for i, well in enumerate(("A01", "A02", "B01")):
        write_tiff(folder / f"VID1_{well}_1_00d01h00m.tif", cells_image(i, (64, 64)))

    def run(*opts: str) -> str:
        r = subprocess.run([sys.executable, "-m", "nscmonitor", "run", "--db", pg_url, "--model", str(tiny_model),
                            "--engine", "ort-cpu", "--quiet", "0", "--no-schedule", "--once", *opts],
                           capture_output=True, text=True, timeout=120,
                           env={**os.environ, "NSCMONITOR_LOG_DIR": str(tmp_path / "logs"),
                                "NSCMONITOR_MODELS_DIR": str(tmp_path / "models")})
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        return r.stderr

    err = run("--watch-only", "--watch", str(folder))
    assert "intake only" in err
    engine = open_engine(pg_url)
    with engine.connect() as c:
        assert c.execute(text("SELECT status, count(*) FROM images GROUP BY status")).all() == [("pending", 3)]
        assert c.execute(text("SELECT count(*) FROM predictions")).scalar() == 0
    assert "scoring only (no folders watched here)" in run("--score-only")
    with engine.connect() as c:
        assert c.execute(text("SELECT status, count(*) FROM images GROUP BY status")).all() == [("done", 3)]
        assert c.execute(text("SELECT count(*) FROM predictions")).scalar() == 3
    engine.dispose()


def test_a_released_daemon_lock_can_be_taken_at_once_every_time(pg_url: str) -> None:
    """``release`` gives the advisory lock back on its own session before closing it, so the
    exclusive lock is free the moment the daemons have released theirs. Closing alone left the
    lock to the server backend's exit, which under CI's load came after the next attempt (the
    test above failed so once); on an idle server the two orders rarely differ, hence the loop."""
    for _ in range(20):
        a, b = acquire_daemon(pg_url), acquire_daemon(pg_url)
        a.release()
        b.release()
        acquire(pg_url).release()
