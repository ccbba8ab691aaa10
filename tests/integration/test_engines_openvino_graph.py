"""The compile-time rewrites of an OpenVINO graph (``engines.openvino_graph``), on a small ONNX
graph of the trained models' form run by real OpenVINO: a folded stem that pads with the
training mean, an int8 rounding after it, a classifier, and an OOD head with a whitening
product and a 3 x 3 average pool of the one-channel input."""

from __future__ import annotations

import numpy as np
import pytest

ov = pytest.importorskip("openvino", reason="OpenVINO is an optional extra")

from nscmonitor.engines import openvino_graph as G  # noqa: E402
from nscmonitor.engines.openvino import has_bf16  # noqa: E402

FILL = 0.55  # the folded stem's pad value: the training mean of the scaled tiles


def _graph(path, *, rounded: bool = True) -> None:
    """input -> Pad(FILL) -> Conv 7x7/2 -> Relu -> [Q/DQ] -> Conv 3x3 -> GAP -> fc -> logits;
    ood = |(pooled - c) W|^2 + mean(avgpool3(input)) from the same pooled features."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    inits = {
        "pads": np.array([0, 0, 3, 3, 0, 0, 3, 3], np.int64), "fill": np.array(FILL, np.float32),
        "stem_w": rng.normal(0, 0.3, (8, 1, 7, 7)).astype(np.float32) + 0.05,
        "stem_b": (-FILL * 0.05 * 49 * np.ones(8)).astype(np.float32),
        "body_w": rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32), "body_b": np.zeros(8, np.float32),
        "fc_w": rng.normal(0, 1.0, (8, 4)).astype(np.float32), "whiten": rng.normal(0, 0.5, (8, 8)).astype(np.float32),
        "centre": rng.normal(0, 0.1, (8,)).astype(np.float32),
        "q_scale": np.array(0.02, np.float32), "q_zero": np.array(0, np.uint8),
    }
    nodes = [helper.make_node("Pad", ["input", "pads", "fill"], ["padded"], mode="constant", name="/net/conv1/Pad"),
             helper.make_node("Conv", ["padded", "stem_w", "stem_b"], ["stem"], strides=[2, 2], name="/net/conv1/Conv"),
             helper.make_node("Relu", ["stem"], ["r0"], name="/net/relu")]
    body_in = "r0"
    if rounded:
        nodes += [helper.make_node("QuantizeLinear", ["r0", "q_scale", "q_zero"], ["q0"], name="/net/q"),
                  helper.make_node("DequantizeLinear", ["q0", "q_scale", "q_zero"], ["dq0"], name="/net/dq")]
        body_in = "dq0"
    nodes += [
        helper.make_node("Conv", [body_in, "body_w", "body_b"], ["c1"], pads=[1, 1, 1, 1], name="/net/body"),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("GlobalAveragePool", ["r1"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"], axis=1),
        helper.make_node("MatMul", ["f", "fc_w"], ["logits"], name="/net/fc"),
        helper.make_node("Sub", ["f", "centre"], ["fc0"], name="/ood/Sub"),
        helper.make_node("MatMul", ["fc0", "whiten"], ["z"], name="/ood/MatMul"),
        helper.make_node("ReduceSumSquare", ["z"], ["d"], axes=[1], keepdims=0, name="/ood/ReduceSumSquare"),
        helper.make_node("AveragePool", ["input"], ["smooth"], kernel_shape=[3, 3], name="/ood/AveragePool"),
        helper.make_node("ReduceMean", ["smooth"], ["sm"], axes=[1, 2, 3], keepdims=0, name="/ood/ReduceMean"),
        helper.make_node("Add", ["d", "sm"], ["ood"], name="/ood/Add"),
    ]
    graph = helper.make_graph(
        nodes, "stem_and_head", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 48, 48])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("ood", TensorProto.FLOAT, ["N"])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _tiles(n: int = 12) -> np.ndarray:
    """Tiles as the daemon scales them: a small contrast about the background level."""
    rng = np.random.default_rng(7)
    return (FILL + 0.05 * rng.normal(size=(n, 1, 48, 48))).astype(np.float32)


def _run(path, rewrite=None, hint: str = "f32") -> tuple[np.ndarray, np.ndarray, list[str], object]:
    core = ov.Core()
    model = core.read_model(str(path))
    model.reshape({"input": [12, 1, 48, 48]})
    changed = rewrite(model) if rewrite else []
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": 1})
    out = compiled.create_infer_request().infer({0: _tiles()})
    return np.array(out[compiled.outputs[0]]), np.array(out[compiled.outputs[1]]), changed, compiled


def _runtime_precision(compiled, name: str) -> str:
    for node in compiled.get_runtime_model().get_ops():
        info = node.get_rt_info()
        if name in info["originalLayersNames"].astype(str).split(","):
            return info["runtimePrecision"].astype(str)
    raise AssertionError(f"{name} not in the compiled graph")


def test_the_pool_runs_with_the_tiles_as_channels_and_scores_the_same(tmp_path):
    _graph(tmp_path / "m.onnx")
    logits, ood, _, _ = _run(tmp_path / "m.onnx")
    logits2, ood2, changed, _ = _run(tmp_path / "m.onnx", G.pool_tiles_as_channels)
    assert changed == ["/ood/AveragePool"]
    np.testing.assert_allclose(ood2, ood, rtol=1e-6)
    np.testing.assert_array_equal(logits2, logits)


def test_centring_the_padded_stem_is_the_same_function(tmp_path):
    """conv(Pad(x, v)) = conv(Pad(x - v, 0)) + v * sum(w), borders included (f32 throughout)."""
    _graph(tmp_path / "m.onnx")

    def centre(model):
        params = {p.get_name() for p in model.get_parameters()}
        convs = [op for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"]
        return [op.get_friendly_name() for op in convs if G.centre_padded_stem(op, params)]

    logits, ood, _, _ = _run(tmp_path / "m.onnx")
    logits2, ood2, changed, _ = _run(tmp_path / "m.onnx", centre)
    assert len(changed) == 1 and "conv1" in changed[0]  # the stem, not the body's zero-padded conv
    np.testing.assert_allclose(logits2, logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ood2, ood, rtol=1e-4)


def test_bf16_goes_only_to_the_rounded_stem_and_the_ood_products(tmp_path):
    _graph(tmp_path / "rounded.onnx")
    _graph(tmp_path / "plain.onnx", rounded=False)
    core = ov.Core()
    rounded = core.read_model(str(tmp_path / "rounded.onnx"))
    changed = G.bf16_stem_and_products(rounded)
    # the reader splits the stem's bias off its convolution ("WithoutBiases"); not the classifier, not the body
    assert changed == ["/net/conv1/Conv/WithoutBiases", "/ood/MatMul"]
    # a stem whose output reaches the logits without an int8 rounding keeps f32: bf16 would
    # be the only rounding there, which no gate of an fp32 layer saw
    plain = core.read_model(str(tmp_path / "plain.onnx"))
    assert G.bf16_stem_and_products(plain) == ["/ood/MatMul"]
    if not has_bf16():
        pytest.skip("this CPU has no bf16 units (AVX512-BF16 or AMX): the lowered graph cannot run in bf16 here")
    logits, ood, _, _ = _run(tmp_path / "rounded.onnx")
    logits2, ood2, _, compiled = _run(tmp_path / "rounded.onnx", G.bf16_stem_and_products)
    assert _runtime_precision(compiled, "/ood/MatMul") == "bf16"
    assert _runtime_precision(compiled, "/net/conv1/Conv/WithoutBiases") == "bf16"
    assert _runtime_precision(compiled, "logits") == "f32"  # the classifier, named after its output
    np.testing.assert_allclose(logits2, logits, atol=0.05 * np.abs(logits).max())
    np.testing.assert_allclose(ood2, ood, rtol=0.03)
    # the plugin's own bf16 hint, by contrast, lowers the classifier too
    _, _, _, hinted = _run(tmp_path / "rounded.onnx", hint="bf16")
    assert _runtime_precision(hinted, "logits") == "bf16"


def test_a_graph_without_a_padded_stem_or_products_is_left_alone(tmp_path):
    from nscmonitor.engines.tiny import build_tiny_classifier

    build_tiny_classifier(tmp_path / "tiny.onnx", ood_threshold=10.0)
    model = ov.Core().read_model(str(tmp_path / "tiny.onnx"))
    before = len(model.get_ordered_ops())
    assert G.bf16_stem_and_products(model) == [] and G.pool_tiles_as_channels(model) == []
    assert len(model.get_ordered_ops()) == before


def _small_maps_graph(path) -> None:
    """Convolutions of every form ``small_maps_as_one_image`` handles on 3-pixel-wide maps (the
    last stage of a ResNet at 96 px): 3 x 3 with stride 2 and 1, 1 x 1 with stride 1 and 2, a
    5 x 5 kernel wider than the map, asymmetric pads, float weights on an int8-rounded input,
    with and without a bias and a ReLU after them (carried into the rewrite when they are the
    convolution's only consumers, left where they are otherwise); and two it must leave alone:
    one with a 6-pixel-wide output and one with int8 weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    w = {name: rng.normal(0, 0.3, shape).astype(np.float32) for name, shape in {
        "wa": (8, 4, 3, 3), "wb": (8, 8, 3, 3), "wc": (16, 8, 1, 1), "wd": (16, 4, 1, 1), "we": (8, 16, 5, 5),
        "wf": (8, 16, 3, 3), "wg": (8, 4, 3, 3), "wh": (8, 8, 3, 3), "wj": (8, 16, 1, 1),
        "ba": (8,), "bb": (8,), "bc": (16,), "be": (8,), "bj": (8,)}.items()}
    inits = {**w, "q_scale": np.array(0.05, np.float32), "q_zero": np.array(0, np.uint8),
             "wi": rng.integers(-100, 100, (8, 8, 3, 3)).astype(np.int8), "wi_scale": np.array(0.003, np.float32)}
    node = helper.make_node
    nodes = [
        node("Conv", ["input", "wa", "ba"], ["a"], pads=[1, 1, 1, 1], strides=[2, 2], name="a"),
        node("Relu", ["a"], ["ra"]),
        node("Conv", ["ra", "wb", "bb"], ["b_3x3"], pads=[1, 1, 1, 1]),
        node("Conv", ["b_3x3", "wc", "bc"], ["c_1x1"]),
        node("Conv", ["input", "wd"], ["d_1x1_stride2"], strides=[2, 2]),
        node("Add", ["c_1x1", "d_1x1_stride2"], ["cd"]),
        node("Relu", ["cd"], ["rcd"]),
        node("Conv", ["rcd", "we", "be"], ["e"], pads=[2, 2, 2, 2]),
        node("Relu", ["e"], ["e_5x5_relu"]),
        node("Conv", ["rcd", "wf"], ["f_asymmetric"], pads=[0, 0, 1, 1]),
        node("Conv", ["input", "wg"], ["g_wide"], pads=[1, 1, 1, 1]),
        node("QuantizeLinear", ["ra", "q_scale", "q_zero"], ["q"]),
        node("DequantizeLinear", ["q", "q_scale", "q_zero"], ["dq"]),
        node("Conv", ["dq", "wh"], ["h_rounded_input"], pads=[1, 1, 1, 1]),
        node("DequantizeLinear", ["wi", "wi_scale"], ["wi_dq"]),
        node("Conv", ["dq", "wi_dq"], ["i_int8"], pads=[1, 1, 1, 1]),
        node("Conv", ["rcd", "wj", "bj"], ["j"]),
        node("Relu", ["j"], ["j_1x1_relu"]),
    ]
    names = ["b_3x3", "c_1x1", "d_1x1_stride2", "e_5x5_relu", "f_asymmetric", "g_wide", "h_rounded_input", "i_int8",
             "j_1x1_relu"]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 0, 0, 0]) for name in names]
    graph = helper.make_graph(nodes, "small_maps", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                  ["N", 4, 6, 6])],
                              outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _transposes(model) -> int:
    return sum(op.get_type_name() == "Transpose" for op in model.get_ordered_ops())


