"""Pick the fastest backend that is installed here and certified for this model.

Order: TensorRT -> torch CUDA fp16 -> ONNX Runtime CUDA -> OpenVINO int8 (optional extra) -> ONNX Runtime CPU
int8 -> OpenVINO bf16 (the fp32 model, on CPUs with bf16 units) -> ONNX Runtime CPU fp32 -> torch.
OpenVINO runs the same gated int8 file 2.5-3.7x faster than ONNX Runtime on the project's CPUs
(docs/performance.md). Among the CPU engines the build's own timing decides in auto mode: one
it timed slower than fp32, or slower than the CPU engine it chose, is passed over
(``autobuild_run.speed_refusal``). Every step down is
logged with its reason and returned to the caller, so the daemon's health record and
``nscmonitor doctor`` can say why a GPU box is running on the CPU.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nscmonitor.engines.autobuild_run import (openvino_large_batch, openvino_large_streams, openvino_precision,
                                              speed_refusal)
from nscmonitor.engines.base import Engine, EngineError
from nscmonitor.engines.calibration import TileSet
from nscmonitor.engines.metadata import MetadataError, ModelMetadata, read_onnx_metadata
from nscmonitor.engines.ort import INT8_KEY
from nscmonitor.engines.validate import GateReport, serving_metadata, validate_engine

log = logging.getLogger(__name__)

ORDER = ("tensorrt", "torch-cuda", "ort-cuda", "openvino-int8", "ort-int8", "openvino-bf16", "ort-cpu", "torch")
OPTIONAL = ("openvino-fp32",)
ALIASES = {"trt": "tensorrt", "ort-cpu-fp32": "ort-cpu", "ort-fp32": "ort-cpu", "ort-cpu-int8": "ort-int8",
           "int8": "ort-int8", "cuda": "ort-cuda", "torch-cl": "torch", "openvino": "openvino-fp32",
           "ov-int8": "openvino-int8", "ort-cuda-fp32": "ort-cuda", "torch-fp32": "torch",
           "tensorrt-fp16": "tensorrt", "tensorrt-int8": "tensorrt", "torch-cuda-fp16": "torch-cuda",
           "ov-bf16": "openvino-bf16"}
SELF_CERTIFIED = ("tensorrt", "torch-cuda", "openvino-int8", "ort-int8", "openvino-bf16")


@dataclass
class Selection:
    engine: Engine
    backend: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    gate: GateReport | None = None


def canonical(name: str) -> str:
    name = ALIASES.get(name, name)
    if name not in ORDER + OPTIONAL and name != "auto":
        raise EngineError(f"unknown backend {name!r}; choose auto or one of {', '.join(ORDER + OPTIONAL)}")
    return name


def backend_of(engine_name: str) -> str:
    """The selector's backend for an engine's name (``tensorrt-int8`` -> ``tensorrt``,
    ``ort-cuda-fp32`` -> ``ort-cuda``, ``torch-cuda-fp16`` -> ``torch-cuda``)."""
    for name in (engine_name, engine_name.rsplit("-", 1)[0]):
        try:
            return canonical(name)
        except EngineError:
            continue
    raise EngineError(f"no backend serves as {engine_name!r}")


#: the folder beside a model that holds OpenVINO's compiled graphs of it, one subfolder per CPU
OPENVINO_CACHE = "openvino-cache"


def openvino_cache_dir(model_path: str | Path, cache_dir: str | Path | None, cpu: str | None = None) -> Path | None:
    """OpenVINO's compiled-model cache for ``model_path``: beside the model, as TensorRT's
    engines are (``engines.build.default_cache_dir``), one folder per CPU (``cpu``: this one's
    model name and instruction sets, ``engines.ort.cpu_id``). Beside the model, so a version's
    folder holds every engine built from it and removing the folder (``nscmonitor models
    prune``) removes them; a cache shared by all versions grew by one compiled graph per
    version for ever (tens of MB per ResNet50). One folder per CPU, because OpenVINO keys its
    blobs by the model, its own version and the CPU's brand string only, and a blob holds the
    graph as compiled for that CPU's precisions (bf16 where it has bf16 units); virtual
    machines on different CPUs share one brand string ("AMD EPYC" for an AVX2-only Zen 3 and an
    AVX-512 Zen 4 alike). ``cache_dir`` None turns caching off; a model whose folder cannot be
    written (a read-only share) is compiled at every load instead."""
    if not cache_dir:
        return None
    folder = Path(model_path).parent
    if not os.access(folder, os.W_OK):
        log.info("OpenVINO's compiled graphs of %s are not cached: its folder cannot be written", model_path)
        return None
    if cpu is None:
        from nscmonitor.engines.ort import cpu_id

        cpu = cpu_id()
    return folder / OPENVINO_CACHE / hashlib.sha256(cpu.encode()).hexdigest()[:12]


def remove_shared_openvino_cache(cache_dir: str | Path) -> int:
    """Delete the compiled graphs that versions before 2026-12-07 kept in one folder shared by
    every model (``<models>/engines/openvino``): nothing reads them any more. A file another
    process still holds open where that stops deletion (Windows) is left for the next start;
    on POSIX the holder keeps its open copy. Returns the bytes freed."""
    root = Path(cache_dir) / "openvino"
    if not root.is_dir():
        return 0
    freed = 0
    for p in [*sorted(root.rglob("*"), key=lambda q: len(q.parts), reverse=True), root]:
        try:
            if p.is_symlink() or p.is_file():
                size = p.lstat().st_size
                p.unlink()
                freed += size
            elif p.is_dir():
                p.rmdir()
        except OSError as exc:
            log.warning("old shared OpenVINO cache: %s not removed (%s); tried again at the next start", p, exc)
    if freed:
        log.info("removed %.1f MB of compiled graphs from the old shared OpenVINO cache %s", freed / 1e6, root)
    return freed


def make_engine(backend: str, model_path: Path, meta: ModelMetadata, *, batch_size: int, threads: int,
                cache_dir: str | Path | None) -> Engine:
    """Construct (not load) one backend; raises EngineError when its artefact is missing."""
    if backend == "tensorrt":
        from nscmonitor.engines.build import find_engine
        from nscmonitor.engines.tensorrt import TrtEngine

        return TrtEngine(model_path, meta, engine_path=find_engine(model_path, cache_dir=cache_dir,
                                                                   batch_size=batch_size))
    if backend == "torch-cuda":
        from nscmonitor.engines.torch_cuda import SERVING_BATCH, TorchCudaEngine, certified

        why = certified(model_path)
        if why is not None:
            raise EngineError(why)
        from nscmonitor.engines.torch_cuda import gate_record

        return TorchCudaEngine(model_path, serving_metadata(meta, gate_record(model_path)),
                               batch_size=max(batch_size, SERVING_BATCH))
    if backend == "ort-cuda":
        from nscmonitor.engines.ort import OrtCudaEngine

        return OrtCudaEngine(model_path, meta)
    if backend == "ort-int8":
        from nscmonitor.engines.enginefile import file_sha256
        from nscmonitor.engines.ort import OrtInt8Engine, int8_path_for

        path = int8_path_for(model_path)
        if not path.is_file():
            raise EngineError(f"no int8 model at {path} (build it with 'nscmonitor engine build "
                              f"{model_path} --backend ort-int8 --calibration DIR')")
        int8_meta = _int8_metadata(path)
        return OrtInt8Engine(path, serving_metadata(int8_meta, _int8_gate(int8_meta, "gate")), threads=threads,
                             source_sha256=file_sha256(model_path))
    if backend == "openvino-bf16":
        from nscmonitor.engines import openvino_bf16

        why = openvino_bf16.certified(model_path)
        if why is not None:
            raise EngineError(why)
        large, streams = _large_requests(model_path, backend, batch_size, meta.input_size)
        return openvino_bf16.engine(model_path, serving_metadata(meta, openvino_bf16.gate_record(model_path)),
                                    threads=threads, batch_size=batch_size, large_batch=large, large_streams=streams,
                                    cache_dir=openvino_cache_dir(model_path, cache_dir))
    if backend.startswith("openvino-"):
        from nscmonitor.engines.openvino import GATE_KEYS, OpenVinoEngine, large_batch_for

        path, source, precision, streams = model_path, None, "f32", 0
        large = large_batch_for(batch_size, meta.input_size ** 2)
        if backend == "openvino-int8":
            precision = openvino_precision(model_path)
            large, streams = _large_requests(model_path, backend, batch_size, meta.input_size)
            from nscmonitor.engines.enginefile import file_sha256
            from nscmonitor.engines.ort import int8_path_for

            path, source = int8_path_for(model_path), file_sha256(model_path)
            if not path.is_file():
                raise EngineError(f"no int8 model at {path} to run on OpenVINO")
            meta = _int8_metadata(path)
            meta = serving_metadata(meta, _int8_gate(meta, GATE_KEYS.get(precision, GATE_KEYS["f32"])))
        return OpenVinoEngine(path, meta if path != model_path else read_onnx_metadata(path), threads=threads,
                              source_sha256=source, batch_size=batch_size, precision=precision,
                              large_batch=large, large_streams=streams,
                              cache_dir=openvino_cache_dir(path, cache_dir))
    if backend == "ort-cpu":
        from nscmonitor.engines.ort import OrtCpuEngine

        cache = Path(cache_dir) / f"{model_path.stem}.optimized.onnx" if cache_dir else None
        return OrtCpuEngine(model_path, meta, threads=threads, optimized_cache=cache)
    from nscmonitor.engines.torch import TorchEngine

    return TorchEngine(model_path, meta, threads=threads)


def _large_requests(model_path: Path, backend: str, batch_size: int, input_size: int) -> tuple[int, int]:
    """(tiles per large request, parallel large requests) as the build timed them fastest: one
    request of the whole chunk, or two of half of it on one thread each (where half of it is
    still larger than the daemon's own batch, else the large request would not be one)."""
    large = openvino_large_batch(model_path, batch_size, input_size, engine=backend)
    streams = openvino_large_streams(model_path, backend) if large else 1
    split = streams > 1 and large % streams == 0 and large // streams > batch_size
    return (large // streams, streams) if split else (large, 1)


def _int8_gate(meta: ModelMetadata, key: str) -> dict | None:
    """One runtime's gate record inside an int8 file's metadata (None in files from before)."""
    return ((meta.extra or {}).get(INT8_KEY) or {}).get(key)


def _int8_metadata(path: Path) -> ModelMetadata:
    """An int8 file is a derived cache: one that cannot even be read is moved aside (to be
    rebuilt) and skipped, instead of stopping the selection and with it the daemon."""
    from nscmonitor.engines.enginefile import move_aside

    try:
        return read_onnx_metadata(path)
    except MetadataError as exc:
        moved = move_aside(path, str(exc))
        raise EngineError(f"unreadable int8 model {path}: {exc}"
                          + (f"; moved aside to {moved.name}, it is rebuilt" if moved else "")) from exc


def _reference(model_path: Path, meta: ModelMetadata, threads: int) -> Engine | None:
    from nscmonitor.engines.ort import OrtCpuEngine

    ref = OrtCpuEngine(model_path, meta, threads=threads)
    try:
        ref.load()
    except EngineError as exc:
        log.warning("no ONNX reference to validate against (%s); trusting the backend unchecked", exc)
        return None
    return ref


def select(model_path: str | Path, prefer: str = "auto", *, batch_size: int = 8, threads: int = 0,
           cache_dir: str | Path | None = None, validation_tiles: TileSet | None = None,
           exclude: Mapping[str, str] | None = None) -> Selection:
    """Return the chosen, loaded engine and the backends skipped on the way, with reasons.

    ``prefer`` puts one backend first; when it cannot serve, selection continues down the
    usual order (logged), because a daemon that refuses to score is worse than a slower one.
    A CPU engine its build timed slower than fp32 here, or slower than the CPU engine the build
    chose, is passed over unless it is the one preferred: reduced precision is a means to
    speed, and a facility that wants the same engine on every PC whatever its speed names it.
    With ``validation_tiles`` every backend that does not carry its own gate result (the CUDA
    provider, torch) is compared with the ONNX reference before it is accepted.
    ``exclude``: backends not to use, each with the reason (the daemon's, for one that kept
    failing while it served: a GPU whose driver was reset stays unusable in this process).
    """
    model_path = Path(model_path)
    meta = read_onnx_metadata(model_path)
    first = canonical(prefer)
    order = ORDER if first == "auto" else (first, *[b for b in ORDER if b != first])
    skipped: list[tuple[str, str]] = []
    reference: Engine | None = None
    for backend in order:
        engine = None
        try:
            if exclude and backend in exclude:
                raise EngineError(exclude[backend])
            if backend != first and (slower := speed_refusal(model_path, backend)) is not None:
                raise EngineError(slower)
            engine = make_engine(backend, model_path, meta, batch_size=batch_size, threads=threads,
                                 cache_dir=cache_dir)
            engine.load()
            gate = None
            if validation_tiles is not None and backend not in SELF_CERTIFIED and backend != "ort-cpu":
                reference = reference or _reference(model_path, meta, threads)
                if reference is not None:
                    gate = validate_engine(engine, reference, validation_tiles.x, validation_tiles.groups,
                                           tolerance=dict(meta.int8_tolerance), batch_size=batch_size,
                                           tiles_source=validation_tiles.source)
                    if not gate.passed:
                        raise EngineError("failed the validation gate: " + "; ".join(gate.reasons))
                    engine.metadata = serving_metadata(engine.metadata, gate)
        except EngineError as exc:
            if engine is not None:
                engine.close()
            skipped.append((backend, str(exc)))
            # A runtime this machine simply lacks is routine in auto mode; a preferred backend
            # that cannot serve, or a build that failed its gate, is worth a warning.
            serious = backend == first or "gate" in str(exc) or "stale" in str(exc)
            log.log(logging.WARNING if serious else logging.INFO, "engine %s skipped: %s", backend, exc)
            continue
        if reference is not None and reference is not engine:
            reference.close()
        log.info("engine selected: %s for %s%s", engine.describe(), model_path,
                 f" (skipped: {', '.join(b for b, _ in skipped)})" if skipped else "")
        return Selection(engine, backend, skipped, gate)
    raise EngineError(f"no backend can serve {model_path}: " + "; ".join(f"{b}: {r}" for b, r in skipped))
