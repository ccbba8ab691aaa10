"""The optional OpenVINO backend runs our ONNX files and is gated before it serves int8."""

from __future__ import annotations

import numpy as np
import pytest
from test_engines_int8_select import confident_tiny, write_tiles

from nscmonitor.engines.base import EngineError
from nscmonitor.engines.calibration import calibration_and_heldout
from nscmonitor.engines.metadata import read_onnx_metadata
from nscmonitor.engines.ort import OrtCpuEngine
from nscmonitor.engines.quantize import build_ort_int8
from nscmonitor.engines.select import select

pytest.importorskip("openvino", reason="OpenVINO is an optional extra")

from nscmonitor.engines.openvino import OpenVinoEngine  # noqa: E402


@pytest.fixture()
def built(tmp_path):
    model = tmp_path / "run" / "model.onnx"
    meta = confident_tiny(model)
    calib, held = calibration_and_heldout(write_tiles(tmp_path / "tiles"), meta)
    int8, _ = build_ort_int8(model, calib, held)
    return model, int8, held


def _exact(path, meta, x):
    """The file's own arithmetic: ONNX Runtime with graph optimisations off runs every Q/DQ pair
    in float, so an int8 layer is the exact rounding its scales define, with no 16-bit
    intermediate sums."""
    import onnxruntime as ort

    from nscmonitor.engines.base import softmax

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return softmax(sess.run([sess.get_outputs()[0].name], {sess.get_inputs()[0].name: x})[0], meta.temperature)


@pytest.mark.parametrize("streams", [1, 2])
def test_openvino_matches_onnxruntime_on_fp32_and_int8(built, streams):
    """Both runtimes compute what the file says. ONNX Runtime's integer kernels on a CPU without
    VNNI (AVX2 only: u8 x s8 pairs summed into 16 bits, which saturate for large weights and
    activations) moved this deliberately confident model's probabilities by up to 0.0056 from
    the exact arithmetic on a Zen 3, where OpenVINO matched it; the build gates each runtime on
    its own numbers, so what such a difference does to a readout is bounded by that gate."""
    from nscmonitor.engines.ort import isa_flags

    model, int8, held = built
    flags = set(isa_flags())
    sums16 = "avx2" in flags and not flags & {"avx512_vnni", "avx_vnni", "amx_int8"}
    for path in (model, int8):
        meta = read_onnx_metadata(path)
        ov = OpenVinoEngine(path, meta, streams=streams, threads=1)
        ov.load()
        ref = OrtCpuEngine(path, meta)
        ref.load()
        assert ov.name == ("openvino-int8" if path == int8 else "openvino-fp32")
        exact = _exact(path, meta, held.x)
        np.testing.assert_allclose(ov.infer(held.x), exact, atol=2e-3)
        np.testing.assert_allclose(ref.infer(held.x), exact, atol=1e-2 if path == int8 and sums16 else 2e-3)


@pytest.mark.parametrize("streams", [1, 2])
def test_a_fixed_batch_scores_any_number_of_tiles_as_the_dynamic_one(built, streams):
    """Compiled for a fixed batch (the daemon's), a short last batch is padded and sliced off:
    13 tiles through batches of 4 per request score as through the dynamic graph."""
    model, int8, held = built
    for path in (model, int8):
        meta = read_onnx_metadata(path)
        dynamic, fixed = OpenVinoEngine(path, meta, threads=1), OpenVinoEngine(path, meta, threads=1, streams=streams,
                                                                              batch_size=4 * streams)
        dynamic.load()
        fixed.load()
        assert fixed.request_batch == 4
        for n in (1, 4, 13):
            np.testing.assert_allclose(fixed.infer(held.x[:n]), dynamic.infer(held.x[:n]), atol=1e-5)