def _outputs(path, batch: int | None, rewrite: bool, sink: bool = True
             ) -> tuple[list[np.ndarray], list[str], set[str], set[str]]:
    """Outputs, the convolutions rewritten, and the ReLUs and convolutions of the file still in the graph."""
    core = ov.Core()
    model = core.read_model(str(path))
    if batch:
        model.reshape({"input": [batch, 4, 6, 6]})
    changed = G.small_maps_as_one_image(model) if rewrite else []
    if changed and sink:
        assert G.sink_transposes(model) > 0
    left = {kind: {op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == kind}
            for kind in ("Relu", "Convolution")}
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1})
    x = np.random.default_rng(11).normal(size=(batch or 3, 4, 6, 6)).astype(np.float32)
    out = compiled.create_infer_request().infer({0: x})
    return [np.array(out[o]) for o in compiled.outputs], changed, left["Relu"], left["Convolution"]


def test_small_maps_run_as_one_image_and_give_the_same_values(tmp_path):
    _small_maps_graph(tmp_path / "m.onnx")
    plain, _, relus, _ = _outputs(tmp_path / "m.onnx", 5, rewrite=False)
    rewritten, changed, relus_left, convs_left = _outputs(tmp_path / "m.onnx", 5, rewrite=True, sink=False)
    # the reader splits a bias off its convolution ("WithoutBiases")
    assert sorted(changed) == ["a/WithoutBiases", "b_3x3/WithoutBiases", "c_1x1/WithoutBiases", "d_1x1_stride2",
                               "e/WithoutBiases", "f_asymmetric", "h_rounded_input", "j/WithoutBiases"]
    # every rewritten convolution is gone from the graph (its shape read by the bias's reshape
    # included); the int8 one and the wide one stay
    assert {"g_wide", "i_int8"} <= convs_left and not convs_left & set(changed)
    # the ReLUs right after a bias went into the rewrite; the one after the residual sum stays
    assert relus == {"ra", "rcd", "e_5x5_relu", "j_1x1_relu"} and relus_left & relus == {"rcd"}
    sunk = _outputs(tmp_path / "m.onnx", 5, rewrite=True)[0]
    assert [o.shape for o in rewritten] == [o.shape for o in sunk] == [o.shape for o in plain]
    for got, moved, want in zip(rewritten, sunk, plain):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(moved, want, rtol=1e-5, atol=1e-5)


