"""A tiny but real ONNX classifier built with ``onnx.helper`` (no torch needed).

Used by tests (a real ONNX Runtime session on a small model) and by the demo before a
trained model exists, which then says plainly that its numbers mean nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nscmonitor.engines.metadata import ModelMetadata, write_onnx_metadata


def build_tiny_classifier(path: str | Path, *, classes: tuple[str, ...] = ("neuron", "astrocyte", "oligodendrocyte", "undifferentiated"),
                          input_size: int = 64, pixel_size_um: float | None = None, seed: int = 0,
                          version: str = "tiny-untrained", scheme: str | None = None,
                          weights: dict[str, np.ndarray] | None = None, depth: int = 0,
                          ood_threshold: float | None = None, extra: dict | None = None) -> ModelMetadata:
    """Conv(1->8, 3x3, stride 2) -> ReLU -> global average pool -> dense -> logits.

    ``depth`` inserts that many Conv(8->8, 3x3) -> ReLU blocks after the first, so a test can
    have a stem, a body and a head as a ResNet has.

    ``weights`` may override ``conv_w`` (8x1x3x3), ``conv_b`` (8), ``fc_w`` (8xK), ``fc_b`` (K)
    so tests can build a model whose answer they know.

    ``ood_threshold`` adds an out-of-distribution output ``ood`` (the squared norm of the pooled
    features, under ``/ood/`` like a trained model's head) and its threshold in the metadata.
    ``extra`` goes into the metadata's ``extra`` (e.g. a well calibration or call rule).
    """
    import onnx
    from onnx import helper

    graph = _tiny_graph(_tiny_weights(len(classes), depth, seed, weights), len(classes), depth, input_size,
                        with_ood=ood_threshold is not None)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="nscmonitor")
    model.ir_version = 8
    onnx.checker.check_model(model)
    if scheme is None:
        scheme = "binary" if tuple(classes) == ("neuron", "glia") else (
            "multiclass" if len(classes) == 4 else "custom")
    meta = ModelMetadata(
        name="tiny", version=version, scheme=scheme, classes=tuple(classes), input_size=input_size,
        input_channels=1, pixel_size_um=pixel_size_um, arch="tiny-conv",
        normalization={"p_low": 1.0, "p_high": 99.8, "mean": 0.0, "std": 1.0, "in_graph": True},
        ood=None if ood_threshold is None else {"method": "feature-norm", "output": "ood", "aggregate": "mean",
                                                 "threshold": float(ood_threshold)},
        extra=dict(extra or {}),
    )
    write_onnx_metadata(model, meta)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".part")
    onnx.save(model, str(tmp))
    tmp.replace(path)
    return meta


def _tiny_weights(k: int, depth: int, seed: int, weights: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """Random weights from ``seed`` (stem, ``depth`` body blocks, head of ``k`` classes), with
    the caller's own laid over them."""
    rng = np.random.default_rng(seed)
    w = {
        "conv_w": rng.normal(0, 0.5, (8, 1, 3, 3)).astype(np.float32),
        "conv_b": rng.normal(0, 0.1, (8,)).astype(np.float32),
        "fc_w": rng.normal(0, 1.0, (8, k)).astype(np.float32),
        "fc_b": np.zeros((k,), np.float32),
    }
    for i in range(depth):
        w[f"body{i}_w"] = rng.normal(0, 0.4, (8, 8, 3, 3)).astype(np.float32)
        w[f"body{i}_b"] = rng.normal(0, 0.1, (8,)).astype(np.float32)
    if weights:
        w.update({name: np.asarray(v, np.float32) for name, v in weights.items()})
    return w


def _tiny_graph(w: dict[str, np.ndarray], k: int, depth: int, input_size: int, *, with_ood: bool):
    """The ONNX graph: stem, body blocks, pooled features, logits, and the optional ``ood``
    output."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(v, name) for name, v in w.items()]
    nodes = [
        helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r0"]),
    ]
    for i in range(depth):
        nodes += [helper.make_node("Conv", [f"r{i}", f"body{i}_w", f"body{i}_b"], [f"c{i + 1}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i + 1}"], [f"r{i + 1}"])]
    nodes += [
        helper.make_node("GlobalAveragePool", [f"r{depth}"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"], axis=1),
        helper.make_node("MatMul", ["f", "fc_w"], ["m"]),
        helper.make_node("Add", ["m", "fc_b"], ["logits"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", k])]
    if with_ood:
        nodes.append(helper.make_node("ReduceSumSquare", ["f"], ["ood"], axes=[1], keepdims=0,
                                      name="/ood/ReduceSumSquare"))
        outputs.append(helper.make_tensor_value_info("ood", TensorProto.FLOAT, ["N"]))
    return helper.make_graph(
        nodes, "nscmonitor_tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, input_size, input_size])],
        outputs,
        inits,
    )
