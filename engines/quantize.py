"""Static int8 (QDQ) quantization, gated on agreement with fp32.

Two files, one recipe each, because the runtimes take different int8:
- the **CPU file** (``MODEL.int8.onnx``, ``DEFAULT_SETTINGS``), served by OpenVINO and ONNX
  Runtime: **unsigned, asymmetric int8 activations** (MinMax ranges, so a tensor after a ReLU
  gets zero point 0 and all 256 steps over [0, max]) and signed symmetric per-channel weights.
  Both CPU runtimes' fast int8 convolutions are u8 activations x s8 weights (VNNI
  ``vpdpbusd``). Measured on a ResNet50 (docs/performance.md, "Unsigned activations for the
  CPU file"): all-int8 OpenVINO moved the well readout 2.83 pp against 15.1 pp with signed
  symmetric activations, whose symmetric scale fits the lopsided ranges of the residual
  branch and its Add badly (unsigned only after ReLUs, signed elsewhere, still read 14.3 pp);
- the **TensorRT file** (``MODEL.int8-trt.onnx``, ``TENSORRT_SETTINGS``): signed, symmetric
  int8 activations, the only form TensorRT's explicit quantisation takes
  (``engines.precision_graphs.qdq_problems``), written only when a TensorRT int8 plan is built.
Common to both (measured on the demo model, docs/performance.md "Int8 recipe"):
- Q/DQ on the inputs of Conv, Gemm/MatMul and the residual Add, and **a ReLU folded into the
  rounding of its input** (``Relu`` among the quantiser's op types, since recipe 8): ONNX
  Runtime's quantiser also rounds every quantised node's output, so with the ReLU left out a
  convolution's output was rounded twice, first over its whole pre-ReLU range (about half the
  256 steps spent on values the ReLU then zeroes), then again after the ReLU at the next
  layer's input. With ``Relu`` listed, an unsigned activation's zero point of 0 clamps exactly
  as the ReLU does, so the quantiser drops the ReLU and rounds once over [0, max]. Measured on
  a trained ResNet50 (docs/performance.md, "One rounding per layer"): all-int8 well readout
  2.11 / 1.34 / 3.77 -> 1.73 / 1.19 / 2.29 pp (ONNX Runtime / OpenVINO f32 rest / bf16 rest),
  fake-quantised 4.37 -> 1.25 pp, and faster (ONNX Runtime int8 +24 %, OpenVINO +5 %). The
  TensorRT file cannot fold its ReLUs (a signed symmetric zero point does not clamp), so it
  leaves the outputs of convolutions and Adds unrounded instead
  (``OpTypesToExcludeOutputQuantization``): each layer's input is rounded once, after the
  ReLU, the placement TensorRT fuses as convolution + ReLU + the next layer's rounding. On
  ONNX Runtime and OpenVINO that file moved the demo model's readout 0.85-0.92 pp instead of
  2.44-2.83 pp (TensorRT itself has not run here);
- the stem (first convolution) and the head (last Gemm/MatMul) stay fp32: the stem sees the
  raw scaled intensities with the folded normalisation, the head's logits decide the class;
  together a few percent of the compute;
- biases stay float (no INT32 bias Q/DQ): TensorRT's parser takes int8/fp8/int4/fp4 Q/DQ only,
  and OpenVINO ran the float-bias file as fast as the INT32-bias one (interleaved runs on the demo
  model, medians within 6 %, identical gate);
- weights rounded against their layer's inputs (``engines.weight_rounding``, GPTQ; recipe 9)
  rather than each to its nearest step: on a trained ResNet50 (run 9's) nearest rounding of the
  weights alone moved the held-out readout 0.9 pp, GPTQ 0.16 pp; scales, zero points and the
  graph are unchanged (``weight_rounding = "nearest"`` gives the old rounding);
- bias correction (``engines.bias_correction``): each quantised layer's float bias absorbs the
  mean shift int8 rounding leaves at its output on the calibration tiles; well readouts are
  means over tiles, so a systematic shift matters where rounding noise averages out. It is
  measured in ONNX Runtime's arithmetic, and the automatic build applies it only where ONNX
  Runtime will serve the file (``mixed_precision.serving_recipe``: on OpenVINO it added error to
  the GPTQ-rounded ResNet50s);
- MinMax calibration: percentile (99.99/99.999) clipping moved well readouts by 2.9-3.8 pp on
  the demo model, entropy gave nothing over MinMax; the tails of these activations carry signal.
Static rather than dynamic: dynamic quantization re-measures activation ranges every batch and
ends up slower than fp32. ``quant_pre_process`` (shape inference + graph optimisation) runs
first so the quantizer sees folded BatchNorms and knows every tensor's shape.

Each int8 file carries the fp32 metadata plus an ``int8`` record: the gate report, the fp32
model's hash and the quantization settings. Only a passed gate is ever written under the
serving name; a failed one leaves a report next to where the model would have been.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from nscmonitor.engines.base import Engine, EngineError
from nscmonitor.engines.calibration import TileSet
from nscmonitor.engines.enginefile import file_sha256
from nscmonitor.engines.metadata import ModelMetadata, read_onnx_metadata, write_onnx_metadata
from nscmonitor.engines.openvino import GATE_KEYS
from nscmonitor.engines.ort import INT8_KEY, OrtCpuEngine, int8_path_for
from nscmonitor.engines.validate import (GATE_BATCH, GateReport, compare, ood_of_gate, predict_with_ood,
                                          write_report)

log = logging.getLogger(__name__)

DEFAULT_SETTINGS: dict[str, Any] = {
    "quant_format": "QDQ", "activation_type": "QUInt8", "weight_type": "QInt8",
    "activation_symmetric": False, "weight_symmetric": True, "per_channel": True,
    "calibrate_method": "MinMax", "moving_average": False,
    "op_types": ["Conv", "Gemm", "MatMul", "Add", "Relu"],
    "keep_fp32": ["stem", "head"], "exclude_nodes": [], "preprocess": True, "quantize_bias": False,
    "bias_correction": True, "weight_rounding": "gptq",
}
#: what TensorRT's explicit quantisation takes: signed symmetric activations too
TENSORRT_SETTINGS: dict[str, Any] = {**DEFAULT_SETTINGS, "activation_type": "QInt8", "activation_symmetric": True,
                                     "op_types": ["Conv", "Gemm", "MatMul", "Add"],
                                     "exclude_output_quantization": ["Conv", "Add"]}
SENSITIVE = ("stem", "head")
#: the out-of-distribution head's nodes (``training.ood``): always fp32, since its squared
#: distances span orders of magnitude an int8 scale cannot hold, and never the "head"
OOD_SCOPE = "/ood/"


def sensitive_nodes(model: Any, which: list[str] | tuple[str, ...] = SENSITIVE) -> list[str]:
    """Names of the layers kept in fp32: the stem (the first convolution, which sees the raw
    scaled intensities and, in our exports, carries the folded grey-to-RGB replication and
    normalisation: few MACs, wide input range) and the head (the last Gemm/MatMul, whose
    logits decide the class directly). Both are a few percent of the compute. A graph with
    no more than two such layers keeps none (nothing would be left to quantise)."""
    ood = [n.name for n in model.graph.node if n.name.startswith(OOD_SCOPE)]
    nodes = [n for n in model.graph.node if not n.name.startswith(OOD_SCOPE)]
    names: list[str] = ood
    if sum(n.op_type in ("Conv", "Gemm", "MatMul") for n in nodes) <= 2:
        return names
    if "stem" in which:
        names += [n.name for n in nodes if n.op_type == "Conv"][:1]
    if "head" in which:
        names += [n.name for n in nodes if n.op_type in ("Gemm", "MatMul")][-1:]
    return names


def _name_nodes(model: Any) -> None:
    """The quantizer excludes nodes by name; exported graphs may leave some unnamed."""
    seen = set()
    for i, n in enumerate(model.graph.node):
        if not n.name or n.name in seen:
            n.name = f"{n.op_type}_{i}"
        seen.add(n.name)


class Rounds:
    """What the quantise-and-gate rounds of one build share: the pre-processed, named fp32
    model the quantiser starts from and the fp32 model's probabilities on the held-out tiles
    (with the speed they were measured at). Why: the mixed-precision ladder quantises and
    gates the same model up to seven times with other layers left fp32, and each round
    pre-processed the 116 MB ResNet50 again (4 s) and ran it in fp32 over the 512 held-out
    tiles again (4 s); both are the same every time. Lives in ``folder`` (the build's scratch),
    keyed by the model file's path, size and modification time and by the tiles' bytes."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._named: dict[tuple, Path] = {}
        self._references: dict[tuple, tuple[np.ndarray, np.ndarray | None, float]] = {}
        self.reused = 0

    @staticmethod
    def _model_key(model_path: Path) -> tuple:
        st = model_path.stat()
        return (str(model_path.resolve()), st.st_size, st.st_mtime_ns)

    def named(self, model_path: Path, preprocess: bool) -> Path:
        key = (*self._model_key(model_path), preprocess)
        if key in self._named:
            self.reused += 1
            return self._named[key]
        out = self.folder / f"named-{len(self._named)}.onnx"
        _named_model(model_path, out, preprocess, self.folder)
        self._named[key] = out
        return out

    def reference(self, model_path: Path, meta: ModelMetadata, heldout: TileSet,
                  threads: int) -> tuple[np.ndarray, np.ndarray | None, float]:
        """fp32 probabilities and OOD scores on ``heldout``, and the tiles/s of their run."""
        import hashlib

        digest = hashlib.sha256(np.ascontiguousarray(heldout.x).tobytes()).hexdigest()
        key = (*self._model_key(model_path), digest, tuple(heldout.groups), threads)
        if key in self._references:
            self.reused += 1
            return self._references[key]
        self._references[key] = _fp32_reference(model_path, meta, heldout, threads)
        return self._references[key]


def _fp32_reference(model_path: Path, meta: ModelMetadata, heldout: TileSet,
                    threads: int) -> tuple[np.ndarray, np.ndarray | None, float]:
    t0 = time.perf_counter()
    probs, ood = _probs(OrtCpuEngine(model_path, meta, threads=threads), heldout)
    return probs, ood, len(heldout) / (time.perf_counter() - t0)


def _named_model(model_path: Path, out: Path, preprocess: bool, tmp: Path) -> Any:
    """The model the quantiser reads, written to ``out``: pre-processed (shape inference and
    graph optimisation) when asked, every node named. Returns the graph."""
    import onnx
    from onnxruntime.quantization import quant_pre_process

    source = model_path
    if preprocess:
        source = tmp / f"{out.stem}.pre.onnx"
        quant_pre_process(str(model_path), str(source), skip_symbolic_shape=False)
    graph = onnx.load(str(source))
    _name_nodes(graph)
    onnx.save(graph, str(out))
    if source != model_path:
        source.unlink(missing_ok=True)
    return graph


class _Reader(CalibrationDataReader):
    """Feeds calibration batches to ONNX Runtime's calibrator (its CalibrationDataReader
    protocol: ``get_next`` returns a feed dict or None)."""

    def __init__(self, input_name: str, x: np.ndarray, batch_size: int) -> None:
        self._batches = iter([{input_name: x[i:i + batch_size]} for i in range(0, len(x), batch_size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:
        """Not needed for the single pass of MinMax/Entropy/Percentile."""


def quantize_static_qdq(model_path: str | Path, out_path: str | Path, calib_x: np.ndarray, *,
                        settings: dict[str, Any] | None = None, batch_size: int = 8, threads: int = 0,
                        notes: dict[str, Any] | None = None, rounds: Rounds | None = None) -> Path:
    """Write a QDQ int8 model (no metadata, no gate: ``build_ort_int8`` adds both), its
    biases corrected on the calibration tiles unless the settings say otherwise
    (``engines.bias_correction``); ``notes`` receives that correction's summary; ``rounds``:
    the build's earlier rounds, whose pre-processed model is reused."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    cfg = {**DEFAULT_SETTINGS, **(settings or {})}
    rounding = cfg.get("weight_rounding", "nearest")
    if rounding not in ("nearest", "gptq"):
        raise EngineError(f"unknown weight rounding {rounding!r} (nearest or gptq)")
    model_path, out_path = Path(model_path), Path(out_path)
    input_name = onnx.load(str(model_path), load_external_data=False).graph.input[0].name
    reader = _Reader(input_name, calib_x, batch_size)
    extra: dict[str, Any] = {"ActivationSymmetric": bool(cfg["activation_symmetric"]),
                             "WeightSymmetric": bool(cfg["weight_symmetric"]),
                             "CalibMovingAverage": bool(cfg["moving_average"]),
                             "QuantizeBias": bool(cfg["quantize_bias"])}
    if cfg.get("exclude_output_quantization"):
        extra["OpTypesToExcludeOutputQuantization"] = list(cfg["exclude_output_quantization"])
    if cfg["calibrate_method"] == "Percentile":
        extra["CalibPercentile"] = float(cfg.get("percentile", 99.999))
    with tempfile.TemporaryDirectory(prefix="nscm-quant-") as tmp:
        if rounds is not None:
            named = rounds.named(model_path, bool(cfg["preprocess"]))
            graph = onnx.load(str(named))
        else:
            named = Path(tmp) / "named.onnx"
            graph = _named_model(model_path, named, bool(cfg["preprocess"]), Path(tmp))
        exclude = sensitive_nodes(graph, cfg["keep_fp32"]) + list(cfg["exclude_nodes"])
        quantize_static(
            str(named), str(out_path), reader,
            quant_format=QuantFormat[cfg["quant_format"]],
            activation_type=QuantType[cfg["activation_type"]],
            weight_type=QuantType[cfg["weight_type"]],
            per_channel=bool(cfg["per_channel"]),
            calibrate_method=CalibrationMethod[cfg["calibrate_method"]],
            nodes_to_exclude=exclude,
            op_types_to_quantize=list(cfg["op_types"]) if cfg.get("op_types") else None,
            extra_options=extra,
        )
        if rounding == "gptq" or cfg.get("bias_correction"):
            qdq = onnx.load(str(out_path))
            if rounding == "gptq":
                from nscmonitor.engines.weight_rounding import round_weights

                summary = round_weights(qdq, graph, calib_x, model_id=file_sha256(named), threads=threads)
                if notes is not None:
                    notes["weight_rounding"] = summary
            if cfg.get("bias_correction"):
                from nscmonitor.engines.bias_correction import correct_biases

                summary = correct_biases(qdq, graph, calib_x, threads=threads)
                if notes is not None:
                    notes["bias_correction"] = summary
            onnx.save(qdq, str(out_path))
    return out_path


def build_ort_int8(model_path: str | Path, calib: TileSet, heldout: TileSet, *, out_path: str | Path | None = None,
                   settings: dict[str, Any] | None = None, threads: int = 0,
                   rounds: Rounds | None = None) -> tuple[Path | None, GateReport]:
    """Quantize, gate against fp32 on held-out tiles, and publish a model that passed on at
    least one runtime that serves it.

    ONNX Runtime and OpenVINO round int8 differently, so each gets its own gate (both stored
    in the model's metadata) and each engine serves the file only if its own gate passed: a
    model that OpenVINO runs within the tolerance but ONNX Runtime does not is kept, for
    OpenVINO only. Returns (path of the int8 model or None, ONNX Runtime's gate report); the
    report is also written beside the target as ``*.gate.json`` either way. ``rounds``: what
    the build's earlier rounds of the same model and tiles computed (``Rounds``).
    """
    model_path = Path(model_path)
    meta = read_onnx_metadata(model_path)
    out = Path(out_path) if out_path else int8_path_for(model_path)
    # ends in .onnx because OpenVINO picks its reader by file extension
    part = out.with_name(out.name[:-len(".onnx")] + ".part.onnx" if out.name.endswith(".onnx") else out.name + ".part")
    try:
        return _build_ort_int8(model_path, meta, calib, heldout, out, part, settings, threads, rounds)
    except BaseException:  # a full disk, a runtime error, a stopped build: no half-made file beside the model
        part.unlink(missing_ok=True)
        raise


def _build_ort_int8(model_path: Path, meta: ModelMetadata, calib: TileSet, heldout: TileSet, out: Path, part: Path,
                    settings: dict[str, Any] | None, threads: int, rounds: Rounds | None) -> tuple[Path | None, GateReport]:
    cfg = {**DEFAULT_SETTINGS, **(settings or {})}
    notes: dict[str, Any] = {}
    quantize_static_qdq(model_path, part, calib.x, settings=cfg, threads=threads, notes=notes, rounds=rounds)
    tol = dict(meta.int8_tolerance)
    reference, ref_ood, fp32_speed = (rounds.reference(model_path, meta, heldout, threads) if rounds is not None
                                      else _fp32_reference(model_path, meta, heldout, threads))
    t1 = time.perf_counter()
    candidate = OrtCpuEngine(part, meta, threads=threads)
    candidate.name = "ort-int8"
    cand_probs, cand_ood = _probs(candidate, heldout)
    t2 = time.perf_counter()
    # what the gate runs took here (session start included; fp32's in the build's first round):
    # ONNX Runtime's x86 kernels run signed int8 activations slower than fp32, which selection
    # should know about
    speed = {"fp32_tiles_per_s": round(fp32_speed, 1),
             "int8_tiles_per_s": round(len(heldout) / (t2 - t1), 1)}
    report = compare(reference, cand_probs, heldout.groups, backend=candidate.name,
                     tolerance=tol, tiles_source=heldout.source, ood=ood_of_gate(meta, ref_ood, cand_ood))
    (log.info if report.passed else log.warning)("validation gate: %s", report.summary())
    write_report(report, out.with_name(out.name + ".gate.json"))
    ov_reports: dict[str, GateReport | None] = {}
    for precision in openvino_precisions():
        ov_runs = _openvino_probs(part, meta, heldout, threads, precision)
        if ov_runs is None:  # OpenVINO absent, or this precision would not compile: no gate for it
            continue
        # each request the daemon will use (the small one, and the large one where tiles are
        # small) is gated; the record is the worse of them
        requests = " and ".join(str(b) for b, *_ in ov_runs)
        # the small request's scores fit the OOD threshold: it is the one a frame of few tiles,
        # and the gate's record, go through
        ov_report = max((compare(reference, probs, heldout.groups, backend="openvino-int8", tolerance=tol,
                                 tiles_source=f"{heldout.source} (OpenVINO requests of {requests} tiles)",
                                 ood=ood_of_gate(meta, ref_ood, ov_runs[0][2]))
                         for _, probs, _ in ov_runs), key=lambda r: (not r.passed, r.readout_gated_pp))
        ov_reports[precision] = ov_report
        (log.info if ov_report.passed else log.warning)("validation gate (OpenVINO, non-int8 layers %s): %s",
                                                         precision, ov_report.summary())
    if not report.passed and not any(r.passed for r in ov_reports.values() if r is not None):
        part.unlink(missing_ok=True)
        log.warning("int8 model discarded: %s", report.summary())
        return None, report
    if not report.passed:
        log.warning("int8 model kept for OpenVINO only (its gate passed there; ONNX Runtime refuses it): %s",
                    report.summary())
    stamped = {**cfg, "bias_correction_summary": notes.get("bias_correction"),
               "weight_rounding_summary": notes.get("weight_rounding")}
    _stamp_metadata(part, meta, report, file_sha256(model_path), stamped, len(calib), calib.source, ov_reports, speed)
    os.replace(part, out)
    log.info("int8 model written to %s", out)
    return out, report


def _probs(engine: Engine, tiles: TileSet) -> tuple[np.ndarray, np.ndarray | None]:
    engine.load()
    try:
        return predict_with_ood(engine, tiles.x)
    finally:
        engine.close()


def openvino_precisions() -> tuple[str, ...]:
    """The precisions OpenVINO's gate runs for the int8 file's non-int8 layers here: f32,
    and where the CPU has bf16 units bf16 for the stem and the OOD head's products only (what
    an all-int8 file keeps fp32) and bf16 for every fp32 node (a mixed-precision file runs
    much faster so, docs/performance.md), each gated on its own."""
    from nscmonitor.engines.openvino import PRECISIONS, has_bf16

    return PRECISIONS if has_bf16() else ("f32",)


def _openvino_probs(int8_path: Path, meta: ModelMetadata, heldout: TileSet, threads: int,
                    precision: str = "f32") -> list[tuple[int, np.ndarray, np.ndarray | None]] | None:
    """Run the same int8 file on OpenVINO when it is installed, for its own gate: its int8
    kernels round differently from ONNX Runtime's, so ONNX Runtime's pass does not certify it.
    Compiled as the daemon compiles it (for the gate's batch, the daemon's default, with the
    large request beside it where tiles are small) and run once through each request: the
    held-out tiles in chunks of the small batch, then of the large one. Returns (batch,
    probabilities, OOD scores) per request."""
    from nscmonitor.engines.openvino import OpenVinoEngine, large_batch_for

    engine = OpenVinoEngine(int8_path, meta, threads=threads, require_gate=False, batch_size=GATE_BATCH,
                            precision=precision, large_batch=large_batch_for(GATE_BATCH, meta.input_size ** 2))
    try:
        engine.load()
        runs = [(GATE_BATCH, *predict_with_ood(engine, heldout.x))]
        if engine.preferred_batch:
            runs.append((engine.preferred_batch, *predict_with_ood(engine, heldout.x, engine.preferred_batch)))
        return runs
    except EngineError as exc:
        log.info("int8 model not gated on OpenVINO (%s): %s", precision, exc)
        return None
    finally:
        engine.close()


def _stamp_metadata(path: Path, meta: ModelMetadata, report: GateReport, source_sha: str,
                    cfg: dict[str, Any], n_calib: int, calib_source: str, ov_reports: dict[str, GateReport | None],
                    ort_speed: dict[str, float] | None = None) -> None:
    import onnx

    model = onnx.load(str(path))
    record = {"gate": report.to_dict(), "source_sha256": source_sha, "settings": cfg,
              "n_calibration_tiles": n_calib, "calibration_source": calib_source,
              "ort_gate_speed": ort_speed}
    for precision, key in GATE_KEYS.items():
        ov_report = ov_reports.get(precision)
        if ov_report is not None or precision == "f32":
            record[key] = ov_report.to_dict() if ov_report else None
    write_onnx_metadata(model, replace(meta, extra={**meta.extra, INT8_KEY: record}))
    onnx.save(model, str(path))

