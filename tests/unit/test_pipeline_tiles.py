"""Resampling to the model's pixel size: antialiased, and the same pixels as training."""

from __future__ import annotations

import numpy as np
def test_shrinking_averages_instead_of_aliasing_fine_texture():
    """A 1-px checkerboard is below the model's resolution at 2.9 um/px: shrunk by averaging
    it turns grey; sampled without averaging it would survive as false texture."""
    from scipy import ndimage

    from nscmonitor.pipeline.tiles import resample

    y, x = np.mgrid[:448, :448]
    board = ((x + y) % 2).astype(np.float32)
    shrunk = resample(board, 1.24, 1.24 * 224 / 96)
    aliased = ndimage.zoom(board, 96 / 224, order=1, prefilter=False)
    assert shrunk.shape == aliased.shape == (192, 192)
    assert shrunk.std() < 0.05 < aliased.std()


def test_daemon_resampling_matches_training_resize_of_a_tile():
    """Train/serve parity: a 224 px tile at 1.24 um/px becomes the same 96 px input whether
    training resizes it or the daemon resamples the frame it came from."""
    from nscmonitor.pipeline.tiles import resample
    from nscmonitor.training.data import resize

    rng = np.random.default_rng(0)
    tile = rng.random((224, 224), dtype=np.float32)
    served = resample(tile, 1.24, 1.24 * 224 / 96)
    trained = resize(tile[None], 96)[0]
    assert served.shape == trained.shape == (96, 96)
    np.testing.assert_allclose(served, trained, atol=1e-5)
