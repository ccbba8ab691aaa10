"""How the OpenVINO engine splits a chunk of tiles over its small and large requests."""

from __future__ import annotations

import pytest

from nscmonitor.engines.openvino import batch_plan, large_batch_for


def _covers(plan, n):
    """The requests cover 0..n once, in order, none longer than its compiled batch."""
    assert [a for a, _, _ in plan] == sorted(a for a, _, _ in plan)
    assert plan[0][0] == 0 and plan[-1][1] == n
    assert all(b == c for (_, b, _), (c, _, _) in zip(plan, plan[1:]))


@pytest.mark.parametrize("n", [1, 5, 8, 63, 64, 65, 140, 300])
def test_every_tile_is_in_exactly_one_request_of_its_size(n):
    plan = batch_plan(n, 8, 64)
    _covers(plan, n)
    assert all(b - a <= (64 if large else 8) for a, b, large in plan)


def test_a_frame_at_full_tiling_runs_in_large_requests_and_a_small_frame_in_small_ones():
    # 140 tiles (a 1408 x 1040 frame at 96 px tiles): two full large requests, the rest small
    assert batch_plan(140, 8, 64) == [(0, 64, True), (64, 128, True), (128, 136, False), (136, 140, False)]
    # six tiles (the demo's frames) are never padded to 64
    assert batch_plan(6, 8, 64) == [(0, 6, False)]
    # a rest within one small batch of a full large request is cheaper padded into one
    assert batch_plan(60, 8, 64) == [(0, 60, True)]
    assert batch_plan(56, 8, 64) == [(0, 8, False), (8, 16, False), (16, 24, False), (24, 32, False),
                                     (32, 40, False), (40, 48, False), (48, 56, False)]


@pytest.mark.parametrize("n", [1, 20, 33, 48, 56, 64, 65, 100, 140, 280])
def test_a_rest_fills_the_free_requests_of_the_last_wave(n):
    plan = batch_plan(n, 8, 32, slots=2)
    _covers(plan, n)
    large = [p for p in plan if p[2]]
    assert all(b - a <= (32 if big else 8) for a, b, big in plan)
    # a wave holds two large requests: none left half-used while small requests follow it
    assert not (len(large) % 2 and any(not big for _, _, big in plan))


def test_two_streams_take_a_rest_in_the_waves_free_request_and_leave_a_lone_rest_small():
    assert batch_plan(48, 8, 32, slots=2) == [(0, 32, True), (32, 48, True)]
    assert batch_plan(56, 8, 32, slots=2) == [(0, 32, True), (32, 56, True)]
    # 140 tiles: two full waves; the 12 left would take a wave of their own, so small requests
    assert batch_plan(140, 8, 32, slots=2) == [(0, 32, True), (32, 64, True), (64, 96, True), (96, 128, True),
                                               (128, 136, False), (136, 140, False)]
    assert batch_plan(20, 8, 32, slots=2) == [(0, 8, False), (8, 16, False), (16, 20, False)]
    # one stream: as before
    assert batch_plan(48, 8, 32) == [(0, 32, True), (32, 40, False), (40, 48, False)]


def test_without_a_large_batch_the_plan_is_the_small_batch_alone():
    assert batch_plan(20, 8, 0) == [(0, 8, False), (8, 16, False), (16, 20, False)]
    assert batch_plan(0, 8, 64) == []


def test_the_large_batch_is_a_multiple_of_the_daemons_and_bounded_by_pixels():
    assert large_batch_for(8, 96 * 96) == 64
    assert large_batch_for(16, 96 * 96) == 64 and large_batch_for(12, 96 * 96) == 60
    assert large_batch_for(8, 112 * 112) == 40 and large_batch_for(8, 128 * 128) == 32
    assert large_batch_for(32, 128 * 128) == 0  # no larger than the daemon's own batch
    assert large_batch_for(8, 224 * 224) == 0
    assert large_batch_for(0, 96 * 96) == 0 and large_batch_for(8, 0) == 0  # no fixed batch, no tile
