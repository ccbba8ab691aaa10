"""ONNX Runtime backends. CPU fp32 is the always-available baseline of the daemon."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from nscmonitor.engines.base import Engine, EngineError
from nscmonitor.engines.metadata import ModelMetadata


def ort_disabled() -> bool:
    """Let operators (and tests) take ONNX Runtime out of selection without uninstalling it."""
    return os.environ.get("NSCMONITOR_DISABLE_ORT", "") not in ("", "0")


class OrtCpuEngine(Engine):
    name = "ort-cpu-fp32"

    def __init__(self, model_path: str | Path, metadata: ModelMetadata, *, threads: int = 0,
                 optimized_cache: str | Path | None = None) -> None:
        super().__init__(model_path, metadata)
        self.threads = threads
        self.optimized_cache = Path(optimized_cache) if optimized_cache else None
        self._session = None
        self._input_name = ""

    def _providers(self) -> list[str]:
        return ["CPUExecutionProvider"]

    def load(self) -> None:
        if ort_disabled():
            raise EngineError("ONNX Runtime disabled by NSCMONITOR_DISABLE_ORT")
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise EngineError(f"onnxruntime is not installed: {exc}") from exc
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            opts.intra_op_num_threads = self.threads
            opts.inter_op_num_threads = 1
        if self.optimized_cache is not None:
            self.optimized_cache.parent.mkdir(parents=True, exist_ok=True)
            opts.optimized_model_filepath = str(self.optimized_cache)
        try:
            self._session = ort.InferenceSession(str(self.model_path), sess_options=opts,
                                                 providers=self._providers())
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise EngineError(f"{self.name}: cannot load {self.model_path}: {exc}") from exc
        inp = self._session.get_inputs()[0]
        self._input_name = inp.name
        shape = inp.shape
        if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != self.metadata.input_channels):
            raise EngineError(
                f"{self.model_path}: graph input {shape} does not match metadata "
                f"(channels={self.metadata.input_channels}, size={self.metadata.input_size})"
            )
        n_out = self._session.get_outputs()[0].shape[-1]
        if isinstance(n_out, int) and n_out != len(self.metadata.classes):
            raise EngineError(
                f"{self.model_path}: graph has {n_out} outputs but metadata lists "
                f"{len(self.metadata.classes)} classes"
            )

    def _run(self, tiles: np.ndarray) -> np.ndarray:
        if self._session is None:
            raise EngineError(f"{self.name}: load() was not called")
        return np.asarray(self._session.run(None, {self._input_name: tiles})[0])

    def close(self) -> None:
        self._session = None
