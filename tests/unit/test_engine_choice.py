"""Which certified CPU engine the build serves, from its own timings: the fastest at the
daemon's small batch, and among engines tied there within the timing noise the one faster in
the large requests frames of many tiles get. The speed records are the build's own format
(the demo model's, as a 2-core AVX2-only CPU timed it); the refusal is read back through a real
status file, as selection reads it."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from nscmonitor.engines import autobuild
from nscmonitor.engines.autobuild_status import (EngineStatus, choose_cpu_engine, fingerprint, large_speedup,
                                                 speedup, write_status)

#: the demo model's build on a 2-core AMD EPYC (Zen 3, AVX2 only), engine-status.json
OPENVINO = {"fp32_tiles_per_s": 658.0, "int8_f32_tiles_per_s": 955.5, "int8_tiles_per_s": 955.5, "precision": "f32",
            "large_batch": 40, "int8_f32_large_tiles_per_s": 1167.9, "int8_f32_large_streams": 2,
            "int8_f32_large_two_streams_tiles_per_s": 1304.2}
ORT = {"fp32_tiles_per_s": 649.6, "int8_tiles_per_s": 966.1}


def test_large_requests_count_as_served() -> None:
    assert large_speedup(OPENVINO) == 1304.2 / 658.0  # two parallel large requests serve
    assert large_speedup({**OPENVINO, "int8_f32_large_streams": 1}) == 1167.9 / 658.0
    # a large request slower than the small one is not used; an engine without one: its small figure
    assert large_speedup({**OPENVINO, "int8_f32_large_streams": 1, "int8_f32_large_tiles_per_s": 800.0}) \
        == speedup(OPENVINO)
    assert large_speedup(ORT) == speedup(ORT)


def test_a_tie_at_the_small_batch_goes_to_the_engine_faster_in_large_requests() -> None:
    assert speedup(ORT) > speedup(OPENVINO)  # 1.49x against 1.45x: within the noise of two timings
    assert choose_cpu_engine({"ort-int8": ORT, "openvino-int8": OPENVINO}) == "openvino-int8"
    assert choose_cpu_engine({"openvino-int8": OPENVINO, "ort-int8": ORT}) == "openvino-int8"  # order does not matter


def test_the_small_batch_decides_when_the_engines_are_not_tied() -> None:
    """An engine faster only in large requests does not serve where frames are of few tiles."""
    slow_small = {**OPENVINO, "int8_tiles_per_s": 850.0, "int8_f32_tiles_per_s": 850.0}  # 1.29x against 1.49x
    assert choose_cpu_engine({"ort-int8": ORT, "openvino-int8": slow_small}) == "ort-int8"
    assert choose_cpu_engine({"openvino-int8": OPENVINO}) == "openvino-int8"


def test_nothing_is_chosen_when_every_engine_is_slower_than_fp32() -> None:
    slower = {"fp32_tiles_per_s": 1000.0, "int8_tiles_per_s": 966.1}
    assert choose_cpu_engine({"ort-int8": slower}) is None
    assert choose_cpu_engine({"ort-int8": slower, "openvino-int8": OPENVINO}) == "openvino-int8"


def test_selection_passes_over_the_tied_engine_and_says_why(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"any bytes: only the hash is compared")
    status = EngineStatus("ready", asdict(fingerprint(model)), engine="openvino-int8", precision="int8",
                          openvino_speed=OPENVINO, ort_speed=ORT)
    write_status(model, status)
    why = autobuild.speed_refusal(model, "ort-int8")
    assert why is not None and "as fast in small requests (1.45x fp32 against 1.49x" in why, why
    assert "faster in large ones (1.98x against 1.49x)" in why and "set engine: ort-int8" in why
    assert autobuild.speed_refusal(model, "openvino-int8") is None
    # not tied: the faster engine at the small batch is the build's choice, and the other is passed over for it
    write_status(model, EngineStatus("ready", status.fingerprint, engine="ort-int8", precision="int8",
                                     openvino_speed={**OPENVINO, "int8_tiles_per_s": 700.0}, ort_speed=ORT))
    assert "the build timed ort-int8 faster here (1.49x fp32 against 1.06x)" in autobuild.speed_refusal(model,
                                                                                                      "openvino-int8")
