"""``nscmonitor db backup`` while the daemon writes: the copy must open, pass the integrity
check and hold exactly the rows committed when it was taken (a file copy of a WAL database
does not guarantee that)."""

from __future__ import annotations

import sqlite3
import threading
from contextlib import closing
from pathlib import Path

from nscmonitor.cli import main
from nscmonitor.store.db import ensure_schema, integrity_check, open_engine
from nscmonitor.store.writer import Discovered, Writer


def _rows(db: Path) -> dict[int, tuple]:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as c:
        return {r[0]: r[1:] for r in c.execute("SELECT id, path, size, status FROM images")}


def test_backup_while_a_writer_commits(tmp_path: Path) -> None:
    db = tmp_path / "nsc.db"
    url = f"sqlite:///{db}"
    engine = open_engine(url)
    ensure_schema(engine)
    store = Writer(engine)
    exp = store.ensure_experiment("e1", watch_path=str(tmp_path))
    stop = threading.Event()
    written = [0]
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            while not stop.is_set():
                i = written[0]
                store.enqueue([Discovered(path=f"/plates/img{i:06d}_{k}.tif", relpath=f"img{i:06d}_{k}.tif",
                                          size=1000 + k, mtime=float(i), experiment_id=exp, profile=None, key=None,
                                          plate=None, plate_format=96, elapsed_h=None, acquired_at=None)
                               for k in range(20)])
                written[0] += 1
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    t = threading.Thread(target=writer, name="daemon-writer")
    t.start()
    backups = []
    try:
        for n in range(3):
            while written[0] < 10 * (n + 1):  # let commits land between backups
                stop.wait(0.01)
            dest = tmp_path / f"backup{n}.db"
            before = written[0]
            assert main(["db", "--db", url, "backup", "-o", str(dest)]) == 0
            backups.append((dest, before))
    finally:
        stop.set()
        t.join(timeout=30)
    assert not t.is_alive() and not errors, errors
    engine.dispose()

    final = _rows(db)
    assert len(final) == 20 * written[0]
    previous = 0
    for dest, before in backups:
        assert integrity_check(f"sqlite:///{dest}") == ["ok"]
        got = _rows(dest)
        assert len(got) >= 20 * before and len(got) % 20 == 0  # whole transactions only
        assert len(got) >= previous
        assert all(final[i] == row for i, row in got.items())
        previous = len(got)
    assert not list(tmp_path.glob("*.part"))


def test_db_check_reports_ok_and_exit_1_on_a_damaged_file(tmp_path: Path, capsys) -> None:
    db = tmp_path / "nsc.db"
    url = f"sqlite:///{db}"
    engine = open_engine(url)
    ensure_schema(engine)
    store = Writer(engine)
    exp = store.ensure_experiment("e1")
    store.enqueue([Discovered(path=f"/p/{i}.tif", relpath=f"{i}.tif", size=i, mtime=1.0, experiment_id=exp,
                              profile=None, key=None, plate=None, plate_format=96, elapsed_h=None, acquired_at=None)
                   for i in range(2000)])
    engine.dispose()
    with closing(sqlite3.connect(db)) as c:  # everything into the main file, so scribbling on it counts
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert main(["db", "--db", url, "check"]) == 0
    assert capsys.readouterr().out.strip() == "ok"
    with closing(sqlite3.connect(db)) as c:
        page = c.execute("PRAGMA page_size").fetchone()[0]
        pages = c.execute("PRAGMA page_count").fetchone()[0]
    with open(db, "r+b") as f:  # scribble over a b-tree page's header in the middle of the file
        f.seek(page * (pages // 2) + 8)
        f.write(b"\x00\xff" * 100)
    assert main(["db", "--db", url, "check"]) == 1
    assert capsys.readouterr().out.strip() != "ok"
