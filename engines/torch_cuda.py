"""fp16 on an NVIDIA GPU through CUDA torch: the GPU engine of a machine without TensorRT.

Why it exists: a lab PC with an NVIDIA card and the ``train`` extra has CUDA torch but often no
TensorRT (its wheels come from NVIDIA's own index) and no onnxruntime-gpu; without this engine
such a PC scores on its CPU. It serves the training run's checkpoint (``best.pt`` beside the
ONNX, as the torch backend does) with

- fp16 autocast for the network, so convolutions and matrix products run on tensor cores, while
  the out-of-distribution head (``training.ood``: whitened distances, sensitive to rounding)
  runs in fp32 on the network's taps;
- channels-last memory, which cuDNN's fp16 kernels want;
- the whole forward pass of one batch captured as a CUDA graph (``torch.cuda.CUDAGraph``) and
  replayed: a ResNet launches hundreds of kernels per batch, and at the daemon's batch sizes
  launching them one by one from Python costs more than running them. The graph has fixed
  shapes, so a smaller batch is copied into the front of the captured input and only its rows
  of the output are read (rows are independent in eval mode); a larger one runs in chunks.

fp16 changes numbers, so this engine is certified like int8: build on arrival gates it against
the fp32 ONNX on the model's held-out tiles (``gate``), records the result with the
checkpoint's hash in ``engine-status.json``, and selection serves it only with a passed record
made on this machine (``certified``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from nscmonitor.engines.base import EngineError
from nscmonitor.engines.metadata import ModelMetadata
from nscmonitor.engines.torch import TorchEngine, checkpoint_for

log = logging.getLogger(__name__)

NAME = "torch-cuda-fp16"
#: the captured batch when served: at the daemon's CPU-sized batch of 8 a ResNet50 on 96 px tiles
#: keeps an H200 mostly idle between replays (gpu_check: batch 8 -> 128 is 2.5x the tiles/s at 224 px)
SERVING_BATCH = 64


class TorchCudaEngine(TorchEngine):
    """``batch_size`` is the captured graph's batch (the daemon's own); ``graphs=False`` runs
    the same fp16 network eagerly (benchmarks compare the two)."""

    overlaps_cpu = True

    def __init__(self, model_path: str | Path, metadata: ModelMetadata, *, batch_size: int = 8,
                 graphs: bool = True, device: str = "cuda") -> None:
        super().__init__(model_path, metadata, channels_last=True, device=device)
        self.batch_size = max(1, int(batch_size))
        self.preferred_batch = self.batch_size
        self.graphs = graphs
        self.name = NAME
        self._graph = None
        self._static_in = None
        self._static_out: Any = None
        self._host = None

    def load(self) -> None:
        from nscmonitor.engines.torch import _import_torch

        torch = _import_torch()
        if not torch.cuda.is_available():
            raise EngineError(f"torch {torch.__version__} sees no CUDA GPU (built for CUDA "
                              f"{torch.version.cuda or 'none'})")
        try:
            super().load()
        except RuntimeError as exc:  # out of GPU memory, a driver that fails: the next backend serves
            self.close()
            raise EngineError(f"cannot put the network on the GPU: {exc}") from exc
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once
        if self.graphs:
            try:
                self._capture()
            except RuntimeError as exc:  # capture refused (an op that syncs): serve eagerly
                log.warning("%s: CUDA graph capture failed (%s); running the network eagerly", self.model_path, exc)
                self._graph = self._static_in = self._static_out = self._host = None

    def _forward(self, x):
        """(logits, ood or None) in fp32: the network under fp16 autocast, the OOD head without."""
        torch = self._torch
        model = self._model
        scored = hasattr(model, "ood") and hasattr(model, "taps")
        net = model.net if scored else model
        # cache_enabled=False: autocast's weight cache cannot live across CUDA graph capture
        with torch.autocast("cuda", dtype=torch.float16, cache_enabled=False):
            logits = net(x)
        ood = model.ood(x, model.taps.stages(), model.taps.pooled) if scored else None
        return logits.float(), (ood.float() if ood is not None else None)

    def _capture(self) -> None:
        torch = self._torch
        shape = (self.batch_size, *self.input_shape)
        self._host = torch.zeros(shape, dtype=torch.float32).pin_memory()
        self._static_in = torch.zeros(shape, dtype=torch.float32, device=self.device).contiguous(
            memory_format=torch.channels_last)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(side):
            for _ in range(3):  # warm-up: cuDNN's algorithm search and lazy initialisation
                self._forward(self._static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            self._static_out = self._forward(self._static_in)
        self._graph = graph

    def _run(self, tiles: np.ndarray):
        if self._model is None:
            raise EngineError(f"{self.name}: load() was not called")
        torch = self._torch
        parts: list[tuple[np.ndarray, np.ndarray | None]] = []
        with torch.inference_mode():
            if self._graph is None:
                x = torch.from_numpy(tiles).to(self.device).contiguous(memory_format=torch.channels_last)
                logits, ood = self._forward(x)
                parts.append((logits.cpu().numpy(), None if ood is None else ood.cpu().numpy()))
            else:
                for i in range(0, len(tiles), self.batch_size):
                    chunk = tiles[i:i + self.batch_size]
                    n = len(chunk)
                    self._host[:n].copy_(torch.from_numpy(chunk))
                    self._static_in[:n].copy_(self._host[:n], non_blocking=True)
                    self._graph.replay()
                    logits, ood = self._static_out
                    # .cpu() waits for the replay and copies before the next one overwrites
                    parts.append((logits[:n].cpu().numpy(), None if ood is None else ood[:n].cpu().numpy()))
        logits = np.concatenate([p[0] for p in parts])
        if parts[0][1] is None:
            return logits
        return logits, np.concatenate([p[1] for p in parts])

    def close(self) -> None:
        self._graph = self._static_in = self._static_out = self._host = None
        super().close()
        if self._torch is not None and self._torch.cuda.is_available():
            self._torch.cuda.empty_cache()


def checkpoint_sha256(model_path: str | Path) -> str | None:
    from nscmonitor.engines.autobuild_status import cached_sha256

    ckpt = checkpoint_for(model_path)
    return cached_sha256(ckpt) if ckpt.is_file() else None


def gate(model_path: str | Path, heldout: Any, *, batch_size: int = SERVING_BATCH, threads: int = 0) -> dict[str, Any]:
    """Load the engine here and compare it with the fp32 ONNX on the held-out tiles; the
    record (gate numbers, the checkpoint's hash, the GPU) goes into the build's status."""
    from nscmonitor.engines.metadata import read_onnx_metadata
    from nscmonitor.engines.ort import OrtCpuEngine
    from nscmonitor.engines.validate import validate_engine

    model_path = Path(model_path)
    meta = read_onnx_metadata(model_path)
    engine = TorchCudaEngine(model_path, meta, batch_size=batch_size)
    reference = OrtCpuEngine(model_path, meta, threads=threads)
    try:
        engine.load()
        reference.load()
        report = validate_engine(engine, reference, heldout.x, heldout.groups, tolerance=dict(meta.int8_tolerance),
                                 tiles_source=getattr(heldout, "source", ""))
        gpu = engine._torch.cuda.get_device_name(0)
        graphs = engine._graph is not None
    finally:
        engine.close()
        reference.close()
    return {**report.to_dict(), "checkpoint_sha256": checkpoint_sha256(model_path), "gpu": gpu,
            "cuda_graphs": graphs}


def gate_record(model_path: str | Path) -> dict[str, Any] | None:
    """The gate this model's torch GPU engine passed in its last build (its OOD threshold
    among them), None when there is none."""
    from nscmonitor.engines.autobuild_status import build_attempt

    return (build_attempt(model_path, NAME) or {}).get("gate")


def certified(model_path: str | Path) -> str | None:
    """None when this model's checkpoint passed its fp16 gate on this machine under the
    current fingerprint; else why not (selection passes the engine over with that reason)."""
    import importlib.util

    from nscmonitor.engines.autobuild_status import build_attempt, build_certificate, gpu_names

    if not gpu_names():
        return "no NVIDIA GPU on this machine"
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed (pip install 'nscmonitor[train]' with a CUDA build of torch)"
    why = build_certificate(model_path, NAME, not_tried="no CUDA GPU or torch then")
    if why is not None:
        return why
    attempt = build_attempt(model_path, NAME) or {}
    if (attempt.get("gate") or {}).get("checkpoint_sha256") != checkpoint_sha256(model_path):
        return f"{checkpoint_for(model_path).name} changed since its gate"
    return None