@pytest.mark.parametrize("precision", ["bf16", "bf16-stem"])
def test_bf16_is_gated_on_its_own_and_refused_without_its_gate(built, tmp_path, precision):
    from dataclasses import replace

    import onnx

    from nscmonitor.engines.metadata import write_onnx_metadata
    from nscmonitor.engines.openvino import GATE_KEYS, has_bf16

    model, int8, held = built
    record = read_onnx_metadata(int8).extra["int8"]
    key = GATE_KEYS[precision]
    assert (key in record) == has_bf16()  # gated exactly where this CPU can run bf16
    if not has_bf16():
        with pytest.raises(EngineError, match="no bf16 units"):
            OpenVinoEngine(int8, read_onnx_metadata(int8), precision=precision).load()
        pytest.skip("this CPU has no bf16 units (AVX512-BF16 or AMX): bf16 serving cannot run here")
    gate = record[key]
    assert gate["passed"] and gate["backend"] == "openvino-int8"
    bf16 = OpenVinoEngine(int8, read_onnx_metadata(int8), precision=precision, batch_size=8)
    bf16.load()
    ref = OrtCpuEngine(model, read_onnx_metadata(model))
    ref.load()
    np.testing.assert_allclose(bf16.infer(held.x), ref.infer(held.x), atol=0.05)
    assert "bf16" in bf16.describe()
    # a file whose bf16 gate failed (or never ran) does not serve in bf16, but still in f32
    meta = read_onnx_metadata(int8)
    unsure = tmp_path / "unsure.int8.onnx"
    m = onnx.load(str(int8))
    write_onnx_metadata(m, replace(meta, extra={**meta.extra, "int8": {**record, key: {
        **gate, "passed": False}}}))
    onnx.save(m, str(unsure))
    with pytest.raises(EngineError, match=f"no passed OpenVINO gate for {precision}"):
        OpenVinoEngine(unsure, read_onnx_metadata(unsure), precision=precision).load()
    OpenVinoEngine(unsure, read_onnx_metadata(unsure)).load()


def test_int8_build_gates_openvino_too_and_select_prefers_it(built):
    model, int8, held = built
    ov_gate = read_onnx_metadata(int8).extra["int8"]["openvino_gate"]
    assert ov_gate["passed"] and ov_gate["backend"] == "openvino-int8"
    # both requests the daemon will use were gated: the small batch and the large one (64 px tiles)
    assert ov_gate["tiles_source"].endswith("(OpenVINO requests of 8 and 64 tiles)"), ov_gate["tiles_source"]
    sel = select(model, threads=1)
    assert sel.backend == "openvino-int8" and sel.engine.infer(held.x[:3]).shape == (3, 4)


def test_int8_built_without_openvino_is_not_served_by_it(tmp_path, monkeypatch):
    model = tmp_path / "run" / "model.onnx"
    meta = confident_tiny(model)
    calib, held = calibration_and_heldout(write_tiles(tmp_path / "tiles"), meta)
    monkeypatch.setenv("NSCMONITOR_DISABLE_OPENVINO", "1")
    int8, _ = build_ort_int8(model, calib, held)
    assert read_onnx_metadata(int8).extra["int8"]["openvino_gate"] is None
    monkeypatch.delenv("NSCMONITOR_DISABLE_OPENVINO")
    sel = select(model)
    assert sel.backend == "ort-int8"
    assert "no passed OpenVINO gate" in dict(sel.skipped)["openvino-int8"]


def test_disabled_openvino_is_a_clean_engine_error(built, monkeypatch):
    model, _, _ = built
    monkeypatch.setenv("NSCMONITOR_DISABLE_OPENVINO", "1")
    with pytest.raises(EngineError, match="NSCMONITOR_DISABLE_OPENVINO"):
        OpenVinoEngine(model, read_onnx_metadata(model)).load()


