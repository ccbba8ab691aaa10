"""Empirical bias correction of a Q/DQ int8 model (Nagel et al. 2019, "Data-free quantization
through weight equalization and bias correction", its empirical variant; NNCF's bias correction).

Why: the well readout is a mean over the tiles of a well, so random rounding noise averages
out but a *systematic* error does not. int8 rounding produces one: each weight's rounding error
shifts every output channel's mean by a fixed amount, and rounding noise that passes through a
ReLU no longer averages to zero (E[relu(x + n)] > E[relu(x)]), so every layer adds a positive
shift that the next layers carry on. Shifting each quantised layer's (float) bias by the mean
difference between the fp32 model and the int8 model at that layer, measured on the
calibration tiles, removes that drift without touching a weight or a quantisation scale: the
file keeps its Q/DQ form (the CPU file's or TensorRT's, ``engines.quantize``).

Which variant: the *global* empirical one. The reference is the fp32 model run on the same tiles
and compared at the same tensor; the cheaper local variant (the fp32 layer applied to the
int8 model's own input) corrects only a layer's weight rounding and leaves the ReLU drift and
everything accumulated upstream, which is what moves this project's ResNet50 readouts. The
exact sequential procedure needs one forward pass per layer (53 for a ResNet50); instead every
layer is corrected at once from one pass and the pass is repeated (``passes``), each pass
re-measuring the remaining shift with the corrections above it in place, so the first layers
are exact after one pass and the rest converge within a few (measured: docs/performance.md).

Where: a Conv or Gemm whose weight is quantised (read through a DequantizeLinear). Its target
tensor is its own output, except where that output feeds a residual Add alone: there the Add's
output is matched instead, so the block's output (with the shortcut's drift) is corrected by
the block's last convolution. The corrected bias gets a new initializer name, so the fp32 model's
bias of the same layer (which ``engines.mixed_precision`` restores for layers kept in fp32) is
untouched.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: suffix of a corrected bias initializer's name
SUFFIX = "_biascorr"


def correctable(qdq: Any) -> dict[str, str]:
    """Quantised Conv/Gemm node name -> the tensor whose per-channel mean its bias corrects."""
    dq_out = {o for n in qdq.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    layers = [n for n in qdq.graph.node if n.op_type in ("Conv", "Gemm") and len(n.input) > 1 and n.input[1] in dq_out]
    readers = _readers_through_qdq(qdq)
    targets: dict[str, str] = {}
    add_taken: set[str] = set()
    for n in reversed(layers):  # the last convolution feeding an Add corrects the Add's output
        reads = readers.get(n.output[0], [])
        if len(reads) == 1 and reads[0].op_type == "Add" and reads[0].output[0] not in add_taken:
            targets[n.name] = reads[0].output[0]
            add_taken.add(reads[0].output[0])
        else:
            targets[n.name] = n.output[0]
    return {n.name: targets[n.name] for n in layers}


def _readers_through_qdq(model: Any) -> dict[str, list[Any]]:
    """Tensor -> the non-Q/DQ nodes that read it, looking through a Q -> DQ pair (the
    quantiser puts one between a convolution and the residual Add)."""
    direct: dict[str, list[Any]] = {}
    for n in model.graph.node:
        for i in n.input:
            direct.setdefault(i, []).append(n)

    def resolve(tensor: str) -> list[Any]:
        out = []
        for r in direct.get(tensor, []):
            if r.op_type in ("QuantizeLinear", "DequantizeLinear"):
                out += resolve(r.output[0])
            else:
                out.append(r)
        return out

    return {t: resolve(t) for t in direct}


def literal_session(model: Any, *, threads: int = 0):
    """An ONNX Runtime CPU session with graph optimisations off: Q/DQ pairs execute as written
    (fake quantisation in float) instead of being fused into int8 kernels, so what is measured
    is the rounding the file describes, whichever runtime later serves it."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def channel_means(model: Any, tensors: list[str], x: np.ndarray, *, threads: int = 0,
                  batch_size: int = 16) -> dict[str, np.ndarray]:
    """Per-channel (axis 1) mean of each named tensor over the tiles ``x``, run by ONNX
    Runtime with graph optimisations off so Q/DQ execute as written."""
    import onnx

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    for t in tensors:
        if t not in have:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    sess = literal_session(probe, threads=threads)
    name = sess.get_inputs()[0].name
    sums: dict[str, np.ndarray] = {}
    count = 0
    for i in range(0, len(x), batch_size):
        outs = sess.run(tensors, {name: x[i:i + batch_size]})
        for t, y in zip(tensors, outs):
            axes = (0,) + tuple(range(2, y.ndim))
            s = y.astype(np.float64).sum(axis=axes) / (y.size / y.shape[0] / y.shape[1])
            sums[t] = sums.get(t, 0.0) + s
        count += len(outs[0])
    return {t: sums[t] / count for t in tensors}


