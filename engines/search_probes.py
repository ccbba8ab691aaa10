"""The mixed-precision search's probes, each computed once and only from where it leaves fp32.

Why: a probe runs one variant of the Q/DQ model (some layers int8, the rest given back their
fp32 inputs) over the calibration tiles with ONNX Runtime's optimisations off, and a ResNet50's
build runs some 160 of them (about 2 s each on two cores, half the build: docs/performance.md).
Two things in them are computed more than once:
- the same variant, scored again by the ladder's retries at a tighter margin (their greedy
  passes start alike until a decision differs);
- every layer upstream of a variant's first int8 layer computes exactly what the fp32 model
  computes, and the greedy and finer passes keep that first layer for many probes in a row.
So probes are memoised by the set of int8 layers, and the tensors where a variant leaves the
fp32 model (its *frontier*) are taken from the first full run that reaches them (as extra
outputs of that run, at no extra compute) and fed to the rest of the graph in later probes
with the same frontier. The rest of the graph runs with the same kernels on the same values in
the same batches, so the probabilities are the same to the bit (tested), and the search chooses
what it chose before, sooner. Only the first output (the class scores) is computed: the
out-of-distribution head plays no part in a probe.

A node counts as the fp32 model's when its proto is the fp32 graph's node of that name and
every input is the graph input, an fp32 initializer or another such node's output; anything
else (a Q/DQ pair, a layer that reads int8 inputs, a reader whose input the surgery rewired)
stays in the part that runs. Frontier values are cached per batch, up to ``cache_bytes``; a
frontier that does not fit, or that holds a tensor not known to be float, runs whole.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: the frontier cache's bound: a ResNet50's layer1 output over 128 tiles of 96 px is 75 MB
CACHE_BYTES = 256 * 2**20
BATCH = 16


def fp32_nodes(variant: Any, fp32_protos: dict[str, bytes], clean_inits: set[str]) -> set[str]:
    """Names of the variant's nodes that compute what the fp32 model computes and depend on
    the tiles (constant-only nodes stay with the part that runs, so nothing batch-free is cut)."""
    clean = {i.name for i in variant.graph.input} | {""}
    tiles = {i.name for i in variant.graph.input}
    clean |= {i.name for i in variant.graph.initializer if i.name in clean_inits}
    out: set[str] = set()
    for n in variant.graph.node:
        if fp32_protos.get(n.name) == n.SerializeToString() and all(i in clean for i in n.input):
            clean.update(n.output)
            if any(i in tiles for i in n.input):
                tiles.update(n.output)
                out.add(n.name)
    return out


def needed(variant: Any, output: str, skip: set[str]) -> list[Any]:
    """The variant's nodes ``output`` depends on, minus ``skip`` (whose outputs are fed), in order."""
    from nscmonitor.engines.bias_correction import upstream

    return upstream([n for n in variant.graph.node if n.name not in skip], output)


def frontier(variant: Any, nodes: list[Any], skip: set[str]) -> list[str]:
    """The tensors the remaining ``nodes`` read from the skipped fp32 part or the graph input."""
    made = {o for n in variant.graph.node if n.name in skip for o in n.output}
    made |= {i.name for i in variant.graph.input}
    seen: list[str] = []
    for n in nodes:
        for i in n.input:
            if i in made and i not in seen:
                seen.append(i)
    return seen


def _model(variant: Any, nodes: list[Any], inputs: list[Any], outputs: list[Any]) -> Any:
    from onnx import helper

    reads = {i for n in nodes for i in n.input}
    inits = [i for i in variant.graph.initializer if i.name in reads]
    graph = helper.make_graph(nodes, "probe", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=variant.opset_import)
    model.ir_version = variant.ir_version
    return model


