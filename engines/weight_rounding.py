"""Weight rounding that minds the layer's output (GPTQ; Frantar et al. 2022, "GPTQ: Accurate
Post-Training Quantization for Generative Pre-trained Transformers", after Optimal Brain
Quantization): each quantised Conv/Gemm's int8 weights are chosen column by column, the rounding
error of each column pushed onto the columns not yet rounded in proportion to how their inputs
correlate on the calibration tiles, instead of rounding every weight to its nearest step.

Why: on trained ResNet50s the weights' rounding alone moved the held-out well readout by
0.9 pp of the gate's 1 pp (docs/performance.md, "Weight rounding that minds the output"): with
per-channel scales set by each channel's largest weight, the many small weights of a channel
are rounded coarsely, and their errors add up along correlated inputs. Choosing the rounding
against the layer's own input statistics removed most of it (0.90 -> 0.16 pp, weights alone)
without touching a scale, a zero point or the graph: the file keeps its Q/DQ form (the CPU
file's or TensorRT's), and only the int8 weight initialisers change.

What it needs: each layer's input correlation ``H = E[x x^T]`` over the calibration tiles, in
the fp32 model (one forward pass of the calibration tiles; every layer's H depends only on the
fp32 model and the tiles, not on which other layers are int8, so the result is the same for
every mix the mixed-precision ladder tries and is cached per build). Every layer's H is held
at once (K x K for K inputs per output: about 1 GB for a ResNet50, most of it its last stage). Measured and not used: the
int8 model's own layer inputs, layer by layer in graph order, with the fp32 output as the target
(the rounding then also absorbs the upstream layers' rounding): it fitted the calibration tiles'
rounding noise and read the held-out tiles worse (docs/performance.md).

Scope: layers whose weights are int8 per channel (or per tensor) with zero point 0, read through
a DequantizeLinear, with an ungrouped, undilated convolution or a Gemm; anything else keeps its
nearest rounding, counted in the summary.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: GPTQ's dampening: a share of the mean diagonal of H added to it, so that inputs the
#: calibration tiles never vary (or vary together) do not make H singular
DAMP = 0.01
#: columns rounded before the remaining ones are updated in one product (the paper's lazy batch)
BLOCK = 128
QMIN, QMAX = -127, 127  # the symmetric int8 weights both files use
#: tiles per forward pass when collecting the layers' inputs
BATCH = 8

#: (model identity, calibration tiles, weight name, scale) -> rounded int8 weights, for the
#: builds of one process (the ladder quantises the same model several times)
_CACHE: dict[tuple[str, str, str, str], np.ndarray] = {}
_CACHE_LIMIT = 4096


@dataclass(frozen=True)
class Layer:
    node: Any  # the Conv/Gemm node in the Q/DQ model
    source: str  # the fp32 model's tensor this layer reads (before its input's Q/DQ)
    weight: str  # the int8 weight initialiser
    scale: str  # its scale initialiser
    kernel: tuple[int, ...] = ()  # a convolution's (kh, kw), from its weight (the attribute is optional)


def _attrs(node: Any) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def layers(qdq: Any, fp32_tensors: set[str]) -> tuple[list[Layer], int]:
    """The layers whose weights this module can round, and how many quantised layers it leaves
    to nearest rounding (grouped or dilated convolutions, zero points, non-int8 weights, an input
    the fp32 model does not name)."""
    from onnx import TensorProto

    inits = {i.name: i for i in qdq.graph.initializer}
    producer = {o: n for n in qdq.graph.node for o in n.output}
    found: list[Layer] = []
    skipped = 0
    for n in qdq.graph.node:
        if n.op_type not in ("Conv", "Gemm") or len(n.input) < 2:
            continue
        wdq = producer.get(n.input[1])
        if wdq is None or wdq.op_type != "DequantizeLinear" or wdq.input[0] not in inits:
            continue  # a layer kept fp32
        a = _attrs(n)
        w = inits[wdq.input[0]]
        zp = wdq.input[2] if len(wdq.input) > 2 and wdq.input[2] else None
        ok = (w.data_type == TensorProto.INT8 and a.get("group", 1) == 1
              and all(d == 1 for d in a.get("dilations", [1, 1]))
              and (n.op_type != "Conv" or len(w.dims) == 4)
              and (n.op_type == "Conv" or (a.get("transA", 0) == 0 and len(w.dims) == 2))
              and (zp is None or (zp in inits and not np.any(_array(inits[zp])))))
        source = _source(n.input[0], producer)
        if not ok or source not in fp32_tensors:
            skipped += 1
            continue
        found.append(Layer(n, source, wdq.input[0], wdq.input[1], tuple(w.dims[2:])))
    return found, skipped


def _array(t: Any) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(t)


def _source(tensor: str, producer: dict[str, Any]) -> str:
    """The fp32 tensor behind a layer input: through its DequantizeLinear and QuantizeLinear."""
    dq = producer.get(tensor)
    if dq is not None and dq.op_type == "DequantizeLinear":
        q = producer.get(dq.input[0])
        if q is not None and q.op_type == "QuantizeLinear":
            return q.input[0]
    return tensor


def im2col(x: np.ndarray, attrs: dict[str, Any]) -> np.ndarray:
    """(N, C, H, W) -> (N * Ho * Wo, C * kh * kw), columns in a Conv weight's (Cin, kh, kw)
    order, so that ``patches @ W.reshape(Cout, -1).T`` is the convolution (``attrs``: the
    node's, with ``kernel_shape`` filled in from the weight where the node leaves it out)."""
    kh, kw = attrs["kernel_shape"]
    sh, sw = attrs.get("strides", [1, 1])
    pt, pl, pb, pr = attrs.get("pads", [0, 0, 0, 0])
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        pt, pl, pb, pr = _same_pads(x.shape[2:], (kh, kw), (sh, sw), attrs["auto_pad"])
    if kh == kw == 1 and not any((pt, pl, pb, pr)):
        x = x[:, :, ::sh, ::sw]
        return x.transpose(0, 2, 3, 1).reshape(-1, x.shape[1])
    x = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    n, c, ho, wo = win.shape[:4]
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c * kh * kw)