def test_small_maps_are_left_alone_for_one_tile_or_a_dynamic_batch(tmp_path):
    _small_maps_graph(tmp_path / "m.onnx")
    assert _outputs(tmp_path / "m.onnx", 1, rewrite=True)[1] == []
    assert _outputs(tmp_path / "m.onnx", None, rewrite=True)[1] == []


def _exported_resnet18(path) -> None:
    """A ResNet18 with the OOD head training fits, exported through the real export wrapper
    (stage means of the stem and layer1-3, the network's global average pool, one distance
    per layer: the input statistics and contrast sign narrow, the stages 64-512 wide)."""
    import warnings
    from types import SimpleNamespace

    torch = pytest.importorskip("torch", reason="the export wrapper is torch's")
    from nscmonitor.training import ood as O
    from nscmonitor.training.export import OPSET
    from nscmonitor.training.model import build_model, fold_stem

    torch.manual_seed(0)
    model = build_model("resnet18", 4).eval()
    x = np.random.default_rng(0).random((32, 32, 32)).astype(np.float32)
    split = SimpleNamespace(x=x, y=np.arange(32) % 4,
                            records=[SimpleNamespace(field=None, path=f"t{i}.tif") for i in range(32)])
    head, _ = O.fit(model, {"train": split, "val": split}, torch.device("cpu"), 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(O.ScoredNet(fold_stem(model), head).eval(), (torch.zeros(2, 1, 32, 32),), str(path),
                          dynamo=False, opset_version=OPSET, input_names=["input"], output_names=["logits", "ood"],
                          dynamic_axes={"input": {0: "N"}})


def _head_outputs(path, batch: int | None, rewrite: bool) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    core = ov.Core()
    model = core.read_model(str(path))
    if batch:
        model.reshape({"input": [batch, 1, 32, 32]})
    pools = G.channel_means_as_pools(model) if rewrite else []
    products = G.distances_as_products(model) if rewrite else []
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1})
    tiles = np.random.default_rng(2).random((12, 1, 32, 32)).astype(np.float32)
    out = compiled.create_infer_request().infer({0: tiles})
    return np.array(out[compiled.outputs[0]]), np.array(out[compiled.outputs[1]]), pools, products


