"""Images timed by their file's clock are grouped into plate reads: a gap in time or a
position seen again starts a read; the order files are found in does not matter."""

from __future__ import annotations

import random

from nscmonitor.core.scans import SCAN_GAP_MIN, Placed, scan_keys


def _read(start: float, wells: int, fields: int, step_s: float) -> list[tuple[float, tuple]]:
    return [(start + i * step_s / 60, (i // fields, i % fields)) for i in range(wells * fields)]


def test_one_read_is_one_key_across_minute_boundaries() -> None:
    read = _read(1440.7, 24, 4, 7.0)  # 11 minutes of images, 7 s apart
    assert len({int(m) for m, _ in read}) > 10
    assert set(scan_keys([], read)) == {round(1440.7)}


def test_reads_hours_apart_get_their_own_keys_whatever_the_order_found() -> None:
    reads = [_read(t, 12, 3, 20.0) for t in (1440.5, 1560.2, 1680.9)]
    new = [x for r in reads for x in r]
    order = list(range(len(new)))
    random.Random(3).shuffle(order)
    keys = scan_keys([], [new[i] for i in order])
    by_read = {}
    for i, k in zip(order, keys):
        by_read.setdefault(i // 36, set()).add(k)
    assert by_read == {0: {1440}, 1: {1560}, 2: {1681}}


def test_a_position_seen_again_starts_a_read_without_a_pause() -> None:
    """A plate imaged continuously: the next read begins the moment the last one ends."""
    new = [(i * 2 / 60, i % 48) for i in range(48 * 3)]
    keys = scan_keys([], new)
    assert [len(set(keys[r * 48:(r + 1) * 48])) for r in range(3)] == [1, 1, 1]
    assert len(set(keys)) == 3


def test_a_pause_longer_than_the_gap_starts_a_read() -> None:
    new = [(0.0, "A01"), (0.5, "A02"), (0.5 + SCAN_GAP_MIN + 0.1, "A03")]
    a, b, c = scan_keys([], new)
    assert a == b != c


def test_new_images_join_the_reads_already_stored() -> None:
    placed = [Placed(600.0 + i / 6, 600, ("w", i)) for i in range(10)]
    keys = scan_keys(placed, [(602.0, ("w", 10)), (602.3, ("w", 0))], taken={600})
    assert keys[0] == 600  # the read goes on
    assert keys[1] != 600  # position 0 is in it already: the next read


def test_a_new_read_never_takes_a_key_in_use() -> None:
    placed = [Placed(100.0, 100, "A01")]
    (key,) = scan_keys(placed, [(100.2, "A01")], taken={100, 101})
    assert key == 102
