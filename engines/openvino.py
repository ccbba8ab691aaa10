"""OpenVINO backend (optional extra, ``pip install openvino``): runs the same ONNX files,
fp32 or the gated int8 QDQ model, on Intel CPUs.

The precision hint is set explicitly to f32: on CPUs with bf16 support OpenVINO otherwise
picks bf16 for the non-quantized parts, which is slower on CPUs without AMX and changes the
numbers the int8 gate certified (DESIGN §6). ``streams`` > 1 splits a batch over parallel
infer requests, which is how OpenVINO fills several cores with small batches.

Its int8 kernels round differently from ONNX Runtime's, so an int8 model serves here only if
its metadata carries a passed ``openvino_gate`` (``engines.quantize.build_ort_int8`` runs that
gate when OpenVINO is installed at build time) made from the fp32 model active now.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from nscmonitor.engines.base import Engine, EngineError
from nscmonitor.engines.metadata import ModelMetadata


def openvino_disabled() -> bool:
    return os.environ.get("NSCMONITOR_DISABLE_OPENVINO", "") not in ("", "0")


class OpenVinoEngine(Engine):
    name = "openvino"

    def __init__(self, model_path: str | Path, metadata: ModelMetadata, *, threads: int = 0, streams: int = 1,
                 cache_dir: str | Path | None = None, require_gate: bool = True,
                 source_sha256: str | None = None) -> None:
        super().__init__(model_path, metadata)
        self.require_gate = require_gate
        self.source_sha256 = source_sha256
        self.threads = threads
        self.streams = max(1, streams)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._requests: list = []
        self._ood_index: int | None = None
        self.name = "openvino-int8" if "int8" in metadata.extra else "openvino-fp32"

    def load(self) -> None:
        if openvino_disabled():
            raise EngineError("OpenVINO disabled by NSCMONITOR_DISABLE_OPENVINO")
        try:
            import openvino as ov
        except ImportError as exc:
            raise EngineError(f"OpenVINO is not installed (optional: pip install openvino): {exc}") from exc
        int8 = self.metadata.extra.get("int8")
        if int8 and self.require_gate:
            gate = int8.get("openvino_gate") or {}
            if not gate.get("passed", False):
                raise EngineError(f"{self.model_path}: no passed OpenVINO gate in its metadata "
                                  f"({gate.get('reasons') or 'rebuild the int8 model with OpenVINO installed'})")
            if self.source_sha256 and int8.get("source_sha256") != self.source_sha256:
                raise EngineError(f"{self.model_path} was quantized from another fp32 model; rebuild it")
        try:
            compiled = self._compile(ov)
        except RuntimeError as exc:
            from nscmonitor.engines.enginefile import move_aside

            # A corrupt compiled-model cache must not stop the daemon at every start: moved
            # aside, compiled anew (and cached again) once; a second failure is the model's.
            if self.cache_dir is None or not self.cache_dir.exists() or move_aside(self.cache_dir, str(exc)) is None:
                raise EngineError(f"{self.name}: cannot compile {self.model_path}: {exc}") from exc
            try:
                compiled = self._compile(ov)
            except RuntimeError as exc2:
                raise EngineError(f"{self.name}: cannot compile {self.model_path}: {exc2}") from exc2
        self._requests = [compiled.create_infer_request() for _ in range(self.streams)]
        # the OOD score's output index, None when the graph lacks the output its metadata names
        self._ood_index = next((i for i, o in enumerate(compiled.outputs)
                                if i > 0 and self.ood_output in o.get_names()), None)

    def _compile(self, ov):
        core = ov.Core()
        if self.cache_dir is not None:
            core.set_property({"CACHE_DIR": str(self.cache_dir)})
        config = {
            "INFERENCE_PRECISION_HINT": "f32",
            "PERFORMANCE_HINT": "LATENCY" if self.streams == 1 else "THROUGHPUT",
            "NUM_STREAMS": self.streams,
        }
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        return core.compile_model(core.read_model(str(self.model_path)), "CPU", config)

    def _run(self, tiles: np.ndarray) -> np.ndarray:
        if not self._requests:
            raise EngineError(f"{self.name}: load() was not called")
        chunks = np.array_split(tiles, min(len(self._requests), len(tiles)))
        for req, chunk in zip(self._requests, chunks):
            req.start_async({0: chunk})
        outs, oods = [], []
        for req, _ in zip(self._requests, chunks):
            req.wait()
            outs.append(np.array(req.get_output_tensor(0).data, copy=True))
            if self._ood_index is not None:
                oods.append(np.array(req.get_output_tensor(self._ood_index).data, copy=True))
        return (np.concatenate(outs), np.concatenate(oods)) if oods else np.concatenate(outs)

    def close(self) -> None:
        self._requests = []
