"""End-to-end ingest benchmark: files/s and file-complete -> stored-prediction latency.

Two phases on this machine, in one run:
* backlog: N frames (default 500 x 1408x1040 uint16, like an Incucyte camera) already in
  the folder; the daemon works through them (``--once``): files/s and the share of time in
  decode, preprocess, inference and store;
* live: frames written one by one at a steady pace below the measured throughput while the
  daemon watches with real events; latency = stored-prediction time - file mtime
  (median, p95), with the configured quiet period (readiness) set to 0 s and 1 s.

Prints a table and writes JSON (benchmarks/results/ingest.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import tifffile

from nscmonitor.config import parse_settings
from nscmonitor.daemon import build_runner
from nscmonitor.engines.tiny import build_tiny_classifier


def frame(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    base = rng.normal(1200, 60, shape).astype(np.float32)
    ys = rng.integers(0, shape[0], 300)
    xs = rng.integers(0, shape[1], 300)
    base[ys, xs] += 2000
    return np.clip(base, 0, 4095).astype(np.uint16)


def write_frames(folder: Path, n: int, shape: tuple[int, int], seed: int = 0, start: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    protos = [frame(rng, shape) for _ in range(8)]
    out = []
    for i in range(start, start + n):
        row, col = divmod(i % 96, 12)
        name = f"BENCH_{'ABCDEFGH'[row]}{col + 1}_{i // 96 % 9 + 1}_{i // 864:02d}d00h00m.tif"
        p = folder / name
        tifffile.imwrite(p, np.roll(protos[i % 8], i, axis=1))
        out.append(p)
    return out


def latencies(db: Path) -> list[float]:
    with sqlite3.connect(db) as c:
        rows = c.execute("select mtime, scored_at from images where status='done'").fetchall()
    out = []
    for mtime, scored in rows:
        ts = datetime.fromisoformat(scored)
        if ts.tzinfo is None:
            from datetime import timezone

            ts = ts.replace(tzinfo=timezone.utc)
        out.append(ts.timestamp() - mtime)
    return out


def settings(tmp: Path, watch: Path, quiet: float, db_name: str):  # noqa: ANN201
    return parse_settings({"database_url": f"sqlite:///{tmp / db_name}", "models_dir": str(tmp / "models"),
                           "watch": [{"path": str(watch), "experiment": "bench", "quiet_seconds": quiet,
                                      "profile": "incucyte"}]}, env={})


def backlog(tmp: Path, model: Path, n: int, shape: tuple[int, int]) -> dict:
    watch = tmp / "backlog"
    watch.mkdir()
    write_frames(watch, n, shape)
    runner = build_runner(settings(tmp, watch, 0.0, "backlog.db"), model=model)
    t0 = time.perf_counter()
    runner.run(once=True)
    wall = time.perf_counter() - t0
    t = runner.timings
    stages = {"decode": t.decode, "preprocess": t.preprocess, "inference": t.inference, "store": t.store}
    total = sum(stages.values())
    lat = latencies(tmp / "backlog.db")
    return {"frames": n, "wall_s": wall, "files_per_s": n / wall, "engine": runner.model.engine.name,
            "share": {k: v / total for k, v in stages.items()}, "stage_s": stages,
            "latency_median_s": statistics.median(lat), "latency_p95_s": float(np.percentile(lat, 95))}


def live(tmp: Path, model: Path, n: int, shape: tuple[int, int], rate: float, quiet: float) -> dict:
    watch = tmp / f"live{quiet}"
    watch.mkdir()
    stage = tmp / f"stage{quiet}"
    stage.mkdir()
    files = write_frames(stage, n, shape, seed=1, start=1000)
    runner = build_runner(settings(tmp, watch, quiet, f"live{quiet}.db"), model=model, poll_interval=0.1)
    runner.setup()
    th = threading.Thread(target=runner.run, daemon=True)
    th.start()
    for p in files:
        os.replace(p, watch / p.name)  # appears complete at once, as an instrument's rename does
        os.utime(watch / p.name)
        time.sleep(1.0 / rate)
    end = time.monotonic() + 120
    while runner.timings.images < n and time.monotonic() < end:
        time.sleep(0.1)
    runner.stop_event.set()
    th.join(30)
    lat = latencies(tmp / f"live{quiet}.db")
    return {"frames": n, "rate_per_s": rate, "quiet_s": quiet, "scored": len(lat),
            "latency_median_s": statistics.median(lat), "latency_p95_s": float(np.percentile(lat, 95))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=500)
    ap.add_argument("--live-frames", type=int, default=40)
    ap.add_argument("--shape", default="1040x1408", help="HxW")
    ap.add_argument("--model", help="ONNX model (default: a tiny 64 px classifier, i.e. pipeline overhead)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "ingest.json"))
    args = ap.parse_args()
    shape = tuple(int(v) for v in args.shape.split("x"))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model = Path(args.model) if args.model else tmp / "tiny.onnx"
        if not args.model:
            build_tiny_classifier(model, input_size=64)
        b = backlog(tmp, model, args.frames, shape)
        rate = max(0.5, 0.6 * b["files_per_s"])
        lives = [live(tmp, model, args.live_frames, shape, rate, q) for q in (0.0, 1.0)]
    result = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]},
              "model": args.model or "tiny 64 px (pipeline overhead only)", "frame": f"{shape[1]}x{shape[0]} uint16",
              "backlog": b, "live": lives}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"model: {result['model']}; engine {b['engine']}; frames {result['frame']}")
    print(f"{'phase':<22}{'frames':>7}{'files/s':>10}{'lat med s':>11}{'lat p95 s':>11}")
    print(f"{'backlog':<22}{b['frames']:>7}{b['files_per_s']:>10.2f}{b['latency_median_s']:>11.2f}{b['latency_p95_s']:>11.2f}")
    for lv in lives:
        print(f"{'live q=' + str(lv['quiet_s']) + ' @' + format(lv['rate_per_s'], '.1f') + '/s':<22}{lv['scored']:>7}"
              f"{'':>10}{lv['latency_median_s']:>11.2f}{lv['latency_p95_s']:>11.2f}")
    print("backlog time share: " + ", ".join(f"{k} {v:.0%}" for k, v in b["share"].items()))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