@pytest.mark.parametrize("streams", [1, 2])
def test_a_large_request_beside_the_small_one_scores_as_the_dynamic_graph(built, streams, tmp_path):
    """Chunks of the engine's preferred size run as full large requests, the rest as small
    ones or one padded large one: every count of tiles scores as through the dynamic graph,
    in order, OOD scores included (a model with an OOD output beside the two without)."""
    from nscmonitor.engines.tiny import build_tiny_classifier

    model, int8, held = built
    with_ood = tmp_path / "ood.onnx"
    build_tiny_classifier(with_ood, seed=3, ood_threshold=1.0)
    for path in (model, int8, with_ood):
        meta = read_onnx_metadata(path)
        dynamic = OpenVinoEngine(path, meta, threads=1)
        both = OpenVinoEngine(path, meta, threads=1, streams=streams, batch_size=2 * streams, large_batch=8)
        dynamic.load()
        both.load()
        assert both.preferred_batch == 8 * streams and len(both._large_requests) == streams
        x = np.concatenate([held.x] * 3)
        for n in (1, 3, 7, 8, 9, 16, 19, len(x)):
            np.testing.assert_allclose(both.infer(x[:n]), dynamic.infer(x[:n]), atol=1e-5)
            p_both, ood_both = both.infer_with_ood(x[:n])
            p_dyn, ood_dyn = dynamic.infer_with_ood(x[:n])
            assert (ood_dyn is not None) == (path == with_ood) and (ood_both is None) == (ood_dyn is None)
            if ood_dyn is not None:
                assert len(ood_both) == n
                np.testing.assert_allclose(ood_both, ood_dyn, rtol=1e-4, atol=1e-4)


def test_two_parallel_large_requests_score_as_one(built):
    """The large request split into two parallel ones of half the tiles (one thread each, as
    the build may choose): the same chunk size for callers, the same outputs to the bit."""
    model, int8, held = built
    for path in (model, int8):
        meta = read_onnx_metadata(path)
        one = OpenVinoEngine(path, meta, threads=2, batch_size=4, large_batch=16)
        two = OpenVinoEngine(path, meta, threads=2, batch_size=4, large_batch=8, large_streams=2)
        one.load()
        two.load()
        assert one.preferred_batch == two.preferred_batch == 16 and len(two._large_requests) == 2
        for n in (16, 32, 37, 12, 28):  # 12, 28: a rest in the wave's free request (``batch_plan``)
            a, b = one.infer_with_ood(held.x[:n]), two.infer_with_ood(held.x[:n])
            np.testing.assert_array_equal(a[0], b[0])
            assert (a[1] is None) == (b[1] is None) and (a[1] is None or np.array_equal(a[1], b[1]))


def test_select_gives_openvino_a_large_batch_only_for_small_tiles(built):
    from nscmonitor.engines.openvino import large_batch_for

    model, int8, held = built
    size = read_onnx_metadata(model).input_size
    sel = select(model, "openvino-int8", batch_size=4, threads=1)
    assert sel.engine.large_batch == large_batch_for(4, size * size) > 4
    assert sel.engine.preferred_batch == sel.engine.large_batch


def test_a_resnets_small_last_stage_rewritten_scores_as_onnxruntime(tmp_path):
    """A ResNet18 at 64 px ends on 2 x 2 maps, which the fixed-batch engine runs on its tiles
    side by side (``openvino_graph.small_maps_as_one_image``); in f32 it scores as ONNX Runtime
    does, a batch of 8 and a short one alike."""
    from dataclasses import replace

    import openvino as ov

    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    from test_engines_torch import META

    from nscmonitor.engines.openvino_graph import small_maps_as_one_image
    from nscmonitor.engines.torch import export_onnx, with_prelude

    meta = replace(META, input_size=64)
    model = tmp_path / "model.onnx"
    torch.manual_seed(0)
    export_onnx(with_prelude(torchvision.models.resnet18(num_classes=4).eval(), meta), meta, model)
    graph = ov.Core().read_model(str(model))
    graph.reshape({graph.inputs[0].get_any_name(): [8, 1, 64, 64]})
    assert len(small_maps_as_one_image(graph)) == 10  # layer3 (4 x 4) and layer4 (2 x 2): five convolutions each
    x = np.random.default_rng(2).uniform(0.2, 0.8, (11, 1, 64, 64)).astype(np.float32)
    engine = OpenVinoEngine(model, meta, threads=1, batch_size=8)
    engine.load()
    ref = OrtCpuEngine(model, meta)
    ref.load()
    np.testing.assert_allclose(engine.infer(x), ref.infer(x), atol=1e-4)
