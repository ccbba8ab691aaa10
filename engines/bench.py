"""Timing helpers shared by ``nscmonitor engine bench`` and ``benchmarks/inference.py``, so
the command a facility engineer runs measures exactly what the benchmark reports."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from nscmonitor.engines.base import Engine


@dataclass(frozen=True)
class Timing:
    backend: str
    batch: int
    images_per_s: float
    latency_ms_p50: float
    latency_ms_p90: float
    n_batches: int
    peak_rss_mb: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def peak_rss_mb() -> float:
    """This process's resident high-water mark: a backend's own peak only when each backend
    runs in its own process, as benchmarks/inference.py does. VmHWM rather than ru_maxrss,
    because Linux carries ru_maxrss over from the parent across fork+exec."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource  # Unix only: the engine build times engines with this module on Windows too
    except ImportError:
        return float("nan")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_engine(engine: Engine, x: np.ndarray, batch: int, *, min_seconds: float = 3.0, warmup: int = 2,
                max_batches: int = 200) -> Timing:
    """Run whole batches back to back for at least ``min_seconds`` after ``warmup`` batches;
    images/s counts only timed batches, latency is per batch."""
    reps = int(np.ceil(batch / len(x)))
    xb = np.ascontiguousarray(np.concatenate([x] * reps)[:batch])
    for _ in range(warmup):
        engine.infer(xb)
    lat = []
    start = time.perf_counter()
    while (time.perf_counter() - start < min_seconds or len(lat) < 3) and len(lat) < max_batches:
        t0 = time.perf_counter()
        engine.infer(xb)
        lat.append(time.perf_counter() - t0)
    total = time.perf_counter() - start
    ms = np.asarray(lat) * 1000
    return Timing(engine.name, batch, batch * len(lat) / total, float(np.percentile(ms, 50)),
                  float(np.percentile(ms, 90)), len(lat), peak_rss_mb())