def correct_biases(qdq: Any, fp32: Any, calib_x: np.ndarray, *, threads: int = 0) -> dict[str, Any]:
    """Correct ``qdq``'s quantised layers' biases in place against ``fp32`` (same tensor names:
    the Q/DQ model was quantised from it), layer by layer in topological order. Returns a
    summary: layers corrected and the largest per-channel shift before and after, relative to
    the largest fp32 channel mean of the tensor."""
    targets = correctable(qdq)
    if not targets:
        return {"layers": 0}
    tensors = list(dict.fromkeys(targets.values()))
    in_fp32 = _same_tensors(qdq, fp32, tensors)
    measured = channel_means(fp32, [in_fp32[t] for t in tensors], calib_x, threads=threads)
    reference = {t: measured[in_fp32[t]] for t in tensors}
    biases = {name: _bias_of(qdq, name) for name in targets}
    before: dict[str, np.ndarray] = {}
    runner = _Segments(qdq, calib_x, threads)
    left = set(targets)
    for segment in runner:
        if not left:
            break  # the pieces after the last corrected layer need not run
        for name in [n for n in segment if n in targets]:
            left.discard(name)
            t = targets[name]
            delta = reference[t] - runner.mean(t)
            before.setdefault(t, delta)
            biases[name] = biases[name] + delta.astype(np.float32)
            _write_biases(qdq, {name: biases[name]})
    _drop_unread_initializers(qdq)
    after = channel_means(qdq, tensors, calib_x, threads=threads)

    def worst(shift: dict[str, np.ndarray]) -> float:
        return max(float(np.abs(shift[t]).max()) / (float(np.abs(reference[t]).max()) or 1.0) for t in shift)

    summary = {"layers": len(targets), "max_rel_shift_before": round(worst(before), 5),
               "max_rel_shift_after": round(worst({t: reference[t] - after[t] for t in tensors}), 5)}
    log.info("bias correction: %d layers, largest channel shift %.3g of the channel range before, %.3g after",
             summary["layers"], summary["max_rel_shift_before"], summary["max_rel_shift_after"])
    return summary


def _same_tensors(qdq: Any, fp32: Any, tensors: list[str]) -> dict[str, str]:
    """Each Q/DQ tensor's name in the fp32 graph, found through its producer's node name (the
    quantiser renames a quantised graph output ``y`` to ``y_QuantizeLinear_Input``)."""
    producer = {o: n.name for n in qdq.graph.node for o in n.output}
    fp_out = {n.name: n.output[0] for n in fp32.graph.node}
    return {t: fp_out.get(producer.get(t, ""), t) for t in tensors}


