"""Resampling to the model's pixel size: antialiased, and the same pixels as training."""

from __future__ import annotations

import numpy as np


def test_shrinking_averages_instead_of_aliasing_fine_texture():
    """A 1-px checkerboard is below the model's resolution at 2.9 um/px: shrunk by averaging
    it turns grey; sampled without averaging it would survive as false texture."""
    from scipy import ndimage

    from nscmonitor.scoring.preprocess import resample

    y, x = np.mgrid[:448, :448]
    board = ((x + y) % 2).astype(np.float32)
    shrunk = resample(board, 1.24 / (1.24 * 224 / 96))
    aliased = ndimage.zoom(board, 96 / 224, order=1, prefilter=False)
    assert shrunk.shape == aliased.shape == (192, 192)
    assert shrunk.std() < 0.05 < aliased.std()


def test_exact_two_fold_shrink_averages_blocks():
    """1 / factor computed as 1.999... must still average 2 x 2 blocks, not sample."""
    from nscmonitor.scoring.preprocess import resample

    y, x = np.mgrid[:64, :64]
    board = ((x + y) % 2).astype(np.float32)
    factor = 0.3 / (0.3 * 128 / 64)
    out = resample(board, factor)
    assert out.shape == (32, 32)
    np.testing.assert_allclose(out, 0.5)


def test_block_mean_is_the_mean_of_each_block_for_any_k_and_leading_axes():
    """The strided sums must give each k x k block's mean, drop the remainder, and keep
    leading axes (a stack of planes) apart, for integer frames as for float ones."""
    from nscmonitor.scoring.preprocess import block_mean

    rng = np.random.default_rng(3)
    for k, shape, dtype in ((2, (37, 51), np.float32), (3, (2, 31, 20), np.float32), (5, (26, 54), np.uint16),
                            (1, (4, 6), np.float32)):
        img = (rng.uniform(0, 4000, shape)).astype(dtype)
        h, w = shape[-2] // k * k, shape[-1] // k * k
        want = img[..., :h, :w].astype(np.float64).reshape(*shape[:-2], h // k, k, w // k, k).mean(axis=(-3, -1))
        got = block_mean(img, k)
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-6)
