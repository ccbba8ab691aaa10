"""Bias correction on a real tiny ONNX model whose int8 error is systematic: one layer reads
only positive activations that sit on an offset (post-ReLU outputs of a layer with a +1 bias,
a skewed distribution) through weights of which all but one per output channel sit just under
half an int8 step, so int8 rounds them all to zero and every output channel loses about the
same positive amount on every tile. Rounding noise would average out over a well;
this does not, and the correction must remove it without leaving the Q/DQ form each runtime takes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from nscmonitor.engines.bias_correction import SUFFIX
from nscmonitor.engines.precision_graphs import qdq_problems
from nscmonitor.engines.quantize import TENSORRT_SETTINGS, quantize_static_qdq

from blob_tiles import int8_readout_error  # noqa: E402  (tests/ is on the path)


@pytest.mark.parametrize("target", ["cpu", "tensorrt"])
def test_bias_correction_removes_a_systematic_int8_shift_and_keeps_the_qdq_form(skewed_int8, tmp_path, target):
    path, calib, held = skewed_int8
    # nearest rounding: the constructed error is the weights' rounding, which GPTQ would
    # otherwise take out before the correction (tests/integration/test_engines_weight_rounding.py)
    base = {**(TENSORRT_SETTINGS if target == "tensorrt" else {}), "weight_rounding": "nearest"}
    plain = quantize_static_qdq(path, tmp_path / "plain.onnx", calib.x, settings={**base, "bias_correction": False})
    notes: dict = {}
    fixed = quantize_static_qdq(path, tmp_path / "fixed.onnx", calib.x, settings={**base, "bias_correction": True},
                                notes=notes)
    before, after = int8_readout_error(path, plain, held), int8_readout_error(path, fixed, held)
    # measured on held-out tiles, not the calibration tiles the correction was computed on
    assert before > 1.0, f"the constructed model should move its readout in int8 ({before:.2f} pp)"
    assert after < 0.25 * before, (before, after)
    summary = notes["bias_correction"]
    assert summary["layers"] >= 1 and summary["max_rel_shift_after"] < summary["max_rel_shift_before"]
    if target == "tensorrt":
        assert qdq_problems(fixed) == []  # still what TensorRT's explicit quantisation takes
    p, f = onnx.load(str(plain)), onnx.load(str(fixed))
    p_init = {i.name: numpy_helper.to_array(i) for i in p.graph.initializer}
    f_init = {i.name: numpy_helper.to_array(i) for i in f.graph.initializer}
    int8_weights = [n for n, a in p_init.items() if a.dtype == np.int8]
    assert int8_weights and all(np.array_equal(p_init[n], f_init[n]) for n in int8_weights)  # weights untouched
    corrected = [n for n in f_init if n.endswith(SUFFIX)]
    assert corrected and all(f_init[n].dtype == np.float32 for n in corrected)  # biases stay float
    conv_biases = [n.input[2] for n in f.graph.node if n.op_type == "Conv" and len(n.input) > 2]
    assert set(corrected) <= set(conv_biases)


def test_a_layer_is_measured_with_only_the_nodes_it_depends_on():
    """Measuring a block's first convolution runs that convolution and what feeds it, not the
    rest of its piece (nor a shortcut branch beside it), in the piece's order."""
    from onnx import helper

    from nscmonitor.engines.bias_correction import upstream

    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1"),
             helper.make_node("Relu", ["a"], ["b"], name="relu1"),
             helper.make_node("Conv", ["x", "wd"], ["d"], name="shortcut"),
             helper.make_node("Conv", ["b", "w2"], ["c"], name="conv2"),
             helper.make_node("Add", ["c", "d"], ["y"], name="add")]
    assert [n.name for n in upstream(nodes, "a")] == ["conv1"]
    assert [n.name for n in upstream(nodes, "c")] == ["conv1", "relu1", "conv2"]
    assert [n.name for n in upstream(nodes, "y")] == ["conv1", "relu1", "shortcut", "conv2", "add"]
    assert upstream(nodes, "x") == []
