"""Weight rounding against each layer's inputs (GPTQ, ``engines.weight_rounding``) on real parts:
the patches it builds are the convolution ONNX Runtime computes, its rounding lowers a layer's
output error where inputs correlate and is nearest rounding where they do not, and in the int8
recipe it takes out a systematic error that nearest rounding puts into a tiny model, on held-out
tiles, leaving the Q/DQ form each runtime takes."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from nscmonitor.engines import weight_rounding as W
from nscmonitor.engines.precision_graphs import qdq_problems
from nscmonitor.engines.quantize import TENSORRT_SETTINGS, quantize_static_qdq
from nscmonitor.engines.tiny import build_tiny_classifier

from blob_tiles import SIZE, blobs, int8_readout_error, tileset  # noqa: E402  (tests/ is on the path)


def _conv_model(w: np.ndarray, b: np.ndarray, **attrs) -> bytes:
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], **attrs)
    graph = helper.make_graph([node], "c", [x], [y], [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.mark.parametrize("attrs", [
    {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [1, 1]},
    {"kernel_shape": [3, 3], "pads": [1, 0, 1, 0], "strides": [2, 2]},
    {"kernel_shape": [1, 1], "strides": [2, 2]},
    {"kernel_shape": [1, 1]},
    {"kernel_shape": [3, 3], "auto_pad": "SAME_UPPER", "strides": [2, 2]},
])
def test_patches_are_the_convolution_onnx_runtime_computes(attrs):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 9, 8)).astype(np.float32)
    kh, kw = attrs["kernel_shape"]
    w = rng.normal(size=(5, 3, kh, kw)).astype(np.float32)
    b = rng.normal(size=5).astype(np.float32)
    y = ort.InferenceSession(_conv_model(w, b, **attrs), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    rows = W.im2col(x, {k: (v.encode() if isinstance(v, str) else v) for k, v in attrs.items()})
    mine = (rows @ w.reshape(5, -1).T + b).reshape(y.shape[0], y.shape[2], y.shape[3], 5).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(mine, y, rtol=1e-4, atol=1e-4)


def test_gptq_rounding_lowers_the_output_error_of_correlated_inputs():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 48)) @ rng.normal(size=(48, 48))  # correlated inputs
    h = x.T @ x / len(x)
    w = rng.normal(size=(16, 48)) * 0.05
    scale = np.abs(w).max(1) / 127
    q = W.gptq(w, h, scale)
    nearest = np.clip(np.round(w / scale[:, None]), -127, 127)
    err = lambda steps: float(np.mean(((w - steps * scale[:, None]) @ x.T) ** 2))  # noqa: E731
    assert q.dtype == np.int8 and q.min() >= -127 and q.max() <= 127
    assert np.any(q != nearest)
    assert err(q) < 0.7 * err(nearest), (err(q), err(nearest))
    # no step is moved by more than it takes: every weight stays within a few steps of its own value
    assert np.max(np.abs(q - w / scale[:, None])) < 4


def test_the_inverse_factor_is_the_cholesky_factor_of_the_inverse_without_the_inverse():
    """GPTQ steps through the upper ``u`` with ``inv(h) = u^T u``; it is computed from one
    Cholesky of the reversed ``h`` and a triangular inverse. Cholesky factors are unique, so it
    must be the factor of the explicit inverse (the former computation) to rounding, and a
    matrix that is not positive definite is refused as before."""
    rng = np.random.default_rng(3)
    for k in (1, 7, 130, 600):
        x = rng.normal(size=(3 * k, k)) * rng.gamma(1.0, 1.0, size=k)
        h = x.T @ x / len(x) + 1e-3 * np.eye(k)
        u = W.inverse_cholesky_upper(h)
        assert np.allclose(u, np.triu(u)) and np.all(np.diag(u) > 0)
        assert np.allclose(u.T @ u @ h, np.eye(k), atol=1e-8)
        assert np.allclose(u, np.linalg.cholesky(np.linalg.inv(h)).T, rtol=1e-9, atol=1e-12 * np.abs(u).max())
    with pytest.raises(np.linalg.LinAlgError):
        W.inverse_cholesky_upper(np.diag([1.0, -1.0, 2.0]))


def test_gptq_is_nearest_rounding_where_inputs_do_not_correlate_and_keeps_unseen_inputs():
    rng = np.random.default_rng(2)
    w = rng.normal(size=(6, 20))
    scale = np.abs(w).max(1) / 127
    nearest = np.clip(np.round(w / scale[:, None]), -127, 127)
    assert np.array_equal(W.gptq(w, np.diag(rng.uniform(0.5, 2.0, 20)), scale), nearest)
    x = rng.normal(size=(500, 20)) @ rng.normal(size=(20, 20))
    x[:, 3] = 0.0  # an input the calibration tiles never vary: nothing to learn about it
    h = x.T @ x / len(x)
    q = W.gptq(w, h, scale)
    assert np.array_equal(q[:, 3], nearest[:, 3])


@pytest.mark.parametrize("target", ["cpu", "tensorrt"])
def test_the_recipe_rounds_weights_against_their_inputs_and_keeps_the_qdq_form(skewed_int8, tmp_path, target):
    path, calib, held = skewed_int8
    base = {**(TENSORRT_SETTINGS if target == "tensorrt" else {}), "bias_correction": False}
    nearest = quantize_static_qdq(path, tmp_path / "nearest.onnx", calib.x, settings={**base, "weight_rounding": "nearest"})
    notes: dict = {}
    rounded = quantize_static_qdq(path, tmp_path / "gptq.onnx", calib.x, settings={**base, "weight_rounding": "gptq"},
                                  notes=notes)
    before, after = int8_readout_error(path, nearest, held), int8_readout_error(path, rounded, held)
    # measured on held-out tiles, not the calibration tiles the rounding was chosen on
    assert before > 1.0, f"the constructed model should move its readout in int8 ({before:.2f} pp)"
    assert after < 0.5 * before, (before, after)
    summary = notes["weight_rounding"]
    assert summary["method"] == "gptq" and summary["layers"] >= 2 and summary["weights_changed"] > 0
    if target == "tensorrt":
        assert qdq_problems(rounded) == []
    n, g = onnx.load(str(nearest)), onnx.load(str(rounded))
    n_init = {i.name: numpy_helper.to_array(i) for i in n.graph.initializer}
    g_init = {i.name: numpy_helper.to_array(i) for i in g.graph.initializer}
    assert n_init.keys() == g_init.keys()
    changed = [k for k in n_init if not np.array_equal(n_init[k], g_init[k])]
    assert changed and all(n_init[k].dtype == np.int8 for k in changed)  # only int8 weights differ
    assert [x.op_type for x in n.graph.node] == [x.op_type for x in g.graph.node]


def test_a_second_build_of_the_same_model_rounds_the_same_weights(skewed_int8, tmp_path):
    path, calib, _ = skewed_int8
    settings = {"bias_correction": False, "weight_rounding": "gptq"}
    a = quantize_static_qdq(path, tmp_path / "a.onnx", calib.x, settings=settings)
    b = quantize_static_qdq(path, tmp_path / "b.onnx", calib.x, settings={**settings, "exclude_nodes": []})
    init = lambda p: {i.name: numpy_helper.to_array(i) for i in onnx.load(str(p)).graph.initializer}  # noqa: E731
    ia, ib = init(a), init(b)
    assert all(np.array_equal(ia[k], ib[k]) for k in ia)


def test_an_unknown_rounding_is_refused(skewed_int8, tmp_path):
    from nscmonitor.engines.base import EngineError

    path, calib, _ = skewed_int8
    with pytest.raises(EngineError, match="weight rounding"):
        quantize_static_qdq(path, tmp_path / "x.onnx", calib.x, settings={"weight_rounding": "stochastic"})


@pytest.mark.parametrize("want_openvino", [True, False])
def test_the_build_rounds_with_gptq_and_corrects_biases_only_where_onnx_runtime_serves(tmp_path, want_openvino):
    from nscmonitor.engines.metadata import read_onnx_metadata
    from nscmonitor.engines.mixed_precision import build_int8

    path = tmp_path / "model.onnx"
    meta = build_tiny_classifier(path, input_size=SIZE, depth=1, seed=3)
    calib = tileset(meta, *blobs(64, 1, two_wells=True), "calib")
    held = tileset(meta, *blobs(96, 2, two_wells=True), "held")
    built, report, _ = build_int8(path, calib, held, want_openvino=want_openvino, threads=1)
    assert built is not None, report.summary()
    settings = read_onnx_metadata(built).extra["int8"]["settings"]
    assert settings["weight_rounding"] == "gptq" and settings["weight_rounding_summary"]["layers"] >= 1
    assert settings["bias_correction"] is (not want_openvino)
    assert (settings["bias_correction_summary"] is not None) is (not want_openvino)


def test_a_grouped_convolution_keeps_nearest_rounding_and_the_others_are_rounded(tmp_path):
    """Depthwise layers (MobileNet-like models registered from elsewhere) are outside what the
    rounding handles: they keep the quantiser's nearest steps, are counted, and the file runs."""
    rng = np.random.default_rng(5)
    w = {"stem_w": rng.normal(size=(8, 1, 3, 3)), "dw_w": rng.normal(size=(8, 1, 3, 3)),
         "pw_w": rng.normal(size=(8, 8, 1, 1)), "fc_w": rng.normal(size=(8, 4))}
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()]
    nodes = [helper.make_node("Conv", ["x", "stem_w"], ["c0"], pads=[1, 1, 1, 1], name="stem"),
             helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("Conv", ["r0", "dw_w"], ["c1"], pads=[1, 1, 1, 1], group=8, name="dw"),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "pw_w"], ["c2"], name="pw"),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("MatMul", ["f", "fc_w"], ["logits"], name="head")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 1, 16, 16])],
                              [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [None, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "dw.onnx"
    onnx.save(model, str(path))
    x = rng.normal(size=(32, 1, 16, 16)).astype(np.float32)
    settings = {"bias_correction": False}
    nearest = quantize_static_qdq(path, tmp_path / "n.onnx", x, settings={**settings, "weight_rounding": "nearest"})
    notes: dict = {}
    rounded = quantize_static_qdq(path, tmp_path / "g.onnx", x, settings={**settings, "weight_rounding": "gptq"},
                                  notes=notes)
    assert notes["weight_rounding"]["layers"] == 1 and notes["weight_rounding"]["layers_nearest"] == 1
    n_init = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(nearest)).graph.initializer}
    g_init = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(rounded)).graph.initializer}
    assert np.array_equal(n_init["dw_w_quantized"], g_init["dw_w_quantized"])
    assert not np.array_equal(n_init["pw_w_quantized"], g_init["pw_w_quantized"])
    out = ort.InferenceSession(str(rounded), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert out.shape == (32, 4) and np.all(np.isfinite(out))


def test_a_layer_whose_inputs_are_not_finite_keeps_nearest_rounding(skewed_int8, tmp_path):
    """A model that overflows on its calibration tiles must not get NaN weights or stop the
    build: that layer keeps the quantiser's nearest steps."""
    path, calib, _ = skewed_int8
    q = onnx.load(str(quantize_static_qdq(path, tmp_path / "n.onnx", calib.x,
                                          settings={"bias_correction": False, "weight_rounding": "nearest"})))
    fp32 = onnx.load(str(path))
    found, _ = W.layers(q, {o for n in fp32.graph.node for o in n.output} | {i.name for i in fp32.graph.input})
    layer = found[0]
    inits = {i.name: i for i in q.graph.initializer}
    k = int(np.prod(numpy_helper.to_array(inits[layer.weight]).shape[1:]))
    weights = {i.name: i for i in fp32.graph.initializer}
    shape = numpy_helper.to_array(inits[layer.weight]).shape
    h = np.eye(k)
    assert W._rounded(layer, weights, inits, h, shape) is not None
    h[0, 0] = np.inf
    assert W._rounded(layer, weights, inits, h, shape) is None


def test_input_correlations_over_several_batches_are_those_of_all_tiles_at_once(tmp_path):
    """``E[x x^T]`` of each layer's input rows, accumulated batch by batch in float64, equals
    the same statistic computed over every tile in one go (so no batch is lost or counted twice)."""
    from nscmonitor.engines.mixed_precision import _fp32_and_qdq

    path = tmp_path / "model.onnx"
    meta = build_tiny_classifier(path, input_size=SIZE, depth=2, seed=5)
    calib = tileset(meta, *blobs(3 * W.BATCH + 5, 1), "calib")  # four batches, the last one short
    fp32, qdq = _fp32_and_qdq(path, calib.x, None)
    found, _ = W.layers(qdq, {o for n in fp32.graph.node for o in n.output} | {i.name for i in fp32.graph.input})
    assert len(found) >= 2
    hs = W.input_correlations(fp32, found, calib.x, threads=1)
    probe = onnx.ModelProto()
    probe.CopyFrom(fp32)
    probe.graph.output.extend(helper.make_empty_tensor_value_info(layer.source) for layer in found)
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = sess.run([layer.source for layer in found], {sess.get_inputs()[0].name: calib.x})
    for layer, h, act in zip(found, hs, outs):
        rows = W._rows(np.asarray(act, np.float64), layer)
        np.testing.assert_allclose(h, rows.T @ rows / len(rows), rtol=1e-4, atol=1e-6, err_msg=layer.source)
