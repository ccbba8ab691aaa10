"""The claim size steers towards a fixed amount of work per batch (``scoring.pacing``)."""

from __future__ import annotations

from nscmonitor.scoring.pacing import (MAX_GROWTH, MEMORY_BUDGET, TARGET_BATCH_S, claim_cap, next_claim_size,
                                       parallel_prepares)


def test_cheap_full_batches_grow_at_most_by_the_growth_factor_up_to_the_largest() -> None:
    size = 4
    sizes = []
    for _ in range(8):  # 1 ms per image: the target alone would ask for 500
        size = next_claim_size(size, size, size * 0.001, largest=64)
        sizes.append(size)
    assert sizes[0] == int(4 * MAX_GROWTH)
    assert all(b <= a * MAX_GROWTH for a, b in zip([4] + sizes, sizes))
    assert sizes[-1] == 64


def test_slow_images_shrink_the_claim_to_the_target_work() -> None:
    per_image = 0.2  # seconds: a large model on full frames
    assert next_claim_size(16, 16, 16 * per_image, largest=64) == int(TARGET_BATCH_S / per_image)
    assert next_claim_size(2, 2, 2 * 5.0, largest=64) == 1


def test_a_queue_that_runs_dry_keeps_the_size_but_a_slow_short_batch_shrinks_it() -> None:
    assert next_claim_size(1, 32, 0.003, largest=64) == 32
    assert next_claim_size(3, 32, 3 * 2 * TARGET_BATCH_S, largest=64) == 1  # each image twice the target


def test_nothing_claimed_or_no_time_measured_changes_nothing() -> None:
    assert next_claim_size(0, 8, 1.0, largest=64) == 8
    assert next_claim_size(8, 8, 0.0, largest=64) == 8


def test_the_memory_budget_caps_the_claim_by_what_each_image_holds_once_prepared() -> None:
    frame_and_tiles = 2.9e6 + 140 * 96 * 96 * 4  # a 1408x1040 uint16 frame and its 96 px tiles
    assert claim_cap(64, frame_and_tiles) == int(MEMORY_BUDGET // frame_and_tiles) < 64
    assert claim_cap(64, 64 * 64 * 2 + 4 * 32 * 32 * 4) == 64  # small frames: the largest claim
    assert claim_cap(64, 10 * MEMORY_BUDGET) == 1  # one huge image still goes
    assert claim_cap(64, 0.0) == 64  # nothing measured yet


def test_frames_near_the_pixel_cap_are_prepared_one_at_a_time() -> None:
    assert parallel_prepares(8, 8 * 2**20) == 8  # 1408x1040 frames and their tiles: every thread
    assert parallel_prepares(8, MEMORY_BUDGET / 3) == 3
    assert parallel_prepares(8, 512 * 2**20) == 1  # a 64-Mpx float64 frame: one at a time
    assert parallel_prepares(4, 0) == 4 and parallel_prepares(0, 0) == 1  # nothing known yet
