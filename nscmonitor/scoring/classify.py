"""Scoring tiles of several images in engine-sized batches.

Tiles of all images in hand are concatenated so the engine always sees full batches (a
frame's 20 tiles would leave a batch of 8 part-empty three times out of three)."""

from __future__ import annotations

import numpy as np

from nscmonitor.engines.base import Engine


def score_batches(engine: Engine, tile_sets: list[np.ndarray], batch_size: int) -> list[np.ndarray]:
    counts = [len(t) for t in tile_sets]
    k = len(engine.metadata.classes)
    if sum(counts) == 0:
        return [np.zeros((0, k), np.float32) for _ in tile_sets]
    allt = np.concatenate([t for t in tile_sets if len(t)], axis=0)
    out = np.empty((len(allt), k), np.float32)
    for i in range(0, len(allt), batch_size):
        out[i:i + batch_size] = engine.infer(allt[i:i + batch_size])
    return np.split(out, np.cumsum(counts)[:-1])
