"""Scoring tiles of several images in engine-sized batches.

Tiles of all images in hand are concatenated so the engine always sees full batches (a
frame's 20 tiles would leave a batch of 8 part-empty three times out of three)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nscmonitor.engines.base import Engine


@dataclass(frozen=True)
class TileScores:
    """One image's tiles as the engine scored them."""

    probs: np.ndarray  # N x K class probabilities
    ood: np.ndarray | None  # N out-of-distribution scores; None: the model has no such score


def score_batches(engine: Engine, tile_sets: list[np.ndarray], batch_size: int) -> list[TileScores]:
    counts = [len(t) for t in tile_sets]
    k = len(engine.metadata.classes)
    has_ood = engine.ood_output is not None
    if sum(counts) == 0:
        return [TileScores(np.zeros((0, k), np.float32), np.zeros(0, np.float32) if has_ood else None)
                for _ in tile_sets]
    batch_size = max(batch_size, engine.preferred_batch or 0)
    allt = np.concatenate([t for t in tile_sets if len(t)], axis=0)
    out = np.empty((len(allt), k), np.float32)
    ood: np.ndarray | None = np.empty(len(allt), np.float32) if has_ood else None
    for i in range(0, len(allt), batch_size):
        out[i:i + batch_size], o = engine.infer_with_ood(allt[i:i + batch_size])
        if ood is not None:
            if o is None:  # the graph lacks the output its metadata names: unavailable, not an error
                ood = None
            else:
                ood[i:i + batch_size] = o
    cuts = np.cumsum(counts)[:-1]
    oods = np.split(ood, cuts) if ood is not None else [None] * len(counts)
    return [TileScores(p, o) for p, o in zip(np.split(out, cuts), oods)]
