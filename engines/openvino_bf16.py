"""The fp32 model run by OpenVINO in bf16 throughout (engine ``openvino-bf16``): a CPU engine
with no int8 file, for CPUs with bf16 units (AMX, AVX512-BF16).

Why it exists: the int8 engines serve only a model whose well readout survives int8, and many
a lab's model does not (docs/performance.md, runs 6, 7, 9 and 20: 1.3 to 15 pp with every
layer int8, so the build kept 7 to 16 of 16 blocks fp32 and the engine ran 1.3-2.6x fp32).
bf16 rounds every value to 8 significant bits under its own exponent, where int8 gives a whole
channel one scale and 8 bits, so the same network moves its readout much less (run 20's
ResNet50: 0.74 pp in bf16 against 1.5-2.1 pp all-int8), and on a CPU with AMX bf16 runs on the
tile unit: 4.1x ONNX Runtime fp32 there, against 1.3x for the int8 file that passed
with twelve blocks fp32. It is gated exactly as an int8 file is (the same held-out tiles,
tolerances and OOD threshold mapping; through the small and the large request, the worse one
recorded), timed by the build beside the int8 engines, and served when the build timed it the
fastest certified engine. Its certificate is the build's record (``engine-status.json``),
valid under the fingerprint it was made with, as for the torch CUDA engine: there is no file
of its own to stamp.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from nscmonitor.engines.calibration import TileSet
from nscmonitor.engines.metadata import ModelMetadata
from nscmonitor.engines.validate import GATE_BATCH, GateReport, compare, ood_of_gate, predict_with_ood

log = logging.getLogger(__name__)

NAME = "openvino-bf16"


def engine(model_path: str | Path, meta: ModelMetadata, *, threads: int = 0, batch_size: int = GATE_BATCH,
           large_batch: int | None = None, large_streams: int = 0, cache_dir: str | Path | None = None):
    """The engine (not loaded): the fp32 file compiled with OpenVINO's bf16 hint; the large
    request as for the int8 file (``openvino.large_batch_for``) unless given."""
    from nscmonitor.engines.openvino import OpenVinoEngine, large_batch_for

    large = large_batch_for(batch_size, meta.input_size ** 2) if large_batch is None else large_batch
    return OpenVinoEngine(model_path, meta, threads=threads, batch_size=batch_size, precision="bf16",
                          large_batch=large, large_streams=large_streams, cache_dir=cache_dir)


def gate(model_path: str | Path, meta: ModelMetadata, heldout: TileSet, reference: Any,
         threads: int = 0) -> GateReport:
    """The bf16 engine against the fp32 reference (``(probs, ood)`` of ONNX Runtime fp32 on the
    same tiles) through each request the daemon will use; the worse report is the record, the
    small request's scores map the OOD threshold (a frame of few tiles goes through it)."""
    ref_probs, ref_ood = reference
    candidate = engine(model_path, meta, threads=threads)
    candidate.load()
    try:
        runs = [(GATE_BATCH, *predict_with_ood(candidate, heldout.x))]
        if candidate.preferred_batch:
            runs.append((candidate.preferred_batch, *predict_with_ood(candidate, heldout.x, candidate.preferred_batch)))
    finally:
        candidate.close()
    requests = " and ".join(str(b) for b, *_ in runs)
    return max((compare(ref_probs, probs, heldout.groups, backend=NAME, tolerance=dict(meta.int8_tolerance),
                        tiles_source=f"{heldout.source} (OpenVINO bf16 requests of {requests} tiles)",
                        ood=ood_of_gate(meta, ref_ood, runs[0][2]))
                for _, probs, _ in runs), key=lambda r: (not r.passed, r.readout_gated_pp))


def gate_record(model_path: str | Path) -> dict[str, Any] | None:
    """The gate this model's bf16 engine passed in its last build (its OOD threshold among
    them), None when there is none."""
    from nscmonitor.engines.autobuild_status import build_attempt

    return (build_attempt(model_path, NAME) or {}).get("gate")


def certified(model_path: str | Path) -> str | None:
    """None when this model's bf16 engine passed its gate on this machine under the current
    fingerprint (model, calibration set, runtimes, machine, recipe); else why not."""
    from nscmonitor.engines.autobuild_status import build_certificate
    from nscmonitor.engines.openvino import has_bf16

    if not has_bf16():
        return "this CPU has no bf16 units (AVX512-BF16 or AMX), or OpenVINO is absent"
    return build_certificate(model_path, NAME)
