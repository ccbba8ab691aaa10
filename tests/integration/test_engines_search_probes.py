"""The mixed-precision search's probes, remembered and cut where a variant leaves fp32, on a
real tiny ONNX model run by ONNX Runtime: every variant's probabilities are the literal full
run's to the bit, whichever way they were computed."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from nscmonitor.engines.mixed_precision import Probes, fake_quant_probs, restore_fp32, search
from nscmonitor.engines.tiny import build_tiny_classifier

from blob_tiles import SIZE, blobs, tileset  # noqa: E402  (tests/ is on the path)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    path = tmp_path_factory.mktemp("probes") / "model.onnx"
    meta = build_tiny_classifier(path, input_size=SIZE, depth=3, seed=5, ood_threshold=1.0)  # a second output
    calib = tileset(meta, *blobs(64, 1), "calib")
    return path, calib


def _literal(p: Probes, int8: tuple[str, ...], x: np.ndarray) -> np.ndarray:
    every = [n for nodes in p.groups.values() for n in nodes]
    return fake_quant_probs(restore_fp32(p.qdq, p.fp32, set(every) - set(int8)), x, threads=1)


def _variants(p: Probes) -> list[tuple[str, ...]]:
    every = [n for nodes in p.groups.values() for n in nodes]
    return [c for r in range(len(every) + 1) for c in itertools.combinations(every, r)]


def test_every_variant_reads_as_its_literal_full_run_whether_run_whole_cut_or_remembered(prepared):
    path, calib = prepared
    p = Probes.prepare(path, calib.x, threads=1)
    assert p.surgery_ok and len(_variants(p)) == 8
    for rnd in range(2):  # the first round fills the frontier cache, the second runs from it
        p.runner.memo.clear()
        for int8 in _variants(p):
            np.testing.assert_array_equal(p.probs(list(int8)), _literal(p, int8, calib.x), err_msg=str(int8))
    stats = dict(p.runner.stats)
    assert stats["cut"] >= 4 and stats["whole"] >= 3, stats  # variants sharing a frontier ran from it
    built = []
    for int8 in _variants(p):  # remembered: nothing is built or run again
        p.runner.probs(frozenset(int8), lambda: built.append(int8))
    assert not built and p.runner.stats["memo"] == stats["memo"] + 8


def test_a_frontier_over_the_cache_bound_runs_whole_and_still_reads_the_same(prepared):
    path, calib = prepared
    p = Probes.prepare(path, calib.x, threads=1)
    p.runner.cache_bytes = 1024  # smaller than any activation over the 64 tiles
    for int8 in _variants(p) * 2:
        p.runner.memo.clear()
        np.testing.assert_array_equal(p.probs(list(int8)), _literal(p, int8, calib.x))
    assert p.runner.stats["cut"] == 0 and not p.runner.cache


def test_searches_sharing_their_probes_choose_what_fresh_searches_choose(prepared):
    """The ladder's retries at tighter margins share one ``Probes``: the same mixes as
    searches that prepared their own, with the repeated variants remembered, not run."""
    path, calib = prepared
    p = Probes.prepare(path, calib.x, threads=1)
    kept, sensitivity = [], None
    for margin in (1.0, 0.6, 0.4):  # as build_int8 runs them: the first search's sensitivity reused
        args = dict(threads=1, well_size=8, margin=margin, tolerance={"well_readout_pp": 0.3}, sensitivity=sensitivity)
        fresh = search(path, calib.x, calib.groups, **args)
        shared = search(path, calib.x, calib.groups, probes=p, **args)
        assert shared.to_dict() == fresh.to_dict(), margin
        kept.append(len(shared.groups))
        sensitivity = shared.sensitivity
    assert kept == [1, 2, 3]  # three different mixes, so the greedy passes went apart
    assert p.runner.stats["memo"] >= 4 and p.runner.stats["whole"] + p.runner.stats["cut"] <= 6, p.runner.stats


def _reshape_head_model(path, size: int) -> None:
    """stem -> two bodies -> pool -> Reshape to (tiles, -1) with the shape computed from the
    input (as exporters write a dynamic-batch flatten) -> head: the int64 shape tensor depends
    on the tiles, so it sits on the frontier of any variant with a body in int8."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(a, n) for n, a in (
        ("stem_w", rng.normal(0, 0.5, (8, 1, 3, 3)).astype(np.float32)),
        ("b1_w", rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32)),
        ("b2_w", rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32)),
        ("fc_w", rng.normal(0, 0.5, (8, 4)).astype(np.float32)),
        ("fc_b", np.zeros(4, np.float32)),
        ("zero", np.array([0], np.int64)), ("one", np.array([1], np.int64)), ("minus1", np.array([-1], np.int64)))]
    conv = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    nodes = [
        helper.make_node("Conv", ["x", "stem_w"], ["s"], name="stem", strides=[2, 2], **conv),
        helper.make_node("Relu", ["s"], ["s_r"], name="stem_relu"),
        helper.make_node("Conv", ["s_r", "b1_w"], ["b1"], name="body1", **conv),
        helper.make_node("Relu", ["b1"], ["b1_r"], name="body1_relu"),
        helper.make_node("Conv", ["b1_r", "b2_w"], ["b2"], name="body2", **conv),
        helper.make_node("Relu", ["b2"], ["b2_r"], name="body2_relu"),
        helper.make_node("GlobalAveragePool", ["b2_r"], ["pooled"], name="pool"),
        helper.make_node("Shape", ["x"], ["x_shape"], name="shape"),
        helper.make_node("Slice", ["x_shape", "zero", "one"], ["n"], name="batch"),
        helper.make_node("Concat", ["n", "minus1"], ["flat_shape"], name="flat_shape", axis=0),
        helper.make_node("Reshape", ["pooled", "flat_shape"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="head"),
    ]
    graph = helper.make_graph(nodes, "reshape-head",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, size, size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def test_a_shape_tensor_on_the_frontier_is_not_taken_for_an_activation(tmp_path):
    """Frontier values are kept as extra outputs declared float; an int64 shape computed from
    the tiles must not be declared so (its session would fail): such variants run whole, and
    read the same as the literal run."""
    path = tmp_path / "model.onnx"
    _reshape_head_model(path, SIZE)
    x = np.random.default_rng(0).random((48, 1, SIZE, SIZE), dtype=np.float32)
    p = Probes.prepare(path, x, threads=1)
    assert p.surgery_ok and sorted(p.groups) == ["body1", "body2"], sorted(p.groups)
    assert "flat_shape" not in p.runner.float_tensors and "b1_r" in p.runner.float_tensors
    for rnd in range(2):
        p.runner.memo.clear()
        for int8 in _variants(p):
            np.testing.assert_array_equal(p.probs(list(int8)), _literal(p, int8, x), err_msg=str(int8))
    assert p.runner.stats["whole"] >= 6 and not any("shape" in t for t in p.runner.cache), p.runner.stats
