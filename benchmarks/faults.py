"""Soak and fault benchmark: does the daemon lose, double-score or crash-loop under abuse?

Scenarios, each on a fresh folder and SQLite file with a tiny ONNX model and a real
``nscmonitor run`` process:

* ``backlog-kills``: N SIGKILLs at random moments while a backlog is scored, then a
  ``--once`` run to finish;
* ``startup-kills``: N SIGKILLs within the first second and a half of start-up (schema
  checks, model load, the first scan), then ``--once``;
* ``schema-kills``: N SIGKILLs while a fresh database's schema is first created (the kill
  lands early in the very first start), each followed by a start that must succeed;
* ``share-outage``: the watched folder is renamed away while the daemon runs, frames are
  added to it meanwhile, and it is renamed back: all must be scored once;
* ``mixed-burst``: good frames and hostile files (corrupt, truncated, bombs, absurd tags,
  NaN frames, odd names, symbolic links) written at once.

For each: images lost (a good frame without a stored result), images double-scored (more
than one prediction for one image and model), crash loops (a start that exited non-zero
without being killed, or an image quarantined because the daemon died on it every time),
and the peak RSS of any daemon process, sampled from outside every 20 ms. Goal: 0, 0, 0,
bounded. Prints a table and writes JSON (benchmarks/results/faults.json).

    python benchmarks/faults.py --kills 5 --frames 60
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import psutil
import tifffile

from nscmonitor.engines.tiny import build_tiny_classifier
from nscmonitor.core.names import from_db

HERE = Path(__file__).resolve().parent


class Proc:
    """A daemon process with its peak RSS sampled from outside."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        self.p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        self.peak = 0
        self.killed = False
        self._t = threading.Thread(target=self._sample, daemon=True)
        self._t.start()

    def _sample(self) -> None:
        try:
            ps = psutil.Process(self.p.pid)
            while self.p.poll() is None:
                self.peak = max(self.peak, ps.memory_info().rss)
                time.sleep(0.02)
        except psutil.Error:
            return

    def kill(self) -> None:
        self.killed = True
        self.p.send_signal(signal.SIGKILL)
        self.p.wait()
        self._t.join(timeout=5)

    def wait(self, timeout: float) -> int:
        try:
            self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self._t.join(timeout=5)
        return self.p.returncode


class Bench:
    def __init__(self, root: Path, model: Path) -> None:
        self.root, self.model = root, model
        self.rng = np.random.default_rng(0)
        self.peak = 0
        self.crashes = 0
        self.notes: list[str] = []

    def frame(self, path: Path, shape: tuple[int, int] = (192, 256)) -> Path:
        img = self.rng.normal(1000, 40, shape)
        img[self.rng.integers(0, shape[0], 60), self.rng.integers(0, shape[1], 60)] += 1500
        path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(path, np.clip(img, 0, 4095).astype(np.uint16))
        return path

    def cmd(self, watch: Path, db: Path, once: bool) -> tuple[list[str], dict[str, str]]:
        cmd = [sys.executable, "-m", "nscmonitor", "run", "--db", f"sqlite:///{db}", "--watch", str(watch),
               "--experiment", "bench", "--model", str(self.model), "--quiet", "0", "--no-schedule",
               "--profile", "incucyte", "--polling"]
        env = {**os.environ, "NSCMONITOR_THREADS": "1", "NSCMONITOR_LOG_DIR": str(db.parent / "logs")}
        return cmd + (["--once"] if once else []), env

    def start(self, watch: Path, db: Path, once: bool = False) -> Proc:
        return Proc(*self.cmd(watch, db, once))

    def finish(self, p: Proc, timeout: float = 600) -> None:
        code = p.wait(timeout)
        self.peak = max(self.peak, p.peak)
        if code != 0 and not p.killed:
            self.crashes += 1
            self.notes.append(f"exit {code}: {(p.p.stderr.read() or b'').decode(errors='replace')[-300:]}")

    def once(self, watch: Path, db: Path) -> None:
        self.finish(self.start(watch, db, once=True))

    def verdict(self, name: str, db: Path, good: list[Path], seconds: float, **extra: object) -> dict:
        with sqlite3.connect(db) as c:
            c.text_factory = lambda b: b.decode("utf-8", "surrogateescape")
            done = {from_db(p) for (p,) in c.execute("select path from images where status = 'done'")}
            double = c.execute("select count(*) from (select image_id from predictions group by image_id, "
                               "model_version having count(*) > 1)").fetchone()[0]
            gave_up = c.execute("select count(*) from images where error like 'gave up after%never finished%'"
                                ).fetchone()[0]
        lost = sum(1 for p in good if str(p) not in done)
        return {"scenario": name, "good_frames": len(good), "lost": lost, "double_scored": double,
                "crash_loops": self.crashes + gave_up, "peak_rss_mib": round(self.peak / 2**20, 1),
                "seconds": round(seconds, 1), **extra, "notes": self.notes[-3:]}

    def reset(self) -> None:
        self.peak, self.crashes, self.notes = 0, 0, []


