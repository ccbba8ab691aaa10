"""ONNX Runtime backends. CPU fp32 is the always-available baseline of the daemon; the int8
model, the CUDA and the TensorRT execution providers are used where present and certified."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import numpy as np

from nscmonitor.engines.base import Engine, EngineError
from nscmonitor.engines.metadata import ModelMetadata

log = logging.getLogger(__name__)


def ort_disabled() -> bool:
    """Let operators (and tests) take ONNX Runtime out of selection without uninstalling it."""
    return os.environ.get("NSCMONITOR_DISABLE_ORT", "") not in ("", "0")


#: the instruction sets oneDNN (OpenVINO, torch) and MLAS (ONNX Runtime) choose kernels by: int8
#: without VNNI multiplies through 16-bit sums that can saturate, bf16 without native units is
#: emulated, and ONNX Runtime's NCHWc block width follows the vector width
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
             "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "sve", "i8mm")
#: numpy's names for the same features, where the OS offers no /proc/cpuinfo (Windows, macOS)
_NUMPY_ISA = {"AVX2": "avx2", "FMA3": "fma", "AVX512F": "avx512f", "AVX512BW": "avx512bw",
              "AVX512VNNI": "avx512_vnni", "AVX512BF16": "avx512_bf16", "AVX512FP16": "avx512_fp16",
              "ASIMD": "asimd", "ASIMDDP": "asimddp", "SVE": "sve"}


def isa_flags(cpuinfo: str | None = None) -> tuple[str, ...]:
    """This CPU's features among ``ISA_FLAGS``, sorted. Virtual machines often name the CPU
    only by vendor ("AMD EPYC" for an AVX2-only Zen 3 and an AVX-512 Zen 4 alike), so the name
    alone cannot tell whether a gate passed here certifies the arithmetic of another host."""
    if cpuinfo is None:
        cpuinfo = _cpuinfo()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return tuple(sorted(set(value.split()) & set(ISA_FLAGS)))
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:
        return ()
    return tuple(sorted({_NUMPY_ISA[k] for k, on in features.items() if on and k in _NUMPY_ISA}))


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> str:
    """/proc/cpuinfo, read once per process (every engine load and cache key asks); empty where
    the OS has none. A running process cannot change CPUs under it."""
    try:
        with open("/proc/cpuinfo") as fh:
            return fh.read()
    except OSError:
        return ""


def cpu_id() -> str:
    """The CPU as its model name and instruction sets: the optimised graph may use this CPU's
    instruction set (NCHWc layouts) and an engine's gate certifies the arithmetic of the kernels
    these sets select, so a copy moved to another host is optimised and gated anew."""
    import platform

    name = next((line.split(":", 1)[1].strip() for line in _cpuinfo().splitlines()
                 if line.startswith("model name")), "")
    name = name or f"{platform.machine()} {platform.processor()}".strip()
    flags = isa_flags()
    return f"{name} [{' '.join(flags)}]" if flags else name


class OrtCpuEngine(Engine):
    #: engine names say backend and precision; they are stored with every prediction
    name = "ort-fp32"

    def __init__(self, model_path: str | Path, metadata: ModelMetadata, *, threads: int = 0,
                 optimized_cache: str | Path | None = None) -> None:
        super().__init__(model_path, metadata)
        self.threads = threads
        self.optimized_cache = Path(optimized_cache) if optimized_cache else None
        self._session = None
        self._input_name = ""
        self._outputs: list[str] = []

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
        # ORT warns that a serialised optimised graph is hardware specific; the cache stamp
        # (model hash, ORT version, CPU model) already guarantees it is reused only here.
        opts.log_severity_level = 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            opts.intra_op_num_threads = self.threads
            opts.inter_op_num_threads = 1
        source, fresh_cache = self._optimized_source(ort, opts)
        try:
            self._session = ort.InferenceSession(str(source), sess_options=opts,
                                                 providers=self._providers())
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            if source != self.model_path and self._discard_cache(f"{type(exc).__name__}: {exc}"):
                return self.load()  # the cache is gone: optimise the model anew, once
            raise SessionLoadError(f"{self.name}: cannot load {self.model_path}: {exc}") from exc
        if fresh_cache is not None:
            self._commit_optimized(fresh_cache, ort)
        inp = self._session.get_inputs()[0]
        self._input_name = inp.name
        shape = inp.shape
        if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != self.metadata.input_channels):
            raise EngineError(
                f"{self.model_path}: graph input {shape} does not match metadata "
                f"(channels={self.metadata.input_channels}, size={self.metadata.input_size})"
            )
        names = [o.name for o in self._session.get_outputs()]
        # a graph without the OOD output its metadata names serves without the flag
        self._outputs = [names[0], self.ood_output] if self.ood_output in names[1:] else [names[0]]
        n_out = self._session.get_outputs()[0].shape[-1]
        if isinstance(n_out, int) and n_out != len(self.metadata.classes):
            raise EngineError(
                f"{self.model_path}: graph has {n_out} outputs but metadata lists "
                f"{len(self.metadata.classes)} classes"
            )

    def _discard_cache(self, reason: str) -> bool:
        """An optimised-graph cache whose stamp is intact but which ONNX Runtime cannot load
        (a torn write, a disk error) must not stop the daemon at every start."""
        from nscmonitor.engines.enginefile import move_aside

        stamp = self.optimized_cache.with_name(self.optimized_cache.name + ".stamp")
        moved = move_aside(self.optimized_cache, reason)
        move_aside(stamp, reason)
        return moved is not None

    def _cache_stamp(self, ort) -> str:
        from nscmonitor.engines.enginefile import file_sha256

        return f"{file_sha256(self.model_path)} onnxruntime-{ort.__version__} {self._providers()} {cpu_id()}"

    def _optimized_source(self, ort, opts) -> tuple[Path, Path | None]:
        """Serve the cached optimised graph when it was made from this very model by this
        ONNX Runtime (skipping the optimiser at start-up); otherwise optimise and save anew.
        The stamp file guards against serving an optimised copy of an older model."""
        if self.optimized_cache is None:
            return self.model_path, None
        stamp = self.optimized_cache.with_name(self.optimized_cache.name + ".stamp")
        if self.optimized_cache.is_file() and stamp.is_file() and stamp.read_text() == self._cache_stamp(ort):
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            return self.optimized_cache, None
        self.optimized_cache.parent.mkdir(parents=True, exist_ok=True)
        part = _own_part(self.optimized_cache)
        opts.optimized_model_filepath = str(part)
        return self.model_path, part

    def _commit_optimized(self, part: Path, ort) -> None:
        """Move this load's optimised graph into the cache. Daemons sharing a models folder
        start at once, so each writes its own part files (a shared name let one daemon's
        move take the file from under another's, which then failed to start); the copies are
        the same graph, and the last move wins. The cache only saves start-up time, so a
        failure to write it is logged and the daemon serves on."""
        if not part.is_file():
            return
        stamp = self.optimized_cache.with_name(self.optimized_cache.name + ".stamp")
        tmp = _own_part(stamp)
        try:
            os.replace(part, self.optimized_cache)
            tmp.write_text(self._cache_stamp(ort))
            os.replace(tmp, stamp)
        except OSError as exc:
            log.warning("%s: optimised graph not cached at %s (%s); serving on", self.name, self.optimized_cache, exc)
            for leftover in (part, tmp):
                leftover.unlink(missing_ok=True)

    def _run(self, tiles: np.ndarray) -> np.ndarray:
        if self._session is None:
            raise EngineError(f"{self.name}: load() was not called")
        outs = self._session.run(self._outputs, {self._input_name: tiles})
        return (np.asarray(outs[0]), np.asarray(outs[1])) if len(outs) > 1 else np.asarray(outs[0])

    def close(self) -> None:
        self._session = None


INT8_KEY = "int8"


class SessionLoadError(EngineError):
    """ONNX Runtime could not load the graph file itself (corrupt or not a model)."""


def int8_path_for(model_path: str | Path) -> Path:
    """Where the int8 variant of a model lives: beside it, so a registry copying a model
    version's folder moves both together."""
    p = Path(model_path)
    return p.with_name(p.name[:-len(".onnx")] + ".int8.onnx" if p.name.endswith(".onnx") else p.name + ".int8.onnx")


def int8_gate(metadata: ModelMetadata) -> dict | None:
    return (metadata.extra.get(INT8_KEY) or {}).get("gate")


class OrtInt8Engine(OrtCpuEngine):
    """A statically quantized (QDQ) model. It serves only if its own metadata records a
    passed gate against fp32, and, when the caller knows it, only if it was quantized from
    the fp32 model that is active now (a stale int8 file would silently serve an old model)."""

    name = "ort-int8"

    def __init__(self, model_path: str | Path, metadata: ModelMetadata, *, threads: int = 0,
                 optimized_cache: str | Path | None = None, source_sha256: str | None = None) -> None:
        super().__init__(model_path, metadata, threads=threads, optimized_cache=optimized_cache)
        self.source_sha256 = source_sha256

    def load(self) -> None:
        info = self.metadata.extra.get(INT8_KEY)
        if not info:
            raise EngineError(f"{self.model_path} is not an nscmonitor int8 model (no int8 record in its metadata)")
        gate = info.get("gate") or {}
        if not gate.get("passed", False):
            raise EngineError(f"{self.model_path}: int8 model did not pass its gate: {gate.get('reasons')}")
        if self.source_sha256 and info.get("source_sha256") != self.source_sha256:
            raise EngineError(f"{self.model_path} was quantized from another fp32 model; rebuild it")
        try:
            super().load()
        except SessionLoadError as exc:
            from nscmonitor.engines.enginefile import move_aside

            moved = move_aside(self.model_path, str(exc))
            raise EngineError(f"{exc}" + (f"; moved aside to {moved.name}, it is rebuilt" if moved else "")) from exc


def _require_provider(provider: str, engine: str) -> None:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if provider not in available:
        raise EngineError(f"{engine}: onnxruntime here has no {provider} (available: {', '.join(available)}); "
                          "install onnxruntime-gpu")


def preload_cuda_libraries(ort) -> str:
    """Load the CUDA and cuDNN libraries that pip installed (the nvidia-* wheels of
    ``onnxruntime-gpu[cuda,cudnn]`` or torch) before the first CUDA session.

    Why: those libraries live in site-packages, not on the loader's search path, so without
    this the CUDA provider fails to load and ONNX Runtime quietly falls back to the CPU.
    ``onnxruntime.preload_dlls()`` (ONNX Runtime 1.21+) is the documented way; with its
    defaults it also reuses the libraries of an already imported torch. Older versions have no
    such call: then the libraries must be on the library path, and the returned note says so."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return (f"onnxruntime {ort.__version__} cannot preload pip's CUDA libraries (1.21+ can); "
                "they must be on the library path")
    try:
        preload()
    except (OSError, RuntimeError) as exc:
        return f"onnxruntime.preload_dlls() failed: {exc}"
    return ""


class OrtCudaEngine(OrtCpuEngine):
    """fp32 on the GPU through ONNX Runtime: the GPU path when TensorRT itself is missing."""

    name = "ort-cuda-fp32"
    provider = "CUDAExecutionProvider"
    overlaps_cpu = True

    def _providers(self) -> list[str]:
        return [self.provider, "CPUExecutionProvider"]

    def load(self) -> None:
        if ort_disabled():
            raise EngineError("ONNX Runtime disabled by NSCMONITOR_DISABLE_ORT")
        try:
            import onnxruntime as ort

            _require_provider(self.provider, self.name)
        except ImportError as exc:
            raise EngineError(f"onnxruntime is not installed: {exc}") from exc
        note = preload_cuda_libraries(ort)
        super().load()
        used = self._session.get_providers()
        if self.provider not in used:
            raise EngineError(f"{self.name}: session fell back to {used} (no usable GPU?"
                              + (f"; {note}" if note else "") + ")")


def _own_part(target: Path) -> Path:
    """A part file for ``target`` that no other process or load writes."""
    import uuid

    return target.with_name(f"{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.part")