@pytest.mark.parametrize("batch", [12, None])
def test_the_ood_heads_means_and_distances_run_as_pools_and_products_with_the_same_values(tmp_path, batch):
    _exported_resnet18(tmp_path / "m.onnx")
    logits, ood, _, _ = _head_outputs(tmp_path / "m.onnx", batch, rewrite=False)
    logits2, ood2, pools, products = _head_outputs(tmp_path / "m.onnx", batch, rewrite=True)
    # four stage means and the network's own pool (whose axes the reader computes from the rank)
    assert len(pools) == 5 and "/net/avgpool/GlobalAveragePool" in pools
    # the stem's, three stages' and the pooled features' distances; not the narrow two
    assert len(products) == 5 and all(p.startswith("/ood/") for p in products)
    np.testing.assert_allclose(logits2, logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ood2, ood, rtol=1e-4)


@pytest.mark.parametrize("means_form", ["unsqueezed", "folded"])
def test_a_distance_of_zero_stays_zero_not_negative(tmp_path, means_form):
    """Features equal to a class mean, far from the origin: |z|^2 - 2 z m + |m|^2 rounds to
    either side of zero, and the score takes the distance's root. The class means either
    unsqueezed in the graph (an exported model) or folded to a 1 x K x D constant (the int8
    files, after the quantiser's graph optimisation)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(8)
    means = (1000.0 + 50.0 * rng.normal(size=(4, 128))).astype(np.float32)
    node = helper.make_node
    folded = means_form == "folded"
    graph = helper.make_graph(
        [node("Unsqueeze", ["z", "ax1"], ["zu"]), *([] if folded else [node("Unsqueeze", ["m", "ax0"], ["mu"])]),
         node("Sub", ["zu", "m3" if folded else "mu"], ["diff"]), node("Mul", ["diff", "diff"], ["sq"]),
         node("ReduceSum", ["sq", "ax2"], ["d"], keepdims=0), node("Sqrt", ["d"], ["root"])],
        "distances", [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 128])],
        [helper.make_tensor_value_info("root", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(means[None] if folded else means, "m3" if folded else "m"),
         *(numpy_helper.from_array(np.array([a], np.int64), f"ax{a}") for a in (0, 1, 2))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "d.onnx"))
    core = ov.Core()
    graph_ = core.read_model(str(tmp_path / "d.onnx"))
    assert len(G.distances_as_products(graph_)) == 1
    z = np.repeat(means, 8, axis=0)  # each row one class mean exactly
    got = core.compile_model(graph_, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}).create_infer_request().infer({0: z})
    root = np.array(list(got.values())[0])
    assert np.isfinite(root).all() and (root >= 0).all()
    want = np.sqrt(((z[:, None, :].astype(np.float64) - means[None].astype(np.float64)) ** 2).sum(axis=2))
    # |z|^2 is about 1.3e8 here, rounded to some 8 in float32: a root of up to about 3 where the
    # distance is zero (the head centres its features, so real ones are of the distance's size)
    np.testing.assert_allclose(root, want, atol=5.0)
    assert np.abs(root - want)[want > 0].max() < 0.1


def test_the_transposes_between_a_resnets_rewritten_convolutions_cancel(tmp_path):
    """A ResNet18 at 32 px: layer2-4 work on 4 x 4, 2 x 2 and 1 x 1 maps, so their convolutions
    are rewritten; moved below the pads, slices and ReLUs, the transposes back meet the next
    rewrite's and merge or cancel, and the logits and score stay what they were."""
    _exported_resnet18(tmp_path / "m.onnx")
    logits, ood, _, _ = _head_outputs(tmp_path / "m.onnx", 12, rewrite=False)
    core = ov.Core()
    model = core.read_model(str(tmp_path / "m.onnx"))
    model.reshape({"input": [12, 1, 32, 32]})
    assert len(G.small_maps_as_one_image(model)) >= 10
    before = _transposes(model)
    assert G.sink_transposes(model) > 0
    assert _transposes(model) < before - 8
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1})
    tiles = np.random.default_rng(2).random((12, 1, 32, 32)).astype(np.float32)
    out = compiled.create_infer_request().infer({0: tiles})
    np.testing.assert_allclose(np.array(out[compiled.outputs[0]]), logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.array(out[compiled.outputs[1]]), ood, rtol=1e-4)


