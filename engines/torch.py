"""Torch backend: the reference implementation, and the fallback where ONNX Runtime is missing.

There is no ONNX -> torch converter worth trusting, so this backend serves the training run's
checkpoint, found beside the ONNX (``RUN_DIR/model.onnx`` + ``RUN_DIR/best.pt``). The
checkpoint format shared with ``nscmonitor.training`` (extra keys are ignored)::

    {"state_dict": ..., "arch": "resnet50", "num_classes": K, "classes": [...], "metadata": "<JSON>"}

A state dict with ``backbone.*`` keys is training's ``GreyClassifier`` (built by
``nscmonitor.training.model.build_model``), which takes the daemon's 1-channel tiles and
normalises and replicates them itself. Plain torchvision keys get
``torchvision.models.<arch>(num_classes=K)`` behind a small prelude that replicates the grey
channel to the 3 channels the network was trained on and applies ``(x - mean) / std`` from
the model metadata when the ONNX has that folded into its graph (``normalization.in_graph``).
Doing those two steps explicitly is exact; the exported ONNX folds them into conv1. The
validation gate compares this backend with the ONNX before it may serve.

The module is named after the package it wraps; absolute imports keep ``import torch`` here
pointing at PyTorch.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from nscmonitor.engines.base import Engine, EngineError
from nscmonitor.engines.metadata import ModelMetadata, write_onnx_metadata

CHECKPOINT_NAME = "best.pt"


def torch_disabled() -> bool:
    """Take torch out of selection without uninstalling it (operators, tests)."""
    return os.environ.get("NSCMONITOR_DISABLE_TORCH", "") not in ("", "0")


def checkpoint_for(model_path: str | Path) -> Path:
    p = Path(model_path)
    if p.is_dir():
        return p / CHECKPOINT_NAME
    if p.suffix == ".pt":
        return p
    return p.with_name(CHECKPOINT_NAME)


def _import_torch():
    if torch_disabled():
        raise EngineError("torch disabled by NSCMONITOR_DISABLE_TORCH")
    try:
        import torch
    except ImportError as exc:
        raise EngineError(f"torch is not installed (pip install 'nscmonitor[train]'): {exc}") from exc
    return torch


def build_network(ckpt: dict[str, Any], meta: ModelMetadata) -> Any:
    """The trained network, taking the daemon's input contract, with the checkpoint's weights.

    A state dict with ``backbone.*`` keys belongs to ``nscmonitor.training.model.build_model``
    (whose module normalises and replicates the grey channel itself); plain torchvision keys
    get torchvision's architecture wrapped in ``with_prelude``.
    """
    arch, k, state = str(ckpt["arch"]), int(ckpt["num_classes"]), ckpt["state_dict"]
    if any(key.startswith("backbone.") for key in state):
        try:
            from nscmonitor.training.model import build_model
        except ImportError as exc:
            raise EngineError(f"this checkpoint needs nscmonitor.training ({exc})") from exc
        net = build_model(arch, k)
        wrap = False
        ood_state = ckpt.get("ood_head") if meta.ood else None
    else:
        import torchvision

        factory = getattr(torchvision.models, arch, None)
        if factory is None:
            raise EngineError(f"unknown architecture {arch!r} (not in torchvision.models)")
        net = factory(weights=None, num_classes=k)
        wrap = True
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise EngineError(f"checkpoint does not fit {arch}: {exc}") from exc
    if wrap:
        return with_prelude(net, meta)
    if ood_state is not None:  # the same (logits, ood) outputs as the exported graph
        from nscmonitor.training.ood import ScoredNet, head_from_state

        return ScoredNet(net, head_from_state(ood_state))
    return net


def with_prelude(net: Any, meta: ModelMetadata) -> Any:
    """Wrap a trained network so it takes the daemon's input contract (see module doc)."""
    torch = _import_torch()
    norm = meta.normalization
    apply_norm = bool(norm.get("in_graph", False))
    in_ch = _first_conv_in_channels(net)
    replicate = meta.input_channels != in_ch
    mean = torch.as_tensor(norm.get("mean", 0.0), dtype=torch.float32).reshape(1, -1, 1, 1)
    std = torch.as_tensor(norm.get("std", 1.0), dtype=torch.float32).reshape(1, -1, 1, 1)

    class Prelude(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.register_buffer("mean", mean)
            self.register_buffer("std", std)

        def forward(self, x):
            if replicate:
                x = x.expand(-1, in_ch, -1, -1)
            if apply_norm:
                x = (x - self.mean) / self.std
            return self.net(x)

    return Prelude()


def _first_conv_in_channels(net: Any) -> int:
    torch = _import_torch()
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            return m.in_channels
    raise EngineError("network has no Conv2d layer")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    torch = _import_torch()
    path = Path(path)
    if not path.is_file():
        raise EngineError(f"no torch checkpoint at {path} (the torch backend serves a training run's best.pt)")
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors of a damaged file
        raise EngineError(f"cannot read checkpoint {path}: {exc}") from exc
    missing = [k for k in ("state_dict", "arch", "num_classes") if k not in ckpt]
    if missing:
        raise EngineError(f"{path} lacks {', '.join(missing)} (see nscmonitor.engines.torch for the format)")
    return ckpt


def checkpoint_classes(ckpt: dict[str, Any]) -> tuple[str, ...] | None:
    """The class names the checkpoint was trained on: a top-level ``classes`` list, else the
    ``classes`` of its metadata JSON (training's metadata there is a partial record, not a full
    ModelMetadata, so only this one field is relied on)."""
    if ckpt.get("classes"):
        return tuple(ckpt["classes"])
    raw = ckpt.get("metadata")
    try:
        meta = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError:
        return None
    return tuple(meta["classes"]) if isinstance(meta, dict) and meta.get("classes") else None


def save_checkpoint(path: str | Path, net: Any, arch: str, meta: ModelMetadata) -> Path:
    """Write the shared checkpoint format (used by benchmarks and tests; training writes the
    same dict)."""
    torch = _import_torch()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    torch.save({"state_dict": net.state_dict(), "arch": arch, "num_classes": len(meta.classes),
                "classes": list(meta.classes), "metadata": meta.to_json()}, str(tmp))
    os.replace(tmp, path)
    return path


def export_onnx(model: Any, meta: ModelMetadata, path: str | Path, opset: int = 17) -> Path:
    """Export a network that takes the input contract (``with_prelude`` output or a training
    ``GreyClassifier``) with a dynamic batch axis and the metadata embedded."""
    torch = _import_torch()
    import onnx

    model = model.eval()
    x = torch.zeros(2, meta.input_channels, meta.input_size, meta.input_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    # the TorchScript exporter (dynamo=False): the dynamo one needs onnxscript, not a dependency
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (x,), str(tmp), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, opset_version=opset,
                          dynamo=False)
    proto = onnx.load(str(tmp))
    write_onnx_metadata(proto, meta)
    onnx.save(proto, str(tmp))
    os.replace(tmp, path)
    return path


class TorchEngine(Engine):
    """``model_path`` is the ONNX (its sibling ``best.pt`` is served), the run dir, or the
    checkpoint itself."""

    name = "torch"

    def __init__(self, model_path: str | Path, metadata: ModelMetadata, *, threads: int = 0,
                 channels_last: bool = True, device: str = "cpu") -> None:
        super().__init__(model_path, metadata)
        self.threads = threads
        self.channels_last = channels_last
        self.device = device
        self.name = "torch-fp32"  # channels-last or not is a memory layout, not a precision
        self._model = None
        self._torch = None

    def load(self) -> None:
        torch = _import_torch()
        ckpt = load_checkpoint(checkpoint_for(self.model_path))
        classes = checkpoint_classes(ckpt)
        if classes is not None and classes != tuple(self.metadata.classes):
            raise EngineError(f"checkpoint classes {classes} differ from the model's {self.metadata.classes}")
        if int(ckpt["num_classes"]) != len(self.metadata.classes):
            raise EngineError(f"checkpoint has {ckpt['num_classes']} classes, metadata {len(self.metadata.classes)}")
        if self.threads:
            torch.set_num_threads(self.threads)
        model = build_network(ckpt, self.metadata).eval().to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self._model, self._torch = model, torch

    def _run(self, tiles: np.ndarray) -> np.ndarray:
        if self._model is None:
            raise EngineError(f"{self.name}: load() was not called")
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(tiles).to(self.device)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out = self._model(x)
            if isinstance(out, tuple):
                return out[0].float().cpu().numpy(), out[1].float().cpu().numpy()
            return out.float().cpu().numpy()

    def close(self) -> None:
        self._model = None

