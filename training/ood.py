"""Out-of-distribution score fitted at the end of training and carried inside the ONNX graph.

The score of a tile is its Mahalanobis distance (squared, shared covariance, nearest class
mean; Lee et al. 2018) on the pooled penultimate features, the input of the classifier's last
layer. The choice against the energy score and the top softmax probability is measured in
``benchmarks/ood.py`` (docs/training.md "Out-of-distribution flag"): those read only the
logits, which a tile unlike anything in training can push anywhere, including to a confident
class; the features keep the evidence that the tile is unlike every class.

The means and the whitening matrix are fitted on the training split's features and appended
to the exported graph as a second output ``ood`` (float32, one number per tile), so every
backend computes it with no parameter outside the model file and the int8 recipe keeps these
nodes fp32 (``engines.quantize``: nodes under ``/ood/``). The flag threshold is the
``quantile`` of the model's own validation images and is written into the metadata
(``ModelMetadata.ood``); the daemon averages tile scores per image.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

#: share of the model's own validation images flagged: the threshold's quantile is 1 - this
FLAGGED_IN_DOMAIN = 0.04
RIDGE = 1e-3


class _Tap(nn.Module):
    """The classifier's last layer, keeping its input (the pooled features) for the OOD head."""

    def __init__(self, fc: nn.Module) -> None:
        super().__init__()
        self.fc = fc
        self.last: torch.Tensor | None = None

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        self.last = f
        return self.fc(f)


class OodHead(nn.Module):
    """min_k ||(f - mu_k) W||^2 with W W^T the inverse shared covariance."""

    def __init__(self, means: np.ndarray, whiten: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("w", torch.as_tensor(np.asarray(whiten, np.float32)))
        self.register_buffer("mw", torch.as_tensor(np.asarray(means, np.float32) @ np.asarray(whiten, np.float32)))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        z = f.float() @ self.w
        d = ((z.unsqueeze(1) - self.mw.unsqueeze(0)) ** 2).sum(dim=2)
        return d.min(dim=1).values


class ScoredNet(nn.Module):
    """A network taking the input contract -> (logits, ood) for the export and the torch engine."""

    def __init__(self, net: nn.Module, head: OodHead) -> None:
        super().__init__()
        fc_owner = getattr(net, "backbone", net)
        self.tap = _Tap(fc_owner.fc)
        fc_owner.fc = self.tap
        self.net, self.ood = net, head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(x)
        return logits, self.ood(self.tap.last)


def features(model: nn.Module, x: np.ndarray, device: Any = "cpu", batch_size: int = 128) -> np.ndarray:
    """Pooled penultimate features (the last layer's input) of N x S x S tiles."""
    backbone = getattr(model, "backbone", model)
    got: list[np.ndarray] = []
    hook = backbone.fc.register_forward_pre_hook(lambda _m, inp: got.append(inp[0].detach().float().cpu().numpy()))
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                xb = torch.from_numpy(np.asarray(x[i:i + batch_size], np.float32)).unsqueeze(1).to(device)
                model(xb)
    finally:
        hook.remove()
    return np.concatenate(got) if got else np.zeros((0, 0), np.float32)


def fit_mahalanobis(feats: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Class means (K x D) and a whitening matrix W (D x D, W W^T = inverse covariance). A
    class absent from training keeps the overall mean; a small ridge keeps the covariance of
    a few hundred tiles invertible."""
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


def fit(model: nn.Module, splits: dict, device: Any, k: int) -> tuple[OodHead, dict[str, Any]]:
    """Head from the training split, threshold from the validation images' own scores."""
    head = OodHead(*fit_mahalanobis(features(model, splits["train"].x, device), splits["train"].y, k))
    with torch.no_grad():
        val = head(torch.from_numpy(features(model, splits["val"].x, device))).numpy().astype(np.float64)
    per_image = image_scores(val, image_keys(splits["val"].records))
    q = 1.0 - FLAGGED_IN_DOMAIN
    meta = {"method": "mahalanobis", "output": "ood", "aggregate": "mean", "quantile": q,
            "threshold": float(np.quantile(per_image, q)), "val_images": int(len(per_image)),
            "features": int(head.w.shape[0])}
    return head, meta


def head_state(head: OodHead) -> dict[str, torch.Tensor]:
    return {"w": head.w.clone(), "mw": head.mw.clone()}


def head_from_state(state: dict[str, torch.Tensor]) -> OodHead:
    head = OodHead(np.zeros((state["mw"].shape[0], state["w"].shape[0]), np.float32), np.eye(state["w"].shape[0]))
    head.load_state_dict(state)
    return head
