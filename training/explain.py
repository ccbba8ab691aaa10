"""Grad-CAM over a whole image: tile it as the daemon does, one CAM per tile, stitch.

The heat map is for the image's predicted class (mean tile probability), so every tile is
asked the same question: which of its pixels pushed the image towards that fate. Used to
check that the model looks at cells (somata, neurites) and not at vignetting or debris.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nscmonitor.training import data as D
from nscmonitor.training.export import load_checkpoint
from nscmonitor.training.model import GreyClassifier, gradcam_layer


def gradcam(model: GreyClassifier, x: torch.Tensor, class_index: int) -> tuple[np.ndarray, np.ndarray]:
    """x: N x 1 x S x S -> (N x S x S maps in [0, 1], N x K probabilities). The maps share
    one scale, so a stitched image shows which tiles mattered, not just where in each tile."""
    layer = gradcam_layer(model)
    acts: dict[str, torch.Tensor] = {}

    def hook(_m, _i, out):
        out.retain_grad()
        acts["a"] = out

    handle = layer.register_forward_hook(hook)
    try:
        model.eval()
        x = x.clone().requires_grad_(True)
        logits = model(x)
        model.zero_grad(set_to_none=True)
        logits[:, class_index].sum().backward()
    finally:
        handle.remove()
    a, g = acts["a"], acts["a"].grad
    cam = F.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    cam = cam / cam.amax().clamp_min(1e-8)  # one scale for the batch, so weak tiles stay weak
    return cam.detach().numpy(), torch.softmax(logits.detach(), 1).numpy()


def explain_image(model_path: str | Path, image: str | Path) -> dict[str, Any]:
    """Returns the scaled, resampled image, the stitched CAM (same shape; 0 where the daemon
    would drop an empty tile), the image's class and mean tile probabilities."""
    from nscmonitor.scoring.preprocess import Preprocess

    model, meta = load_checkpoint(model_path)
    size = int(meta["image_size"])
    pre = Preprocess.from_metadata(meta)
    raw = D.read_image(image)
    factor = pre.factor(meta.get("source_pixel_size_um"))
    lohi = pre.lohi(raw)
    grid = pre.tiles(raw, factor=factor, lohi=lohi)
    img = pre.scaled(raw, factor=factor, lohi=lohi)
    if len(grid.tiles) == 0:
        raise D.DataError(f"{image}: every tile is empty; nothing to explain")
    x = torch.from_numpy(grid.tiles)
    with torch.no_grad():
        probs = torch.softmax(model(x) / float(meta.get("temperature", 1.0)), 1).numpy()
    k = int(probs.mean(axis=0).argmax())
    cams, _ = gradcam(model, x, k)
    heat = np.zeros(img.shape, np.float32)
    cells = [divmod(i, grid.cols) for i in np.flatnonzero(grid.kept)]
    y0, x0 = grid.origin
    for cam, (r, c) in zip(cams, cells):
        heat[y0 + r * size:y0 + (r + 1) * size, x0 + c * size:x0 + (c + 1) * size] = cam
    return {"image": img, "heat": heat, "class": meta["classes"][k], "classes": meta["classes"],
            "probabilities": probs.mean(axis=0).tolist(), "n_tiles": len(grid.tiles)}


def write_overlay(result: dict[str, Any], out: str | Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    fig, ax = plt.subplots(1, 2, figsize=(12, 6))
    ax[0].imshow(result["image"], cmap="gray", vmin=0, vmax=1)
    ax[0].set_title("image (percentile-scaled)")
    ax[1].imshow(result["image"], cmap="gray", vmin=0, vmax=1)
    ax[1].imshow(result["heat"], cmap="jet", alpha=0.4, vmin=0, vmax=1)
    probs = ", ".join(f"{c} {p:.2f}" for c, p in zip(result["classes"], result["probabilities"]))
    ax[1].set_title(f"Grad-CAM for {result['class']}\n{probs}", fontsize=9)
    for a in ax:
        a.axis("off")
    fig.tight_layout()
    tmp = out.with_name(out.name + ".part")
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    os.replace(tmp, out)
    return out
