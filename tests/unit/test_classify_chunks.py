"""The engine's chunks over a claim's tile arrays: every tile once, in order, at the right
offset, each chunk full but the last; views where a chunk lies inside one image."""

from __future__ import annotations

import numpy as np

from nscmonitor.scoring.classify import chunks


def test_chunks_cover_every_tile_in_order_without_the_whole_claim_copied():
    rng = np.random.default_rng(5)
    for size in (1, 3, 8, 64):
        for counts in ((140, 140, 140), (5, 0, 7, 1, 30), (64,), (63, 1), (2, 2, 2, 2, 2), ()):
            sets = [rng.uniform(0, 1, (n, 1, 4, 4)).astype(np.float32) for n in counts]
            want = np.concatenate(sets) if sets else np.zeros((0, 1, 4, 4), np.float32)
            got, offsets = [], []
            for offset, chunk in chunks([s for s in sets if len(s)], size):
                offsets.append(offset)
                got.append(chunk.copy())  # the buffer is reused by the next chunk
                inside = [s for s in sets if np.shares_memory(s, chunk)]
                assert len(inside) <= 1
            sizes = [len(c) for c in got]
            assert sizes == [size] * (len(want) // size) + ([len(want) % size] if len(want) % size else [])
            assert offsets == [size * i for i in range(len(got))]
            np.testing.assert_array_equal(np.concatenate(got) if got else want, want)


def test_a_chunk_inside_one_image_is_a_view_and_one_across_images_a_copy():
    a = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1)
    b = np.arange(10, 16, dtype=np.float32).reshape(6, 1, 1, 1)
    out = list(chunks([a, b], 4))
    assert [o for o, _ in out] == [0, 4, 8, 12]
    assert np.shares_memory(out[0][1], a) and np.shares_memory(out[1][1], a)
    assert not np.shares_memory(out[2][1], a) and not np.shares_memory(out[2][1], b)
