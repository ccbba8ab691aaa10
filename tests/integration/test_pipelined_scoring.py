"""Where the engine leaves the CPU free (a GPU engine), the scorer prepares the next chunk of a
claim while the engine scores this one. Run here with the real ONNX Runtime engine told it
overlaps (no GPU needed for the scorer's logic): every image is still scored exactly once, bad
files keep their reasons, and an engine that dies in the middle of a claim hands the whole
claim back, stored nothing, and loses nothing."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import func, select

from nscmonitor.store import models as m
from nscmonitor.store.reads import Repo

from conftest import cells_image, write_tiff


def _plate(watch: Path, n: int) -> list[Path]:
    watch.mkdir()
    return [write_tiff(watch / f"VID1_{'ABCDEFGH'[i // 12]}{i % 12 + 1}_1_00d00h00m.tif", cells_image(i, (256, 256)))
            for i in range(n)]


def _runner(make_runner, watch: Path, **kw):
    runner = make_runner(watch, profile="incucyte", **kw)
    runner.setup()
    runner.model.engine.overlaps_cpu = True
    runner.scorer.prepare_workers = 2
    return runner


def _predictions_per_image(runner) -> dict[int, int]:
    with runner.store.engine.connect() as c:
        return dict(c.execute(select(m.Prediction.image_id, func.count()).group_by(m.Prediction.image_id)).all())


def test_a_claim_in_chunks_scores_every_image_once_and_keeps_bad_files_reasons(tmp_path: Path, make_runner) -> None:
    watch = tmp_path / "watch"
    good = _plate(watch, 14)
    (watch / "VID1_H1_1_00d00h00m.tif").write_bytes(b"")
    (watch / "VID1_H2_1_00d00h00m.tif").write_bytes(b"II*\x00garbage")
    runner = _runner(make_runner, watch, max_attempts=1)
    runner.scorer.next_claim = 16  # one claim of 16 images: chunks of 4, the next prepared meanwhile
    chunks = []
    infer = runner.scorer._infer
    runner.scorer._infer = lambda model, ready: chunks.append(len(ready)) or infer(model, ready)
    t0 = time.perf_counter()
    runner.run(once=True)
    wall = time.perf_counter() - t0

    assert len(chunks) >= 3 and max(chunks) <= 4, chunks  # the claim really went through in chunks
    by_name = {Path(r.path).name: r for r, _ in Repo(runner.store.engine).images(1)}
    assert all(by_name[p.name].status == "done" for p in good)
    assert "empty file" in by_name["VID1_H1_1_00d00h00m.tif"].error
    assert by_name["VID1_H2_1_00d00h00m.tif"].status == "quarantined"
    assert sorted(_predictions_per_image(runner).values()) == [1] * len(good)
    t = runner.timings
    assert t.decode > 0 and t.preprocess > 0 and t.inference > 0
    assert t.decode + t.preprocess + t.inference + t.store <= wall


def test_an_engine_that_dies_mid_claim_hands_the_whole_claim_back(tmp_path: Path, make_runner) -> None:
    watch = tmp_path / "watch"
    good = _plate(watch, 12)
    runner = _runner(make_runner, watch)
    runner.scorer.next_claim = 12
    engine = runner.model.engine
    real_run, calls = engine._run, []

    def dies_after_the_first_chunk(tiles):  # the runtime failing, as a GPU does when its driver resets
        calls.append(len(tiles))
        if len(calls) > 1:
            raise RuntimeError("device lost")
        return real_run(tiles)

    engine._run = dies_after_the_first_chunk
    runner.discover()
    batch = runner.scorer.process_batch()
    assert batch.claimed == 12 and batch.stored == 0
    with runner.store.engine.connect() as c:
        states = dict(c.execute(select(m.Image.status, func.count()).group_by(m.Image.status)).all())
        attempts = set(c.scalars(select(m.Image.attempts)).all())
    assert states == {"pending": 12}, states  # the first chunk's scores were not stored either
    assert attempts == {0}, "a failure of the engine is not counted against the images"
    assert _predictions_per_image(runner) == {}

    assert len(calls) > 2, "the failing chunk's images were each tried alone before the claim went back"
    engine._run = real_run
    runner.run(once=True)  # the engine works again: everything scored, once
    assert sorted(_predictions_per_image(runner).values()) == [1] * len(good)


def test_an_engine_that_keeps_failing_is_replaced_by_the_next_and_nothing_is_lost(tmp_path: Path) -> None:
    """Three failed batches in a row: the next engine the selector offers serves, the failing
    backend stays out (until a restart), the event names both, and every image is scored once."""
    import pytest

    torch = pytest.importorskip("torch", reason="the torch engine is the first one here (the train extra)")
    torchvision = pytest.importorskip("torchvision")
    from nscmonitor.config import parse_settings
    from nscmonitor.daemon import build_runner
    from nscmonitor.engines.metadata import ModelMetadata
    from nscmonitor.engines.torch import export_onnx, save_checkpoint, with_prelude

    watch = tmp_path / "watch"
    good = _plate(watch, 10)
    meta = ModelMetadata(name="r18", version="t", scheme="multiclass",
                         classes=("neuron", "astrocyte", "oligodendrocyte", "undifferentiated"), input_size=32,
                         arch="resnet18", normalization={"p_low": 1.0, "p_high": 99.8, "mean": [0.4], "std": [0.2],
                                                         "in_graph": True})
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=4).eval()
    save_checkpoint(tmp_path / "run" / "best.pt", net, "resnet18", meta)
    export_onnx(with_prelude(net, meta), meta, tmp_path / "run" / "model.onnx")
    settings = parse_settings({"database_url": f"sqlite:///{tmp_path / 'nsc.db'}", "models_dir": str(tmp_path / "models"),
                               "log_dir": str(tmp_path / "logs"), "engine": "torch", "threads": 1,
                               "watch": [{"path": str(watch), "experiment": "E1", "quiet_seconds": 0.0,
                                          "profile": "incucyte"}]}, env={})
    runner = build_runner(settings, model=tmp_path / "run" / "model.onnx", retry_base_s=0.01)
    try:
        runner.setup()
        first = runner.model.engine
        assert first.name == "torch-fp32", first.name

        def device_lost(tiles):  # the runtime failing for good, as a GPU does after a driver reset
            raise RuntimeError("device lost")

        first._run = device_lost
        runner.scorer.next_claim = 2
        runner.discover()
        for _ in range(3):
            assert runner.scorer.process_batch().stored == 0
        assert runner.model.engine is not first and runner.model.engine.name == "ort-fp32"
        assert "torch" in runner.slot.excluded
        runner.run(once=True)
        assert sorted(_predictions_per_image(runner).values()) == [1] * len(good)
        with runner.store.engine.connect() as c:
            engines = set(c.scalars(select(m.Prediction.engine)).all())
            events = c.execute(select(m.Event.kind, m.Event.message)).all()
            attempts = set(c.scalars(select(m.Image.attempts)).all())
        assert engines == {"ort-fp32"}
        assert attempts == {1}, "the engine's failures were not counted against the images"
        failover = [msg for kind, msg in events if kind == "engine_failed_over"]
        assert len(failover) == 1 and "device lost" in failover[0] and "ort-fp32" in failover[0]
    finally:
        runner.stop_event.set()
