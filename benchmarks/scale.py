"""Scoring throughput of the shared queue: 1, 2 and 3 scorer processes on one PostgreSQL
database, and one daemon on PostgreSQL against one on SQLite.

The tiny model on small frames, so what is measured is the queue and the store (claims with
``FOR UPDATE SKIP LOCKED``, leases, results, readouts), not the network. Every run scores the
same frames into a fresh database:

* ``pg xN``: N ``nscmonitor run --score-only`` processes are started on an empty database and
  have loaded their model; then a watch-only pass queues all the frames at once.
* ``pg x1 daemon`` / ``sqlite x1 daemon``: one ``nscmonitor run --once`` process watching the
  frames (it queues and scores).

Throughput is images / (last prediction - first prediction), read from the predictions'
``created_at``: process start-up and model loading are left out, and every process runs the
whole time. Beside it, the CPU time per image over the same span (read from /proc, Linux) of
the daemon processes and, when the server runs on this machine, of the whole PostgreSQL server:
unlike images/s these hardly move with the machine's load, so they say where the difference
between the backends lies. With ``--repeats`` the runs are interleaved (all settings once, then again) and
the median is reported, so a change of the machine's load hits every setting alike. Prints a
table and writes JSON (``benchmarks/results/scale.json``). Needs a
PostgreSQL role allowed to create databases (``--pg-url``; default
``$NSCMONITOR_TEST_PG_URL``, which ``.ci/postgres.sh start`` prints).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import tifffile
from sqlalchemy import text
from sqlalchemy.engine import make_url

from nscmonitor.config import parse_settings
from nscmonitor.daemon import build_runner
from nscmonitor.engines.tiny import build_tiny_classifier
from nscmonitor.store.db import ensure_schema, masked, open_engine

WELLS = [f"{r}{c:02d}" for r in "ABCDEFGH" for c in range(1, 13)]


def write_frames(folder: Path, n: int, size: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        img = np.clip(rng.normal(1200, 60, (size, size)) + 800 * (rng.random((size, size)) > 0.99), 0, 4095)
        name = f"VID1_{WELLS[i % 96]}_{1 + (i // 96) % 9}_{i // 864:02d}d00h00m.tif"
        tifffile.imwrite(folder / name, img.astype(np.uint16))


def _admin(url: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False),
                         autocommit=True) as c:
        c.execute(sql)


class Database:
    """A fresh database for one run: a PostgreSQL database or a SQLite file."""

    def __init__(self, backend: str, pg_url: str, work: Path) -> None:
        self.name = f"nscbench_{uuid.uuid4().hex[:12]}"
        if backend == "sqlite":
            self.url, self.pg = f"sqlite:///{work / (self.name + '.db')}", None
        else:
            _admin(pg_url, f'CREATE DATABASE "{self.name}"')
            self.url, self.pg = make_url(pg_url).set(database=self.name).render_as_string(hide_password=False), pg_url
        self.engine = open_engine(self.url)
        ensure_schema(self.engine)

    def count(self, sql: str) -> int:
        with self.engine.connect() as c:
            return int(c.execute(text(sql)).scalar() or 0)

    def span_s(self) -> float:
        """Seconds from the first stored prediction to the last."""
        with self.engine.connect() as c:
            lo, hi = c.execute(text("SELECT MIN(created_at), MAX(created_at) FROM predictions")).one()
        if isinstance(lo, str):  # SQLite hands back text
            from datetime import datetime

            lo, hi = datetime.fromisoformat(lo), datetime.fromisoformat(hi)
        return (hi - lo).total_seconds()

    def drop(self) -> None:
        self.engine.dispose()
        if self.pg:
            _admin(self.pg, f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def _proc_cpu_s(pid: int, *, reaped: bool = False) -> float:
    """CPU seconds of a process (with ``reaped``: and of its children that have ended)."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in f[11:15 if reaped else 13]) / os.sysconf("SC_CLK_TCK")


