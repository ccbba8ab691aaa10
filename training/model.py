"""Classifier = grey input -> (x - mean) / std -> 3 replicated channels -> torchvision ResNet.

Training keeps the 3-channel stem so ImageNet-shaped weights load unchanged; the export
folds the replication and normalisation into the first convolution (see ``fold_stem``).
One scalar mean/std (the ImageNet channel means averaged) is used for all three channels:
with a scalar, padding the raw grey input with ``mean`` is exactly the zero padding of the
normalised input, so the fold is exact at the borders too.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

GREY_MEAN = 0.449
GREY_STD = 0.226
RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
ARCHS = ("tiny", "small", "small24", "small16", *RESNETS)


class TinyNet(nn.Module):
    """A three-block CNN for tests and quick demos; shaped like a ResNet (conv1, fc)."""

    def __init__(self, num_classes: int, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.features = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(4 * width), nn.ReLU(),
        )
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(F.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _block(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class SmallNet(TinyNet):
    """Five 3x3 conv blocks, widths 32-128 (``small``), about 90 million multiply-adds per 112 px
    tile, so it trains at the camera's own pixel size in minutes on two CPU cores; TinyNet's
    single conv per scale learned nothing in as many epochs on the demo data. ``small24`` (widths
    24-96) trained 1.8-2x as many tiles/s on an AVX2-only CPU, ``small16`` (16-64, the demo's
    model) 1.7x as many again, and both read the demo plate as well (docs/training.md)."""

    def __init__(self, num_classes: int, width: int = 32) -> None:
        nn.Module.__init__(self)
        self.conv1 = nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.features = nn.Sequential(*_block(width, 2 * width, 2), *_block(2 * width, 2 * width, 1),
                                      *_block(2 * width, 4 * width, 2), *_block(4 * width, 4 * width, 1))
        self.fc = nn.Linear(8 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Average and max pooled: the max keeps a few phase-bright somata in a tile visible."""
        x = self.features(F.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.cat([F.adaptive_avg_pool2d(x, 1), F.adaptive_max_pool2d(x, 1)], 1).flatten(1))


class GreyClassifier(nn.Module):
    """The training-time model: takes the daemon's N x 1 x S x S tiles."""

    def __init__(self, backbone: nn.Module, mean: float = GREY_MEAN, std: float = GREY_STD) -> None:
        super().__init__()
        self.backbone = backbone
        self.mean, self.std = float(mean), float(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.mean) / self.std
        return self.backbone(z.expand(-1, 3, -1, -1))


def build_model(arch: str, num_classes: int) -> GreyClassifier:
    """Random initialisation: weights are never downloaded (load them with ``load_weights``)."""
    if arch == "tiny":
        return GreyClassifier(TinyNet(num_classes))
    if arch == "small":
        return GreyClassifier(SmallNet(num_classes))
    if arch == "small24":
        return GreyClassifier(SmallNet(num_classes, width=24))
    if arch == "small16":
        return GreyClassifier(SmallNet(num_classes, width=16))
    if arch not in RESNETS:
        raise ValueError(f"arch must be one of {ARCHS}, not {arch!r}")
    import torchvision

    net = getattr(torchvision.models, arch)(weights=None)
    net.fc = nn.Linear(net.fc.in_features, num_classes)
    return GreyClassifier(net)


def load_weights(model: GreyClassifier, path: str | Path) -> list[str]:
    """Load a local torchvision state dict or one of our checkpoints (``weights_only``, so a
    file from elsewhere cannot run code). Head weights of another shape are skipped; returns
    the skipped keys so the caller can log them."""
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    state = {k.removeprefix("backbone.").removeprefix("module."): v for k, v in state.items()}
    own = model.backbone.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(own) - set(usable))
    if len(usable) < len(own) // 2:
        raise ValueError(f"{path}: only {len(usable)} of {len(own)} tensors match this architecture")
    model.backbone.load_state_dict(usable, strict=False)
    return skipped


def gradcam_layer(model: GreyClassifier) -> nn.Module:
    """The last convolutional stage, whose maps Grad-CAM weighs."""
    bb = model.backbone
    return bb.features if isinstance(bb, TinyNet) else bb.layer4


class FoldedStem(nn.Module):
    """Pad the raw grey input with ``mean`` then run the folded 1-channel conv1."""

    def __init__(self, conv: nn.Conv2d, pad: tuple[int, int], value: float) -> None:
        super().__init__()
        self.conv, self.pad, self.value = conv, pad, value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ph, pw = self.pad
        return self.conv(F.pad(x, (pw, pw, ph, ph), value=self.value))


def fold_stem(model: GreyClassifier) -> nn.Module:
    """Return a copy that takes N x 1 x S x S and matches ``model`` exactly.

    conv(W, (x - m)/s replicated) = conv(sum_c W_c / s, x) - m * sum(sum_c W_c / s), with the
    input padded by m instead of 0 so border pixels agree too.
    """
    backbone = copy.deepcopy(model.backbone).eval()
    conv: nn.Conv2d = backbone.conv1
    w = conv.weight.detach().sum(dim=1, keepdim=True) / model.std
    bias = -model.mean * w.sum(dim=(1, 2, 3))
    if conv.bias is not None:
        bias = bias + conv.bias.detach()
    new = nn.Conv2d(1, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=0,
                    dilation=conv.dilation, bias=True)
    with torch.no_grad():
        new.weight.copy_(w)
        new.bias.copy_(bias)
    backbone.conv1 = FoldedStem(new, conv.padding, model.mean)
    return backbone
