"""TensorRT backend (TensorRT 10.x and 11.x Python API, name-based tensors, ``execute_async_v3``).

Device memory, pinned host memory and streams come from torch's CUDA runtime, which the GPU
install already has for training. Batches are double-buffered: two slots, each with its own
execution context, CUDA stream, pinned input/output and device buffers, so the copy of batch
i+1 to the GPU overlaps the compute of batch i and the copy of its result back.

Only files written by ``engines.build`` are loaded (``engines.enginefile`` format); one built
on another GPU, by another TensorRT, or from another ONNX is refused with the reason and left
for the cache to rebuild. This module is only exercised on a machine with an NVIDIA GPU
(``tests/gpu``, ``benchmarks/gpu_check.sh``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nscmonitor.engines.base import Engine, EngineError
from nscmonitor.engines.enginefile import EngineKey, EngineMismatchError, file_sha256, read_engine_file
from nscmonitor.engines.metadata import ModelMetadata
from nscmonitor.engines.validate import serving_metadata


def trt_disabled() -> bool:
    return os.environ.get("NSCMONITOR_DISABLE_TRT", "") not in ("", "0")


def import_tensorrt() -> Any:
    if trt_disabled():
        raise EngineError("TensorRT disabled by NSCMONITOR_DISABLE_TRT")
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise EngineError(f"TensorRT is not installed (pip install 'nscmonitor[gpu]'): {exc}") from exc
    trt_major(trt.__version__)
    return trt


SUPPORTED_MAJORS = (10, 11)


def trt_major(version: str) -> int:
    """The TensorRT major version, or a clear refusal.

    Why a closed range: 11 removed the weakly typed precision flags and the implicit int8
    calibrator that 10 still had, so every major changes how an engine is built; a major this
    code has not been written against is refused rather than half-run."""
    head = str(version).split(".", 1)[0]
    if not head.isdigit():
        raise EngineError(f"cannot read the TensorRT version {version!r}")
    major = int(head)
    if major < SUPPORTED_MAJORS[0]:
        raise EngineError(f"TensorRT {version} is too old; nscmonitor needs TensorRT "
                          f"{SUPPORTED_MAJORS[0]}.x or {SUPPORTED_MAJORS[-1]}.x")
    if major > SUPPORTED_MAJORS[-1]:
        raise EngineError(f"TensorRT {version} is newer than this nscmonitor supports "
                          f"({SUPPORTED_MAJORS[0]}.x or {SUPPORTED_MAJORS[-1]}.x); install 'tensorrt<"
                          f"{SUPPORTED_MAJORS[-1] + 1}'")
    return major


@dataclass(frozen=True)
class BuildRecipe:
    """How one precision is built on one TensorRT major.

    ``graph`` is the ONNX the parser reads: ``fp32`` the model itself, ``fp16`` the model
    converted to fp16 with fp32 inputs and outputs (``engines.fp16``), ``int8-qdq`` the
    explicitly quantised model beside it (``qdq_path_for``: signed symmetric int8 Q/DQ).
    ``network_flags`` and ``builder_flags`` name members of ``trt.NetworkDefinitionCreationFlag`` / ``trt.BuilderFlag``.
    """

    precision: str
    strongly_typed: bool
    graph: str
    network_flags: tuple[str, ...] = ()
    builder_flags: tuple[str, ...] = ()


def build_recipe(version: str, precision: str) -> BuildRecipe:
    """The documented way to get ``precision`` from this TensorRT.

    10.x: fp16 keeps the weakly typed ``BuilderFlag.FP16`` path (TensorRT picks fp16 or fp32
    per layer); int8 is explicit quantisation in a strongly typed network (the implicit
    calibrator is deprecated since 10.1). 11.x: networks are always strongly typed (the
    ``STRONGLY_TYPED`` flag is deprecated and ignored; the precision flags and the calibrator
    API are removed), so precision comes from the graph: fp16 from a converted graph, int8
    from Q/DQ nodes."""
    major = trt_major(version)
    if precision not in ("fp32", "fp16", "int8"):
        raise EngineError(f"precision must be fp32, fp16 or int8, not {precision!r}")
    graph = {"fp32": "fp32", "fp16": "fp16", "int8": "int8-qdq"}[precision]
    if major >= 11:
        return BuildRecipe(precision, True, graph)
    if precision == "int8":
        return BuildRecipe(precision, True, graph, network_flags=("STRONGLY_TYPED",))
    return BuildRecipe(precision, False, "fp32", builder_flags=("FP16",) if precision == "fp16" else ())


def import_cuda_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise EngineError(f"the GPU backends need CUDA-enabled torch for device buffers: {exc}") from exc
    if not torch.cuda.is_available():
        raise EngineError("no CUDA GPU is available to torch (driver missing, or a CPU-only torch build)")
    return torch


def gpu_identity(torch: Any, device: int = 0) -> tuple[str, str]:
    major, minor = torch.cuda.get_device_capability(device)
    return torch.cuda.get_device_name(device), f"{major}.{minor}"


def machine_key(trt: Any, torch: Any, onnx_sha256: str, precision: str, min_batch: int, opt_batch: int,
                max_batch: int, device: int = 0, quantized_sha256: str = "") -> EngineKey:
    name, cc = gpu_identity(torch, device)
    return EngineKey(name, cc, trt.__version__, onnx_sha256, precision, min_batch, opt_batch, max_batch,
                     quantized_sha256)


def qdq_path_for(model_path: str | Path) -> Path:
    """Where the signed symmetric Q/DQ model an int8 plan is parsed from lives: beside the
    model, like the CPU int8 file, but separate from it, since the CPU runtimes are served
    unsigned activations that TensorRT's explicit quantisation does not take
    (``engines.quantize``)."""
    p = Path(model_path)
    stem = p.name[:-len(".onnx")] if p.name.endswith(".onnx") else p.name
    return p.with_name(stem + ".int8-trt.onnx")


def quantized_sha_for(model_path: str | Path, precision: str) -> str:
    """The hash of the Q/DQ model an int8 plan is parsed from (it lives beside the fp32 model);
    empty for fp32/fp16, whose graph follows from the fp32 model alone. A requantised model
    thus invalidates the int8 engines built from the old one."""
    if precision != "int8":
        return ""
    path = qdq_path_for(model_path)
    return file_sha256(path) if path.is_file() else "missing"


_LOGGER = None


def trt_logger(trt: Any) -> Any:
    """One logger for the process: TensorRT keeps a reference to it in every runtime."""
    global _LOGGER
    if _LOGGER is None:
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    return _LOGGER


@dataclass
class _Slot:
    context: Any
    stream: Any
    event: Any
    host_in: Any
    dev_in: Any
    dev_out: Any
    host_out: Any
    #: the OOD score's buffers (None when the engine has no such output)
    dev_ood: Any = None
    host_ood: Any = None


class TrtEngine(Engine):
    name = "tensorrt"
    overlaps_cpu = True

    def __init__(self, model_path: str | Path, metadata: ModelMetadata, *, engine_path: str | Path,
                 require_gate: bool = True, device: int = 0) -> None:
        super().__init__(model_path, metadata)
        #: the model's own metadata, which the engine file must carry; ``metadata`` becomes
        #: what the engine serves with (its gate's OOD threshold) once loaded
        self.model_metadata = metadata
        self.engine_path = Path(engine_path)
        self.require_gate = require_gate
        self.device = device
        self.key: EngineKey | None = None
        self._engine = None
        self._slots: list[_Slot] = []
        self._ood_name: str | None = None
        self._torch = None

    def load(self) -> None:
        trt = import_tensorrt()
        torch = import_cuda_torch()
        ef = read_engine_file(self.engine_path)
        expected = machine_key(trt, torch, file_sha256(self.model_path), ef.key.precision, ef.key.min_batch,
                               ef.key.opt_batch, ef.key.max_batch, self.device,
                               quantized_sha_for(self.model_path, ef.key.precision))
        if ef.key != expected:
            raise EngineMismatchError(f"{self.engine_path} does not fit here: " + "; ".join(expected.mismatches(ef.key)))
        if ef.metadata != self.model_metadata:
            raise EngineMismatchError(f"{self.engine_path} carries other model metadata than {self.model_path}")
        if self.require_gate and not (ef.gate or {}).get("passed", False):
            raise EngineError(f"{self.engine_path} has not passed the validation gate")
        self.metadata = serving_metadata(self.model_metadata, ef.gate)
        self.name = f"tensorrt-{ef.key.precision}"
        torch.cuda.set_device(self.device)
        runtime = trt.Runtime(trt_logger(trt))
        engine = runtime.deserialize_cuda_engine(ef.plan)
        if engine is None:
            raise EngineError(f"TensorRT could not deserialize {self.engine_path} (see its log above)")
        # the runtime must outlive the engine it deserialized
        self._engine, self._runtime, self._torch, self.key = engine, runtime, torch, ef.key
        self._bind(trt, torch, engine, ef.key.max_batch)

    def _bind(self, trt: Any, torch: Any, engine: Any, max_batch: int) -> None:
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        ood = self.ood_output if self.ood_output in outputs else None
        main = [n for n in outputs if n != ood]
        if len(inputs) != 1 or len(main) != 1:
            raise EngineError(f"expected one input and one output tensor (+ the OOD score), got {inputs} / {outputs}")
        self._in_name, self._out_name, self._ood_name = inputs[0], main[0], ood
        in_dtype = torch.from_numpy(np.empty(0, trt.nptype(engine.get_tensor_dtype(self._in_name)))).dtype
        out_dtype = torch.from_numpy(np.empty(0, trt.nptype(engine.get_tensor_dtype(self._out_name)))).dtype
        in_shape = (max_batch, *self.input_shape)
        out_shape = (max_batch, len(self.metadata.classes))
        dev = torch.device("cuda", self.device)
        self._max_batch = max_batch
        self._slots = []
        for _ in range(2):
            slot = _Slot(
                context=engine.create_execution_context(),
                stream=torch.cuda.Stream(device=dev),
                event=torch.cuda.Event(),
                host_in=torch.empty(in_shape, dtype=in_dtype, pin_memory=True),
                dev_in=torch.empty(in_shape, dtype=in_dtype, device=dev),
                dev_out=torch.empty(out_shape, dtype=out_dtype, device=dev),
                host_out=torch.empty(out_shape, dtype=out_dtype, pin_memory=True),
            )
            if slot.context is None:
                raise EngineError("TensorRT could not create an execution context (out of GPU memory?)")
            slot.context.set_tensor_address(self._in_name, slot.dev_in.data_ptr())
            slot.context.set_tensor_address(self._out_name, slot.dev_out.data_ptr())
            if self._ood_name is not None:
                slot.dev_ood = torch.empty((max_batch,), dtype=torch.float32, device=dev)
                slot.host_ood = torch.empty((max_batch,), dtype=torch.float32, pin_memory=True)
                slot.context.set_tensor_address(self._ood_name, slot.dev_ood.data_ptr())
            self._slots.append(slot)

    def _enqueue(self, slot: _Slot, chunk: np.ndarray) -> None:
        torch = self._torch
        n = len(chunk)
        slot.host_in.numpy()[:n] = chunk
        with torch.cuda.stream(slot.stream):
            slot.dev_in[:n].copy_(slot.host_in[:n], non_blocking=True)
            if not slot.context.set_input_shape(self._in_name, (n, *self.input_shape)):
                raise EngineError(f"batch of {n} is outside the engine's optimisation profile")
            if not slot.context.execute_async_v3(slot.stream.cuda_stream):
                raise EngineError("TensorRT execute_async_v3 failed (see its log above)")
            slot.host_out[:n].copy_(slot.dev_out[:n], non_blocking=True)
            if slot.dev_ood is not None:
                slot.host_ood[:n].copy_(slot.dev_ood[:n], non_blocking=True)
            slot.event.record(slot.stream)

    def _run(self, tiles: np.ndarray) -> np.ndarray:
        if self._engine is None:
            raise EngineError(f"{self.name}: load() was not called")
        out = np.empty((len(tiles), len(self.metadata.classes)), np.float32)
        ood = np.empty(len(tiles), np.float32) if self._ood_name is not None else None
        pending: list[tuple[_Slot, int, int] | None] = [None, None]

        def finish(p: tuple[_Slot, int, int]) -> None:
            slot, start, n = p
            slot.event.synchronize()
            out[start:start + n] = slot.host_out[:n].numpy()
            if ood is not None:
                ood[start:start + n] = slot.host_ood[:n].numpy()

        for j, start in enumerate(range(0, len(tiles), self._max_batch)):
            i = j % 2
            if pending[i] is not None:
                finish(pending[i])
            chunk = tiles[start:start + self._max_batch]
            self._enqueue(self._slots[i], chunk)
            pending[i] = (self._slots[i], start, len(chunk))
        for p in pending:
            if p is not None:
                finish(p)
        return out if ood is None else (out, ood)

    def close(self) -> None:
        for slot in self._slots:
            slot.event.synchronize()
        self._slots = []
        self._engine = None

