"""Labelled raw tiles with a known class signal, and the tile sets the int8 builds take, for
the tests of the int8 recipe, bias correction and the mixed-precision search."""

from __future__ import annotations

import numpy as np

from nscmonitor.engines.calibration import TileSet
from nscmonitor.scoring.preprocess import Preprocess

SIZE = 32


def blobs(n: int, seed: int, *, two_wells: bool = False) -> tuple[np.ndarray, list[str]]:
    """Raw 12-bit tiles whose blob density and size grow with the class (4 classes), one well
    per class (``two_wells``: two, alternating every four tiles)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    out, wells = [], []
    for i in range(n):
        cls = i % 4
        img = rng.normal(300, 20, (SIZE, SIZE))
        for _ in range(2 + 3 * cls):
            cy, cx = rng.uniform(0, SIZE, 2)
            r = rng.uniform(1.5, 2 + 1.5 * cls)
            img += (800 + 400 * cls) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        out.append(img.clip(0, 4095).astype(np.uint16))
        row = "B" if two_wells and i % 8 >= 4 else "A"
        wells.append(f"P1/{row}{cls + 1:02d}")
    return np.stack(out), wells


def tileset(meta, raw, wells, source) -> TileSet:
    """The raw tiles in the model's input contract (the daemon's preprocessing)."""
    pre = Preprocess.from_metadata(meta)
    x = np.concatenate([pre.tiles(t).tiles for t in raw])
    return TileSet(x, tuple(wells), tuple("" for _ in wells), source)


#: just under half of one int8 step of a channel whose largest weight is 1.0 (1/127 / 2)
SMALL = 0.0035
#: body0's bias: its outputs, body1's inputs, are all positive around this offset
OFFSET = 1.0


def skewed_model(tmp_path):
    """A tiny model whose int8 error is systematic: its body layer reads positive, offset
    activations through weights of which all but one per output channel sit just under half an
    int8 step, so nearest rounding turns them all into zero and every output channel loses about
    the same amount on every tile. Returns (model path, calibration tiles, held-out tiles)."""
    from nscmonitor.engines.tiny import build_tiny_classifier

    w1 = np.full((8, 8, 3, 3), SMALL, np.float32)
    for o in range(8):
        w1[o, o, 1, 1] = 1.0
    path = tmp_path / "model.onnx"
    meta = build_tiny_classifier(path, input_size=SIZE, depth=2, seed=4,
                                 weights={"body0_b": np.full(8, OFFSET, np.float32), "body1_w": w1})
    return path, tileset(meta, *blobs(64, 1, two_wells=True), "calib"), tileset(meta, *blobs(160, 2, two_wells=True), "held")


def int8_readout_error(path, q_path, held) -> float:
    """The largest well readout difference (pp) of the Q/DQ file against its fp32 model on the
    held-out tiles, both run literally (fake quantisation)."""
    import onnx

    from nscmonitor.engines.mixed_precision import fake_quant_probs
    from nscmonitor.engines.validate import compare

    reference = fake_quant_probs(onnx.load(str(path)), held.x, threads=1)
    candidate = fake_quant_probs(onnx.load(str(q_path)), held.x, threads=1)
    return compare(reference, candidate, held.groups, backend="t").well_readout_pp
