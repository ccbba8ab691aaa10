"""Rewrites of a model's OpenVINO graph at compile time, before the CPU plugin sees it.

Why: profiled on the trained ResNet50's all-int8 file at 96 px (2-core AMD EPYC with
AVX512-BF16, no AMX; docs/performance.md, "The last fp32 layers"), the int8 convolutions
ran near the machine's int8 bound and a fifth of the engine's time went to what was left
fp32, among it the stem convolution (one input channel, 7 x 7, 5 % of the time), the OOD
head's whitening products (2,048 and 1,024 wide, 3 %), and one 3 x 3 average pool of the OOD
head's contrast sign on one-channel tiles (1 %). Two rewrites (their gain, a few per cent, is
smaller than that VM's run-to-run spread; the build serves ``bf16-stem`` only where its own
alternating timing finds it faster):

- ``pool_tiles_as_channels``: an average pool over N x 1 x H x W runs on the tiles laid out as
  the channels of one image. The plugin's blocked layout pads a single channel to 16, so the
  pool did sixteen times its work; the sums and so the values are the same. Applied to every
  graph.
- ``bf16_stem_and_products``: bf16 for the stem convolution and the products that feed only
  the OOD score, f32 for everything else (the plugin's own ``bf16`` hint lowers every fp32
  node, the residual additions between the int8 convolutions included, which moved the
  trained ResNet50's readout by 1.43 pp against 0.72 in f32). Two conditions keep it safe:
  the stem's output must reach the logits only through an int8 rounding (so bf16's 8-bit
  mantissa sits under the rounding that follows anyway), and its input is first centred on the
  value the folded stem pads with (``training.model.fold_stem``: the training mean): a tile is
  a small contrast riding on that offset, and bf16 rounds the offset's magnitude: on that
  ResNet50 a plain bf16 stem moved the readout by 1.37 pp, the centred one by 0.85 (gated per
  model like every precision; ``OpenVinoEngine`` precision ``bf16-stem``). The OOD products
  change the score by 0.4 % of itself (median; 99th percentile 1.7 %); each precision's gate
  records its own OOD threshold.

- ``small_maps_as_one_image``: a convolution whose output is only a few pixels wide (a
  ResNet50's last stage at 96 px works on 3 x 3 maps) runs on the batch's tiles laid side by
  side. Profiled on the trained ResNet50 in bf16 on a 2-core Xeon with AMX (docs/performance.md,
  "The last stage's small maps"), that stage did a fifth of the network's work in a third of its
  time: its 3 x 3 convolutions at 0.4 TFLOP/s against 1.8-1.9 for the same work at 6 x 6. The
  plugin's kernels work along output rows, and a row of three pixels gives the tile unit little
  to do (the tiles stacked along the height instead, rows still three wide, stayed slow: 4.5
  against 2.7 ms for one such convolution side by side and 6.6 as it was). A kernel wider than one runs on one image of the tiles side by side with zero
  columns between them (the zeros every tile's padding would read, so the sums are the same);
  a 1 x 1 convolution runs as one product over the channels of every pixel of the batch; the
  bias and ReLU that follow a convolution go into the rewrite with it (the plugin fuses them
  into the kernel, which a transpose in between would prevent: 1.03-1.08x more on the ResNet50),
  and the transposes back are moved below the ReLUs, residual additions, pads and slices that
  follow, where they meet the next rewrite's transpose and cancel or merge with it
  (``sink_transposes``).
  Applied to every graph with a fixed batch, only to convolutions with float weights (an int8
  convolution keeps the form the plugin's int8 kernels are matched on); the values are the same
  up to the order of the sums, and every engine compiled so is gated as compiled.

- ``channel_means_as_pools`` and ``distances_as_products``: the OOD head's two costly forms
  (profiled on the same ResNet50 in bf16 after the rewrite above: 13 of 85 ms per batch of 64).
  A mean over the height and width of a stage's output (the head reads the stem's and every
  stage's, 19 MB each for the stem and layer1 at 96 px) runs as a global average pool, which the
  plugin does in 0.5-0.6x the time of its mean kernel on the same tensor (not where the mean
  reads int8-rounded values: the plugin pools those in int8 and rounds each mean to a step);
  and each layer's squared distance to every class mean, ``sum((z - m_k)^2)`` over an
  N x classes x width tensor, runs as ``|z|^2 - 2 z m_k + |m_k|^2`` where the features are
  wide: one product with the class means instead of a tensor four times the features' size.
  The head whitens about the centre of the class means, so ``z`` and ``m_k`` are of the size of
  the distance and the three terms do not cancel to nothing. Together 1.06-1.09x on the
  ResNet50 (batch 64, bf16); the score moved by 0.08 % of itself (median) against the
  unrewritten graph. Applied to every graph.

Nodes are told apart by ``get_name()``, which OpenVINO keeps unique; friendly names come from
the file and need not be.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: the widest convolution output rewritten by ``small_maps_as_one_image``: measured on the
#: ResNet50 at 96 px, the whole network ran 1.16-1.25x faster with its 3-pixel-wide last stage
#: rewritten (bf16, AMX), while rewriting the 6-pixel-wide stage before it as well made it slower
SMALL_WIDTH = 4

#: the narrowest layer whose distances ``distances_as_products`` rewrites: the time was in the
#: OOD head's 1,024- and 2,048-wide layers, while for its narrow ones (the input statistics,
#: the one-number contrast sign) the N x K x D tensor costs nothing and the product form's
#: rounding (worse in bf16) would fall on distances near zero
WIDE_DISTANCE = 64


def _ops():
    from openvino import opset13

    return opset13


def _source(node: Any, index: int) -> Any:
    return node.input(index).get_source_output().get_node()


def _is_f32(port: Any) -> bool:
    import openvino as ov

    return port.get_element_type() == ov.Type.f32


def ancestors(node: Any, *, through_int8: bool = True) -> set[str]:
    """Names of the nodes ``node`` depends on, itself included; with ``through_int8=False``
    only those it is reached from without passing an int8 rounding (FakeQuantize, which the
    ONNX reader makes of QuantizeLinear)."""
    seen: set[str] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        name = n.get_name()
        if name in seen or (not through_int8 and n.get_type_name() == "FakeQuantize"):
            continue
        seen.add(name)
        stack.extend(_source(n, i) for i in range(n.get_input_size()))
    return seen


def _each(model: Any, kind: str, rewrite: Callable[[Any], Any | None]) -> list[str]:
    """Replaces every node of type ``kind`` for which ``rewrite`` returns a node (computing the
    same values) by that node; returns the friendly names of those replaced."""
    done = []
    for op in list(model.get_ordered_ops()):
        if op.get_type_name() != kind:
            continue
        out = rewrite(op)
        if out is None:
            continue
        for target in list(op.output(0).get_target_inputs()):
            target.replace_source_output(out.output(0))
        done.append(op.get_friendly_name())
    if done:
        model.validate_nodes_and_infer_types()
    log.debug("%s: %s", rewrite.__name__, ", ".join(done) or "none")
    return done


def _pool_transposed(op: Any) -> Any | None:
    ops = _ops()
    x = op.input(0).get_source_output()
    shape = x.get_partial_shape()
    if shape.rank.is_dynamic or shape.rank.get_length() != 4 or not shape[1].is_static or shape[1].get_length() != 1:
        return None
    a = op.get_attributes()
    args = [a.get(k) for k in ("strides", "pads_begin", "pads_end", "kernel", "exclude-pad", "rounding_type", "auto_pad")]
    if any(v is None for v in args):  # another AvgPool version's attributes: left as it is
        return None
    swap = _int64([1, 0, 2, 3])
    return ops.transpose(ops.avg_pool(ops.transpose(x, swap), *args), swap)


def pool_tiles_as_channels(model: Any) -> list[str]:
    """Each AvgPool over a one-channel 4-D input runs transposed (tiles as channels) and is
    transposed back. Returns the pools rewritten."""
    return _each(model, "AvgPool", _pool_transposed)


def _stem_padding(conv: Any, parameter_names: set[str]) -> tuple[Any, float] | None:
    """(Pad node, its fill value) when ``conv`` reads the graph's input through a constant
    pad with a scalar constant fill, the form of ``training.model.FoldedStem``."""
    pad = _source(conv, 0)
    if pad.get_type_name() != "Pad" or pad.get_input_size() < 4:
        return None
    if str(pad.get_attributes().get("pad_mode")) != "constant":
        return None
    if _source(pad, 0).get_name() not in parameter_names:
        return None
    fill = _source(pad, 3)
    if fill.get_type_name() != "Constant":
        return None
    value = np.asarray(fill.get_data(), np.float64).reshape(-1)
    return (pad, float(value[0])) if value.size == 1 and np.isfinite(value[0]) else None


def centre_padded_stem(conv: Any, parameter_names: set[str]) -> bool:
    """Where ``conv`` reads the graph's input through a constant pad of fill ``v``, computes it
    as conv(Pad(x - v, 0)) + v * sum(w), the same function (the pad's border included), with
    its input now a contrast about zero. Returns whether it applied."""
    stem = _stem_padding(conv, parameter_names)
    if stem is None:
        return False
    ops = _ops()
    pad, fill = stem
    weights = np.asarray(_source(conv, 1).get_data(), np.float64)
    shift = (fill * weights.sum(axis=tuple(range(1, weights.ndim)))).astype(np.float32)
    consumers = list(conv.output(0).get_target_inputs())
    pad.input(0).replace_source_output(ops.subtract(pad.input(0).get_source_output(),
                                                    ops.constant(np.float32(fill))).output(0))
    pad.input(3).replace_source_output(ops.constant(np.float32(0.0)).output(0))
    pad.validate_and_infer_types()
    shifted = ops.add(conv.output(0), ops.constant(shift.reshape(1, -1, *([1] * (weights.ndim - 2)))))
    for target in consumers:
        target.replace_source_output(shifted.output(0))
    return True


def _to_bf16(op: Any) -> None:
    """Both inputs of ``op`` in bf16 and its output back in f32 for every consumer."""
    import openvino as ov

    ops = _ops()
    consumers = list(op.output(0).get_target_inputs())
    for i in (0, 1):
        op.input(i).replace_source_output(ops.convert(op.input(i).get_source_output(), ov.Type.bf16).output(0))
    op.validate_and_infer_types()
    back = ops.convert(op.output(0), ov.Type.f32)
    for target in consumers:
        target.replace_source_output(back.output(0))


def bf16_stem_and_products(model: Any) -> list[str]:
    """Rewrites ``model`` in place (see the module's docstring) and returns the nodes now run
    in bf16: the centred stem convolution where the graph has one whose output is rounded to
    int8 before the logits, and every MatMul with constant f32 weights that the logits do not
    depend on (the OOD head's products)."""
    logits = model.outputs[0].get_node()
    on_logits = ancestors(logits)
    f32_to_logits = ancestors(logits, through_int8=False)
    parameters = {p.get_name() for p in model.get_parameters()}
    changed = []
    for op in list(model.get_ordered_ops()):
        kind = op.get_type_name()
        if kind not in ("Convolution", "MatMul") or op.get_input_size() != 2:
            continue
        if _source(op, 1).get_type_name() != "Constant" or not _is_f32(op.input(1)):
            continue
        if kind == "MatMul" and op.get_name() in on_logits:
            continue
        if kind == "Convolution" and (op.get_name() in f32_to_logits or not centre_padded_stem(op, parameters)):
            continue
        _to_bf16(op)
        changed.append(op.get_friendly_name())
    if changed:
        model.validate_nodes_and_infer_types()
    log.debug("bf16 for %s", ", ".join(changed) or "no node")
    return changed


def _int64(values: Any) -> Any:
    return _ops().constant(np.asarray(values, np.int64))


def _small_float_conv(op: Any) -> tuple[list[int], np.ndarray, dict[str, Any]] | None:
    """(input shape, weights, attributes) of a convolution ``small_maps_as_one_image`` may
    rewrite: a fixed input of several tiles, constant float weights, no dilation, explicit
    pads, an output at most ``SMALL_WIDTH`` wide; else None."""
    if op.get_type_name() != "Convolution" or op.get_input_size() != 2:
        return None
    shape = op.input(0).get_partial_shape()
    if shape.is_dynamic or shape.rank.get_length() != 4 or _source(op, 0).get_type_name() == "FakeQuantize":
        return None
    weights = _source(op, 1)
    if weights.get_type_name() != "Constant" or not _is_f32(op.input(1)):
        return None
    attrs = op.get_attributes()
    if str(attrs.get("auto_pad", "")).lower() != "explicit" or list(attrs.get("dilations", [])) != [1, 1]:
        return None
    dims = [d.get_length() for d in shape]
    if dims[0] < 2 or op.get_output_partial_shape(0)[3].get_length() > SMALL_WIDTH:
        return None
    return dims, np.asarray(weights.get_data(), np.float32), attrs


def _per_channel(node: Any, channels: int) -> np.ndarray | None:
    """The values of a float constant of shape (1, C, 1, 1) or (C, 1, 1), or of such a
    constant reshaped to it (the reader adds a convolution's bias through a reshape whose
    shape it computes from the output's; folding the graph to get at it would also fold the
    int8 weights of the convolutions the plugin runs in int8), else None."""
    shape = node.get_output_partial_shape(0)
    if shape.is_dynamic or [d.get_length() for d in shape][-3:] != [channels, 1, 1] or shape.rank.get_length() > 4:
        return None
    if node.get_type_name() == "Reshape":
        node = _source(node, 0)
    if node.get_type_name() != "Constant" or not _is_f32(node.output(0)):
        return None
    value = np.asarray(node.get_data(), np.float32)
    return value.reshape(channels) if value.size == channels else None


def _value_consumers(node: Any) -> list[Any]:
    """The inputs that read ``node``'s values, not only its shape (the reader computes the
    bias's reshape from the convolution's output shape; that reshape serves only the bias,
    which the rewrite carries, so the old convolution drops out of the graph with it)."""
    return [t for t in node.output(0).get_target_inputs() if t.get_node().get_type_name() != "ShapeOf"]


def _bias_and_relu(op: Any) -> tuple[np.ndarray | None, bool, Any]:
    """The per-channel constant added to ``op``'s output and the ReLU after it, where they are
    its only consumers (the reader splits a convolution's bias off; the plugin fuses both into
    the kernel that computes it, which it cannot once a transpose stands between them), and
    the last of those nodes: (bias or None, relu?, node whose consumers take the rewrite)."""
    last, bias, relu = op, None, False
    targets = _value_consumers(op)
    if len(targets) == 1 and targets[0].get_node().get_type_name() == "Add":
        add = targets[0].get_node()
        value = _per_channel(_source(add, 1 - targets[0].get_index()), op.get_output_partial_shape(0)[1].get_length())
        if value is not None:
            last, bias = add, value
    targets = _value_consumers(last)
    if bias is not None and len(targets) == 1 and targets[0].get_node().get_type_name() == "Relu":
        last, relu = targets[0].get_node(), True
    return bias, relu, last


def _finish(y: Any, bias: np.ndarray | None, relu: bool, shape: list[int]) -> Any:
    ops = _ops()
    if bias is not None:
        y = ops.add(y, ops.constant(bias.reshape(shape)))
    return ops.relu(y) if relu else y


def _side_by_side(op: Any, dims: list[int], weights: np.ndarray, attrs: dict[str, Any],
                  bias: np.ndarray | None, relu: bool) -> Any | None:
    """The convolution (with its bias and ReLU) on one image of the N tiles side by side, each
    followed by zero columns (at least as many as either side's padding, so a tile's window
    reads the zeros its own padding would; the cell width a multiple of the stride, so each
    tile's outputs start a cell of their own), cut back into N outputs. None where the pads do
    not allow it."""
    ops = _ops()
    n, c, h, w = dims
    (sh, sw), (pbh, pb), (peh, pe) = attrs["strides"], attrs["pads_begin"], attrs["pads_end"]
    k = weights.shape[3]
    cell = w + max(pb, pe)
    cell += (-cell) % sw
    end = max(0, k - pb - sw)  # the image's own right padding: its output is N cells wide exactly
    ow = op.get_output_partial_shape(0)[3].get_length()
    if end > k - pb - 1 or ow > cell // sw or (n * cell + pb + end - k) // sw + 1 != n * cell // sw:
        return None
    x = op.input(0).get_source_output()
    if cell > w:
        x = ops.pad(x, _int64([0, 0, 0, 0]), _int64([0, 0, 0, cell - w]), "constant").output(0)
    row = ops.reshape(ops.transpose(x, _int64([1, 2, 0, 3])), _int64([1, c, h, n * cell]), False)
    y = ops.convolution(row, op.input(1).get_source_output(), [sh, sw], [pbh, pb], [peh, end], [1, 1])
    co, oh = weights.shape[0], op.get_output_partial_shape(0)[2].get_length()
    y = _finish(y, bias, relu, [1, co, 1, 1])
    cells = ops.transpose(ops.reshape(y, _int64([co, oh, n, cell // sw]), False), _int64([2, 0, 1, 3]))
    return ops.slice(cells, _int64([0]), _int64([ow]), _int64([1]), _int64([3])) if ow < cell // sw else cells


def _as_product(op: Any, dims: list[int], weights: np.ndarray, attrs: dict[str, Any],
                bias: np.ndarray | None, relu: bool) -> Any | None:
    """A 1 x 1 convolution without padding (with its bias and ReLU) as one product over the
    channels of every pixel (the strided pixels taken first). None for any other."""
    ops = _ops()
    if weights.shape[2:] != (1, 1) or list(attrs["pads_begin"]) != [0, 0] or list(attrs["pads_end"]) != [0, 0]:
        return None
    x = op.input(0).get_source_output()
    sh, sw = attrs["strides"]
    if (sh, sw) != (1, 1):
        x = ops.slice(x, _int64([0, 0]), _int64(dims[2:]), _int64([sh, sw]), _int64([2, 3])).output(0)
    pixels = ops.transpose(x, _int64([0, 2, 3, 1]))
    product = ops.matmul(pixels, ops.constant(np.ascontiguousarray(weights[:, :, 0, 0].T)), False, False)
    return ops.transpose(_finish(product, bias, relu, [-1]), _int64([0, 3, 1, 2]))


def small_maps_as_one_image(model: Any) -> list[str]:
    """Rewrites ``model`` in place (see the module's docstring) and returns the convolutions
    rewritten."""
    done = []
    for op in list(model.get_ordered_ops()):
        found = _small_float_conv(op)
        if found is None:
            continue
        bias, relu, last = _bias_and_relu(op)
        rewrite = _as_product if found[1].shape[2:] == (1, 1) else _side_by_side
        out = rewrite(op, *found, bias, relu)
        if out is None:
            continue
        for target in list(last.output(0).get_target_inputs()):
            target.replace_source_output(out.output(0))
        done.append(op.get_friendly_name())
    if done:
        model.validate_nodes_and_infer_types()
    log.debug("small maps as one image: %s", ", ".join(done) or "no convolution")
    return done


def _perm(node: Any) -> list[int] | None:
    order = _constants(node, 1) if node.get_type_name() == "Transpose" else None
    return [int(v) for v in order[0]] if order else None


def _only_feeds(node: Any, consumer: Any) -> bool:
    return [t.get_node().get_name() for t in node.output(0).get_target_inputs()] == [consumer.get_name()]


def _constants(op: Any, first: int) -> list[np.ndarray] | None:
    """The values of ``op``'s inputs from ``first`` on, flattened, where all are constants."""
    nodes = [_source(op, i) for i in range(first, op.get_input_size())]
    if any(n.get_type_name() != "Constant" for n in nodes):
        return None
    return [np.asarray(n.get_data()).reshape(-1) for n in nodes]


def _below(op: Any, p: list[int]) -> Any | None:
    """``op`` computed on the untransposed tensor (its input is a transpose by ``p`` that
    feeds nothing else), as the node whose output, transposed by ``p``, replaces ``op``'s;
    None where ``op`` is not one that commutes with it."""
    ops = _ops()
    kind, x = op.get_type_name(), _source(op, 0).input(0).get_source_output()
    if kind == "Relu":
        return ops.relu(x)
    if kind == "Add":
        other = _source(op, 1)
        if _perm(other) != p or not _only_feeds(other, op):
            return None
        y = other.input(0).get_source_output()
        return ops.add(x, y) if x.get_partial_shape() == y.get_partial_shape() else None
    if kind == "Slice" and op.get_input_size() == 5:
        args = _constants(op, 1)
        if args is None:
            return None
        start, stop, step, axes = args
        return ops.slice(x, _int64(start), _int64(stop), _int64(step), _int64([p[int(a) % len(p)] for a in axes]))
    if kind == "Pad" and str(op.get_attributes().get("pad_mode")) == "constant":
        args = _constants(op, 1)
        if args is None:
            return None
        begin, end = np.zeros(len(p), np.int64), np.zeros(len(p), np.int64)
        for i, axis in enumerate(p):
            begin[axis], end[axis] = args[0][i], args[1][i]
        fill = [op.input(3).get_source_output()] if op.get_input_size() > 3 else []
        return ops.pad(x, _int64(begin), _int64(end), *fill, "constant")
    return None


def sink_transposes(model: Any) -> int:
    """Moves each transpose below the ReLUs, residual additions, slices and pads it feeds, and
    merges transposes that meet (cancelling those that undo each other). Run after
    ``small_maps_as_one_image``: between the rewritten convolutions of a last stage the tensors
    then stay in the products' pixel-major layout instead of going back and forth (1.04-1.05x
    more on the ResNet50 at 96 px, bf16). Only a transpose that feeds nothing else is moved, so
    none is duplicated. Returns the moves."""
    ops = _ops()
    moves = 0
    changed = True
    while changed:
        changed = False
        for op in list(model.get_ordered_ops()):
            src = _source(op, 0) if op.get_input_size() else None
            p = _perm(src) if src is not None else None
            if p is None:
                continue
            if op.get_type_name() == "Transpose":
                q = _perm(op)
                if q is None:
                    continue
                merged = [p[i] for i in q]
                x = src.input(0).get_source_output()
                out = x if merged == list(range(len(merged))) else ops.transpose(x, _int64(merged)).output(0)
            elif _only_feeds(src, op):
                below = _below(op, p)
                if below is None:
                    continue
                out = ops.transpose(below, _int64(p)).output(0)
            else:
                continue
            for target in list(op.output(0).get_target_inputs()):
                target.replace_source_output(out)
            moves += 1
            changed = True
        if changed:
            model.validate_nodes_and_infer_types()
    return moves


def _constant_axes(node: Any, rank: int) -> list[int] | None:
    axes = _constants(node, 1)
    return sorted(int(v) % rank for v in axes[0]) if axes else None


def _over_height_and_width(op: Any) -> bool:
    """Whether a reduction of a 4-D tensor is over its last two axes: by its constant axes, or
    (the reader computes a GlobalAveragePool's axes from the input's rank) by an output of the
    input's batch and channels with the height and width kept as 1."""
    axes = _constant_axes(op, 4)
    if axes is not None:
        return axes == [2, 3]
    if not op.get_attributes().get("keep_dims", False):
        return False
    out, x = op.get_output_partial_shape(0), op.input(0).get_partial_shape()
    return out.rank.get_length() == 4 and out[1].compatible(x[1]) and out[0].compatible(x[0]) and \
        all(d.is_static and d.get_length() == 1 for d in list(out)[2:])


def _reads_int8(op: Any) -> bool:
    """Whether ``op``'s input depends on an int8 rounding (a FakeQuantize, which the reader
    makes of QuantizeLinear). The plugin runs an average pool of such values in int8 and rounds
    each mean to a whole step (on the demo model's int8 file the OOD score rose by 29 % and the
    classifier's probabilities moved by up to 0.012), which it does not do for a mean."""
    source = _source(op, 0)
    return ancestors(source) != ancestors(source, through_int8=False)


def _mean_as_pool(op: Any) -> Any | None:
    ops = _ops()
    x = op.input(0).get_source_output()
    shape = x.get_partial_shape()
    if shape.rank.is_dynamic or shape.rank.get_length() != 4 or any(d.is_dynamic for d in list(shape)[1:]):
        return None
    if not _over_height_and_width(op):
        return None
    c, h, w = (d.get_length() for d in list(shape)[1:])
    if c == 1:  # the blocked layout pads one channel to sixteen: the pool would do 16x the work
        return None
    if _reads_int8(op):
        return None
    out = ops.avg_pool(x, [1, 1], [0, 0], [0, 0], [h, w], True)
    return out if op.get_attributes().get("keep_dims", False) else ops.reshape(out, _int64([0, c]), True)


def channel_means_as_pools(model: Any) -> list[str]:
    """Each mean over the height and width of a 4-D tensor of several channels (the stage
    means of the OOD head, a network's global average pool) as a global average pool, unless
    it reads int8-rounded values (``_reads_int8``); the batch may be dynamic. Returns the means
    rewritten."""
    return _each(model, "ReduceMean", _mean_as_pool)


def _class_offsets(op: Any) -> tuple[Any, Any] | None:
    """(z, m) where ``op`` sums ``(z[:, None, :] - m[None, :, :])^2`` over its last axis (the
    form of ``training.ood.OodHead.distances``: z the tiles' whitened features, N x D, and m
    the whitened class means, K x D, computed or a constant), else None."""
    square = _source(op, 0)
    if square.get_type_name() != "Multiply":
        return None
    a, b = (square.input(i).get_source_output() for i in (0, 1))
    if a != b or a.get_node().get_type_name() != "Subtract":
        return None
    diff = a.get_node()
    if diff.get_output_partial_shape(0).rank.is_dynamic or diff.get_output_partial_shape(0).rank.get_length() != 3:
        return None
    if _constant_axes(op, 3) != [2]:
        return None
    tiles, means = _source(diff, 0), _source(diff, 1)
    if tiles.get_type_name() != "Unsqueeze" or _constant_axes(tiles, 3) != [1]:
        return None
    z = tiles.input(0).get_source_output()
    if means.get_type_name() == "Unsqueeze" and _constant_axes(means, 3) == [0]:
        m = means.input(0).get_source_output()
    elif means.get_type_name() == "Constant" and len(means.get_output_partial_shape(0)) == 3:
        # the int8 files' form: the quantiser's graph optimisation folds the class means to 1 x K x D
        value = np.asarray(means.get_data(), np.float32)
        if value.shape[0] != 1:
            return None
        m = _ops().constant(value[0]).output(0)
    else:
        return None
    zs, ms = z.get_partial_shape(), m.get_partial_shape()
    if zs.rank.get_length() != 2 or ms.rank.get_length() != 2 or ms.is_dynamic or zs[1].is_dynamic:
        return None
    width = zs[1].get_length()
    return (z, m) if width == ms[1].get_length() and width >= WIDE_DISTANCE else None


def _distance_as_product(op: Any) -> Any | None:
    found = _class_offsets(op)
    if found is None:
        return None
    ops = _ops()
    z, m = found
    k = m.get_partial_shape()[0].get_length()
    own = ops.reduce_sum(ops.multiply(z, z), _int64([1]), True)
    means = ops.reshape(ops.reduce_sum(ops.multiply(m, m), _int64([1]), False), _int64([1, k]), False)
    cross = ops.multiply(ops.matmul(z, m, False, True), ops.constant(np.float32(-2.0)))
    out = ops.maximum(ops.add(ops.add(own, cross), means), ops.constant(np.float32(0.0)))
    return ops.unsqueeze(out, _int64([2])) if op.get_attributes().get("keep_dims", False) else out


def distances_as_products(model: Any) -> list[str]:
    """Each squared distance of N feature vectors to K class means, summed over an N x K x D
    tensor (D >= ``WIDE_DISTANCE``), as ``max(|z|^2 - 2 z m^T + |m|^2, 0)`` (rounding must not
    make a distance negative: the score takes its root). Returns the sums rewritten."""
    return _each(model, "ReduceSum", _distance_as_product)
