"""Classes 1, 3 and 7: no single file stops the real daemon or exhausts its memory.

Each test runs ``nscmonitor run`` as a subprocess on a temp folder with a real SQLite file
and a tiny ONNX model; every hostile file must end done, quarantined or skipped with its
reason, the good files around them are scored, and the daemon's peak RSS (sampled from
outside the process) stays under ``RSS_BOUND`` throughout."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import cells_image, write_tiff
from daemonproc import MAX_PIXELS, RSS_BOUND, Daemon, count, query, raw_tiff
from unprivileged import rerun_unprivileged  # tests/ is on the path

pytestmark = pytest.mark.slow

SECRET = b"SECRET-token-9f2c41 do not leak"


def _name(well: str, field: int = 1) -> str:
    return f"VID1_{well}_{field}_00d00h00m.tif"


@pytest.fixture()
def model_1um(tmp_path: Path) -> Path:
    """A tiny model that knows its pixel size (1 um), so the daemon resamples frames."""
    from nscmonitor.engines.tiny import build_tiny_classifier

    path = tmp_path / "models" / "tiny-1um.onnx"
    build_tiny_classifier(path, input_size=32, pixel_size_um=1.0)
    return path


def _res(um: float) -> tuple[float, float]:
    """X and Y resolution (pixels per centimetre) for ``um`` micrometres per pixel."""
    return 1e4 / um, 1e4 / um


def _digests(folder: Path) -> dict[str, tuple]:
    """Size, mtime, ctime (any write or chmod moves it) and, below 64 MiB, the content hash."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.is_symlink():
            st = p.stat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if st.st_size < 64 << 20 else None
            out[str(p)] = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, digest)
    return out


