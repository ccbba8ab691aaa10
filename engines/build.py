"""Build, validate and cache TensorRT engines from the canonical ONNX (TensorRT 10+ API).

A build is: ONNX parser -> builder config (workspace limit, fp16 / int8 flags, one
optimisation profile over a dynamic batch range, a timing cache shared by builds on this GPU,
for int8 an entropy calibrator fed with the model's own training tiles whose result is kept
as a calibration cache) -> serialized plan -> candidate engine file -> validation gate against
ONNX Runtime fp32 on held-out tiles -> published under its cache key, or discarded with a
report. Runs only where TensorRT and a CUDA GPU are present.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nscmonitor.engines.base import EngineError
from nscmonitor.engines.calibration import TileSet
from nscmonitor.engines.enginefile import EngineCache, EngineKey, file_sha256, read_engine_file, write_engine_file
from nscmonitor.engines.metadata import read_onnx_metadata
from nscmonitor.engines.ort import OrtCpuEngine
from nscmonitor.engines.tensorrt import TrtEngine, import_cuda_torch, import_tensorrt, machine_key, trt_logger
from nscmonitor.engines.validate import GateReport, validate_engine, write_report

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class BuildOptions:
    precision: str = "fp16"
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32
    workspace_mb: int = 2048
    calib_batch: int = 8

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise EngineError(f"precision must be one of {PRECISIONS}, not {self.precision!r}")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise EngineError("batch profile needs 1 <= min <= opt <= max")


def default_cache_dir(model_path: str | Path) -> Path:
    """Engines live beside the model they were built from, so removing a model version's
    folder removes its engines too."""
    return Path(model_path).parent / "trt-cache"


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def make_calibrator(trt: Any, torch: Any, x: np.ndarray, batch_size: int, cache_path: Path) -> Any:
    """An IInt8EntropyCalibrator2 over the given tiles. The calibration cache is keyed (by
    file name) on the ONNX hash, so recalibration happens exactly when the model changes."""

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.pos = 0
            self.device_batch = torch.empty((batch_size, *x.shape[1:]), dtype=torch.float32, device="cuda")

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.pos + batch_size > len(x):
                return None
            self.device_batch.copy_(torch.from_numpy(np.ascontiguousarray(x[self.pos:self.pos + batch_size])))
            self.pos += batch_size
            return [int(self.device_batch.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            _atomic_write(cache_path, bytes(cache))

    if len(x) < batch_size and not cache_path.is_file():
        raise EngineError(f"int8 calibration needs at least {batch_size} tiles, got {len(x)}")
    return Calibrator()


def build_plan(onnx_path: str | Path, opts: BuildOptions, *, cache_dir: Path,
               calib: TileSet | None = None) -> tuple[bytes, EngineKey]:
    """Serialize a TensorRT plan for this GPU; returns it with its cache key."""
    trt = import_tensorrt()
    torch = import_cuda_torch()
    onnx_path = Path(onnx_path)
    meta = read_onnx_metadata(onnx_path)
    onnx_sha = file_sha256(onnx_path)
    key = machine_key(trt, torch, onnx_sha, opts.precision, opts.min_batch, opts.opt_batch, opts.max_batch)
    logger = trt_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts.workspace_mb << 20)
    chw = (meta.input_channels, meta.input_size, meta.input_size)
    input_name = network.get_input(0).name
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, (opts.min_batch, *chw), (opts.opt_batch, *chw), (opts.max_batch, *chw))
    config.add_optimization_profile(profile)
    timing_path = cache_dir / f"timing.{key.gpu_name.replace(' ', '_')}.sm{key.compute_capability}.trt{key.trt_version}.cache"
    timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
    config.set_timing_cache(timing, ignore_mismatch=False)
    if opts.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if opts.precision == "int8":
        calib_path = cache_dir / f"{onnx_path.stem}.{onnx_sha[:16]}.calib"
        if calib is None and not calib_path.is_file():
            raise EngineError("int8 needs calibration tiles (--calibration DIR with a train split)")
        config.set_flag(trt.BuilderFlag.INT8)
        x = calib.x if calib is not None else np.zeros((0, *chw), np.float32)
        config.int8_calibrator = make_calibrator(trt, torch, x, opts.calib_batch, calib_path)
        calib_profile = builder.create_optimization_profile()
        shape = (opts.calib_batch, *chw)
        calib_profile.set_shape(input_name, shape, shape, shape)
        config.set_calibration_profile(calib_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT failed to build {onnx_path} ({opts.precision}); see its log above")
    _atomic_write(timing_path, bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(serialized)), key


def build_trt_engine(onnx_path: str | Path, heldout: TileSet, *, opts: BuildOptions = BuildOptions(),
                     cache_dir: str | Path | None = None, calib: TileSet | None = None,
                     force: bool = False) -> tuple[Path | None, GateReport | None]:
    """Return a validated engine for this GPU: from the cache, or built, gated and cached.

    A failed gate leaves no engine, only ``*.gate.json`` beside where it would have been, and
    returns (None, report) so the selector moves on to the next backend.
    """
    onnx_path = Path(onnx_path)
    cache = EngineCache(cache_dir or default_cache_dir(onnx_path))
    meta = read_onnx_metadata(onnx_path)
    trt, torch = import_tensorrt(), import_cuda_torch()
    key = machine_key(trt, torch, file_sha256(onnx_path), opts.precision, opts.min_batch, opts.opt_batch,
                      opts.max_batch)
    if not force and (hit := cache.lookup(key, onnx_path.stem)) is not None:
        log.info("TensorRT engine from cache: %s", hit)
        return hit, None
    plan, key = build_plan(onnx_path, opts, cache_dir=cache.root, calib=calib)
    final = cache.path_for(key, onnx_path.stem)
    candidate = final.with_name(final.name + ".candidate")
    write_engine_file(candidate, key, meta, plan, gate=None)
    trt_engine = TrtEngine(onnx_path, meta, engine_path=candidate, require_gate=False)
    reference = OrtCpuEngine(onnx_path, meta)
    try:
        trt_engine.load()
        reference.load()
        report = validate_engine(trt_engine, reference, heldout.x, heldout.groups,
                                 batch_size=opts.opt_batch, tiles_source=heldout.source)
    finally:
        trt_engine.close()
        reference.close()
    write_report(report, final.with_name(final.name + ".gate.json"))
    if not report.passed:
        candidate.unlink(missing_ok=True)
        log.warning("TensorRT %s engine discarded: %s", opts.precision, report.summary())
        return None, report
    write_engine_file(final, key, meta, read_engine_file(candidate).plan, gate=report.to_dict())
    candidate.unlink(missing_ok=True)
    log.info("TensorRT engine written to %s", final)
    return final, report


def find_engine(onnx_path: str | Path, *, cache_dir: str | Path | None = None, batch_size: int = 1,
                precision: str | None = None) -> Path:
    """The best cached engine valid on this machine for this ONNX (int8 > fp16 > fp32 unless a
    precision is asked for). Engines of other GPUs may share the folder and are left alone."""
    onnx_path = Path(onnx_path)
    trt, torch = import_tensorrt(), import_cuda_torch()
    here = machine_key(trt, torch, file_sha256(onnx_path), "fp32", 1, 1, 1)
    cache = EngineCache(cache_dir or default_cache_dir(onnx_path))
    usable = []
    for path, ef, reason in cache.entries():
        if ef is None:
            log.warning("engine cache: unusable file %s: %s", path, reason)
            continue
        k = ef.key
        if (k.gpu_name, k.compute_capability, k.trt_version, k.onnx_sha256) != (
                here.gpu_name, here.compute_capability, here.trt_version, here.onnx_sha256):
            continue
        if k.max_batch < batch_size or not (ef.gate or {}).get("passed", False):
            continue
        if precision and k.precision != precision:
            continue
        usable.append((PRECISIONS.index(k.precision), path))
    if not usable:
        raise EngineError(f"no validated TensorRT engine for this GPU ({here.gpu_name}, TensorRT "
                          f"{here.trt_version}) and this model in {cache.root}; run "
                          f"'nscmonitor engine build {onnx_path} --backend trt --calibration DIR'")
    return max(usable)[1]
