"""OpenVINO backend (optional extra, ``pip install openvino``): runs the same ONNX files,
fp32 or the gated int8 QDQ model, on CPUs.

Two compile choices decide its speed, both measured on the project's CPUs
(docs/performance.md, "OpenVINO: fixed batch and bf16"):

- **A fixed batch.** With the ONNX file's dynamic batch dimension OpenVINO's CPU plugin runs
  shape-agnostic kernels and re-plans memory per call; compiled for the daemon's batch size it
  ran the demo model in bf16 3x faster. So ``batch_size`` fixes the batch (per infer request)
  and a short last batch is padded with copies of its last tile and sliced off again (every
  tile is scored on its own, so padding changes nothing). Without ``batch_size`` the batch stays
  dynamic.
- **The precision of the layers that are not int8.** ``precision``: ``f32`` by default, so the
  numbers are the ones the gate certified; ``bf16-stem`` (the stem convolution, centred, and
  the OOD head's products in bf16, all else f32: ``engines.openvino_graph``) and ``bf16``
  (OpenVINO's inference precision hint: every fp32 node in bf16) only on a CPU with bf16 units
  (AVX512-BF16 or AMX) and, for an int8 file, only when its metadata holds a passed gate for
  that precision (``GATE_KEYS``; ``engines.quantize.build_ort_int8`` gates each where the CPU
  has bf16): bf16 rounds what the f32 gate did not see. Left to itself OpenVINO would pick
  bf16 silently on such CPUs. Every graph's one-channel average pools run with the tiles as
  channels (``openvino_graph.pool_tiles_as_channels``; the same values), and with a fixed batch
  its float convolutions of outputs a few pixels wide run on the tiles side by side
  (``openvino_graph.small_maps_as_one_image``, its transposes then moved to where they cancel,
  ``sink_transposes``; the same values up to the order of the sums);
  every graph's channel means run as global average pools and the OOD head's distances as
  products (``openvino_graph.channel_means_as_pools``, ``distances_as_products``; 1.06-1.09x
  on the ResNet50 at 96 px in bf16, and with the transposes moved 1.12-1.14x).

- **The fp32 model in bf16** (``engines.openvino_bf16``): the same bf16 hint on the fp32 file,
  engine ``openvino-bf16``, gated and timed by the build like an int8 file; where a model's
  readout does not survive int8 and the CPU has AMX it is the fastest certified engine.

- **A second, larger batch for frames of many tiles.** A fixed batch of 8 leaves OpenVINO's
  int8 kernels short of work at small tiles: a ResNet50 at 96 px ran 782 (int8) and 817 (bf16
  rest) tiles/s at batch 8, 899 and 933 at 32, 905 and 969 at 64 (2-core AMD EPYC,
  docs/performance.md), while the daemon's batch stays small so a frame of six tiles is not
  padded to 64. So where a tile is small enough (``large_batch_for``), a second request is
  compiled for ``large_batch`` tiles, the engine asks its callers for chunks of that size
  (``preferred_batch``), and ``batch_plan`` runs each chunk as full large requests and the rest
  in small ones.

``streams`` > 1 splits a batch over parallel infer requests, which is how OpenVINO fills
several cores with small batches. ``large_streams`` does the same for the large request alone:
on the 2-core Xeon with AMX two large requests of 32 tiles, one thread each, ran the ResNet50
at 96 px 1.09x (bf16) to 1.16x (int8) one request of 64 on both threads, with the same outputs
to the bit, while on a 2-core AMD EPYC two streams had run it slower; the build times both and
records the faster (``autobuild_run._cpu_speeds``).

OpenVINO's int8 kernels round differently from ONNX Runtime's, so an int8 model serves here only
if its metadata carries a passed gate of its own made from the fp32 model active now.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from pathlib import Path

import numpy as np

from nscmonitor.engines.base import Engine, EngineError
from nscmonitor.engines.metadata import ModelMetadata
from nscmonitor.engines.openvino_graph import (bf16_stem_and_products, channel_means_as_pools, distances_as_products,
                                               pool_tiles_as_channels, sink_transposes, small_maps_as_one_image)

log = logging.getLogger(__name__)

PRECISIONS = ("f32", "bf16-stem", "bf16")
#: the int8 record's gate for each precision of the layers left fp32
GATE_KEYS = {"f32": "openvino_gate", "bf16-stem": "openvino_bf16_stem_gate", "bf16": "openvino_bf16_gate"}
#: what each precision runs in bf16, for status lines and ``describe``
PRECISION_TEXT = {"f32": "", "bf16-stem": "its stem and OOD products run bf16", "bf16": "its non-int8 layers run bf16"}
#: input pixels of one large request: 64 tiles of 96 px, 40 of 112 px, none beyond 192 px
#: (where a batch of 8 already keeps the kernels busy and a large one would cost memory)
LARGE_BATCH_PIXELS = 64 * 96 * 96
LARGE_BATCH_MAX = 64


def large_batch_for(batch_size: int, tile_pixels: int) -> int:
    """The large request's batch for tiles of ``tile_pixels`` pixels, a multiple of the
    daemon's ``batch_size``; 0 when it would not be larger than that batch."""
    if batch_size <= 0 or tile_pixels <= 0:
        return 0
    large = min(LARGE_BATCH_MAX, LARGE_BATCH_PIXELS // tile_pixels) // batch_size * batch_size
    return large if large > batch_size else 0


def batch_plan(n: int, small: int, large: int, slots: int = 1) -> list[tuple[int, int, bool]]:
    """(start, stop, large?) per request for ``n`` tiles: full large requests first; a rest
    that fills a large request but for less than one small batch is padded into one more
    (cheaper than several small ones), and so is a rest that a wave of ``slots`` parallel large
    requests would otherwise run with a request short (it costs that wave no time, where small
    requests after it would: a 48-tile chunk as one request of 32 and two of 8 took 156-172 ms
    against some 80 for the full wave, docs/performance.md "Runs 31-32"); any other rest goes in
    small requests (or one dynamic-size chunk when ``small`` is 0)."""
    plan: list[tuple[int, int, bool]] = []
    start = 0
    if large > 0:
        while n - start >= large or (n - start > large - max(small, 1) and n - start > 0):
            stop = min(start + large, n)
            plan.append((start, stop, True))
            start = stop
        while plan and len(plan) % max(slots, 1) and start < n:
            stop = min(start + large, n)
            plan.append((start, stop, True))
            start = stop
    step = small if small > 0 else max(n - start, 1)
    plan.extend((i, min(i + step, n), False) for i in range(start, n, step))
    return plan


def openvino_disabled() -> bool:
    return os.environ.get("NSCMONITOR_DISABLE_OPENVINO", "") not in ("", "0")


def has_bf16() -> bool:
    """Whether OpenVINO can run bf16 on this CPU (AVX512-BF16 or AMX); False when OpenVINO is
    absent or disabled."""
    return not openvino_disabled() and "BF16" in cpu_capabilities()


@functools.lru_cache(maxsize=1)
def cpu_capabilities() -> tuple[str, ...]:
    """OpenVINO's ``OPTIMIZATION_CAPABILITIES`` of this CPU (e.g. FP32, BF16, INT8); empty
    when OpenVINO is not installed or cannot say."""
    try:
        import openvino as ov

        return tuple(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except (ImportError, RuntimeError) as exc:
        log.info("OpenVINO's CPU capabilities unavailable: %s", exc)
        return ()


class OpenVinoEngine(Engine):
    name = "openvino"

    def __init__(self, model_path: str | Path, metadata: ModelMetadata, *, threads: int = 0, streams: int = 1,
                 cache_dir: str | Path | None = None, require_gate: bool = True,
                 source_sha256: str | None = None, batch_size: int = 0, precision: str = "f32",
                 large_batch: int = 0, large_streams: int = 0) -> None:
        super().__init__(model_path, metadata)
        if precision not in PRECISIONS:
            raise EngineError(f"OpenVINO precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.require_gate = require_gate
        self.source_sha256 = source_sha256
        self.threads = threads
        self.streams = max(1, streams)
        self.precision = precision
        # the fixed batch of each infer request: the caller's batch spread over the streams
        self.request_batch = math.ceil(batch_size / self.streams) if batch_size > 0 else 0
        # the large request's batch (per stream, as ``request_batch``); only beside a fixed small batch
        self.large_batch = large_batch if self.request_batch and large_batch > self.request_batch else 0
        # parallel large requests, one per stream of a model compiled for that many (``streams`` unless given)
        self.large_streams = max(1, large_streams) if large_streams else self.streams
        self.preferred_batch = self.large_batch * self.large_streams if self.large_batch else None
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._requests: list = []
        self._large_requests: list = []
        self._ood_index: int | None = None
        # an fp32 model run in bf16 throughout is an engine of its own (``engines.openvino_bf16``)
        self.name = ("openvino-int8" if "int8" in metadata.extra else
                     "openvino-bf16" if precision == "bf16" else "openvino-fp32")

    def load(self) -> None:
        if openvino_disabled():
            raise EngineError("OpenVINO disabled by NSCMONITOR_DISABLE_OPENVINO")
        try:
            import openvino as ov
        except ImportError as exc:
            raise EngineError(f"OpenVINO is not installed (optional: pip install openvino): {exc}") from exc
        if self.precision != "f32" and not has_bf16():
            raise EngineError(f"{self.name}: this CPU has no bf16 units (AVX512-BF16 or AMX) for OpenVINO's {self.precision}")
        int8 = self.metadata.extra.get("int8")
        if int8 and self.require_gate:
            gate = int8.get(GATE_KEYS[self.precision]) or {}
            if not gate.get("passed", False):
                which = f" for {self.precision}" if self.precision != "f32" else ""
                raise EngineError(f"{self.model_path}: no passed OpenVINO gate{which} in its metadata "
                                  f"({gate.get('reasons') or 'rebuild the int8 model with OpenVINO installed'})")
            if self.source_sha256 and int8.get("source_sha256") != self.source_sha256:
                raise EngineError(f"{self.model_path} was quantized from another fp32 model; rebuild it")
        compiled = self._compile_or_retry(ov, self.request_batch, self.streams)
        self._requests = [compiled.create_infer_request() for _ in range(self.streams)]
        if self.large_batch:
            large = self._compile_or_retry(ov, self.large_batch, self.large_streams)
            self._large_requests = [large.create_infer_request() for _ in range(self.large_streams)]
        # the OOD score's output index, None when the graph lacks the output its metadata names
        self._ood_index = next((i for i, o in enumerate(compiled.outputs)
                                if i > 0 and self.ood_output in o.get_names()), None)

    def _compile_or_retry(self, ov, batch: int, streams: int):
        try:
            return self._compile(ov, batch, streams)
        except RuntimeError as exc:
            from nscmonitor.engines.enginefile import move_aside

            # A corrupt compiled-model cache must not stop the daemon at every start: moved
            # aside, compiled anew (and cached again) once; a second failure is the model's.
            if self.cache_dir is None or not self.cache_dir.exists() or move_aside(self.cache_dir, str(exc)) is None:
                raise EngineError(f"{self.name}: cannot compile {self.model_path}: {exc}") from exc
            try:
                return self._compile(ov, batch, streams)
            except RuntimeError as exc2:
                raise EngineError(f"{self.name}: cannot compile {self.model_path}: {exc2}") from exc2

    def _compile(self, ov, batch: int, streams: int):
        core = ov.Core()
        if self.cache_dir is not None:
            core.set_property({"CACHE_DIR": str(self.cache_dir)})
        config = {
            # bf16-stem lowers its nodes in the graph itself and must keep the plugin from lowering the rest
            "INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32",
            "PERFORMANCE_HINT": "LATENCY" if streams == 1 else "THROUGHPUT",
            "NUM_STREAMS": streams,
        }
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        model = core.read_model(str(self.model_path))
        if batch:
            model.reshape({model.inputs[0].get_any_name(): [batch, *self.input_shape]})
        pool_tiles_as_channels(model)
        channel_means_as_pools(model)
        distances_as_products(model)
        if self.precision == "bf16-stem":
            bf16_stem_and_products(model)
        if small_maps_as_one_image(model):
            sink_transposes(model)
        return core.compile_model(model, "CPU", config)

    def _run(self, tiles: np.ndarray) -> np.ndarray:
        if not self._requests:
            raise EngineError(f"{self.name}: load() was not called")
        if self.request_batch:
            plan = batch_plan(len(tiles), self.request_batch, self.large_batch, len(self._large_requests))
        else:
            bounds = np.cumsum([0] + [len(c) for c in np.array_split(np.arange(len(tiles)),
                                                                      min(len(self._requests), len(tiles)))])
            plan = [(int(a), int(b), False) for a, b in zip(bounds[:-1], bounds[1:])]
        outs: dict[int, np.ndarray] = {}
        oods: dict[int, np.ndarray] = {}
        for large in (True, False):
            requests = self._large_requests if large else self._requests
            batch = self.large_batch if large else self.request_batch
            chunks = [(a, b) for a, b, is_large in plan if is_large == large]
            if not chunks:
                continue
            for first in range(0, len(chunks), len(requests)):
                wave = list(zip(requests, chunks[first:first + len(requests)]))
                for req, (a, b) in wave:
                    req.start_async({0: _padded(tiles[a:b], batch)})
                for req, (a, b) in wave:
                    req.wait()
                    outs[a] = np.array(req.get_output_tensor(0).data[:b - a], copy=True)
                    if self._ood_index is not None:
                        oods[a] = np.array(req.get_output_tensor(self._ood_index).data[:b - a], copy=True)
        probs = np.concatenate([outs[a] for a in sorted(outs)])
        return (probs, np.concatenate([oods[a] for a in sorted(oods)])) if oods else probs

    def describe(self) -> str:
        text = PRECISION_TEXT[self.precision] if self.name == "openvino-int8" else ""
        return super().describe() + (f" ({text})" if text else "")

    def close(self) -> None:
        self._requests = []
        self._large_requests = []


def _padded(chunk: np.ndarray, batch: int) -> np.ndarray:
    """A short chunk padded to the compiled batch with copies of its last tile (every tile is
    scored on its own, so the copies change nothing and are sliced off)."""
    if not batch or len(chunk) == batch:
        return chunk
    return np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), axis=0)])
