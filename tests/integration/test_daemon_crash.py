"""SIGKILL in the middle of a backlog, restart: every image scored exactly once."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

from conftest import cells_image, write_tiff


def _count(db: Path, sql: str) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as c:
            return c.execute(sql).fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_sigkill_mid_backlog_then_restart_scores_each_image_once(tmp_path: Path, tiny_model: Path) -> None:
    watch = tmp_path / "watch"
    n = 120
    for i in range(n):
        row, col = divmod(i % 96, 12)
        write_tiff(watch / f"VID1_{'ABCDEFGH'[row]}{col + 1}_{i // 96 + 1}_00d00h00m.tif",
                   cells_image(i, (192, 256)))
    assert len(list(watch.iterdir())) == n
    db = tmp_path / "nsc.db"
    cmd = [sys.executable, "-m", "nscmonitor", "run", "--db", f"sqlite:///{db}", "--watch", str(watch),
           "--experiment", "crash", "--model", str(tiny_model), "--quiet", "0", "--batch-size", "4"]
    env = {**os.environ, "NSCMONITOR_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        end = time.monotonic() + 60
        while _count(db, "select count(*) from images where status='done'") < 10:
            assert time.monotonic() < end and proc.poll() is None, "daemon did not start scoring"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done_at_kill = _count(db, "select count(*) from images where status='done'")
    assert done_at_kill < n, "the kill must land mid-backlog for this test to mean anything"
    subprocess.run(cmd + ["--once"], check=True, capture_output=True, env=env, timeout=300)
    assert _count(db, "select count(*) from images") == n
    assert _count(db, "select count(*) from images where status='done'") == n
    assert _count(db, "select count(*) from predictions") == n
    assert _count(db, "select max(c) from (select count(*) c from predictions group by image_id)") == 1


def test_sigterm_finishes_or_requeues_the_batch_in_hand(tmp_path: Path, tiny_model: Path) -> None:
    watch = tmp_path / "watch"
    for i in range(60):
        write_tiff(watch / f"VID1_A{i % 12 + 1}_{i // 12 + 1}_00d00h00m.tif", cells_image(i, (192, 256)))
    db = tmp_path / "nsc.db"
    proc = subprocess.Popen([sys.executable, "-m", "nscmonitor", "run", "--db", f"sqlite:///{db}", "--watch", str(watch),
                             "--model", str(tiny_model), "--quiet", "0"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 60
        while _count(db, "select count(*) from images where status='done'") < 5:
            assert time.monotonic() < end and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # a failed wait above must not leave the daemon running
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert _count(db, "select count(*) from images where status='processing'") == 0
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as c:
        daemons = c.execute("select pid, state, stopped_at from daemon_status").fetchall()
    assert len(daemons) == 1 and daemons[0][0] == proc.pid, daemons
    assert daemons[0][1] == "stopped" and daemons[0][2] is not None, "the daemon did not record its stop"
