"""The OOD benchmark's zoom response (``benchmarks/ood.py``, ``ZOOM``), the lead for fields
taken through another objective and served without their pixel size: its zoomed statistics
are the input statistics of each zoomed quarter, and it tells cells at half their size from
our own with nothing fitted but the input statistics' Gaussian."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from nscmonitor.training import ood as T

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_ood", ROOT / "benchmarks" / "ood.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _blobs(rng: np.random.Generator, radius: float, n: int, size: int = 64) -> np.ndarray:
    """Fields of bright round cells of one size (a Gaussian of ``radius`` px) with camera noise."""
    from scipy.ndimage import gaussian_filter

    out = []
    for _ in range(n):
        cells = gaussian_filter((rng.random((size, size)) < 0.32 / radius ** 2).astype(float), radius)
        out.append(0.4 + 0.3 * cells / (cells.max() + 1e-9) + rng.normal(0, 0.02, (size, size)))
    return np.stack(out).astype(np.float32)


def test_zoomed_statistics_are_the_input_statistics_of_each_zoomed_quarter() -> None:
    x = torch.rand(3, 16, 16)
    up = torch.nn.functional.interpolate(x[:, None], scale_factor=2.0, mode="bilinear", align_corners=False)
    got = _bench().zoomed_statistics(x.numpy(), 2)
    assert got.shape == (3, 4, len(T.INPUT_STATISTICS))
    np.testing.assert_allclose(got[1, 2], T.input_statistics(up[1:2, :, 16:, :16])[0].numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[2, 1], T.input_statistics(up[2:3, :, :16, 16:])[0].numpy(), rtol=1e-4, atol=1e-5)


def test_the_zoom_response_tells_cells_at_half_their_size_from_our_own() -> None:
    """Served without its pixel size, a 5x field shows every cell at half its size. Zoomed 2x,
    such a tile comes nearer the training tiles' input statistics, while one of our own moves
    away (too smooth, its cells too large): every half-scale tile answers more than any of ours,
    where the input statistics' own distance does not tell them apart as well."""
    bench, rng = _bench(), np.random.default_rng(0)
    stats = lambda x: T.input_statistics(torch.from_numpy(x)[:, None]).numpy().astype(np.float64)
    ref = stats(_blobs(rng, 4.0, 300))
    gauss = T.fit_mahalanobis(ref, np.zeros(len(ref), np.int64), 1)
    unit = np.sqrt(np.median(bench._dist(ref, *gauss)))

    def response(x: np.ndarray) -> np.ndarray:
        z = bench.zoomed_statistics(x, 2)
        up = np.sqrt(bench._dist(z.reshape(-1, z.shape[-1]).astype(np.float64), *gauss)).reshape(len(x), -1).mean(1)
        return (np.sqrt(bench._dist(stats(x), *gauss)) - up) / unit

    ours, half = _blobs(rng, 4.0, 100), _blobs(rng, 2.0, 100)
    assert response(half).min() > response(ours).max()
