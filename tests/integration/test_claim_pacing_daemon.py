"""A daemon on a backlog of cheap images claims larger batches than its first, never more
than its largest claim, and still scores every image exactly once (SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nscmonitor.scoring.scorer import FIRST_CLAIM
from nscmonitor.store.reads import Repo

from conftest import cells_image, write_tiff


def _backlog(watch: Path, n: int) -> None:
    for i in range(n):
        row, col = divmod(i % 96, 12)
        write_tiff(watch / f"VID1_{'ABCDEFGH'[row]}{col + 1}_1_{i // 96:02d}d00h00m.tif", cells_image(i, (48, 48)))


@pytest.mark.parametrize("largest", [2, 64])
def test_backlog_batches_grow_to_the_largest_claim_and_each_image_is_scored_once(
        tmp_path: Path, make_runner, db_url: str, largest: int) -> None:
    watch = tmp_path / "watch"
    watch.mkdir()
    n = 240
    _backlog(watch, n)
    runner = make_runner(watch, db_url=db_url, claim_size=largest)
    sizes: list[int] = []
    runner.on_batch = sizes.append
    runner.run(once=True)
    counts = Repo(runner.store.engine).prediction_counts()
    assert len(counts) == n and set(counts.values()) == {1}
    assert sum(sizes) == n
    assert max(sizes) <= largest
    if largest > FIRST_CLAIM:
        assert sizes[0] == FIRST_CLAIM
        assert max(sizes) > 2 * FIRST_CLAIM, sizes  # tiny frames cost milliseconds: the claim grows
        assert len(sizes) < n / FIRST_CLAIM / 2
