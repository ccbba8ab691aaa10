"""Int8-aware fine-tuning: a few hundred steps at the end of training with int8 rounding
simulated where the engine's Q/DQ file rounds, so the exported fp32 model's readout survives
the int8 engine built from it.

Why: the automatic int8 build (``engines.quantize``, ``engines.mixed_precision``) could only keep
the ResNet50s trained here within the gate's 1 pp by leaving 15 of 16 blocks in fp32 (1.2x fp32):
their readouts moved systematically under int8 rounding (ONNX Runtime 7.04 pp, OpenVINO 17.09 pp
for the whole network in int8). A model that has seen the rounding during training moves far
less: 150 steps of this fine-tuning (3.5 minutes on 2 cores, lr 2e-5) brought the same model to
2.04 / 2.34 pp in all-int8, and its automatic build to 8 of 16 blocks fp32 at 2.24x fp32
(docs/performance.md, "Int8-aware fine-tuning"). The engine is still quantised and gated after
training exactly as before; this only changes the weights it starts from.

Where rounding is simulated (matching the CPU file of ``engines.quantize``: signed symmetric
per-channel int8 weights, unsigned per-tensor activations over their MinMax ranges): every
convolution's input and weights but the stem's, every convolution + BatchNorm output, and both
inputs and the output of each residual Add of torchvision's ResNet blocks. An output a ReLU
follows is rounded after the ReLU, over [0, max]: the CPU file folds that ReLU into the
rounding (recipe 8; before it, the file rounded over the pre-ReLU range and again after the
ReLU, and so did this simulation). The head and the stem stay fp32, as in the engine.
Weights are rounded to their nearest step here; since recipe 9 the engine rounds them against
each layer's inputs (GPTQ, ``engines.weight_rounding``), which errs less than this simulation
assumes, so the fine-tuning prepares the model for a rounding at least as coarse as it gets.
BatchNorm statistics are frozen (the export folds them into the convolutions, so they must not
move under the simulated rounding). Activation ranges are running maxima over the fine-tuning
batches, as MinMax calibration takes them.
"""

from __future__ import annotations

import logging
import time
import types
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

log = logging.getLogger("nscmonitor.training")

QMAX = 127
#: activations round to unsigned 8 bits with a zero point, as the CPU int8 file has them
UMAX = 255


class _Ranges:
    """Running minima and maxima per rounding point (MinMax, as the int8 build calibrates)."""

    def __init__(self) -> None:
        self.lo: dict[Any, torch.Tensor] = {}
        self.hi: dict[Any, torch.Tensor] = {}

    def fq(self, x: torch.Tensor, key: Any) -> torch.Tensor:
        """Unsigned asymmetric rounding over [min(lo, 0), max(hi, 0)], ONNX Runtime's
        quantiser's scale and zero point for a uint8 activation."""
        with torch.no_grad():
            lo, hi = x.detach().amin().float(), x.detach().amax().float()
            if key in self.lo:
                lo, hi = torch.minimum(self.lo[key], lo), torch.maximum(self.hi[key], hi)
            self.lo[key], self.hi[key] = lo, hi
        lo_f, hi_f = min(float(self.lo[key]), 0.0), max(float(self.hi[key]), 0.0)
        scale = (hi_f - lo_f) / UMAX
        if scale <= 0:
            return x
        zero_point = int(min(max(round(-lo_f / scale), 0), UMAX))
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, UMAX)


def fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """Per-output-channel symmetric int8 rounding of a weight (straight-through gradient)."""
    scale = (w.detach().abs().amax(dim=tuple(range(1, w.dim()))) / QMAX).clamp(min=1e-12).float()
    return torch.fake_quantize_per_channel_affine(w, scale, torch.zeros(len(scale), dtype=torch.int32), 0,
                                                  -QMAX - 1, QMAX)