def test_transposes_move_below_pads_sums_relus_and_strided_pixels_with_their_axes(tmp_path):
    """A bottleneck on 3 x 3 maps, every convolution rewritten: the products' transposes back
    (pixel-major to channel-major) move below the next 3 x 3 convolution's pad, the residual sum
    and its ReLU and the strided 1 x 1 convolution's pixel slice, each on the axis it now
    meets, and the output is the same."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(9)
    w = {name: rng.normal(0, 0.3, shape).astype(np.float32) for name, shape in {
        "wa": (8, 8, 1, 1), "ba": (8,), "wb": (8, 8, 3, 3), "bb": (8,), "wc": (16, 8, 1, 1), "wd": (16, 8, 1, 1),
        "wg": (8, 16, 1, 1)}.items()}
    node = helper.make_node
    nodes = [node("Conv", ["input", "wa", "ba"], ["a0"]), node("Relu", ["a0"], ["a"]),
             node("Conv", ["a", "wb", "bb"], ["b0"], pads=[1, 1, 1, 1]), node("Relu", ["b0"], ["b"]),
             node("Conv", ["b", "wc"], ["c"]), node("Conv", ["input", "wd"], ["d"]),
             node("Add", ["c", "d"], ["s0"]), node("Relu", ["s0"], ["s"]),
             node("Conv", ["s", "wg"], ["g"], strides=[2, 2])]
    graph = helper.make_graph(nodes, "bottleneck", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                   ["N", 8, 3, 3])],
                              [helper.make_tensor_value_info("g", TensorProto.FLOAT, ["N", 8, 2, 2])],
                              [numpy_helper.from_array(v, k) for k, v in w.items()])
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx_model.ir_version = 8
    onnx.save(onnx_model, str(tmp_path / "b.onnx"))
    core = ov.Core()
    x = np.random.default_rng(1).normal(size=(6, 8, 3, 3)).astype(np.float32)

    def run(rewrite: bool) -> tuple[np.ndarray, int]:
        model = core.read_model(str(tmp_path / "b.onnx"))
        model.reshape({"input": [6, 8, 3, 3]})
        moves = 0
        if rewrite:
            assert len(G.small_maps_as_one_image(model)) == 5
            moves = G.sink_transposes(model)
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1})
        return np.array(compiled.create_infer_request().infer({0: x})[compiled.outputs[0]]), moves

    want, _ = run(False)
    got, moves = run(True)
    assert moves >= 5  # the pad, the sum, its ReLU, the slice, and a pair cancelled
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_mean_of_int8_rounded_values_stays_a_mean(tmp_path):
    """The plugin pools int8-rounded values in int8 and rounds each mean to a whole step, so a
    mean downstream of an int8 rounding is left alone; the same graph without the rounding has
    its global pool rewritten."""
    _graph(tmp_path / "rounded.onnx")
    _graph(tmp_path / "plain.onnx", rounded=False)
    core = ov.Core()
    assert G.channel_means_as_pools(core.read_model(str(tmp_path / "rounded.onnx"))) == []
    assert len(G.channel_means_as_pools(core.read_model(str(tmp_path / "plain.onnx")))) == 1