class ProbeRunner:
    """Runs variants of one Q/DQ model on fixed tiles, remembering what it already computed
    (see the module docstring). ``probs(key, variant)``: ``key`` names the variant (the set of
    int8 layers); a key seen before returns its probabilities without building or running anything."""

    def __init__(self, fp32: Any, x: np.ndarray, *, threads: int = 0, cache_bytes: int = CACHE_BYTES,
                 qdq: Any = None) -> None:
        self.x = x
        self.threads = threads
        self.cache_bytes = cache_bytes
        self.fp32_protos = {n.name: n.SerializeToString() for n in fp32.graph.node}
        fp_inits = {i.name: i for i in fp32.graph.initializer}
        other = {i.name: i for i in qdq.graph.initializer} if qdq is not None else {}
        # an initializer is the fp32 model's when the Q/DQ model has none of that name or the same one
        self.clean_inits = {k for k, v in fp_inits.items()
                            if k not in other or other[k].SerializeToString() == v.SerializeToString()}
        self.float_tensors = _float_tensors(fp32)
        self.inputs = {i.name for i in fp32.graph.input}
        self.memo: dict[Any, np.ndarray] = {}
        self.cache: OrderedDict[str, list[np.ndarray]] = OrderedDict()
        self.stats = {"memo": 0, "cut": 0, "whole": 0}

    def probs(self, key: Any, variant: Callable[[], Any]) -> np.ndarray:
        """The probabilities of the variant ``variant()`` builds, named by ``key``."""
        if key in self.memo:
            self.stats["memo"] += 1
            return self.memo[key]
        y = self.memo[key] = self._run(variant())
        return y

    def _cacheable(self, names: list[str]) -> bool:
        """Frontier values are taken as extra outputs declared float: a tensor of another or
        unknown type (a shape computed from the tiles) would make that session fail."""
        return all(t in self.float_tensors for t in names)

    def _run(self, variant: Any) -> np.ndarray:
        from onnx import helper

        from nscmonitor.engines.bias_correction import literal_session

        out = variant.graph.output[0]
        skip = fp32_nodes(variant, self.fp32_protos, self.clean_inits)
        nodes = needed(variant, out.name, skip)
        cut = [t for t in frontier(variant, nodes, skip) if t not in self.inputs]
        tiles = [i for i in variant.graph.input if any(i.name in n.input for n in nodes)]
        starts = range(0, len(self.x), BATCH)
        if cut and all(t in self.cache for t in cut):
            self.stats["cut"] += 1
            for t in cut:
                self.cache.move_to_end(t)
            fed = [self.cache[t] for t in cut]
            inputs = [helper.make_tensor_value_info(t, helper.np_dtype_to_tensor_dtype(v[0].dtype), None)
                      for t, v in zip(cut, fed)] + tiles
            sess = literal_session(_model(variant, nodes, inputs, [out]), threads=self.threads)
            ys = []
            for b, i in enumerate(starts):
                feed = {t: v[b] for t, v in zip(cut, fed)}
                feed.update({t.name: self.x[i:i + BATCH] for t in tiles})
                ys.append(sess.run([out.name], feed)[0])
            return as_probs(np.concatenate(ys))
        self.stats["whole"] += 1
        extra = cut if cut and self._cacheable(cut) else []
        outputs = [out] + [helper.make_tensor_value_info(t, helper.np_dtype_to_tensor_dtype(np.dtype(np.float32)), None)
                           for t in extra]
        sess = literal_session(_model(variant, needed(variant, out.name, set()), list(variant.graph.input), outputs),
                               threads=self.threads)
        name = variant.graph.input[0].name
        ys, kept = [], {t: [] for t in extra}
        for i in starts:
            got = sess.run([out.name] + extra, {name: self.x[i:i + BATCH]})
            ys.append(got[0])
            if kept and sum(v.nbytes for v in got[1:]) * len(starts) > self.cache_bytes:
                kept = {}  # this frontier would not fit: keep nothing rather than hold it all first
            for t, v in zip(kept, got[1:]):
                kept[t].append(v)
        self._remember(kept)
        return as_probs(np.concatenate(ys))

    def _remember(self, kept: dict[str, list[np.ndarray]]) -> None:
        if not kept:
            return
        for t, vs in kept.items():
            self.cache[t] = vs
            self.cache.move_to_end(t)
        while sum(v.nbytes for vs in self.cache.values() for v in vs) > self.cache_bytes:
            self.cache.popitem(last=False)


def _float_tensors(model: Any) -> set[str]:
    """Tensors of the fp32 graph known to be float: its value_info (which the quantiser's
    pre-processing fills), else ONNX's shape inference."""
    import onnx

    infos = list(model.graph.value_info)
    if not infos:
        try:
            infos = list(onnx.shape_inference.infer_shapes(model).graph.value_info)
        except Exception as exc:  # onnx raises its own inference errors; an uninferable graph only means nothing is cut
            log.info("search probes: no tensor types for %s (%s); every probe runs whole", model.graph.name, exc)
            return set()
    infos += list(model.graph.input) + list(model.graph.output)
    return {v.name for v in infos if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}


def as_probs(y: np.ndarray) -> np.ndarray:
    """Softmax unless the output already is a probability vector per tile."""
    if np.all(y >= 0) and np.allclose(y.sum(axis=1), 1.0, atol=1e-3):
        return y
    e = np.exp(y - y.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