def test_hostile_files_end_done_or_quarantined_with_reasons_in_bounded_memory(tmp_path: Path,
                                                                               model_1um: Path) -> None:
    watch = tmp_path / "watch"
    outside = tmp_path / "outside"
    outside.mkdir()
    good = [write_tiff(watch / _name(w), cells_image(i, (96, 128))) for i, w in enumerate(("A1", "A2", "A3"))]
    img = cells_image(9, (96, 128))
    # absurd resolution tags: a billionth of a micrometre and 40 km per pixel -> ignored, scored at own scale
    write_tiff(watch / _name("B1"), img, resolution=((4_000_000_000, 1),) * 2, resolutionunit="CENTIMETER")
    write_tiff(watch / _name("B2"), img, resolution=((1, 4_000_000_000),) * 2, resolutionunit="CENTIMETER")
    # believable tags whose resampling would allocate too much or leave nothing
    write_tiff(watch / _name("B3"), cells_image(3, (200, 300)), resolution=_res(90.0), resolutionunit="CENTIMETER")
    write_tiff(watch / _name("B4"), cells_image(4, (64, 64)), resolution=_res(0.011), resolutionunit="CENTIMETER")
    # a small compressed 100-page TIFF that decodes to 3.4 GB: only the scored page is decoded
    zero_page = zlib.compress(bytes(4096 * 4096 * 2), 9)
    bomb = raw_tiff(watch / _name("C1"), width=4096, height=4096, bits=16, compression=8, data=zero_page, pages=100)
    assert bomb.stat().st_size < 8 << 20
    # a header claiming 20000 x 20000 pixels, a 3 GB strip in a sparse 3 GB file, a valid frame with a 600 MB
    # tail (read in 1 MiB chunks to hash it: time, never memory)
    raw_tiff(watch / _name("C2"), width=20000, height=20000, compression=8, data=zlib.compress(bytes(1000)))
    raw_tiff(watch / _name("C3"), width=1000, height=1000, strip_bytes=3_000_000_000, sparse_size=3_100_000_000)
    tail = write_tiff(watch / _name("C4"), cells_image(4, (96, 128)))
    with open(tail, "r+b") as fh:
        fh.truncate(600_000_000)
    # float frames with NaN and infinity
    nan = cells_image(5, (96, 128)).astype(np.float32)
    nan[10:20, 10:20] = np.nan
    write_tiff(watch / _name("D1"), nan)
    inf = cells_image(6, (96, 128)).astype(np.float64)
    inf[0, :] = np.inf
    write_tiff(watch / _name("D2"), inf)
    # a name that is not valid UTF-8 (in the plate folder) with a good frame in it
    odd_dir = Path(os.fsdecode(bytes(watch) + b"/plate-\xff\xfe-run"))
    odd = write_tiff(odd_dir / _name("E1"), cells_image(7, (96, 128)))
    # symbolic links: to a secret outside the folder, to a good file inside, dangling
    (outside / "secret.tif").write_bytes(SECRET)
    os.symlink(outside / "secret.tif", watch / _name("F1"))
    os.symlink(good[0], watch / _name("F2"))
    os.symlink(outside / "gone.tif", watch / _name("F3"))
    # a file whose bytes are a secret: its error text must not quote them
    (watch / _name("F4")).write_bytes(SECRET)
    # a 100 001-page chain of tiny IFDs
    raw_tiff(watch / _name("G1"), width=8, height=8, data=bytes(64), pages=100_001)
    # OME-XML that declares 400 million planes in a two-page file: tifffile sized its series by it
    with tifffile.TiffFile(write_tiff(tmp_path / "two.ome.tif", np.zeros((2, 16, 16), np.uint16),
                                      ome=True, metadata={"axes": "TYX"})) as two:
        ome = two.ome_metadata
    write_tiff(watch / _name("G2"), np.zeros((2, 16, 16), np.uint16),
               description=ome.replace('SizeT="2"', 'SizeT="400000000"'), metadata=None)
    before = _digests(watch)
    db = tmp_path / "nsc.db"

    d = Daemon(watch, db, model_1um, "--profile", "incucyte", once=True)
    d.run_once(timeout=240)

    rows = query(db, "select path, status, error, qc_passed from images")
    by_name = {"E1" if p.startswith("bytes:") else Path(p).name: (s, e, q) for p, s, e, q in rows}
    assert len(rows) == 20, sorted(by_name)
    for f in ("A1", "A2", "A3", "B1", "B2", "C1", "C4"):
        assert by_name[_name(f)][0] == "done", (f, by_name[_name(f)])
    assert by_name["E1"][0] == "done"
    expected = {
        "B3": "above the cap", "B4": "less than one pixel", "C2": "above the cap", "C3": "bytes of pixel data",
        "F4": "not a readable TIFF", "G1": "pages, above the cap", "G2": "declares 400000000 planes",
    }
    for f, reason in expected.items():
        status, error, _ = by_name[_name(f)]
        assert status == "quarantined" and reason in error, (f, status, error)
    for f in ("D1", "D2"):
        status, _, qc_passed = by_name[_name(f)]
        assert status == "done" and qc_passed == 0
    qc = dict(query(db, "select relpath, json_extract(qc, '$.reason') from images"))
    assert "100 of 12288 pixels are NaN or infinite" in qc[_name("D1")]
    for f in ("F1", "F2", "F3"):
        status, error, _ = by_name[_name(f)]
        assert status == "skipped" and "symbolic link" in error, (f, status, error)
    assert count(db, "status in ('pending', 'processing', 'failed')") == 0
    assert query(db, "select count(*) from predictions")[0][0] == 7  # A1-3, B1, B2, C4, E1 (C1 is blank: no tiles)
    # nothing of a file's content in any error, event or log line
    texts = [e or "" for _, _, e, _ in rows] + [m for (m,) in query(db, "select message from events")]
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "logs").glob("*.log*"))
    assert not any("SECRET" in t for t in texts) and "SECRET" not in logs
    # the odd name is stored losslessly and shown escaped
    stored = next(p for (p,) in query(db, "select path from images") if p.startswith("bytes:"))
    from nscmonitor.core.names import from_db

    assert from_db(stored) == str(odd) and "plate-\\xff\\xfe-run" in stored
    assert d.peak_rss < RSS_BOUND, f"peak RSS {d.peak_rss / 2**20:.0f} MiB"
    assert _digests(watch) == before, "originals are never modified"
    # status and export show the escaped name and do not fail on it
    st = subprocess.run([sys.executable, "-m", "nscmonitor", "status", "--json", "--db", f"sqlite:///{db}"],
                        capture_output=True, text=True, timeout=60)
    assert "errors" in json.loads(st.stdout)
    out = tmp_path / "report.csv"
    subprocess.run([sys.executable, "-m", "nscmonitor", "export", "--db", f"sqlite:///{db}", "--experiment", "faults",
                    "-o", str(out)], check=True, capture_output=True, timeout=60)
    with (tmp_path / "report_images.csv").open(encoding="utf-8") as fh:
        exported = [r["path"] for r in csv.DictReader(fh)]
    assert stored in exported