def simulate_int8(model: nn.Module) -> Callable[[], None]:
    """Make ``model`` round as the int8 engine will (see the module docstring); returns the
    function that restores the plain forward passes. Instance-level patches, so other models
    of the same classes are untouched."""
    ranges = _Ranges()
    patched: list[nn.Module] = []
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    stem = convs[0] if convs else None

    def conv_forward(conv: nn.Conv2d) -> Callable[[torch.Tensor], torch.Tensor]:
        def forward(x: torch.Tensor) -> torch.Tensor:
            return conv._conv_forward(ranges.fq(x, (id(conv), "in")), fake_quant_weight(conv.weight), conv.bias)
        return forward

    followed = _followed_by_relu(model)

    def bn_forward(bn: nn.BatchNorm2d) -> Callable[[torch.Tensor], torch.Tensor]:
        plain = type(bn).forward
        relu_next = id(bn) in followed

        def forward(x: torch.Tensor) -> torch.Tensor:
            y = plain(bn, x)
            return ranges.fq(torch.relu(y) if relu_next else y, (id(bn), "out"))
        return forward

    for conv in convs:
        if conv is not stem:
            conv.forward = conv_forward(conv)
            patched.append(conv)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns[1:]:  # the first follows the stem, which stays fp32
        bn.forward = bn_forward(bn)
        patched.append(bn)
    for block in model.modules():
        if type(block).__name__ in ("Bottleneck", "BasicBlock") and hasattr(block, "downsample"):
            block.forward = types.MethodType(_residual_forward(ranges), block)
            patched.append(block)

    def restore() -> None:
        for m in patched:
            del m.forward
    return restore


def _residual_forward(ranges: _Ranges) -> Callable[..., torch.Tensor]:
    """torchvision's Bottleneck/BasicBlock forward with the residual Add's inputs and output
    rounded (the convolutions and BatchNorms inside round through their own patches)."""
    def forward(self: Any, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        if hasattr(self, "conv3"):
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
        else:
            out = self.bn2(self.conv2(out))
        identity = self.downsample(x) if self.downsample is not None else x
        key = id(self)
        return ranges.fq(self.relu(ranges.fq(out, (key, "add_a")) + ranges.fq(identity, (key, "add_b"))),
                         (key, "add_out"))
    return forward


def _followed_by_relu(model: nn.Module) -> set[int]:
    """The BatchNorms whose output goes straight into a ReLU (ids): in a Sequential (the small
    CNNs' conv, BatchNorm, ReLU), and inside torchvision's residual blocks (a Bottleneck's bn1
    and bn2, a BasicBlock's bn1; the last BatchNorm feeds the residual Add)."""
    ids: set[int] = set()
    for m in model.modules():
        if isinstance(m, nn.Sequential):
            kids = list(m)
            ids |= {id(a) for a, b in zip(kids, kids[1:])
                    if isinstance(a, nn.modules.batchnorm._BatchNorm) and isinstance(b, nn.ReLU)}
        name = type(m).__name__
        if name == "Bottleneck":
            ids |= {id(m.bn1), id(m.bn2)}
        elif name == "BasicBlock":
            ids.add(id(m.bn1))
    return ids


def finetune(model: nn.Module, batches: Callable[[int], Any], criterion: nn.Module, *, steps: int, lr: float,
             augment: Callable[[torch.Tensor], torch.Tensor], progress: Any = None) -> dict[str, Any]:
    """``steps`` optimiser steps with int8 rounding simulated, BatchNorm frozen, then the plain
    model back. ``batches(epoch)`` yields (x, y) of the training split. Returns a record for
    the run's metrics (steps, lr, seconds, last loss)."""
    restore = simulate_int8(model)
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    task = progress.add_task("int8-aware fine-tuning", total=steps, loss=0.0) if progress is not None else None
    t0, n, loss = time.perf_counter(), 0, torch.tensor(float("nan"))
    try:
        epoch = 0
        while n < steps:
            for x, y in batches(epoch):
                loss = criterion(model(augment(x)), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                n += 1
                if task is not None:
                    progress.update(task, advance=1, loss=loss.item())
                if n % 25 == 0:
                    log.info("int8-aware fine-tuning: step %d of %d, loss %.4f", n, steps, loss.item())
                if n >= steps:
                    break
            epoch += 1
    finally:
        restore()
        model.eval()
    record = {"steps": n, "lr": lr, "seconds": round(time.perf_counter() - t0, 1), "last_loss": round(loss.item(), 4)}
    log.info("int8-aware fine-tuning: %s", record)
    return record
