"""The zoom response: the out-of-distribution test for a field taken through another objective
whose file states no pixel size (and whose watch folder sets none).

Served at its own scale such a field (5x under a 10x model) shows every cell at half its size in
pixels. The model's served score (``training.ood``: Gaussians of several layers, fitted on our
own tiles) was never told that this is a change to look for and flagged 0-50 % of such fields in
every training measured. The input statistics say it when asked the right question: how much
nearer the training tiles a tile comes when it is zoomed 2x, its pixels read as half their
size. One of our own tiles moves away (zoomed, it is too smooth and its cells too large); a 5x
tile's cells take their proper size and it moves closer (docs/training.md, "The zoom response
of the input statistics").

An image's response is the mean over its tiles; its flag is the served score's or the
response's, each over its own threshold (``mapped_score`` puts both on the served score's
scale, so the stored score and the one threshold stay as they were). Numpy, on the daemon's
own tiles, so every engine gets the same number and the parameters (a few hundred bytes: a
Gaussian of seven statistics and its threshold) travel in the model metadata
(``ModelMetadata.ood["zoom"]``). Tiles under ``MIN_TILE`` px hold a cell or two and say
nothing about cell size (32 px tiles: 2 % of 5x fields flagged), so no response is fitted
for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

FACTOR = 2
MIN_TILE = 64
#: share of our own images the response alone flags (its threshold's quantile is 1 - this)
FLAGGED_IN_DOMAIN = 0.02
STATISTICS = ("mean", "log sd", "skewness", "log kurtosis", "gradient energy 1 px", "gradient energy 2 px",
              "gradient energy 4 px")
GRADIENT_STEPS = (1, 2, 4)
EPS = 1e-6


def statistics(x: np.ndarray, batch: int = 256) -> np.ndarray:
    """N x S x S scaled tiles -> N x 7 (``STATISTICS``), in float64: the served head's input
    statistics (``training.ood.input_statistics``, which the graph computes in fp32)."""
    if len(x) > batch:
        return np.concatenate([statistics(x[i:i + batch], batch) for i in range(0, len(x), batch)])
    x = np.asarray(x, np.float64)
    m = x.mean(axis=(1, 2))
    c = x - m[:, None, None]
    c2 = c * c
    v = c2.mean(axis=(1, 2)) + EPS
    sd = np.sqrt(v)
    out = [m, np.log(sd), (c2 * c).mean(axis=(1, 2)) / (v * sd), np.log((c2 * c2).mean(axis=(1, 2)) / (v * v) + EPS)]
    for s in GRADIENT_STEPS:
        gx, gy = x[:, :, s:] - x[:, :, :-s], x[:, s:, :] - x[:, :-s, :]
        out.append(np.log(((gx * gx).mean(axis=(1, 2)) + (gy * gy).mean(axis=(1, 2))) / v + EPS))
    return np.stack(out, axis=1)


def _zoom_axis(x: np.ndarray, axis: int) -> np.ndarray:
    """Twice as many samples along ``axis`` by linear interpolation between pixel centres, the
    edge pixel repeated beyond them (what ``torch.nn.functional.interpolate`` does with
    ``align_corners=False``): output 2i sits a quarter pixel before input i, 2i + 1 a quarter after."""
    x = np.moveaxis(x, axis, -1)
    before = np.concatenate([x[..., :1], x[..., :-1]], axis=-1)
    after = np.concatenate([x[..., 1:], x[..., -1:]], axis=-1)
    out = np.empty(x.shape[:-1] + (2 * x.shape[-1],), x.dtype)
    out[..., 0::2] = 0.75 * x + 0.25 * before
    out[..., 1::2] = 0.75 * x + 0.25 * after
    return np.moveaxis(out, -1, axis)


def zoomed_statistics(x: np.ndarray, batch: int = 64) -> np.ndarray:
    """N x S x S -> N x 4 x 7: the statistics of each tile zoomed 2x and cut back into its four
    quarters of S px (upper left, upper right, lower left, lower right). In batches: the zoomed
    copies of a few thousand training tiles would take gigabytes at once."""
    s = x.shape[-1]
    out = np.zeros((len(x), FACTOR * FACTOR, len(STATISTICS)))
    for i in range(0, len(x), batch):
        xb = np.asarray(x[i:i + batch], np.float64)
        n = len(xb)
        up = _zoom_axis(_zoom_axis(xb, 1), 2)
        parts = up.reshape(n, FACTOR, s, FACTOR, s).transpose(0, 1, 3, 2, 4).reshape(n * FACTOR * FACTOR, s, s)
        out[i:i + n] = statistics(parts).reshape(n, FACTOR * FACTOR, len(STATISTICS))
    return out


def distance(f: np.ndarray, means: np.ndarray, whiten: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance of each row to the nearest class mean (shared covariance,
    ``W W^T`` its inverse), as the served head's layers measure it."""
    f, means, whiten = (np.asarray(a, np.float64) for a in (f, means, whiten))
    return np.min([(((f - m) @ whiten) ** 2).sum(axis=1) for m in means], axis=0)


def response_of(stats: np.ndarray, zoomed: np.ndarray, means: np.ndarray, whiten: np.ndarray,
                unit: float) -> np.ndarray:
    """N: each tile's root distance minus the mean of its zoomed quarters', in ``unit`` (the
    root of the validation tiles' median squared distance): positive where zooming brings the
    tile nearer the training tiles."""
    own = np.sqrt(distance(stats, means, whiten))
    up = np.sqrt(distance(zoomed.reshape(-1, zoomed.shape[-1]), means, whiten)).reshape(len(stats), -1)
    return (own - up.mean(axis=1)) / float(unit)


def applies(zoom: Mapping[str, Any] | None, tile_px: int) -> bool:
    return bool(zoom) and tile_px >= int(zoom.get("min_tile", MIN_TILE))


def response(tiles: np.ndarray, zoom: Mapping[str, Any]) -> np.ndarray:
    """N x S x S scaled tiles -> N responses under a model's fitted ``zoom`` record."""
    return response_of(statistics(tiles), zoomed_statistics(tiles), np.asarray(zoom["means"]),
                       np.asarray(zoom["whiten"]), float(zoom["unit"]))


def mapped_score(score: Any, image_response: Any, zoom: Mapping[str, Any], threshold: float) -> Any:
    """The served score, or the image's mean response put on its scale where that is larger:
    ``threshold + gain * (response - the response's threshold)``, which exceeds ``threshold``
    exactly when the response exceeds its own. So an image is flagged when either test flags it,
    with one stored score and the one threshold each engine's gate fitted for the sum. Numbers
    or arrays of images."""
    return np.maximum(score, float(threshold) + float(zoom["gain"]) * (np.asarray(image_response, np.float64)
                                                                        - float(zoom["threshold"])))
