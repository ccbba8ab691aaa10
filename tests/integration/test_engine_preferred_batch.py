"""A backend that runs best at a larger batch than the daemon's (the GPU engines) gets its tiles
in chunks of that size, and the tile scores come back in the same order."""

from __future__ import annotations

import numpy as np

from nscmonitor.engines.ort import OrtCpuEngine
from nscmonitor.engines.tiny import build_tiny_classifier
from nscmonitor.scoring.classify import score_batches


class _Counting(OrtCpuEngine):
    """The real ONNX Runtime session, counting the batch sizes it is handed."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[int] = []

    def _run(self, tiles):
        self.seen.append(len(tiles))
        return super()._run(tiles)


def test_tiles_are_chunked_by_the_engines_preferred_batch(tmp_path) -> None:
    meta = build_tiny_classifier(tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    sets = [rng.uniform(0, 1, (n, 1, meta.input_size, meta.input_size)).astype(np.float32) for n in (30, 0, 45)]
    engine = _Counting(tmp_path / "m.onnx", meta, threads=1)
    engine.load()
    try:
        small = score_batches(engine, sets, batch_size=8)
        assert engine.seen == [8] * 9 + [3]
        engine.seen.clear()
        engine.preferred_batch = 32
        large = score_batches(engine, sets, batch_size=8)
        assert engine.seen == [32, 32, 11]
    finally:
        engine.close()
    for a, b in zip(small, large):
        np.testing.assert_allclose(a.probs, b.probs, atol=1e-5)


def test_a_claim_scored_as_one_stream_gives_each_image_what_it_gets_alone(tmp_path) -> None:
    """Chunks that span images (copied into a reused buffer) must not mix up tiles: each
    image's scores equal those of its tiles scored on their own."""
    meta = build_tiny_classifier(tmp_path / "m.onnx")
    rng = np.random.default_rng(1)
    sets = [rng.uniform(0, 1, (n, 1, meta.input_size, meta.input_size)).astype(np.float32) for n in (13, 0, 9, 22, 5)]
    engine = OrtCpuEngine(tmp_path / "m.onnx", meta, threads=1)
    engine.load()
    try:
        together = score_batches(engine, sets, batch_size=8)
        every = np.concatenate([t.probs for t in together])
        assert np.abs(np.diff(every, axis=0)).max(axis=1).min() > 1e-5  # a tile out of place would show
        for s, got in zip(sets, together):
            alone = score_batches(engine, [s], batch_size=len(s) or 1)[0]
            assert got.probs.shape == (len(s), len(meta.classes))
            np.testing.assert_allclose(got.probs, alone.probs, atol=1e-6)
    finally:
        engine.close()
