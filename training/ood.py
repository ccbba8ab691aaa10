"""Out-of-distribution score fitted at the end of training and carried inside the ONNX graph.

A tile's score is how far it lies from the training tiles at several depths of the network
at once (Lee et al. 2018, "feature ensemble"), plus two layers of cheap input statistics:
- ``input statistics``: mean, log standard deviation, skewness and log kurtosis of the scaled
  tile and its gradient energy at 1, 2 and 4 px over its variance (how its intensity is
  spread and at which scale its texture sits);
- ``contrast sign``: the sign of the tile's finest detail, E[b^3] / E[|b|^3] of b, the tile
  minus its 3 x 3 mean. Every second-order statistic (variance, spectrum, correlation, and so
  every Gaussian distance of linear features) is blind to an intensity inversion; a third-order
  one flips its sign. The whole tile's skewness did not separate inverted fields (simulated
  phase contrast holds dark bodies and bright somata, both signs); the finest scale does: the
  bright halos and phase-bright rims are sharp, the dark bodies smooth, so the detail of our
  tiles is skewed one way and an inverted field's the other (tile-level AUC between validation
  tiles and inverted test-plate tiles 0.96 at 32 px, 0.98 at 96 px, benchmarks/ood.py's data);
- each stage of the backbone, global-average pooled (``stage_names``);
- the pooled penultimate features, the classifier's input (the score served before).
Beside the score, for tiles of 64 px and more, the zoom response of the input statistics
(``nscmonitor.core.zoom_response``; ``fit_zoom``): how much nearer the training tiles a tile
comes when zoomed 2x, which tells a 5x field served at its own scale (its file states no pixel
size) from ours where none of the layers does; its mirror (each tile shrunk 2x) for fields at
twice our magnification; and the image's mean contrast sign judged alone, which inside the sum
is one layer of several. They are computed on the daemon's tiles in numpy, with their own
thresholds in the metadata, not in the graph (the reasons are in that module).
Per layer: the squared Mahalanobis distance to the nearest class mean (shared covariance),
fitted on the training split, divided by its median over the validation tiles, so that
layers of any width speak in the same unit; the tile's score is the sum over layers of the
square roots, the distances themselves. Why the roots: a squared distance's tail grows as
its layer's dimension shrinks (chi-square: the 96th percentile is 9 medians for the
one-number contrast sign, 1.3 for 64 features), so in a sum of squared distances the
smallest layers' in-domain tails set the threshold and drown the others; the root evens
them out (3 and 1.15 medians). Measured on the tiny benchmark at 3 to 6 simulated plates
(docs/training.md): the sum of squares flagged 93-98 % of inverted and 95-100 % of
bright-field fields, the sum of roots 98-100 % of both; our own held-out plates within a few
fields of each other. (The mean as the unit instead of the median flagged more of our own held-out
plates; the maximum over layers flagged more of other kinds but also more of a held-out
plate of our own: any one layer's plate-to-plate shift then decides.) The last layer alone
misses what this is for: it is trained to ignore exactly the low-level
statistics (optics, pixel size, contrast sign) that make another kind of image unlike ours,
which the early stages and the input statistics still carry. The measured effect of each
layer and of the combination is in ``benchmarks/ood.py`` (docs/training.md
"Out-of-distribution flag").

The whole score is appended to the exported graph as its second output ``ood`` (float32, one
number per tile), all of it under the ``/ood/`` scope, so every backend computes it with no
parameter outside the model file and the int8 recipe keeps these nodes fp32
(``engines.quantize``). The flag threshold is the ``quantile`` of the model's own validation
images (the mean of their tiles' scores, as the daemon aggregates) and is written into the
metadata (``ModelMetadata.ood``), with the largest ratio between a file's pixel size and the
model's (``max_pixel_size_ratio``) beyond which the daemon flags the image whatever its score:
a file that says it was taken through another objective is another magnification, and its
pixels, resampled to the model's scale, carry another optical resolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from nscmonitor.core import zoom_response as Z

#: share of the model's own validation images flagged: the threshold's quantile is 1 - this
FLAGGED_IN_DOMAIN = 0.04
#: the same where the tests on the tiles' pixels are fitted beside the score (tiles of 64 px and
#: more): what the budget leaves it (3 %), the two zoom responses each adding at most
#: ``zoom_response.FLAGGED_IN_DOMAIN`` and the contrast sign what remains
FLAGGED_IN_DOMAIN_WITH_ZOOM = Z.IN_DOMAIN_BUDGET - 2 * Z.FLAGGED_IN_DOMAIN
RIDGE = 1e-2
METHOD = "mahalanobis over layers"
INPUT_STATISTICS = ("mean", "log sd", "skewness", "log kurtosis", "gradient energy 1 px", "gradient energy 2 px",
                    "gradient energy 4 px")
GRADIENT_STEPS = (1, 2, 4)
EPS = 1e-6
#: at most this many refits for the threshold's leave-one-plate-out scores
MAX_FOLDS = 16
#: a file's pixel size this many times the model's, or less than its inverse, is flagged:
#: another objective is a factor of 2 (5x, 10x, 20x); cameras behind one objective differ less
MAX_PIXEL_SIZE_RATIO = 1.5


def _fp32(t: torch.Tensor) -> torch.Tensor:
    """fp32 without a Cast node in the exported graph when it already is (the fp16 converter
    turns an fp32 Cast into a round trip through fp16)."""
    return t if t.dtype == torch.float32 else t.float()


def input_statistics(x: torch.Tensor) -> torch.Tensor:
    """N x 1 x S x S scaled tiles -> N x 7 (``INPUT_STATISTICS``)."""
    x = _fp32(x)
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    c = x - m
    v = (c * c).mean(dim=(1, 2, 3)) + EPS
    sd = torch.sqrt(v)
    stats = [m.flatten(), torch.log(sd), (c * c * c).mean(dim=(1, 2, 3)) / (v * sd),
             torch.log((c * c * c * c).mean(dim=(1, 2, 3)) / (v * v) + EPS)]
    for s in GRADIENT_STEPS:
        gx = x[:, :, :, s:] - x[:, :, :, :-s]
        gy = x[:, :, s:, :] - x[:, :, :-s, :]
        stats.append(torch.log(((gx * gx).mean(dim=(1, 2, 3)) + (gy * gy).mean(dim=(1, 2, 3))) / v + EPS))
    return torch.stack(stats, dim=1)


def contrast_sign(x: torch.Tensor) -> torch.Tensor:
    """N x 1 x S x S scaled tiles -> N x 1: E[b^3] / E[|b|^3] of b, each pixel minus the mean
    of its 3 x 3 neighbourhood (inner pixels only, so the graph needs no padding), in [-1, 1].
    Odd in the intensities: an inverted tile gets the opposite value."""
    x = _fp32(x)
    b = x[:, :, 1:-1, 1:-1] - nn.functional.avg_pool2d(x, 3, stride=1)
    b2 = b * b
    num = (b2 * b).mean(dim=(1, 2, 3))
    den = (b2 * torch.abs(b)).mean(dim=(1, 2, 3)) + EPS * EPS
    return (num / den).unsqueeze(1)


def stage_names(backbone: nn.Module) -> list[str]:
    """The modules whose outputs are the backbone's stages, shallow to deep, without the last
    (whose pooled output is the classifier's input, a layer of its own): a torchvision ResNet's
    stem and layer1-3, our small CNNs' stem and every ReLU of ``features`` but the last."""
    names = dict(backbone.named_modules())
    if "layer1" in names:
        return ["relu", "layer1", "layer2", "layer3"]
    relus = [f"features.{i}" for i, m in enumerate(getattr(backbone, "features", [])) if isinstance(m, nn.ReLU)]
    return ["bn1", *relus[:-1]]


class _Taps:
    """Keeps the stages' outputs and the classifier's input of each forward pass (hooks, so
    the backbone's own modules and their ONNX node names stay as they are)."""

    def __init__(self, backbone: nn.Module, n_stages: int) -> None:
        names = stage_names(backbone)[:n_stages]
        if len(names) != n_stages:
            raise ValueError(f"the OOD head reads {n_stages} stages; this backbone has {len(names)}")
        modules = dict(backbone.named_modules())
        self.maps: dict[int, torch.Tensor] = {}
        self.pooled: torch.Tensor | None = None
        self.handles = [modules[n].register_forward_hook(partial(self._keep, i)) for i, n in enumerate(names)]
        self.handles.append(backbone.fc.register_forward_pre_hook(self._keep_pooled))

    def _keep(self, i: int, _module: nn.Module, _inputs: Any, out: torch.Tensor) -> None:
        self.maps[i] = out

    def _keep_pooled(self, _module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        self.pooled = inputs[0]

    def stages(self) -> list[torch.Tensor]:
        return [self.maps[i] for i in range(len(self.maps))]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def layer_vectors(x: torch.Tensor, maps: Sequence[torch.Tensor], pooled: torch.Tensor,
                  has_input: bool, has_sign: bool = False) -> list[torch.Tensor]:
    """One feature vector per layer: input statistics, contrast sign, each stage's channel
    means, the pooled features."""
    head = ([input_statistics(x)] if has_input else []) + ([contrast_sign(x)] if has_sign else [])
    return head + [_fp32(m).mean(dim=(2, 3)) for m in maps] + [_fp32(pooled)]


class OodHead(nn.Module):
    """Per layer i: d_i = min_k ||(f_i - mu_ik) W_i||^2 / scale_i with W_i W_i^T the inverse
    shared covariance; the score is the sum over layers of sqrt(d_i) (``root``) or, in heads
    saved before, of d_i. Computed as ``(f_i - c_i) W_i - (mu_ik - c_i) W_i`` with c_i the mean
    of the class means: one product with W_i per tile instead of one per class. With one per
    class (four), the head took 17-21 % of a ResNet50's all-int8 engine time on OpenVINO at
    96 px, mostly its products with the 2,048-wide features; 10 % now. The centre is subtracted before the
    whitening, not after: the fp16 graph for TensorRT rounds every tensor between the head's
    fp32 nodes to fp16, and f W and mu W are large and close where whitening amplifies a
    direction of small variance, while both terms here are of the size of the distance."""

    def __init__(self, layers: Sequence[tuple[np.ndarray, np.ndarray]], scale: Sequence[float], *,
                 has_input: bool, n_stages: int, has_sign: bool = False, root: bool = False) -> None:
        super().__init__()
        if len(layers) != int(has_input) + int(has_sign) + n_stages + 1 or len(scale) != len(layers):
            raise ValueError("an OOD head needs one Gaussian and one scale per layer")
        self.has_input, self.has_sign, self.n_stages = bool(has_input), bool(has_sign), int(n_stages)
        self.n_layers, self.root = len(layers), bool(root)
        for i, (means, whiten) in enumerate(layers):
            w = np.asarray(whiten, np.float32)
            self.register_buffer(f"w{i}", torch.as_tensor(w))
            self.register_buffer(f"mu{i}", torch.as_tensor(np.asarray(means, np.float32)))
        self.register_buffer("scale", torch.as_tensor(np.asarray(scale, np.float32)))
        self.register_buffer("layout", torch.tensor([int(has_input), int(n_stages), int(has_sign), int(root)],
                                                    dtype=torch.int64))

    def distances(self, vectors: Sequence[torch.Tensor]) -> torch.Tensor:
        """N x L squared distances, unscaled."""
        out = []
        for i, f in enumerate(vectors):
            w, mu = getattr(self, f"w{i}"), getattr(self, f"mu{i}")
            centre = mu.mean(dim=0)
            z = ((f - centre) @ w).unsqueeze(1) - ((mu - centre) @ w).unsqueeze(0)
            out.append((z * z).sum(dim=2).min(dim=1).values)
        return torch.stack(out, dim=1)

    def forward(self, x: torch.Tensor, maps: Sequence[torch.Tensor], pooled: torch.Tensor) -> torch.Tensor:
        return self.score(layer_vectors(x, maps, pooled, self.has_input, self.has_sign))

    def score(self, vectors: Sequence[torch.Tensor]) -> torch.Tensor:
        """The served score of each layer's feature vectors (``layer_vectors``)."""
        d = self.distances(vectors) / self.scale
        return (torch.sqrt(d) if self.root else d).sum(dim=1)


class ScoredNet(nn.Module):
    """A network taking the input contract -> (logits, ood) for the export and the torch engine."""

    def __init__(self, net: nn.Module, head: OodHead) -> None:
        super().__init__()
        self.net, self.ood = net, head
        self.taps = _Taps(getattr(net, "backbone", net), head.n_stages)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(x)
        return logits, self.ood(x, self.taps.stages(), self.taps.pooled)


def features(model: nn.Module, x: np.ndarray, device: Any = "cpu", batch_size: int = 128, *,
             has_input: bool = True, has_sign: bool = True) -> list[np.ndarray]:
    """Each layer's feature vectors (``layer_vectors``) of N x S x S tiles."""
    taps = _Taps(getattr(model, "backbone", model), len(stage_names(getattr(model, "backbone", model))))
    got: list[list[np.ndarray]] = []
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                xb = torch.from_numpy(np.asarray(x[i:i + batch_size], np.float32)).unsqueeze(1).to(device)
                model(xb)
                vectors = layer_vectors(xb, taps.stages(), taps.pooled, has_input, has_sign)
                got.append([v.cpu().numpy() for v in vectors])
    finally:
        taps.remove()
    return [np.concatenate(parts) for parts in zip(*got)]


def fit_mahalanobis(feats: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Class means (K x D) and a whitening matrix W (D x D, W W^T = inverse covariance). A
    class absent from training keeps the overall mean. A ridge of 1 % of the mean variance
    keeps the covariance of a few hundred tiles invertible and the directions of least
    variance from dominating: with 0.1 % the fp16 graph's score drifted 2.6 % from fp32's
    (the backbone's fp16 rounding, whitened) and a held-out plate of our own was flagged more."""
    f = np.asarray(feats, np.float64)
    overall = f.mean(axis=0)
    means = np.stack([f[y == c].mean(axis=0) if np.any(y == c) else overall for c in range(k)])
    centred = f - means[y]
    cov = centred.T @ centred / max(len(f) - 1, 1)
    cov += RIDGE * (np.trace(cov) / len(cov) + 1e-12) * np.eye(len(cov))
    whiten = np.linalg.cholesky(np.linalg.inv(cov))
    return means.astype(np.float32), whiten.astype(np.float32)


def image_keys(records: list) -> np.ndarray:
    """Index of each tile's image. The daemon scores whole fields, so the tiles a tiles export
    cut from one field (same plate, well, field and time) form one image; records without a
    field are their own file."""
    keys = [(r.experiment, r.plate, r.well, r.field, r.timepoint) if r.field is not None else r.path
            for r in records]
    order = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    return np.asarray([order[k] for k in keys], np.int64)


def image_scores(tile_scores: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Mean tile score per image, as the daemon aggregates it."""
    return np.bincount(index, weights=tile_scores) / np.bincount(index)


def layer_names(model: nn.Module, has_input: bool = True, has_sign: bool = True) -> list[str]:
    return ((["input statistics"] if has_input else []) + (["contrast sign"] if has_sign else [])
            + stage_names(getattr(model, "backbone", model)) + ["pooled"])


def fit_subset(records: list, max_tiles: int, seed: int = 0) -> np.ndarray:
    """Indices of the training tiles the Gaussians are fitted on: all, or at most about
    ``max_tiles`` of them (0: no cap) in whole images, the same share of every plate's images.
    The fit's forward pass over every training tile was most of the time after a small
    model's epochs (24 of 35 s for the demo model on two cores), and a Gaussian per layer of a
    few hundred features is fitted as well from a few thousand tiles. Whole images, because the
    threshold is set on image means (``image_scores``); every plate, because the left-out
    plates are what it must hold."""
    n = len(records)
    if not max_tiles or n <= max_tiles:
        return np.arange(n)
    keys = image_keys(records)
    names = [(getattr(r, "experiment", None), getattr(r, "plate", None)) for r in records]
    order = {name: i for i, name in enumerate(dict.fromkeys(names))}
    plates = np.asarray([order[name] for name in names])
    rng = np.random.default_rng(seed)
    chosen = []
    for p in range(len(order)):
        images = np.unique(keys[plates == p])
        chosen.append(rng.choice(images, max(1, round(len(images) * max_tiles / n)), replace=False))
    return np.flatnonzero(np.isin(keys, np.concatenate(chosen)))


def fit(model: nn.Module, splits: dict, device: Any, k: int, max_fit_tiles: int = 0,
        seed: int = 0) -> tuple[OodHead, dict[str, Any]]:
    """Gaussians from the training split, each layer's scale from the validation split, and
    the threshold from every image of a plate the Gaussians were not fitted on: the
    validation plate's, and each training plate's scored by Gaussians fitted on the other
    training plates (``leave_one_plate_out``). One validation plate holds one plate's optics,
    density and timing; a threshold from it alone flagged 6.8 % of the demo model's test
    plate, 2-28 % of each of its training plates (10 % in all) and 6.0 % of the demo plate,
    where the pooled threshold flagged 1.0 %, 4.2 % and 2.5 % (fp32 scores; docs/training.md,
    "The threshold across plates"). With one training plate there is nothing to leave out, and the
    validation images alone set it, as before."""
    idx = fit_subset(splits["train"].records, max_fit_tiles, seed)
    y, records, x = splits["train"].y, splits["train"].records, splits["train"].x
    if len(idx) < len(y):  # a copy of the tiles only when a share of them is fitted
        y, records, x = y[idx], [records[i] for i in idx], x[idx]
    train = features(model, x, device)
    layers = [fit_mahalanobis(f, y, k) for f in train]
    n_stages = len(train) - 3
    head = OodHead(layers, np.ones(len(layers)), has_input=True, n_stages=n_stages, has_sign=True, root=True)
    with torch.no_grad():
        d_val = head.distances([torch.from_numpy(f) for f in features(model, splits["val"].x, device)]).numpy()
    scale = np.maximum(np.median(d_val, axis=0), 1e-12)
    head.scale.copy_(torch.as_tensor(scale, dtype=torch.float32))
    val = np.sqrt(d_val / scale).sum(axis=1).astype(np.float64)
    per_image = image_scores(val, image_keys(splits["val"].records))
    held = leave_one_plate_out(train, y, records, k, scale)
    pooled = per_image if held is None else np.concatenate([per_image, held])
    q = 1.0 - (FLAGGED_IN_DOMAIN_WITH_ZOOM if x.shape[-1] >= Z.MIN_TILE else FLAGGED_IN_DOMAIN)
    threshold = float(np.quantile(pooled, q))
    meta = {"method": METHOD, "output": "ood", "aggregate": "mean", "combine": "sum over layers of the root",
            "layer_unit": "median over validation tiles", "layers": layer_names(model), "quantile": q,
            "threshold": threshold, "val_images": int(len(per_image)),
            "threshold_from": ("validation images" if held is None else
                               "validation images and each training plate's, left out of the fit"),
            "held_out_images": int(len(pooled)),
            "flagged_val": float(np.mean(per_image > threshold)),
            "features": int(sum(f.shape[1] for f in train)), "max_pixel_size_ratio": MAX_PIXEL_SIZE_RATIO,
            "fit_tiles": int(len(idx)), "training_tiles": int(len(splits["train"].y))}
    if held is not None:
        meta["flagged_training_plates_left_out"] = float(np.mean(held > threshold))
    zoom = fit_zoom(x, y, records, k, splits["val"].x, image_keys(splits["val"].records), per_image, held, threshold)
    if zoom is not None:
        meta["zoom"] = zoom
    return head, meta


def fit_zoom(x: np.ndarray, y: np.ndarray, records: list, k: int, val_x: np.ndarray, val_keys: np.ndarray,
             val_sums: np.ndarray, held_sums: np.ndarray | None, threshold: float) -> dict[str, Any] | None:
    """The zoom response's record for the metadata (``nscmonitor.core.zoom_response``), or
    None for tiles under its ``MIN_TILE``: the input statistics' Gaussian from the training
    tiles (class means, shared covariance, as the served layers), its unit from the validation
    tiles, and its thresholds from the same images as the score's (the validation plate's and
    each training plate's scored without its plate) by ``threshold_within``: the zoom-in
    response adds at most 1 % of them to the score's, the zoom-out response at most 1 % to
    both, all three within 5 %, since an image any test flags is flagged; the contrast-sign
    test last, with what the budget leaves (at most 1 % more; often none: its threshold is then
    the largest value of the images the others leave, beyond anything of ours they pass). The
    contrast sign needs no fit, so every training image counts at its own value. Each ``gain``
    maps a spread of its response onto the score's (their images' interquartile ranges), so
    that ``mapped_score`` keeps one score on one scale. An image's responses here are means
    over the tiles the daemon measures (``zoom_response.served_means``), not over every tile,
    so that each threshold is set on the numbers it is compared with."""
    if x.shape[-1] < Z.MIN_TILE:
        return None
    stats, zoomed, shrunk = Z.statistics(x), Z.zoomed_statistics(x), Z.statistics(Z.shrink2(x))
    means, whiten = fit_mahalanobis(stats, y, k)
    val_stats, val_zoomed, val_shrunk = Z.statistics(val_x), Z.zoomed_statistics(val_x), Z.statistics(Z.shrink2(val_x))
    unit = float(np.sqrt(max(np.median(Z.distance(val_stats, means, whiten)), 1e-12)))
    ins = [Z.served_means(Z.response_of(val_stats, val_zoomed, means, whiten, unit), val_keys)]
    outs = [Z.served_means(Z.response_out_of(val_stats, val_shrunk, means, whiten, unit), val_keys)]
    signs = [Z.served_means(Z.contrast_sign(val_x), val_keys)]
    folds = plate_folds(records)
    if held_sums is not None and folds is not None:
        tiles_in, tiles_out = np.zeros(len(records), np.float64), np.zeros(len(records), np.float64)
        for left_out in folds:
            fold = fit_mahalanobis(stats[~left_out], y[~left_out], k)
            tiles_in[left_out] = Z.response_of(stats[left_out], zoomed[left_out], *fold, unit)
            tiles_out[left_out] = Z.response_out_of(stats[left_out], shrunk[left_out], *fold, unit)
        ins.append(Z.served_means(tiles_in, image_keys(records)))
        outs.append(Z.served_means(tiles_out, image_keys(records)))
        signs.append(Z.served_means(Z.contrast_sign(x), image_keys(records)))
    pooled, pooled_out, pooled_sign = np.concatenate(ins), np.concatenate(outs), np.concatenate(signs)
    side = Z.side_of(pooled_sign)
    pooled_sign = -side * pooled_sign
    sums = val_sums if held_sums is None else np.concatenate([val_sums, held_sums])
    by_score = sums > threshold
    t_r = Z.threshold_within(pooled, by_score)
    by_in = by_score | (pooled > t_r)
    t_out = Z.threshold_within(pooled_out, by_in)
    by_out = by_in | (pooled_out > t_out)
    t_sign = Z.threshold_within(pooled_sign, by_out)
    anyone = by_out | (pooled_sign > t_sign)
    iqr = lambda v: float(np.subtract(*np.quantile(v, [0.75, 0.25])))
    gain = lambda v: iqr(sums) / max(iqr(v), 1e-6)
    return {"method": "zoom response of the input statistics", "factor": Z.FACTOR, "min_tile": Z.MIN_TILE,
            "statistics": list(Z.STATISTICS), "means": means.astype(np.float64).tolist(),
            "whiten": whiten.astype(np.float64).tolist(), "unit": unit, "budget": Z.IN_DOMAIN_BUDGET,
            "at_most": Z.FLAGGED_IN_DOMAIN, "threshold": t_r, "gain": gain(pooled), "out_threshold": t_out,
            "out_gain": gain(pooled_out), "sign_side": side, "sign_threshold": t_sign, "sign_gain": gain(pooled_sign),
            "images": int(len(pooled)), "flagged": float(np.mean(pooled > t_r)),
            "out_flagged": float(np.mean(pooled_out > t_out)), "sign_flagged": float(np.mean(pooled_sign > t_sign)),
            "flagged_by_score": float(np.mean(by_score)),
            "flagged_with_score": float(np.mean(anyone))}


def plate_folds(records: list) -> list[np.ndarray] | None:
    """The tiles each fold leaves out (boolean masks): one plate per fold, or plates in
    ``MAX_FOLDS`` groups beyond that many; None with fewer than two plates."""
    plates = [(getattr(r, "experiment", None), getattr(r, "plate", None)) for r in records]
    names = list(dict.fromkeys(plates))
    if len(names) < 2:
        return None
    index = {p: i % MAX_FOLDS for i, p in enumerate(names)}
    which = np.asarray([index[p] for p in plates])
    return [which == i for i in range(min(len(names), MAX_FOLDS))]


def leave_one_plate_out(train: Sequence[np.ndarray], y: np.ndarray, records: list, k: int,
                        scale: np.ndarray) -> np.ndarray | None:
    """Per-image scores of every training plate, each by Gaussians fitted on the other
    training plates (the layers' unit as served); None with fewer than two training plates.
    Beyond ``MAX_FOLDS`` plates, plates are left out in that many groups (each refit inverts
    every layer's covariance, 2,048 wide for a ResNet50's pooled features).
    The backbone did see these tiles, but what the threshold must hold is plate-to-plate
    variation, which this keeps: on the demo model the training plates scored this way were
    flagged more often than the validation plate at its own threshold, not less."""
    folds = plate_folds(records)
    if folds is None:
        return None
    scores = np.zeros(len(records), np.float64)
    for out in folds:
        head = OodHead([fit_mahalanobis(f[~out], y[~out], k) for f in train], scale, has_input=True,
                       n_stages=len(train) - 3, has_sign=True, root=True)
        with torch.no_grad():
            scores[out] = head.score([torch.from_numpy(np.asarray(f[out], np.float32)) for f in train]).numpy()
    return image_scores(scores, image_keys(records))


def head_state(head: OodHead) -> dict[str, torch.Tensor]:
    return {name: t.clone() for name, t in head.state_dict().items()}


def head_from_state(state: dict[str, torch.Tensor]) -> OodHead:
    """The head a checkpoint saved; a checkpoint from before the layers (``w``, ``mw``: the
    pooled features alone, their means stored whitened) loads as a one-layer head with the
    same score, and one from before the contrast sign and the roots (a layout of two numbers:
    input statistics, stages) as the sum of squared distances it was."""
    if "layout" not in state:
        w = state["w"].double()
        means = torch.linalg.solve(w.T, state["mw"].double().T).T.float()  # mw = mu W
        state = {"w0": state["w"], "mu0": means, "scale": torch.ones(1), "layout": torch.tensor([0, 0])}
    if len(state["layout"]) == 2:
        state = {**state, "layout": torch.cat([state["layout"], torch.zeros(2, dtype=state["layout"].dtype)])}
    has_input, n_stages, has_sign, root = (int(v) for v in state["layout"].tolist())
    n = int(has_input) + int(has_sign) + n_stages + 1
    layers = [(np.zeros(tuple(state[f"mu{i}"].shape), np.float32),
               np.eye(state[f"w{i}"].shape[0], dtype=np.float32)) for i in range(n)]
    head = OodHead(layers, np.ones(n), has_input=bool(has_input), n_stages=n_stages, has_sign=bool(has_sign),
                   root=bool(root))
    head.load_state_dict(state)
    return head