def _server_pid(pg_url: str) -> int | None:
    """The postmaster of the server, when it runs on this machine (else None: no server CPU)."""
    import psycopg

    with psycopg.connect(make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)) as c:
        backend = c.execute("SELECT pg_backend_pid()").fetchone()[0]
    try:
        return int(Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _server_cpu_s(pid: int | None) -> float:
    """The whole server's CPU seconds: the postmaster, its backends that have ended and
    those still running."""
    if pid is None:
        return 0.0
    live = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            f = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(f[1]) == pid:
            live += sum(int(x) for x in f[11:13]) / os.sysconf("SC_CLK_TCK")
    return _proc_cpu_s(pid, reaped=True) + live


def _cpu_s(procs: list[subprocess.Popen], server_pid: int | None) -> tuple[float, float]:
    return sum(_proc_cpu_s(p.pid) for p in procs), _server_cpu_s(server_pid)


def _start(url: str, model: Path, work: Path, *args: str) -> subprocess.Popen:
    """``nscmonitor run``; its stderr goes to a file (``p.err``), never a pipe nobody drains."""
    env = {**os.environ, "NSCMONITOR_THREADS": "1", "NSCMONITOR_LOG_DIR": str(work / "logs"),
           "NSCMONITOR_MODELS_DIR": str(work / "models")}
    err = work / f"run-{uuid.uuid4().hex[:8]}.err"
    with open(err, "w") as fh:
        p = subprocess.Popen([sys.executable, "-m", "nscmonitor", "run", "--db", url, "--model", str(model),
                              "--engine", "ort-cpu", "--no-schedule", "--quiet", "0", *args],
                             stdout=subprocess.DEVNULL, stderr=fh, env=env)
    p.err = err  # type: ignore[attr-defined]
    return p


def _wait_serving(p: subprocess.Popen) -> None:
    while "serving model" not in p.err.read_text():
        if p.poll() is not None:
            raise RuntimeError(f"scorer exited before serving (exit {p.returncode}): {p.err.read_text()[-2000:]}")
        time.sleep(0.1)


def _wait_done(db: Database, n: int, procs: list[subprocess.Popen], timeout: float,
               server_pid: int | None) -> tuple[float, float | None]:
    """Waits until all ``n`` are scored; returns the CPU milliseconds per image the daemon
    processes and the server spent from the first stored prediction to the last (so
    start-up and model loading are left out, as in images/s). Polled every 20 ms, so the
    span's ends are a poll late; the poll's own queries are in the server's figure."""
    end = time.monotonic() + timeout
    first = last = None
    done = 0
    while done < n:
        if time.monotonic() > end or any(p.poll() not in (None, 0) for p in procs):
            raise RuntimeError(f"scored {db.count('SELECT COUNT(*) FROM predictions')} of {n}")
        done = db.count("SELECT COUNT(*) FROM predictions")
        if done and first is None:
            first = (done, _cpu_s(procs, server_pid))
        if done >= n:
            last = (done, _cpu_s(procs, server_pid))
        time.sleep(0.02)
    images = max(last[0] - first[0], 1)
    client = (last[1][0] - first[1][0]) * 1000 / images
    server = (last[1][1] - first[1][1]) * 1000 / images if server_pid is not None and db.pg else None
    return client, server


def scorers_run(k: int, pg_url: str, frames: Path, model: Path, work: Path, n: int,
                cpu: list, server_pid: int | None) -> float:
    db = Database("postgresql", pg_url, work)
    procs = [_start(db.url, model, work, "--score-only") for _ in range(k)]
    try:
        for p in procs:
            _wait_serving(p)
        settings = parse_settings({"database_url": db.url, "models_dir": str(work / "models"),
                                   "log_dir": str(work / "logs"), "watch": [{"path": str(frames),
                                   "experiment": "bench", "quiet_seconds": 0.0}]}, env={})
        watcher = build_runner(settings, model=model, score=False)
        watcher.run(once=True)  # queues every frame, scores none
        watcher.store.engine.dispose()
        cpu.append(_wait_done(db, n, procs, 600, server_pid))
        return n / db.span_s()
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=60)
        db.drop()


