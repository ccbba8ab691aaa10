"""95 % intervals for figures computed on few independent units (wells, not tiles).

A well imaged at seven time points is one biological sample read seven times; its readouts
are not independent, so an interval that counts them as such is too narrow. Accuracy over
one readout per well is a binomial proportion (Wilson interval, which stays inside [0, 1]
and behaves at k = 0 or k = n where the normal approximation does not). Figures that are
not a plain proportion (balanced accuracy, calibration error) or that pool several
readouts of a well get a bootstrap that resamples whole wells. Pure numpy, seeded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

Z95 = 1.959963984540054
N_BOOT = 2000


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval of k successes in n trials (None when n is 0)."""
    if n <= 0:
        return None
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def cluster_weights(cluster_ids: Sequence, *, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """(n_boot, n_items) resampling weights: in each resample the wells are drawn with
    replacement and every readout of a well drawn m times weighs m. A statistic written as
    weighted sums over readouts is then evaluated on all resamples at once."""
    _, idx = np.unique(np.asarray(cluster_ids, dtype=object).astype(str), return_inverse=True)
    n_clusters = int(idx.max()) + 1 if len(idx) else 0
    if n_clusters == 0:
        return np.zeros((n_boot, 0))
    rng = np.random.default_rng(seed)
    draws = rng.integers(n_clusters, size=(n_boot, n_clusters))
    counts = np.zeros((n_boot, n_clusters))
    np.add.at(counts, (np.repeat(np.arange(n_boot), n_clusters), draws.ravel()), 1.0)
    return counts[:, idx]


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float] | None:
    """Percentile interval of bootstrap values, NaN resamples (statistic undefined, e.g. no
    well of a class drawn) left out; None when none is defined."""
    v = np.asarray(values, np.float64)
    v = v[~np.isnan(v)]
    if not len(v):
        return None
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(v, [tail, 100 - tail])
    return float(lo), float(hi)


def cluster_bootstrap(stat: Callable[[np.ndarray], np.ndarray], cluster_ids: Sequence, *, n_boot: int = N_BOOT,
                      seed: int = 0, level: float = 0.95) -> tuple[float, float] | None:
    """Well-clustered bootstrap: ``stat`` maps a weight matrix (see ``cluster_weights``) to one
    value per resample (NaN where undefined)."""
    if not len(cluster_ids):
        return None
    return percentile_interval(stat(cluster_weights(cluster_ids, n_boot=n_boot, seed=seed)), level)


def spread(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """Mean, sample sd, min and max of one figure over training seeds (None values skipped)."""
    v = np.asarray([x for x in values if x is not None], np.float64)
    if not len(v):
        return {"n": 0, "mean": None, "sd": None, "min": None, "max": None}
    return {"n": int(len(v)), "mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else None,
            "min": float(v.min()), "max": float(v.max())}
