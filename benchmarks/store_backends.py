"""One daemon's backlog throughput on SQLite and on PostgreSQL, side by side in one run.

The tiny model on small frames, so the store (claims, results, readouts, heartbeats) is a large
share of each image's cost and the difference between the two databases shows. The same
frames are scored once into a fresh SQLite file and once into a fresh PostgreSQL database
(``--pg-url``, a role allowed to create databases; default ``$NSCMONITOR_TEST_PG_URL``, which
``.ci/postgres.sh start`` prints). Each backend runs ``--repeats`` times, alternating, and the
median is reported. Prints a table and writes JSON (benchmarks/results/store_backends.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import tifffile

from nscmonitor.config import parse_settings
from nscmonitor.daemon import build_runner
from nscmonitor.engines.tiny import build_tiny_classifier
from nscmonitor.store.db import masked


def write_frames(folder: Path, n: int, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        well = f"{'ABCDEFGH'[i // 12 % 8]}{i % 12 + 1}"
        img = np.clip(rng.normal(1200, 60, shape) + 800 * (rng.random(shape) > 0.995), 0, 4095).astype(np.uint16)
        tifffile.imwrite(folder / f"P{i // 96 + 1}_{well}_1_00d00h{i % 60:02d}m.tif", img)


def _admin(url: str, sql: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    with psycopg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False),
                         autocommit=True) as c:
        c.execute(sql)


def run_once(url: str, watch: Path, model: Path, work: Path) -> tuple[float, int, int]:
    """Seconds for the backlog, predictions stored, and SQL statements the daemon's engine sent
    (claims, results, readouts, heartbeats, queue counts: everything of the run)."""
    from sqlalchemy import event

    settings = parse_settings({"database_url": url, "models_dir": str(work / "models"), "log_dir": str(work / "logs"),
                               "threads": 1, "watch": [{"path": str(watch), "experiment": "bench",
                                                        "quiet_seconds": 0.0}]}, env={})
    runner = build_runner(settings, model=model)
    statements = [0]

    def count(*_args) -> None:
        statements[0] += 1

    event.listen(runner.store.engine, "before_cursor_execute", count)
    t0 = time.perf_counter()
    runner.run(once=True)
    took = time.perf_counter() - t0
    event.remove(runner.store.engine, "before_cursor_execute", count)
    with runner.store.engine.connect() as c:
        from sqlalchemy import text

        done = c.execute(text("SELECT COUNT(*) FROM predictions")).scalar()
    runner.store.engine.dispose()
    return took, int(done), statements[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--shape", type=int, nargs=2, default=(256, 256))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pg-url", default=os.environ.get("NSCMONITOR_TEST_PG_URL"))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "store_backends.json"))
    args = ap.parse_args()
    if not args.pg_url:
        print("no PostgreSQL server: pass --pg-url or start one with .ci/postgres.sh start", file=sys.stderr)
        return 2
    results: dict[str, list[float]] = {"sqlite": [], "postgresql": []}
    per_image: dict[str, list[float]] = {"sqlite": [], "postgresql": []}
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        watch = work / "frames"
        watch.mkdir()
        write_frames(watch, args.images, tuple(args.shape))
        model = work / "tiny.onnx"
        build_tiny_classifier(model, input_size=32)
        for rep in range(args.repeats):
            for backend in ("sqlite", "postgresql"):
                if backend == "sqlite":
                    url = f"sqlite:///{work / f'r{rep}.db'}"
                else:
                    from sqlalchemy.engine import make_url

                    name = f"nscbench_{uuid.uuid4().hex[:12]}"
                    _admin(args.pg_url, f'CREATE DATABASE "{name}"')
                    url = make_url(args.pg_url).set(database=name).render_as_string(hide_password=False)
                try:
                    took, done, statements = run_once(url, watch, model, work / f"{backend}{rep}")
                finally:
                    if backend == "postgresql":
                        _admin(args.pg_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                if done != args.images:
                    print(f"{backend}: scored {done} of {args.images}", file=sys.stderr)
                    return 1
                results[backend].append(args.images / took)
                per_image[backend].append(statements / args.images)
                load.append(os.getloadavg()[0])
                print(f"  run {rep + 1} {backend:<10} {args.images / took:7.1f} images/s  "
                      f"{statements / args.images:5.1f} statements/image  load {load[-1]:.1f}", flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    ratio = med["postgresql"] / med["sqlite"]
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"\n{'backend':<12}{'images/s (median)':>20}{'statements/image':>18}{'runs':>30}")
    for k, v in results.items():
        print(f"{k:<12}{med[k]:>20.1f}{statistics.median(per_image[k]):>18.1f}"
              f"{'  '.join(f'{x:.1f}' for x in v):>30}")
    print(f"PostgreSQL / SQLite: {ratio:.2f}  ({args.images} frames {args.shape[0]}x{args.shape[1]}, tiny model, "
          f"1 thread; {cpu}, {os.cpu_count()} logical CPUs; load average {load[0]:.1f} -> {load[-1]:.1f})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"images": args.images, "shape": list(args.shape), "repeats": args.repeats,
                               "images_per_s": results, "median": med,
                               "statements_per_image": per_image, "load_average": load, "postgresql_over_sqlite": ratio,
                               "cpu": cpu, "logical_cpus": os.cpu_count(), "pg": masked(args.pg_url)}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
