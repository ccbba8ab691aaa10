"""No fate signal at induction: a leak test on a fresh multi-plate export.

A classifier (shrinkage LDA) on plate-normalised image features averaged per well (the
independent unit), cross-validated by plate, must not tell a well's condition from its 0 h
tiles better than it does with the conditions shuffled among the wells of each plate (below
the 95th percentile of that permutation null). The same
classifier on 36 h tiles, when neuron-fated cells are only about a fifth of the way to their
end state, must beat the null, so the test has the power to see a weak signal (it also sees
the 24 h one, with less margin).
"""

from __future__ import annotations

import csv

import numpy as np
import tifffile

from nscmonitor.core.texture import tile_features
from nscmonitor.simulate.labelled_tiles import export_tiles

N_PERM = 200


def _features(tile: np.ndarray) -> np.ndarray:
    """Texture features plus the log energy in seven radial FFT bands (the spectral signal a
    linear model on band energies found to match a ResNet)."""
    x = tile.astype(np.float64)
    x = x / max(float(np.median(x)), 1.0) - 1.0
    power = np.abs(np.fft.rfft2(x - x.mean())) ** 2
    fy = np.fft.fftfreq(x.shape[0])[:, None]
    fx = np.fft.rfftfreq(x.shape[1])[None, :]
    r = np.hypot(fy, fx)
    edges = np.linspace(0.0, 0.5, 8)
    bands = [np.log(power[(r > lo) & (r <= hi)].sum() + 1e-9) for lo, hi in zip(edges[:-1], edges[1:])]
    return np.concatenate([tile_features(tile), bands])


def _plate_normalised(feats: np.ndarray, plates: np.ndarray) -> np.ndarray:
    out = np.empty_like(feats)
    for p in np.unique(plates):
        m = plates == p
        out[m] = (feats[m] - feats[m].mean(axis=0)) / (feats[m].std(axis=0) + 1e-9)
    return out


def _accuracy(x: np.ndarray, y: np.ndarray, plates: np.ndarray, shrink: float = 0.3) -> float:
    """Leave-one-plate-out accuracy of a linear discriminant with a shrunk pooled covariance
    (a few lines of numpy: the permutation null needs 1,200 fits)."""
    classes = np.unique(y)
    pred = np.empty_like(y)
    for p in np.unique(plates):
        train, test = plates != p, plates == p
        mu = np.array([x[train & (y == c)].mean(axis=0) for c in classes])
        cov = np.cov((x[train] - mu[np.searchsorted(classes, y[train])]).T)
        cov = (1 - shrink) * cov + shrink * np.eye(len(cov)) * np.trace(cov) / len(cov)
        w = np.linalg.solve(cov, mu.T)
        pred[test] = classes[np.argmax(x[test] @ w - 0.5 * np.sum(mu.T * w, axis=0), axis=1)]
    return float((pred == y).mean())


def _null(x, y, plates, rng) -> np.ndarray:
    """Accuracies with the conditions shuffled among the wells of each plate."""
    out = []
    for _ in range(N_PERM):
        y_perm = y.copy()
        for p in np.unique(plates):
            m = np.flatnonzero(plates == p)
            y_perm[m] = y[rng.permutation(m)]
        out.append(_accuracy(x, y_perm, plates))
    return np.asarray(out)


def test_conditions_cannot_be_told_apart_at_induction_but_can_at_36_h(tmp_path):
    export_tiles(tmp_path, plates=3, hours=(0, 36), seed=5, wells_per_condition=6, tile_size=128)
    with open(tmp_path / "tiles.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))

    rng = np.random.default_rng(0)
    verdict = {}
    for hour in ("0.0", "36.0"):
        by_well: dict[tuple[str, str, str], list] = {}
        for r in rows:
            if r["elapsed_h"] == hour:
                by_well.setdefault((r["plate"], r["well"], r["condition"]), []).append(
                    _features(tifffile.imread(tmp_path / r["path"])))
        plates = np.array([k[0] for k in by_well])
        y = np.array([k[2] for k in by_well])
        x = _plate_normalised(np.array([np.mean(v, axis=0) for v in by_well.values()]), plates)
        observed = _accuracy(x, y, plates)
        verdict[hour] = (observed, float(np.percentile(_null(x, y, plates, rng), 95)))
    acc0, null0 = verdict["0.0"]
    acc36, null36 = verdict["36.0"]
    assert acc0 < null0, f"0 h: accuracy {acc0:.3f} reaches the 95th percentile of the null {null0:.3f}"
    assert acc36 > null36 + 0.05, f"36 h: accuracy {acc36:.3f} vs null {null36:.3f}: the test has no power"
