"""Accuracy-aware mixed precision on a real tiny ONNX model with one layer made deliberately
int8-hostile: the plain recipe fails its gate, the search (on the calibration tiles only)
keeps exactly that layer in fp32, and the rebuilt model passes the held-out gate."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nscmonitor.engines.metadata import read_onnx_metadata
from nscmonitor.engines.mixed_precision import build_int8, group_of, search
from nscmonitor.engines.ort import int8_path_for
from nscmonitor.engines.quantize import build_ort_int8
from nscmonitor.engines.tiny import build_tiny_classifier

from blob_tiles import SIZE, blobs, tileset  # noqa: E402  (tests/ is on the path)

DEAD = 3  # the channel of body0's output that ReLU always zeroes


@pytest.fixture()
def hostile(tmp_path):
    """stem -> body0 -> body1 -> head, where body1 has one enormous weight on an input
    channel that is always zero: harmless in fp32, but its per-channel int8 scale rounds every
    other weight of body1 to zero."""
    rng = np.random.default_rng(7)
    w0 = rng.normal(0, 0.4, (8, 8, 3, 3)).astype(np.float32)
    b0 = rng.normal(0, 0.1, 8).astype(np.float32)
    w0[DEAD], b0[DEAD] = 0.0, -0.05
    w1 = rng.normal(0, 0.4, (8, 8, 3, 3)).astype(np.float32)
    w1[:, DEAD, 1, 1] = 1e4
    path = tmp_path / "model.onnx"
    meta = build_tiny_classifier(path, input_size=SIZE, depth=2, seed=4,
                                 weights={"body0_w": w0, "body0_b": b0, "body1_w": w1})
    calib = tileset(meta, *blobs(64, 1, two_wells=True), "calib")
    held = tileset(meta, *blobs(160, 2, two_wells=True), "held")
    return path, meta, calib, held


def _consumer_of(model_path, weight: str) -> str:
    """Name the int8 file gives the node that reads ``weight`` in fp32 (unquantised)."""
    import onnx

    q = onnx.load(str(model_path))
    return next(n.name for n in q.graph.node if weight in n.input)


def test_plain_recipe_fails_and_the_search_keeps_exactly_the_hostile_layer(hostile):
    path, meta, calib, held = hostile
    out, plain = build_ort_int8(path, calib, held, threads=1)
    assert out is None and not plain.passed, plain.summary()
    steps = []
    result = search(path, calib.x, calib.groups, threads=1, progress=lambda d, t, m: steps.append((d, t)))
    assert result.passed and len(result.groups) == 1 and len(result.nodes) == 1, result.to_dict()
    assert result.groups == [group_of(result.nodes[0])] and len(result.int8_groups) == 1  # body0 stays int8
    assert max(result.sensitivity, key=result.sensitivity.get) == result.groups[0]
    assert steps and all(d <= t for d, t in steps) and result.steps <= 40


def test_build_int8_gates_the_mixed_model_and_records_the_fp32_layers(hostile, capsys):
    from nscmonitor.cli import main

    path, meta, calib, held = hostile
    out, report, result = build_int8(path, calib, held, want_openvino=False, threads=1)
    assert out == int8_path_for(path) and out.is_file() and report.passed, report.summary()
    assert result is not None and report.kept_fp32 == tuple(result.groups)
    # the layer kept fp32 is the one reading the hostile weights, still in fp32 in the file
    assert result.nodes == [_consumer_of(out, "body1_w")]
    assert "kept fp32" in report.summary()
    on_disk = json.loads(out.with_name(out.name + ".gate.json").read_text())
    assert on_disk["passed"] and on_disk["kept_fp32"] == list(result.groups)
    rec = read_onnx_metadata(out).extra["int8"]
    assert rec["settings"]["exclude_nodes"] == result.nodes
    assert rec["settings"]["mixed_precision"]["kept_fp32_groups"] == list(result.groups)
    # the ladder's first rung: only the group most sensitive on its own kept fp32, and it passed
    assert result.rule == "most sensitive 1" and rec["settings"]["mixed_precision"]["rule"] == result.rule
    assert rec["settings"]["mixed_precision"]["calibration_readout_pp"] is None
    capsys.readouterr()
    assert main(["engine", "list", str(path)]) == 0
    assert "1 layer group(s) kept fp32" in " ".join(capsys.readouterr().out.replace("│", " ").split())


def test_a_model_the_plain_recipe_passes_runs_no_search(tmp_path):
    path = tmp_path / "model.onnx"
    meta = build_tiny_classifier(path, input_size=SIZE, depth=2, seed=4)
    out, report, result = build_int8(path, tileset(meta, *blobs(64, 1, two_wells=True), "calib"),
                                     tileset(meta, *blobs(160, 2, two_wells=True), "held"), want_openvino=False, threads=1)
    assert out is not None and report.passed and result is None and report.kept_fp32 == ()


def test_a_refused_block_still_takes_its_harmless_layers_in_int8(hostile, tmp_path):
    """body0 and body1 named as one residual block (the exporter's scopes): the block fails as
    a whole because of body1, and the finer pass puts body0 alone back into int8."""
    import onnx

    path, meta, calib, held = hostile
    model = onnx.load(str(path))
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    convs[1].name, convs[2].name = "/layer1/layer1.0/conv1/Conv", "/layer1/layer1.0/conv2/Conv"
    scoped = tmp_path / "scoped.onnx"
    onnx.save(model, str(scoped))
    result = search(scoped, calib.x, calib.groups, threads=1)
    assert "/layer1/layer1.0" in result.groups and "/layer1/layer1.0" not in result.int8_groups, result.to_dict()
    assert result.int8_split_nodes == ["/layer1/layer1.0/conv1/Conv"], result.to_dict()
    assert result.nodes == ["/layer1/layer1.0/conv2/Conv"], result.to_dict()
    assert result.to_dict()["int8_split_nodes"] == result.int8_split_nodes


@pytest.mark.parametrize("arch", ["resnet18", "small"])
def test_layer_groups_of_an_exported_model_are_its_blocks(tmp_path, arch):
    """Through the real export wrapper (the network under ``net``, the OOD score beside it):
    a ResNet's groups are its residual blocks, a plain conv stack's its single layers, so the
    search can keep one block or layer fp32 rather than a whole stage or network."""
    import warnings
    from types import SimpleNamespace

    import onnx
    import torch

    from nscmonitor.engines.mixed_precision import groups_of
    from nscmonitor.engines.quantize import quantize_static_qdq
    from nscmonitor.training import ood as O
    from nscmonitor.training.export import OPSET
    from nscmonitor.training.model import build_model, fold_stem

    torch.manual_seed(0)
    model = build_model(arch, 4).eval()
    x = np.random.default_rng(0).random((16, 32, 32)).astype(np.float32)
    split = SimpleNamespace(x=x, y=np.arange(16) % 4,
                            records=[SimpleNamespace(field=None, path=f"t{i}.tif") for i in range(16)])
    head, _ = O.fit(model, {"train": split, "val": split}, torch.device("cpu"), 4)
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(O.ScoredNet(fold_stem(model), head).eval(), (torch.zeros(2, 1, 32, 32),), str(path),
                          dynamo=False, opset_version=OPSET, input_names=["input"], output_names=["logits", "ood"],
                          dynamic_axes={"input": {0: "N"}})
    q = quantize_static_qdq(path, tmp_path / "q.onnx", x[:, None], settings={"keep_fp32": [], "bias_correction": False})
    groups = {g: v for g, v in groups_of(onnx.load(str(q))).items() if not g.startswith("/ood/")}
    blocks = {g for g, v in groups.items() if len(v) > 1}
    if arch == "resnet18":
        assert blocks == {f"/net/layer{s}/layer{s}.{b}" for s in range(1, 5) for b in range(2)}, sorted(groups)
        assert all(len(groups[g]) >= 3 for g in blocks)  # two convs and the residual Add (and a downsample)
    else:
        assert not blocks and {f"/net/features/features.{i}" for i in (0, 3, 6, 9)} <= set(groups), sorted(groups)
    assert len(groups) - len(blocks) >= 2  # the stem and the head stand alone


def test_a_tighter_margin_keeps_no_fewer_groups_and_reuses_the_probes(hostile):
    """The retry ``build_int8`` makes after a refused mix: the same search with a smaller
    share of the tolerance, its sensitivity probes taken from the first run."""
    path, meta, calib, held = hostile
    wide = search(path, calib.x, calib.groups, threads=1, well_size=8)
    tight = search(path, calib.x, calib.groups, threads=1, well_size=8, margin=1e-9, sensitivity=wide.sensitivity)
    assert wide.to_dict()["pseudo_well_size"] == 8 and tight.to_dict()["readout_margin"] == 1e-9
    assert set(wide.groups) <= set(tight.groups) and len(tight.groups) > len(wide.groups), (wide.groups, tight.groups)
    assert tight.sensitivity == wide.sensitivity and tight.steps < wide.steps


def test_the_cpu_file_rounds_once_per_layer_and_the_search_keeps_each_fp32_layers_relu(tmp_path):
    """The CPU recipe folds each ReLU after a quantised layer into that layer's rounding (the
    quantiser rounds every quantised node's output; without the fold it rounded the pre-ReLU
    range and then again after the ReLU). The search's graph surgery puts the ReLUs back, so a
    layer kept fp32 still clamps: with every layer restored the variant is the fp32 model."""
    import onnx

    from nscmonitor.engines.mixed_precision import _fp32_and_qdq, fake_quant_probs, groups_of, restore_fp32
    from nscmonitor.engines.quantize import TENSORRT_SETTINGS, quantize_static_qdq

    path = tmp_path / "model.onnx"
    meta = build_tiny_classifier(path, input_size=SIZE, depth=3, seed=5)
    calib = tileset(meta, *blobs(64, 1), "calib")
    relus = lambda m: sum(n.op_type == "Relu" for n in m.graph.node)  # noqa: E731
    cpu = onnx.load(str(quantize_static_qdq(path, tmp_path / "cpu.onnx", calib.x, threads=1)))
    trt = onnx.load(str(quantize_static_qdq(path, tmp_path / "trt.onnx", calib.x, threads=1,
                                            settings=TENSORRT_SETTINGS)))
    assert relus(onnx.load(str(path))) == 4
    assert relus(cpu) == 1  # the stem's: the stem stays fp32, so its output is not rounded
    assert relus(trt) == 4  # a signed zero point cannot clamp: TensorRT's file keeps them

    fp32, qdq = _fp32_and_qdq(path, calib.x, None)
    assert relus(qdq) == 4
    every = [n for nodes in groups_of(qdq).values() for n in nodes]
    assert len(every) == 3
    ref = fake_quant_probs(fp32, calib.x, threads=1)
    restored = restore_fp32(qdq, fp32, every)
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in restored.graph.node)
    np.testing.assert_allclose(fake_quant_probs(restored, calib.x, threads=1), ref, atol=1e-6)
    # the middle layer alone kept fp32 between two int8 ones: its output still clamps
    one = restore_fp32(qdq, fp32, [every[1]])
    assert relus(one) == 4
    np.testing.assert_allclose(fake_quant_probs(one, calib.x, threads=1),
                               fake_quant_probs(qdq, calib.x, threads=1), atol=0.05)


def test_the_search_checks_its_surgery_gives_the_fp32_model_back(tmp_path):
    """Left folded, the quantiser's ReLUs would make every layer the search keeps fp32 run
    unclamped; the check before the search sees that on the real Q/DQ file, and passes once
    the ReLUs are put back (what ``search`` works on)."""
    import onnx

    from nscmonitor.engines.mixed_precision import _fp32_and_qdq, surgery_restores_fp32, unfold_relus
    from nscmonitor.engines.quantize import quantize_static_qdq

    path = tmp_path / "model.onnx"
    meta = build_tiny_classifier(path, input_size=SIZE, depth=3, seed=5)
    calib = tileset(meta, *blobs(64, 1), "calib")
    fp32, qdq = _fp32_and_qdq(path, calib.x, None)
    assert surgery_restores_fp32(qdq, fp32, calib.x)
    folded = onnx.load(str(quantize_static_qdq(path, tmp_path / "q.onnx", calib.x, threads=1,
                                               settings={"bias_correction": False, "keep_fp32": ["stem", "head"]})))
    named = {n.name for n in fp32.graph.node}
    assert {n.name for n in folded.graph.node if n.op_type == "Conv"} <= named
    assert not surgery_restores_fp32(folded, fp32, calib.x)
    assert unfold_relus(folded, fp32) == 3 and surgery_restores_fp32(folded, fp32, calib.x)


def test_the_tensorrt_file_rounds_layer_inputs_only(tmp_path):
    """TensorRT's signed file cannot fold a ReLU into its rounding, so it rounds no
    convolution's or Add's output, only each layer's input after the ReLU; still signed
    symmetric Q/DQ that TensorRT's explicit quantisation takes."""
    import onnx

    from nscmonitor.engines.precision_graphs import qdq_problems
    from nscmonitor.engines.quantize import TENSORRT_SETTINGS, quantize_static_qdq

    path = tmp_path / "model.onnx"
    meta = build_tiny_classifier(path, input_size=SIZE, depth=3, seed=5)
    calib = tileset(meta, *blobs(64, 1), "calib")
    out = quantize_static_qdq(path, tmp_path / "trt.onnx", calib.x, threads=1, settings=TENSORRT_SETTINGS)
    trt = onnx.load(str(out))
    produced_by = {o: n.op_type for n in trt.graph.node for o in n.output}
    rounded = [produced_by.get(n.input[0]) for n in trt.graph.node if n.op_type == "QuantizeLinear"]
    assert rounded and "Relu" in rounded
    assert not {"Conv", "Add"} & set(rounded), rounded
    assert qdq_problems(out) == []
    both = quantize_static_qdq(path, tmp_path / "both.onnx", calib.x, threads=1,
                               settings={**TENSORRT_SETTINGS, "exclude_output_quantization": []})
    produced_by = {o: n.op_type for n in onnx.load(str(both)).graph.node for o in n.output}
    assert "Conv" in {produced_by.get(n.input[0]) for n in onnx.load(str(both)).graph.node
                      if n.op_type == "QuantizeLinear"}  # the quantiser's default: outputs rounded too