def wait_done(db: Path, n: int, proc: Proc, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.p.poll() is None:
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as c:
                if c.execute("select count(*) from images where status = 'done'").fetchone()[0] >= n:
                    return
        except sqlite3.OperationalError:
            pass
        time.sleep(0.1)


def backlog_kills(b: Bench, kills: int, frames: int) -> dict:
    d = b.root / "backlog"
    watch, db = d / "watch", d / "nsc.db"
    good = [b.frame(watch / f"VID1_{'ABCDEFGH'[i % 8]}{i // 8 % 12 + 1}_{i // 96 + 1}_00d00h00m.tif")
            for i in range(frames)]
    t0 = time.monotonic()
    done_at_kill = []
    for _ in range(kills):
        p = b.start(watch, db)
        wait_done(db, _done(db) + 3, p, 120)  # scoring is under way: the kill lands mid-backlog
        time.sleep(random.uniform(0.0, 0.5))
        p.kill()
        b.peak = max(b.peak, p.peak)
        done_at_kill.append(_done(db))
    b.once(watch, db)
    return b.verdict("backlog-kills", db, good, time.monotonic() - t0, kills=kills, done_at_each_kill=done_at_kill)


def _done(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as c:
            return c.execute("select count(*) from images where status = 'done'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def startup_kills(b: Bench, kills: int, frames: int) -> dict:
    d = b.root / "startup"
    watch, db = d / "watch", d / "nsc.db"
    good = [b.frame(watch / f"VID1_B{i % 12 + 1}_{i // 12 + 1}_00d00h00m.tif") for i in range(frames)]
    b.once(watch, db)  # the database exists; the kills land in later start-ups
    for i in range(frames, frames + kills):
        good.append(b.frame(watch / f"VID1_C{i % 12 + 1}_{i // 12 + 1}_00d00h00m.tif"))
    t0 = time.monotonic()
    for _ in range(kills):
        p = b.start(watch, db)
        time.sleep(random.uniform(0.05, 1.5))
        p.kill()
        b.peak = max(b.peak, p.peak)
    b.once(watch, db)
    return b.verdict("startup-kills", db, good, time.monotonic() - t0, kills=kills)


def schema_kills(b: Bench, kills: int) -> dict:
    t0 = time.monotonic()
    good = []
    last_db = None
    missing = 0
    for k in range(kills):
        d = b.root / f"schema{k}"
        watch, db = d / "watch", d / "nsc.db"
        good_k = [b.frame(watch / "VID1_D1_1_00d00h00m.tif")]
        p = b.start(watch, db)
        deadline = time.monotonic() + 10
        while not db.exists() and time.monotonic() < deadline:  # the kill lands as the schema is created
            time.sleep(0.002)
        time.sleep(random.uniform(0.0, 0.05))
        p.kill()
        b.peak = max(b.peak, p.peak)
        b.once(watch, db)
        if _done(db) != 1:
            b.notes.append(f"schema kill {k}: the frame was not scored after the restart")
            missing += 1
        good += good_k
        last_db = db
    r = b.verdict("schema-kills", last_db, good[-1:], time.monotonic() - t0, kills=kills)
    r.update(good_frames=len(good), lost=missing)
    return r


def share_outage(b: Bench, frames: int) -> dict:
    d = b.root / "share"
    watch, db, away = d / "watch", d / "nsc.db", d / "watch-away"
    good = [b.frame(watch / f"VID1_E{i % 12 + 1}_{i // 12 + 1}_00d00h00m.tif") for i in range(frames // 2)]
    t0 = time.monotonic()
    p = b.start(watch, db)
    wait_done(db, len(good), p, 120)
    watch.rename(away)
    time.sleep(3)
    good += [b.frame(away / f"VID1_F{i % 12 + 1}_{i // 12 + 1}_00d00h00m.tif") for i in range(frames // 2)]
    away.rename(watch)
    good = [watch / g.relative_to(away) if away in g.parents else g for g in good]
    wait_done(db, len(good), p, 180)
    p.p.send_signal(signal.SIGTERM)
    b.finish(p)
    return b.verdict("share-outage", db, good, time.monotonic() - t0)


def mixed_burst(b: Bench, frames: int) -> dict:
    d = b.root / "mixed"
    watch, db, outside = d / "watch", d / "nsc.db", d / "outside"
    outside.mkdir(parents=True)
    watch.mkdir(parents=True)
    t0 = time.monotonic()
    p = b.start(watch, db)
    time.sleep(2)
    good, bad = [], 0
    for i in range(frames):
        name = f"VID1_G{i % 12 + 1}_{i // 12 + 1}_00d00h00m.tif"
        good.append(b.frame(watch / name))
        k = i % 8
        bad_path = watch / f"VID1_H{i % 12 + 1}_{i // 12 + 1}_00d00h00m.tif"
        if k == 0:
            bad_path.write_bytes(b"")
        elif k == 1:
            bad_path.write_bytes(os.urandom(4000))
        elif k == 2:
            full = b.frame(d / "tmp.tif").read_bytes()
            bad_path.write_bytes(full[: len(full) // 3])
        elif k == 3:
            page = zlib.compress(bytes(4096 * 4096 * 2), 9)
            bad_path.write_bytes(_multipage(page, 4096, 4096, 60))
        elif k == 4:
            img = b.rng.normal(1000, 40, (96, 128)).astype(np.float32)
            img[:4] = np.nan
            tifffile.imwrite(bad_path, img)
        elif k == 5:
            tifffile.imwrite(bad_path, np.ones((96, 128), np.uint16), resolution=((1, 4_000_000_000),) * 2,
                             resolutionunit="CENTIMETER")
        elif k == 6:
            odd = Path(os.fsdecode(bytes(watch) + b"/odd-\xff%d" % i))
            good.append(b.frame(odd / name.replace("_G", "_A")))
        else:
            (outside / f"t{i}.tif").write_bytes(b"private")
            os.symlink(outside / f"t{i}.tif", bad_path)
        bad += k != 6
    wait_done(db, len(good), p, 300)
    time.sleep(2)
    p.p.send_signal(signal.SIGTERM)
    b.finish(p)
    with sqlite3.connect(db) as c:
        unsettled = c.execute("select count(*) from images where status in ('pending', 'processing')").fetchone()[0]
    return b.verdict("mixed-burst", db, good, time.monotonic() - t0, hostile_files=bad, unsettled=unsettled)


def _multipage(page: bytes, w: int, h: int, n: int) -> bytes:
    """n IFDs all pointing at one compressed page: small on disk, GBs decoded."""
    import struct

    data_at = 8
    ifd_at = data_at + len(page) + (len(page) % 2)
    entries = 9
    size = 2 + 12 * entries + 4
    out = bytearray(b"II*\x00" + struct.pack("<I", ifd_at) + page + b"\0" * (len(page) % 2))
    for i in range(n):
        nxt = ifd_at + (i + 1) * size if i + 1 < n else 0
        tags = [(256, 4, w), (257, 4, h), (258, 3, 16), (259, 3, 8), (262, 3, 1), (273, 4, data_at), (277, 3, 1),
                (278, 4, h), (279, 4, len(page))]
        out += struct.pack("<H", len(tags))
        for tag, typ, v in tags:
            out += struct.pack("<HHIHH", tag, typ, 1, v, 0) if typ == 3 else struct.pack("<HHII", tag, typ, 1, v)
        out += struct.pack("<I", nxt)
    return bytes(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=5, help="SIGKILLs per kill scenario")
    ap.add_argument("--frames", type=int, default=60, help="good frames per scenario")
    ap.add_argument("--out", default=str(HERE / "results" / "faults.json"))
    ap.add_argument("--keep", action="store_true", help="keep the temp folders")
    args = ap.parse_args(argv)
    random.seed(0)
    root = Path(tempfile.mkdtemp(prefix="nsc-faults-"))
    model = root / "tiny.onnx"
    build_tiny_classifier(model, input_size=32)
    b = Bench(root, model)
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    scenarios = [("backlog-kills", lambda: backlog_kills(b, args.kills, args.frames)),
                 ("startup-kills", lambda: startup_kills(b, args.kills, max(12, args.frames // 4))),
                 ("schema-kills", lambda: schema_kills(b, args.kills)),
                 ("share-outage", lambda: share_outage(b, max(12, args.frames // 2))),
                 ("mixed-burst", lambda: mixed_burst(b, max(16, args.frames // 2)))]
    results = []
    try:
        with Progress(transient=True) as prog:
            task = prog.add_task("fault scenarios", total=len(scenarios))
            for name, run in scenarios:
                prog.update(task, description=name)
                b.reset()
                results.append(run())
                prog.advance(task)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    t = Table("scenario", "good frames", "lost", "double-scored", "crash loops", "peak RSS (MiB)", "s",
              title="nscmonitor fault benchmark (goal: 0, 0, 0, bounded)")
    for r in results:
        t.add_row(r["scenario"], str(r["good_frames"]), str(r["lost"]), str(r["double_scored"]), str(r["crash_loops"]),
                  f"{r['peak_rss_mib']:.0f}", f"{r['seconds']:.0f}")
    Console(width=120).print(t)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.platform(), "python": platform.python_version(),
                               "kills": args.kills, "frames": args.frames, "results": results}, indent=2))
    print(f"wrote {out}")
    bad = any(r["lost"] or r["double_scored"] or r["crash_loops"] for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