class _Segments:
    """Runs a graph piece by piece on the calibration tiles: pieces end where a single tensor
    carries everything the rest of the graph reads (a residual block's output), so correcting
    a layer re-runs only its own piece, and the piece's output feeds the next one (the exact
    sequential procedure at the cost of a few forward passes). Iterating yields each piece's
    node names; ``mean`` measures a tensor of the current piece with the biases as they are."""

    def __init__(self, model: Any, x: np.ndarray, threads: int) -> None:
        self.model, self.threads = model, threads
        self.pieces = _pieces(model)
        self.consts = _constant_tensors(model)
        self.current: tuple[list[Any], str] | None = None
        self.feed = (model.graph.input[0].name, x)

    def __iter__(self):
        for nodes, cut in self.pieces:
            self.current = (nodes, cut)
            yield [n.name for n in nodes]
            self.feed = (cut, self._run(cut))

    def mean(self, tensor: str) -> np.ndarray:
        y = self._run(tensor)
        axes = (0,) + tuple(range(2, y.ndim))
        return y.astype(np.float64).mean(axis=axes)

    def _run(self, output: str) -> np.ndarray:
        from onnx import helper

        assert self.current is not None
        nodes = upstream(self.current[0], output)
        name, x = self.feed
        inits = {i.name: i for i in self.model.graph.initializer}
        const_nodes = _constant_producers(self.model, self.consts, {i for n in nodes for i in n.input})
        reads = {i for n in const_nodes + list(nodes) for i in n.input}
        graph = helper.make_graph(
            const_nodes + list(nodes), "piece",
            [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(x.dtype), None)],
            [helper.make_tensor_value_info(output, _elem_type(self.model, output, inits), None)],
            [inits[r] for r in reads if r in inits])
        piece = helper.make_model(graph, opset_imports=self.model.opset_import)
        piece.ir_version = self.model.ir_version
        sess = literal_session(piece, threads=self.threads)
        return np.concatenate([sess.run([output], {name: x[i:i + 16]})[0] for i in range(0, len(x), 16)])


def upstream(nodes: list[Any], output: str) -> list[Any]:
    """The ``nodes`` that ``output`` depends on, in their order (what a tensor needs computed;
    also the mixed-precision search's probes, ``engines.search_probes``): measuring a block's
    first convolution need not run the rest of the block, which ONNX Runtime with its
    optimisations off did run (a ResNet50's correction: 102 s with whole pieces, 49.5 s with
    these, the same biases to the bit)."""
    producer = {o: n for n in nodes for o in n.output}
    need: set[int] = set()
    todo = [output]
    while todo:
        n = producer.get(todo.pop())
        if n is not None and id(n) not in need:
            need.add(id(n))
            todo += list(n.input)
    return [n for n in nodes if id(n) in need]


def _constant_producers(model: Any, consts: set[str], wanted: set[str]) -> list[Any]:
    """The nodes among those producing ``consts`` that ``wanted`` needs, with what they read
    in turn, in an order that runs."""
    by_out = {o: n for n in model.graph.node if set(n.output) <= consts for o in n.output}
    need: dict[int, Any] = {}
    todo = [w for w in wanted if w in by_out]
    while todo:
        n = by_out[todo.pop()]
        if id(n) not in need:
            need[id(n)] = n
            todo += [i for i in n.input if i in by_out]
    return _topological(list(need.values()), {i.name for i in model.graph.initializer})


def _elem_type(model: Any, tensor: str, inits: dict[str, Any]) -> int:
    """float, except a QuantizeLinear's output, which has its zero point's type."""
    import onnx

    for n in model.graph.node:
        if tensor in n.output and n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits:
            return inits[n.input[2]].data_type
    return onnx.TensorProto.FLOAT