def test_the_ladders_rounds_reuse_the_preprocessed_model_and_the_fp32_reference(hostile, tmp_path):
    """Each quantise-and-gate round of one build starts from the same pre-processed model and
    compares against the same fp32 probabilities; shared (``quantize.Rounds``), the second
    round computes neither again and writes the file and gate a fresh round writes."""
    import onnx

    from nscmonitor.engines.quantize import Rounds

    path, meta, calib, held = hostile
    search_result = search(path, calib.x, calib.groups, threads=1)
    mix = {"exclude_nodes": search_result.nodes}
    fresh_path, fresh = build_ort_int8(path, calib, held, threads=1, settings=mix, out_path=tmp_path / "fresh.onnx")
    rounds = Rounds(tmp_path / "rounds")
    (tmp_path / "rounds").mkdir()
    first = build_ort_int8(path, calib, held, threads=1, out_path=tmp_path / "plain.onnx", rounds=rounds)[1]
    assert not first.passed and rounds.reused == 0
    shared_path, shared = build_ort_int8(path, calib, held, threads=1, settings=mix, out_path=tmp_path / "shared.onnx",
                                         rounds=rounds)
    assert rounds.reused == 2  # the named model and the fp32 reference
    assert fresh.passed and shared.to_dict() == fresh.to_dict()
    assert onnx.load(str(shared_path)).graph == onnx.load(str(fresh_path)).graph
    # a changed model file is not taken for the one prepared before
    other = tmp_path / "other.onnx"
    build_tiny_classifier(other, input_size=SIZE, depth=2, seed=9)
    build_ort_int8(other, calib, held, threads=1, out_path=tmp_path / "other.int8.onnx", rounds=rounds)
    assert rounds.reused == 2