def _same_pads(hw: tuple[int, ...], k: tuple[int, int], s: tuple[int, int], mode: Any) -> tuple[int, int, int, int]:
    pads = []
    for size, kk, ss in zip(hw, k, s):
        out = -(-size // ss)
        total = max((out - 1) * ss + kk - size, 0)
        pads.append((total - total // 2, total // 2) if mode in (b"SAME_LOWER", "SAME_LOWER")
                    else (total // 2, total - total // 2))
    (t, b), (l_, r) = pads
    return t, l_, b, r


def _rows(x: np.ndarray, layer: Layer) -> np.ndarray:
    if layer.node.op_type == "Conv":
        return im2col(x, {"kernel_shape": list(layer.kernel), **_attrs(layer.node)})
    return x.reshape(len(x), -1)


def input_correlations(fp32: Any, found: list[Layer], x: np.ndarray, *, threads: int = 0) -> list[np.ndarray]:
    """``E[x x^T]`` of every layer's input rows over the calibration tiles, from one pass of
    the fp32 model with those tensors as extra outputs (no graph optimisation, so every named
    tensor exists as named)."""
    import onnx
    import onnxruntime as ort

    model = onnx.ModelProto()
    model.CopyFrom(fp32)
    names = sorted({layer.source for layer in found})
    have = {o.name for o in model.graph.output}
    for name in names:
        if name not in have:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    sums: list[np.ndarray | None] = [None] * len(found)
    counts = [0] * len(found)
    for i in range(0, len(x), BATCH):
        outs = dict(zip(names, session.run(names, {feed: x[i:i + BATCH]})))
        for j, layer in enumerate(found):
            rows = _rows(np.asarray(outs[layer.source], np.float32), layer)
            h = rows.T @ rows
            if sums[j] is None:
                sums[j] = h.astype(np.float64)
            else:  # each float32 entry widened as it is added: what adding its float64 copy gives, without the copy
                np.add(sums[j], h, out=sums[j])
            counts[j] += len(rows)
    for s, c in zip(sums, counts):
        s /= max(c, 1)  # type: ignore[operator]  (in place: these are up to 4608 x 4608 float64)
    return sums  # type: ignore[return-value]


def inverse_cholesky_upper(h: np.ndarray) -> np.ndarray:
    """The upper triangular ``u`` with ``inv(h) = u^T u`` (the factor GPTQ steps through),
    without forming ``inv(h)``: with ``J`` the reversal, ``J h J = m m^T`` (Cholesky) gives
    ``h = r r^T`` for the upper ``r = J m J``, so ``inv(h) = r^-T r^-1`` and ``u = r^-1 =
    J m^-1 J``. One Cholesky and one triangular inverse, a third of the work of the general
    inverse and a second Cholesky (on a ResNet's 4608-wide inputs 0.6 s of the two's 0.85 s per
    layer went to the inverse); the factor is the same, Cholesky factors being unique."""
    from scipy.linalg import cholesky  # raises numpy's LinAlgError where h is not positive definite
    from scipy.linalg.lapack import dtrtri

    m = cholesky(h[::-1, ::-1], lower=True, check_finite=False)
    m_inv, info = dtrtri(m, lower=1, overwrite_c=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"the Cholesky factor is singular (LAPACK dtrtri info {info})")
    return m_inv[::-1, ::-1]


def gptq(weights: np.ndarray, h: np.ndarray, scale: np.ndarray, *, damp: float = DAMP,
         block: int = BLOCK) -> np.ndarray:
    """Int8 steps (Cout x K) for float ``weights`` (Cout x K) on the grid ``scale`` (Cout, or
    one value), minimising ``E||(W - Q) x||^2`` over inputs with correlation ``h`` (K x K)
    greedily, one column at a time, the columns ordered by the size of their input (the
    paper's "act order"). An input the tiles never vary keeps its nearest rounding and passes
    no error on."""
    w = np.asarray(weights, np.float64).copy()
    h = np.asarray(h, np.float64).copy()
    k = w.shape[1]
    s = np.broadcast_to(np.asarray(scale, np.float64).reshape(-1), (w.shape[0],)).copy()
    s[s <= 0] = 1.0
    dead = np.diag(h) <= 0
    h[dead, :] = 0.0
    h[:, dead] = 0.0
    h[dead, dead] = 1.0
    order = np.argsort(-np.diag(h), kind="stable")
    w, h = w[:, order], h[np.ix_(order, order)]
    h[np.diag_indices(k)] += damp * float(np.mean(np.diag(h)))
    u = inverse_cholesky_upper(h)
    q = np.zeros_like(w)
    for b0 in range(0, k, block):
        b1 = min(b0 + block, k)
        wb = w[:, b0:b1].copy()
        err = np.zeros_like(wb)
        ub = u[b0:b1, b0:b1]
        for i in range(b1 - b0):
            col = wb[:, i]
            qi = np.clip(np.round(col / s), QMIN, QMAX)
            q[:, b0 + i] = qi
            e = (col - qi * s) / ub[i, i]
            wb[:, i:] -= np.outer(e, ub[i, i:])
            err[:, i] = e
        w[:, b1:] -= err @ u[b0:b1, b1:]
    return q[:, np.argsort(order)].astype(np.int8)


def _digest(a: np.ndarray | bytes) -> str:
    return hashlib.sha256(a if isinstance(a, bytes) else np.ascontiguousarray(a).tobytes()).hexdigest()[:24]


def round_weights(qdq: Any, fp32: Any, x: np.ndarray, *, model_id: str = "", threads: int = 0) -> dict[str, Any]:
    """Replace the nearest-rounded int8 weights of ``qdq`` (in place) by GPTQ's, measured on the
    calibration tiles ``x`` (already in the model's input contract) through ``fp32``, the
    graph ``qdq`` was quantised from (its node and tensor names). ``model_id`` names the fp32
    model for the per-process cache (empty: no cache). Returns a summary for the int8 record."""
    from onnx import numpy_helper

    t0 = time.perf_counter()
    fp32_tensors = {o for n in fp32.graph.node for o in n.output} | {i.name for i in fp32.graph.input}
    found, skipped = layers(qdq, fp32_tensors)
    inits = {i.name: i for i in qdq.graph.initializer}
    weights = {i.name: i for i in fp32.graph.initializer}
    tiles = _digest(np.asarray(x, np.float32)) if model_id else ""

    def key(layer: Layer) -> tuple[str, str, str, str]:
        return (model_id, tiles, layer.weight, _digest(_array(inits[layer.scale])))

    todo = [layer for layer in found if not model_id or key(layer) not in _CACHE]
    hs = input_correlations(fp32, todo, x, threads=threads) if todo else []
    fresh = dict(zip((layer.weight for layer in todo), hs))
    changed = total = rounded = 0
    for layer in found:
        old = _array(inits[layer.weight])
        if layer.weight in fresh:
            new = _rounded(layer, weights, inits, fresh.pop(layer.weight), old.shape)
            if new is None:
                skipped += 1
                continue
            if model_id:
                if len(_CACHE) >= _CACHE_LIMIT:
                    _CACHE.clear()
                _CACHE[key(layer)] = new
        else:
            new = _CACHE[key(layer)]
        inits[layer.weight].CopyFrom(numpy_helper.from_array(new.reshape(old.shape), layer.weight))
        changed += int(np.count_nonzero(new.reshape(old.shape) != old))
        total += old.size
        rounded += 1
    summary = {"method": "gptq", "layers": rounded, "layers_nearest": skipped, "damp": DAMP,
               "weights_changed": round(changed / total, 4) if total else 0.0,
               "tiles": int(len(x)), "seconds": round(time.perf_counter() - t0, 1)}
    log.info("weight rounding (GPTQ): %d layers, %.1f %% of their int8 weights moved off the nearest step, "
             "%d layer(s) left to nearest rounding, %.0f s", rounded, 100 * summary["weights_changed"],
             skipped, summary["seconds"])
    return summary


def _rounded(layer: Layer, weights: dict[str, Any], inits: dict[str, Any], h: np.ndarray,
             shape: tuple[int, ...]) -> np.ndarray | None:
    """The layer's GPTQ int8 weights in the initialiser's shape, or None (nearest rounding stays)
    where the fp32 weight cannot be found (the quantiser names it ``<weight>_quantized``) or the
    layer's inputs are not finite on the calibration tiles (a model that overflows there)."""
    base = layer.weight[:-len("_quantized")] if layer.weight.endswith("_quantized") else None
    if base is None or base not in weights or not np.all(np.isfinite(h)):
        return None
    w = _array(weights[base]).astype(np.float64)
    if w.shape != tuple(shape):
        return None
    scale = _array(inits[layer.scale]).astype(np.float64)
    trans_b = _attrs(layer.node).get("transB", 0)
    mat = w.reshape(w.shape[0], -1) if layer.node.op_type == "Conv" else (w if trans_b else w.T)  # Cout x K
    if mat.shape[1] != h.shape[0]:
        return None
    try:
        q = gptq(mat, h, scale)
    except np.linalg.LinAlgError as exc:
        log.warning("%s: weights keep their nearest rounding (%s)", layer.node.name, exc)
        return None
    if layer.node.op_type == "Conv":
        return q.reshape(shape)
    return q if trans_b else q.T
