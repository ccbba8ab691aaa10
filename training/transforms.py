"""Augmentation that respects label-free microscopy, applied per batch on tensors.

Allowed: flips and 90-degree rotations (a culture has no up or down), small contrast,
brightness and gamma changes (lamp, exposure, percentile scaling jitter), mild blur (focus
drift) and noise. Not allowed: colour jitter (grey images), scale or elastic changes (the
pixel size is part of the model's contract, and cell size is a fate cue).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AugmentConfig:
    flips: bool = True
    contrast: float = 0.10
    brightness: float = 0.05
    gamma: float = 0.15
    blur_p: float = 0.2
    blur_sigma: float = 1.0
    noise: float = 0.02


def augment(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator | None = None) -> torch.Tensor:
    """x: N x 1 x S x S in the daemon's scaled units (p_low=0, p_high=1)."""
    n = x.shape[0]
    if cfg.flips:
        x = _dihedral(x, gen)
    u = lambda: torch.rand(n, 1, 1, 1, generator=gen)  # noqa: E731  one draw per sample
    if cfg.gamma:
        g = torch.exp((u() * 2 - 1) * cfg.gamma)
        y = ((x + 0.5) / 2).clamp(1e-6, 1)
        x = y.pow(g) * 2 - 0.5
    if cfg.contrast or cfg.brightness:
        x = (x - 0.5) * (1 + (u() * 2 - 1) * cfg.contrast) + 0.5 + (u() * 2 - 1) * cfg.brightness
    if cfg.blur_p and cfg.blur_sigma:
        x = _blur_some(x, cfg, gen)
    if cfg.noise:
        x = x + torch.randn(x.shape, generator=gen) * cfg.noise * u()
    return x.clamp(-0.5, 1.5)


def _dihedral(x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """Each sample gets one of the 8 flip/rotation symmetries of the square."""
    k = torch.randint(0, 8, (x.shape[0],), generator=gen)
    out = torch.empty_like(x)
    for code in range(8):
        idx = (k == code).nonzero(as_tuple=True)[0]
        if len(idx) == 0:
            continue
        t = torch.rot90(x[idx], code % 4, dims=(2, 3))
        out[idx] = torch.flip(t, dims=(3,)) if code >= 4 else t
    return out


def _blur_some(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator | None) -> torch.Tensor:
    from torchvision.transforms.functional import gaussian_blur

    pick = (torch.rand(x.shape[0], generator=gen) < cfg.blur_p).nonzero(as_tuple=True)[0]
    if len(pick) == 0:
        return x
    sigma = float(0.3 + torch.rand(1, generator=gen) * (cfg.blur_sigma - 0.3))
    k = 2 * int(round(2 * sigma)) + 1
    x = x.clone()
    x[pick] = gaussian_blur(x[pick], [k, k], [sigma, sigma])
    return x