def test_a_write_that_stalls_past_the_quiet_period_is_scored_once_when_complete(tmp_path: Path,
                                                                               tiny_model: Path) -> None:
    watch = tmp_path / "watch"
    watch.mkdir()
    full = write_tiff(tmp_path / "full.tif", cells_image(1, (192, 256))).read_bytes()
    target = watch / _name("A1")
    with open(target, "wb") as fh:
        fh.write(full[: len(full) // 2])
    db = tmp_path / "nsc.db"
    d = Daemon(watch, db, tiny_model, "--profile", "incucyte", "--polling").start()
    try:
        d.wait_until(lambda: count(db, "status = 'failed' and error like 'file is incomplete%'") == 1, 60,
                     "the half-written file to be seen as incomplete")
        assert query(db, "select count(*) from predictions")[0][0] == 0
        with open(target, "ab") as fh:
            fh.write(full[len(full) // 2:])
        d.wait_until(lambda: count(db, "status = 'done'") == 1, 60, "the completed file to be scored")
        time.sleep(1.0)
    finally:
        d.stop()
    assert query(db, "select count(*) from predictions")[0][0] == 1
    assert query(db, "select rewritten from images")[0][0] == 0
    assert query(db, "select count(*) from events where kind = 'rewritten'")[0][0] == 0
    assert d.peak_rss < RSS_BOUND


def test_requeue_cli_puts_quarantined_images_back(tmp_path: Path, tiny_model: Path) -> None:
    watch = tmp_path / "watch"
    write_tiff(watch / _name("A1"), cells_image(1))
    (watch / "plate7").mkdir()
    bad = [watch / _name("B1"), watch / "plate7" / _name("B2"), watch / "plate7" / _name("B3")]
    for p in bad:
        p.write_bytes(b"not an image yet")
    db = tmp_path / "nsc.db"
    Daemon(watch, db, tiny_model, "--profile", "incucyte", once=True).run_once()
    assert count(db, "status = 'quarantined'") == 3
    url = f"sqlite:///{db}"

    def requeue(*args: str) -> str:
        r = subprocess.run([sys.executable, "-m", "nscmonitor", "requeue", "--db", url, *args],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout

    r = subprocess.run([sys.executable, "-m", "nscmonitor", "requeue", "--db", url], capture_output=True, text=True)
    assert r.returncode != 0 and "--all-quarantined" in r.stderr
    assert "2 quarantined image(s) match" in requeue("--path", "*/plate7/*", "--dry-run")
    assert count(db, "status = 'quarantined'") == 3
    first = query(db, "select id from images where path = ?", (str(bad[0]),))[0][0]
    assert "1 quarantined" in requeue(str(first))
    assert count(db, "status = 'pending' and attempts = 0 and error is null") == 1
    again = requeue(str(first), "999999")  # now pending, and an id that does not exist: named, not dropped
    assert "0 quarantined" in again and f"ids {first}, 999999 are not quarantined" in again
    # the instrument's software fixed the files in place: same size, same mtime
    fixed = write_tiff(tmp_path / "fixed.tif", cells_image(2)).read_bytes()
    for p in bad:
        st = p.stat()
        p.write_bytes(fixed)
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert "2 quarantined" in requeue("--all-quarantined")
    Daemon(watch, db, tiny_model, "--profile", "incucyte", once=True).run_once()
    assert count(db, "status = 'done'") == 4
    assert query(db, "select count(*) from events where kind = 'requeued'")[0][0] == 2


def test_an_unreadable_file_is_scored_once_its_permissions_are_fixed(tmp_path: Path, make_runner, request) -> None:
    """In-process runner (real watchdog, SQLite, ONNX Runtime) so retries take milliseconds. As
    root (CI) the test runs again in a user namespace, where root's right to read any file is gone."""
    import threading

    watch = tmp_path / "watch"
    locked = write_tiff(watch / _name("A1"), cells_image(1))
    locked.chmod(0)
    try:
        locked.open("rb").close()
    except PermissionError:
        pass
    else:
        rerun_unprivileged(request, tmp_path)
        return
    runner = make_runner(watch, profile="incucyte", max_attempts=2, retry_base_s=0.05, rescan_interval=0.2)
    db = Path(runner.settings.database_url.removeprefix("sqlite:///"))
    t = threading.Thread(target=runner.run, daemon=True)
    t.start()
    try:
        end = time.monotonic() + 60
        while count(db, "status = 'quarantined' and error like 'file is locked or not readable%'") != 1:
            assert time.monotonic() < end and t.is_alive(), "the unreadable file was not quarantined"
            time.sleep(0.05)
        locked.chmod(0o644)
        while count(db, "status = 'done'") != 1:
            assert time.monotonic() < end and t.is_alive(), "the file was not retried once readable"
            time.sleep(0.05)
    finally:
        runner.stop_event.set()
        t.join(timeout=30)
    assert query(db, "select count(*) from predictions")[0][0] == 1


def test_the_largest_frame_the_cap_allows_is_scored_within_the_memory_bound(tmp_path: Path, tiny_model: Path) -> None:
    """The bound is a function of max_pixels, not of the file: a float64 frame (the widest
    pixel type) at exactly the cap is the worst case the daemon accepts."""
    side = int(MAX_PIXELS ** 0.5)
    watch = tmp_path / "watch"
    rng = np.random.default_rng(0)
    write_tiff(watch / _name("A1"), rng.normal(1000.0, 50.0, (side, side)))
    db = tmp_path / "nsc.db"
    d = Daemon(watch, db, tiny_model, "--profile", "incucyte", once=True)
    d.run_once(timeout=300)
    assert count(db, "status = 'done'") == 1
    assert d.peak_rss < RSS_BOUND, f"peak RSS {d.peak_rss / 2**20:.0f} MiB"


def test_a_watched_folder_whose_own_name_is_not_utf8(tmp_path: Path, tiny_model: Path) -> None:
    watch = Path(os.fsdecode(bytes(tmp_path) + b"/run-\xe9\xff"))
    frame = write_tiff(watch / _name("A1"), cells_image(1))
    db = tmp_path / "nsc.db"
    Daemon(watch, db, tiny_model, "--profile", "incucyte", once=True).run_once()
    from nscmonitor.core.names import from_db

    (path, status), = query(db, "select path, status from images")
    assert status == "done" and from_db(path) == str(frame)
    (watch_path,), = query(db, "select watch_path from experiments")
    assert from_db(watch_path) == str(watch)
    st = subprocess.run([sys.executable, "-m", "nscmonitor", "status", "--json", "--db", f"sqlite:///{db}"],
                        capture_output=True, text=True, timeout=60)
    assert st.returncode in (0, 3), st.stderr


def test_rescoring_after_promotions_starts_with_fresh_attempts(tmp_path: Path, make_runner) -> None:
    """Claims count attempts and a spent count quarantines at claim time; rescoring for a newly
    promoted model is new work, so images rescored several times must not be taken for ones
    the daemon keeps dying on."""
    from sqlalchemy import select, update

    from nscmonitor.schedule.retrain import mark_for_rescore
    from nscmonitor.store import models as m

    watch = tmp_path / "watch"
    write_tiff(watch / _name("A1"), cells_image(1))
    runner = make_runner(watch, profile="incucyte", max_attempts=3)
    runner.run(once=True)
    for _ in range(4):  # four promotions, each rescoring the plate
        assert mark_for_rescore(runner.store.engine) == 1
        claimed = runner.store.claim(4, 1e12, "another-model", max_attempts=3)
        assert [c.attempts for c in claimed] == [1]
        with runner.store.Session.begin() as s:
            s.execute(update(m.Image).values(status="done"))
    with runner.store.Session() as s:
        assert s.scalars(select(m.Image.status)).all() == ["done"]