def daemon_run(backend: str, pg_url: str, frames: Path, model: Path, work: Path, n: int,
               cpu: list, server_pid: int | None) -> float:
    db = Database(backend, pg_url, work)
    try:
        p = _start(db.url, model, work, "--watch", str(frames), "--experiment", "bench", "--once")
        cpu.append(_wait_done(db, n, [p], 600, server_pid))
        p.wait(timeout=600)
        if db.count("SELECT COUNT(*) FROM predictions") != n:
            raise RuntimeError(f"{backend}: scored {db.count('SELECT COUNT(*) FROM predictions')} of {n}")
        return n / db.span_s()
    finally:
        db.drop()


def cpu_name() -> str:
    try:
        return next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1500)
    ap.add_argument("--size", type=int, default=64, help="frame side in pixels (default 64: one call of the tiny model)")
    ap.add_argument("--scorers", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--pg-url", default=os.environ.get("NSCMONITOR_TEST_PG_URL"))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "scale.json"))
    args = ap.parse_args()
    if not args.pg_url:
        print("no PostgreSQL server: pass --pg-url or start one with .ci/postgres.sh start", file=sys.stderr)
        return 2
    runs: dict[str, list[float]] = {}
    cpu: dict[str, list[tuple[float, float | None]]] = {}
    server_pid = _server_pid(args.pg_url)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        frames = work / "frames"
        frames.mkdir()
        write_frames(frames, args.images, args.size)
        model = work / "tiny.onnx"
        build_tiny_classifier(model, input_size=32)
        for rep in range(args.repeats):
            for k in args.scorers:
                r = scorers_run(k, args.pg_url, frames, model, work, args.images,
                                cpu.setdefault(f"pg x{k} scorers", []), server_pid)
                runs.setdefault(f"pg x{k} scorers", []).append(r)
                print(f"  run {rep + 1}: pg, {k} scorer process(es): {r:7.1f} images/s", flush=True)
            for backend in ("sqlite", "postgresql"):
                r = daemon_run(backend, args.pg_url, frames, model, work, args.images,
                               cpu.setdefault(f"{backend} x1 daemon", []), server_pid)
                runs.setdefault(f"{backend} x1 daemon", []).append(r)
                print(f"  run {rep + 1}: {backend}, one daemon: {r:7.1f} images/s", flush=True)
    load_after = os.getloadavg()
    rates = {k: statistics.median(v) for k, v in runs.items()}
    base = rates.get("pg x1 scorers")
    ratios = {k: v / base for k, v in rates.items() if base and k.endswith("scorers")}
    pg_over_sqlite = rates["postgresql x1 daemon"] / rates["sqlite x1 daemon"]
    cpu_ms = {k: (statistics.median(c for c, _ in v),
                  statistics.median(sv for _, sv in v) if all(sv is not None for _, sv in v) else None)
              for k, v in cpu.items()}
    print(f"\n{'run':<22}{'images/s':>10}{'x one scorer':>14}{'daemon CPU ms/img':>19}{'server CPU ms/img':>19}  runs")
    for k, v in rates.items():
        client, server = cpu_ms[k]
        print(f"{k:<22}{v:>10.1f}{ratios[k] if k in ratios else float('nan'):>14.2f}{client:>19.2f}"
              f"{server if server is not None else float('nan'):>19.2f}  " + ", ".join(f"{x:.1f}" for x in runs[k]))
    print(f"PostgreSQL / SQLite (one daemon): {pg_over_sqlite:.2f}")
    print(f"{args.images} frames {args.size}x{args.size}, tiny model, 1 thread per process; {cpu_name()}, "
          f"{os.cpu_count()} logical CPUs; load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"images": args.images, "size": args.size, "images_per_s": rates, "runs": runs, "repeats": args.repeats,
                               "over_one_scorer": ratios, "postgresql_over_sqlite": pg_over_sqlite,
                               "cpu_ms_per_image": {k: {"daemons": c, "server": sv} for k, (c, sv) in cpu_ms.items()},
                               "cpu": cpu_name(), "logical_cpus": os.cpu_count(),
                               "load_average_before": load_before, "load_average_after": load_after,
                               "pg": masked(args.pg_url)}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
