"""Stable random streams keyed by what they describe.

Every random draw in the simulator comes from a stream named by its purpose and by where it
sits (seed, plate, well, field, time point), never from a shared global stream. That is what
lets the state of a field at 96 h be computed without rendering 0-94 h first, and what makes
the same seed give the same bytes whatever order frames are rendered in. Python's ``hash()``
is salted per process, so strings are folded with CRC32 instead.
"""

from __future__ import annotations

import zlib

import numpy as np


def _word(part: object) -> int:
    if isinstance(part, (int, np.integer)) and not isinstance(part, bool):
        return int(part) & 0xFFFFFFFF
    return zlib.crc32(str(part).encode("utf-8"))


def rng_for(*parts: object) -> np.random.Generator:
    """A generator that depends only on ``parts`` (ints and strings)."""
    return np.random.default_rng(np.random.SeedSequence([_word(p) for p in parts]))


def _mix(keys: tuple[np.ndarray, ...]) -> np.ndarray:
    h = np.zeros(np.broadcast(*keys).shape, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in keys:
            h = h * np.uint64(0x100000001B3) ^ np.asarray(k).astype(np.uint64)
            h = h + np.uint64(0x9E3779B97F4A7C15)
            h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            h = h ^ (h >> np.uint64(31))
    return h


def hash_uniform(*keys: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) numbers from integer keys (splitmix64), vectorised.

    Used for per-cell geometry that is only needed for the cells drawn in a frame: hashing
    (cell id, branch, step) costs nothing for cells that are never drawn, whereas drawing it
    at seeding for thousands of cells would dominate memory.
    """
    return (_mix(keys) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def hash_normal(*keys: np.ndarray) -> np.ndarray:
    """Approximately standard normal numbers from integer keys: the sum of the four 16-bit
    quarters of one hash (Irwin-Hall, n = 4), one hash per number instead of four."""
    h = _mix(keys)
    mask = np.uint64(0xFFFF)
    total = sum(((h >> np.uint64(16 * j)) & mask).astype(np.float64) for j in range(4)) / 65536.0
    return (total - 2.0) * np.sqrt(3.0)