def _pieces(model: Any) -> list[tuple[list[Any], str]]:
    """The graph's nodes (Constants aside) in order, cut after every node past which a single
    tensor is all that later nodes and the graph's outputs read; each piece with that tensor."""
    consts = _constant_tensors(model)
    nodes = _topological([n for n in model.graph.node if not set(n.output) <= consts],
                         consts | {i.name for i in model.graph.initializer} | {i.name for i in model.graph.input})
    last_read: dict[str, int] = {o.name: len(nodes) for o in model.graph.output}
    for k, n in enumerate(nodes):
        for i in n.input:
            last_read[i] = max(last_read.get(i, -1), k)
    pieces, start, live = [], 0, {i.name for i in model.graph.input}
    for k, n in enumerate(nodes):
        live = {t for t in live if last_read.get(t, -1) > k}
        live |= {o for o in n.output if last_read.get(o, -1) > k and o not in consts}
        if len(live) == 1 or k == len(nodes) - 1:
            cut = next(iter(live)) if len(live) == 1 else n.output[0]
            pieces.append((nodes[start:k + 1], cut))
            start = k + 1
    return pieces


def _bias_of(model: Any, node_name: str) -> np.ndarray:
    """The node's current bias as float32 (zeros when it has none)."""
    from onnx import numpy_helper

    node = next(n for n in model.graph.node if n.name == node_name)
    inits = {i.name: i for i in model.graph.initializer}
    if len(node.input) > 2 and node.input[2] in inits:
        return numpy_helper.to_array(inits[node.input[2]]).astype(np.float32).copy()
    return np.zeros(_out_channels(model, node, inits), np.float32)


def _out_channels(model: Any, node: Any, inits: dict[str, Any]) -> int:
    """Output channels from the weight (read through its DequantizeLinear)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    w = node.input[1]
    while w not in inits and w in producer:
        w = producer[w].input[0]
    dims = list(inits[w].dims)
    transposed = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
    return dims[0] if node.op_type == "Conv" or transposed else dims[-1]


def _write_biases(model: Any, biases: dict[str, np.ndarray]) -> None:
    """Point each node's bias input at an initializer named ``<node>_biascorr`` holding the
    corrected values (created on first use)."""
    from onnx import numpy_helper

    nodes = {n.name: n for n in model.graph.node}
    index = {init.name: k for k, init in enumerate(model.graph.initializer)}
    for name, b in biases.items():
        node = nodes[name]
        new = name + SUFFIX
        tensor = numpy_helper.from_array(b.astype(np.float32), new)
        if new in index:
            model.graph.initializer[index[new]].CopyFrom(tensor)
        else:
            model.graph.initializer.append(tensor)
            index[new] = len(model.graph.initializer) - 1
        while len(node.input) < 3:
            node.input.append("")
        node.input[2] = new


def _drop_unread_initializers(model: Any) -> None:
    """The biases the corrected ones replaced (the fp32 model keeps its own copy)."""
    read = {i for n in model.graph.node for i in n.input}
    keep = [i for i in model.graph.initializer if i.name in read]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def _constant_tensors(model: Any) -> set[str]:
    """Outputs of nodes that read only initializers and constants (Constant nodes, a weight's
    DequantizeLinear): not activations, so they never keep a cut from being one."""
    known = {i.name for i in model.graph.initializer} | {""}
    consts: set[str] = set()
    for n in _topological(list(model.graph.node), known | {i.name for i in model.graph.input}):
        if all(i in known or i in consts for i in n.input):
            consts.update(n.output)
    return consts


def _topological(nodes: list[Any], available: set[str]) -> list[Any]:
    """The nodes in an order where each comes after the producers of its inputs (the
    quantiser appends its Q/DQ nodes wherever it likes); the given order where it allows."""
    have, order, waiting = set(available) | {""}, [], list(nodes)
    while waiting:
        ready = [k for k, n in enumerate(waiting) if all(i in have for i in n.input)]
        if not ready:
            raise ValueError("the graph has a cycle or reads a tensor nothing produces")
        for k in ready:
            order.append(waiting[k])
        for k in ready:
            have.update(waiting[k].output)
        taken = set(ready)
        waiting = [n for k, n in enumerate(waiting) if k not in taken]
    return order
