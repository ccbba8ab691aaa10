"""Frames per second of the simulator for one 1408 x 1040 frame on one core.

    python benchmarks/simulate.py [--repeat 5]

Prints a table and writes benchmarks/results/simulate.json. Both wall time and process CPU
time are reported: on a shared machine the CPU figure is the steadier one. Run with
OMP_NUM_THREADS=1 (set below) so numpy/scipy stay on one core.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from nscmonitor.simulate import Camera, Microscope  # noqa: E402
from nscmonitor.simulate.microscope import tiff_bytes  # noqa: E402

CASES = [("undifferentiated", "A09"), ("neuron-directed", "A01"), ("astrocyte-directed", "A03"),
         ("oligodendrocyte-directed", "A05"), ("mixed", "A07")]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "simulate.json"))
    args = ap.parse_args()
    results = []
    for modality in ("phase", "brightfield"):
        for cond, well in CASES:
            scope = Microscope(fields=1, hours=120, interval_h=24, seed=1, wells=[well],
                               camera=Camera(shape=(1040, 1408), modality=modality))
            for shot in scope.shots():
                if shot.elapsed_h not in (0.0, 72.0, 120.0):
                    continue
                scope.render(shot)  # warm caches (seeding, flat field)
                w0, c0 = time.perf_counter(), time.process_time()
                for _ in range(args.repeat):
                    frame = scope.render(shot)
                wall = (time.perf_counter() - w0) / args.repeat
                cpu = (time.process_time() - c0) / args.repeat
                t0 = time.perf_counter()
                tiff_bytes(frame.image, 1.24)
                results.append({"modality": modality, "condition": cond, "elapsed_h": shot.elapsed_h,
                                "cells": frame.truth["n_cells"], "ms_wall": round(wall * 1e3, 1),
                                "ms_cpu": round(cpu * 1e3, 1), "fps_cpu": round(1 / cpu, 2),
                                "tiff_ms": round((time.perf_counter() - t0) * 1e3, 1)})
                r = results[-1]
                print(f"{modality:11s} {cond:26s} {shot.elapsed_h:5.0f} h {r['cells']:5d} cells "
                      f"{r['ms_wall']:7.1f} ms wall {r['ms_cpu']:7.1f} ms cpu  {r['fps_cpu']:5.2f} fps")
    mean_cpu = sum(r["ms_cpu"] for r in results) / len(results)
    summary = {"frame": "1408x1040", "bit_depth": 8, "mean_ms_cpu": round(mean_cpu, 1),
               "mean_fps_cpu": round(1000 / mean_cpu, 2), "worst_ms_cpu": max(r["ms_cpu"] for r in results),
               "python": platform.python_version(), "machine": platform.machine(), "cpu": _cpu_model(),
               "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
               "cases": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(f"mean {summary['mean_ms_cpu']} ms cpu per frame = {summary['mean_fps_cpu']} frames/s on one core "
          f"({summary['cpu']}, load {summary['load_avg_1m']})")
    return 0


def _cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    raise SystemExit(main())
