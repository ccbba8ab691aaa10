"""How many images the scorer claims at a time.

Every claim and every stored batch costs a handful of statements whatever its size (see
docs/scale.md), so on a backlog of cheap images (a small model, small frames) a fixed claim of
a few images spends most of its time in the database, and on PostgreSQL most of it waiting for
round trips to the server. A large fixed claim would fix that but make a slow model (a
ResNet50 on full frames, seconds per image) hold many images at once: a promoted model, an
engine swap or a stop would wait for all of them, and several scorers would share a short
backlog badly. So the claim grows or shrinks towards a fixed amount of work per batch,
measured on the batches themselves; live acquisition, where one image is due at a time, is
not affected (a claim takes what is due, up to the size). A batch's decoded frames and tiles
are all in memory at once, so the size is also capped by a memory budget, measured on the
last batch's images: a fast engine (a GPU) on large frames would otherwise hold gigabytes.
"""

from __future__ import annotations

#: seconds of work per batch the claim size is steered towards. Each claim's tiles end in one
#: part-empty chunk, which an engine with a large request (OpenVINO's 64 tiles for a ResNet50 at
#: 96 px) scores in small requests at half its rate or less: at 0.5 s a ResNet50 backlog on a
#: 2-core CPU was claimed two frames at a time and spent 15-25 % of its inference on those last
#: chunks (docs/performance.md, "Runs 31-32"); at 2 s the same backlog ran 1.15-1.30x faster side
#: by side, and a stop, swap or promotion still waits for at most about two seconds of work
TARGET_BATCH_S = 2.0
#: a batch at most this many times larger than the last one (the cost per image is noisy)
MAX_GROWTH = 2.0
#: bytes of decoded frames and tiles one batch may hold
MEMORY_BUDGET = 256 * 2**20


def claim_cap(largest: int, bytes_per_image: float, budget: int = MEMORY_BUDGET) -> int:
    """The most images a claim may take when each holds ``bytes_per_image`` once prepared."""
    if bytes_per_image <= 0:
        return largest
    return max(1, min(largest, int(budget // bytes_per_image)))


def next_claim_size(claimed: int, size: int, elapsed_s: float, *, largest: int,
                    target_s: float = TARGET_BATCH_S) -> int:
    """The next claim's size after a batch of ``claimed`` images (asked for ``size``) took
    ``elapsed_s`` seconds. A batch smaller than asked says nothing about the cost of a full
    one unless it already overran the target: the size is kept then, so a queue that runs
    dry does not shrink it, and a few slow images do."""
    if claimed <= 0 or elapsed_s <= 0:
        return size
    want = claimed * target_s / elapsed_s
    if claimed < size and want >= size:
        return size
    grown = min(want, size * MAX_GROWTH)
    return max(1, min(largest, int(grown)))


def parallel_prepares(workers: int, bytes_per_image: float, budget: int = MEMORY_BUDGET) -> int:
    """How many images may be decoded and tiled at once: each holds its frame, float copies
    of it and its tiles while it is prepared, so a handful of frames near ``max_pixels``
    prepared side by side would hold gigabytes; ``bytes_per_image`` is the larger of the last
    batch's measure and the claim's largest file."""
    if bytes_per_image <= 0:
        return max(1, workers)
    return max(1, min(workers, int(budget // bytes_per_image)))
