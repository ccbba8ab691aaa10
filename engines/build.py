"""Build, validate and cache TensorRT engines from the canonical ONNX (TensorRT 10.x and 11.x).

A build is: the ONNX graph for the precision (``tensorrt.build_recipe``: the fp32 model, an
fp16 conversion of it, or the explicitly quantised int8 Q/DQ model beside it) -> ONNX parser
-> builder config (workspace limit, one optimisation profile over a dynamic batch range, a
timing cache shared by builds on this GPU, and on TensorRT 10 the fp16 flag) -> serialized
plan -> candidate engine file -> validation gate against ONNX Runtime fp32 on held-out tiles
-> published under its cache key, or discarded with a report. Runs only where TensorRT and a
CUDA GPU are present.

Why int8 is explicit on both majors: TensorRT 11 removed the implicit calibrator
(``IInt8EntropyCalibrator2``) and deprecated it since 10.1. The Q/DQ model is quantised by
the project's own recipe with signed symmetric activations (``quantize.TENSORRT_SETTINGS``),
the form explicit quantisation takes, and gated the same way as the CPU int8 file.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nscmonitor.engines.base import EngineError
from nscmonitor.engines.calibration import TileSet
from nscmonitor.engines.enginefile import EngineCache, EngineKey, file_sha256, read_engine_file, write_engine_file
from nscmonitor.engines.metadata import MetadataError, read_onnx_metadata
from nscmonitor.engines.ort import INT8_KEY, OrtCpuEngine
from nscmonitor.engines.tensorrt import (
    BuildRecipe,
    TrtEngine,
    build_recipe,
    import_cuda_torch,
    import_tensorrt,
    machine_key,
    qdq_path_for,
    quantized_sha_for,
    trt_logger,
)
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
    calib_batch: int = 8  # kept for callers; explicit quantisation has no TensorRT calibration pass

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


def require_qdq_model(onnx_path: Path, calib: TileSet | None, heldout: TileSet | None) -> Path:
    """The explicitly quantised model an int8 plan is parsed from, checked for TensorRT.

    It is its own file (``tensorrt.qdq_path_for``), not the CPU engines' int8 file, whose
    unsigned activations TensorRT does not take. When it is missing and calibration tiles are
    given, the project's int8 recipe writes it with ``TENSORRT_SETTINGS`` (gated on ONNX
    Runtime and OpenVINO like the CPU file; the plan built from it is gated again); then it
    must come from this very fp32 model and be signed symmetric int8, which TensorRT's
    explicit quantisation requires."""
    from nscmonitor.engines.precision_graphs import qdq_problems

    qdq = qdq_path_for(onnx_path)
    if not qdq.is_file() and calib is not None and heldout is not None:
        from nscmonitor.engines.quantize import TENSORRT_SETTINGS, build_ort_int8

        path, report = build_ort_int8(onnx_path, calib, heldout, out_path=qdq, settings=TENSORRT_SETTINGS)
        if path is None:
            raise EngineError(f"int8 needs the quantised model {qdq}, and the int8 recipe's own gate refused "
                              f"it: {report.summary()}")
    if not qdq.is_file():
        raise EngineError(f"int8 needs the explicitly quantised model {qdq} (pass calibration tiles, "
                          f"'nscmonitor engine build {onnx_path} --backend trt --int8 --calibration DIR')")
    try:
        record = read_onnx_metadata(qdq).extra.get(INT8_KEY) or {}
    except MetadataError as exc:
        raise EngineError(f"{qdq}: {exc}") from exc
    if record.get("source_sha256") != file_sha256(onnx_path):
        raise EngineError(f"{qdq} was quantised from another fp32 model than {onnx_path}; rebuild it")
    problems = qdq_problems(qdq)
    if problems:
        raise EngineError(f"TensorRT cannot take {qdq} as explicitly quantised int8: " + "; ".join(problems[:3])
                          + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""))
    return qdq


def _graph_for(recipe: BuildRecipe, onnx_path: Path, work: Path) -> Path:
    if recipe.graph == "fp32":
        return onnx_path
    if recipe.graph == "fp16":
        from nscmonitor.engines.precision_graphs import convert_to_fp16

        return convert_to_fp16(onnx_path, work / f"{onnx_path.stem}.fp16.onnx")
    return qdq_path_for(onnx_path)


def build_plan(onnx_path: str | Path, opts: BuildOptions, *, cache_dir: Path,
               calib: TileSet | None = None, heldout: TileSet | None = None) -> tuple[bytes, EngineKey]:
    """Serialize a TensorRT plan for this GPU; returns it with its cache key."""
    trt = import_tensorrt()
    torch = import_cuda_torch()
    onnx_path = Path(onnx_path)
    meta = read_onnx_metadata(onnx_path)
    recipe = build_recipe(trt.__version__, opts.precision)
    if recipe.graph == "int8-qdq":
        require_qdq_model(onnx_path, calib, heldout)
    key = machine_key(trt, torch, file_sha256(onnx_path), opts.precision, opts.min_batch, opts.opt_batch,
                      opts.max_batch, quantized_sha256=quantized_sha_for(onnx_path, opts.precision))
    logger = trt_logger(trt)
    builder = trt.Builder(logger)
    flags = 0
    for name in recipe.network_flags:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    with tempfile.TemporaryDirectory(prefix="nscm-trt-") as work:
        graph = _graph_for(recipe, onnx_path, Path(work))
        if not parser.parse_from_file(str(graph)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineError(f"TensorRT cannot parse {graph} ({recipe.graph}): {errors}")
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
    for name in recipe.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    log.info("TensorRT %s: building %s from the %s graph (%s typed)", trt.__version__, opts.precision,
             recipe.graph, "strongly" if recipe.strongly_typed else "weakly")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT failed to build {onnx_path} ({opts.precision}); see its log above")
    _atomic_write(timing_path, bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(serialized)), key


def build_trt_engine(onnx_path: str | Path, heldout: TileSet, *, opts: BuildOptions = BuildOptions(),
                     cache_dir: str | Path | None = None, calib: TileSet | None = None,
                     force: bool = False) -> tuple[Path | None, GateReport | None]:
    """Return a validated engine for this GPU: from the cache, or built, gated and cached.

    ``calib`` is used only for int8 when the quantised model beside ``onnx_path`` is missing:
    the int8 recipe then writes it from these tiles before TensorRT parses it.

    A failed gate leaves no engine, only ``*.gate.json`` beside where it would have been, and
    returns (None, report) so the selector moves on to the next backend.
    """
    onnx_path = Path(onnx_path)
    cache = EngineCache(cache_dir or default_cache_dir(onnx_path))
    meta = read_onnx_metadata(onnx_path)
    trt, torch = import_tensorrt(), import_cuda_torch()
    key = machine_key(trt, torch, file_sha256(onnx_path), opts.precision, opts.min_batch, opts.opt_batch,
                      opts.max_batch, quantized_sha256=quantized_sha_for(onnx_path, opts.precision))
    if not force and (hit := cache.lookup(key, onnx_path.stem)) is not None:
        log.info("TensorRT engine from cache: %s", hit)
        return hit, None
    plan, key = build_plan(onnx_path, opts, cache_dir=cache.root, calib=calib, heldout=heldout)
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


def cache_roots(onnx_path: str | Path, cache_dir: str | Path | None) -> list[Path]:
    """Where engines for a model may be: the folder asked for, then beside the model (where
    builds put them by default, e.g. build on arrival), without duplicates."""
    roots = [Path(cache_dir)] if cache_dir else []
    roots.append(default_cache_dir(onnx_path))
    return list(dict.fromkeys(roots))


def pick_engine(entries: list[tuple[Path, Any, str]], here: EngineKey, quantized_sha256: str, *,
                batch_size: int = 1, precision: str | None = None) -> Path | None:
    """The best usable engine among cache entries (int8 > fp16 > fp32 unless ``precision``):
    built on this GPU model and compute capability, by this TensorRT, from this ONNX (and for
    int8 from the quantised model beside it now), covering ``batch_size``, with a passed gate."""
    usable = []
    for path, ef, reason in entries:
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
        if k.precision == "int8" and k.quantized_sha256 != quantized_sha256:
            continue  # built from a quantised model that has since been replaced
        usable.append((PRECISIONS.index(k.precision), str(path), path))
    return max(usable)[2] if usable else None


def find_engine(onnx_path: str | Path, *, cache_dir: str | Path | None = None, batch_size: int = 1,
                precision: str | None = None) -> Path:
    """The best cached engine valid on this machine for this ONNX (int8 > fp16 > fp32 unless a
    precision is asked for). Engines of other GPUs may share the folder and are left alone."""
    onnx_path = Path(onnx_path)
    trt, torch = import_tensorrt(), import_cuda_torch()
    here = machine_key(trt, torch, file_sha256(onnx_path), "fp32", 1, 1, 1)
    roots = cache_roots(onnx_path, cache_dir)
    entries = [e for root in roots for e in EngineCache(root).entries()]
    found = pick_engine(entries, here, quantized_sha_for(onnx_path, "int8"), batch_size=batch_size,
                        precision=precision)
    if found is None:
        raise EngineError(f"no validated TensorRT engine for this GPU ({here.gpu_name}, TensorRT "
                          f"{here.trt_version}) and this model in {' or '.join(map(str, roots))}; run "
                          f"'nscmonitor engine build {onnx_path} --backend trt --calibration DIR'")
    return found
