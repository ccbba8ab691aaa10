"""The stages one claimed image goes through: decode -> is the content new -> QC -> tiles ->
(inference, over the whole batch) -> result.

The contract: a stage takes what the stages before it made and returns its own part, or
raises ``DecodeError`` when the image itself is at fault (``permanent``: quarantine at
once; else retry with backoff). Any other exception is a bug or an odd file; the scorer's
one boundary per image (``scorer.Scorer._each``) fails that image with the reason and the
others go on. No stage writes to the database: the scorer does, after the stages.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from enum import Enum

import numpy as np

from nscmonitor.core import zoom_response
from nscmonitor.core.aggregate import image_score, pack_tiles
from nscmonitor.core.calibration import well_calibration_of
from nscmonitor.core.domain import QCMetrics
from nscmonitor.core.limits import resample_refusal
from nscmonitor.core.names import shown
from nscmonitor.engines.base import Engine
from nscmonitor.scoring.classify import TileScores, score_batches
from nscmonitor.readers.decode import DecodeError, Decoded, decode
from nscmonitor.scoring.metrics import Timings
from nscmonitor.scoring.preprocess import Preprocess, TileGrid
from nscmonitor.scoring.qc import qc_metrics
from nscmonitor.store.writer import Claimed, Scored

log = logging.getLogger(__name__)


class Content(Enum):
    SCORED = "scored"  # the bytes this image was scored from, and the serving model scored them: nothing to do
    NEW = "new"  # first content seen, or the same content not yet scored by the serving model
    REWRITTEN = "rewritten"  # other bytes than those scored before: earlier predictions are void


def content_of(c: Claimed, sha256: str) -> Content:
    """The one place that decides whether an image's content is new, from what the claim
    knew (the hash it was scored from, whether the serving model scored it) and the bytes
    just decoded; the store acts on the verdict instead of deciding again."""
    if c.previous_hash is not None and sha256 != c.previous_hash:
        return Content.REWRITTEN
    return Content.SCORED if c.scored else Content.NEW


@dataclass(frozen=True)
class Prepared:
    """A decoded image that needs scoring, checked and tiled."""

    claimed: Claimed
    decoded: Decoded
    content: Content
    qc: QCMetrics
    grid: TileGrid | None  # None: QC found nothing to score (blank or non-finite frame)


def prepare(c: Claimed, pre: Preprocess, meta, *, max_pixels: int, channel: str | None,
            timings: Timings, pixel_size_um: float | None = None) -> Prepared | None:
    """Decode, QC and tile one claimed image; None when its content was scored already
    (nothing to redo). ``pixel_size_um``: the watch folder's pixel size, for a file that
    states none (what the file states wins)."""
    t0 = time.perf_counter()
    dec = decode(c.path, max_pixels=max_pixels, channel=channel)
    if dec.pixel_size_um is None and pixel_size_um is not None:
        dec = replace(dec, pixel_size_um=float(pixel_size_um))
    t1 = time.perf_counter()
    timings.decode += t1 - t0
    content = content_of(c, dec.sha256)
    if content is Content.SCORED:
        return None
    norm = meta.normalization
    qc = qc_metrics(dec.pixels, p_low=norm["p_low"], p_high=norm["p_high"])
    grid = None
    if not qc.blank and not qc.nonfinite:
        factor = pre.factor(dec.pixel_size_um)
        refusal = resample_refusal(dec.pixels.shape, factor, max_pixels, meta.input_size)
        if refusal:
            raise DecodeError(refusal, permanent=True)
        grid = pre.tiles(dec.pixels, factor=factor, lohi=(qc.p_low, qc.p_high))
    timings.preprocess += time.perf_counter() - t1
    return Prepared(c, dec, content, qc, grid)


def infer(engine: Engine, prepared: list[Prepared], batch_size: int) -> tuple[list, list[tuple[Claimed, Exception]]]:
    """Tile scores per prepared image (tiles of all images in engine-sized batches).
    When the whole batch fails, each image is tried alone: returns the probabilities (None
    for an image the engine failed on) and those images with their errors. Raises the
    batch's error when the engine failed on every image (the engine is at fault, not an
    image: the batch goes back to the queue untouched)."""
    tiles = [p.grid.tiles if p.grid is not None else empty_tiles(engine.metadata) for p in prepared]
    try:
        return score_batches(engine, tiles, batch_size), []
    except Exception as exc:  # any engine error type: which image (or the engine) is at fault is decided below
        first = exc
    out: list = []
    errors: list[tuple[Claimed, Exception]] = []
    if len(prepared) > 1:
        for p, t in zip(prepared, tiles):
            try:
                out.extend(score_batches(engine, [t], batch_size))
            except Exception as exc:  # this image's failure, counted against its attempts
                out.append(None)
                errors.append((p.claimed, exc))
    if len(prepared) == 1 or len(errors) == len(prepared):
        raise first
    return out, errors


def trained_pixel_size(meta) -> float | None:
    """Micrometres per pixel of the images the model was trained on: its input's pixel size
    times how many input pixels one training tile became (``tile_size_px`` of the export);
    None when the metadata does not say."""
    px, tile = meta.pixel_size_um, (meta.extra or {}).get("tile_size_px")
    if not px:
        return None
    return float(px) * meta.input_size / float(tile) if tile else float(px)


def pixel_size_mismatch(meta, pixel_size_um: float | None) -> float | None:
    """The ratio of the file's pixel size to the training images' when it lies beyond the
    model's ``max_pixel_size_ratio`` (either way): the image was taken through another
    objective, and resampling it to the model's scale does not give it the training
    images' optical resolution. None when it lies within, or when the file, the model or
    its OOD record does not say (models exported before the check)."""
    limit = (meta.ood or {}).get("max_pixel_size_ratio")
    trained = trained_pixel_size(meta)
    if not (limit and trained and pixel_size_um):
        return None
    ratio = float(pixel_size_um) / trained
    return ratio if max(ratio, 1.0 / ratio) > float(limit) else None


def ood_of(tiles: TileScores, meta, other_scale: bool = False,
           pixels: np.ndarray | None = None) -> tuple[float | None, bool | None]:
    """The image's out-of-distribution score (its tiles' mean, as the threshold was set in
    training) and flag: above the threshold, or ``other_scale`` (taken at another
    magnification, ``pixel_size_mismatch``); (None, None) when the model has no score or no
    tile was scored. Where the model has a zoom response (``core.zoom_response``) and the
    scaled tiles are given (``pixels``, N x 1 x S x S), the score is the largest of the tiles'
    mean and the responses' means (zoomed in and, where fitted, out, and the contrast sign)
    mapped onto the score's scale, so any of the tests flags."""
    if tiles.ood is None or not len(tiles.ood) or not meta.ood:
        return None, None
    score, threshold = float(np.mean(tiles.ood)), float(meta.ood["threshold"])
    zoom = meta.ood.get("zoom")
    if pixels is not None and len(pixels) and zoom_response.applies(zoom, pixels.shape[-1]):
        responses = zoom_response.image_responses(pixels[:, 0], zoom)
        score = float(zoom_response.mapped_score(score, responses, zoom, threshold))
    return score, bool(score > threshold or other_scale)


def result(p: Prepared, tiles: TileScores, *, model_version: str, engine: Engine) -> Scored:
    """What the store keeps of one scored image."""
    grid = p.grid
    probs = tiles.probs
    score = image_score(probs) if grid is not None and len(probs) else None
    ratio = pixel_size_mismatch(engine.metadata, p.decoded.pixel_size_um) if score is not None else None
    ood_score, ood = (ood_of(tiles, engine.metadata, ratio is not None, grid.tiles) if score is not None
                      else (None, None))
    if ood is not None and ratio is not None:
        log.info("%s: flagged as unlike the training data: its pixel size (%.3g um) is %.2f times the training "
                 "images' (another magnification)", shown(p.claimed.path), p.decoded.pixel_size_um, ratio)
    return Scored(
        image_id=p.claimed.id, content_hash=p.decoded.sha256, qc=p.qc, width=p.decoded.pixels.shape[1],
        height=p.decoded.pixels.shape[0], score=score,
        tiles_blob=pack_tiles(probs, grid.rows, grid.cols, grid.kept) if grid is not None else None,
        model_version=model_version, classes=engine.metadata.classes, engine=engine.name,
        rewritten=p.content is Content.REWRITTEN, ood_score=ood_score, ood=ood,
        well_calibration=well_calibration_of(engine.metadata.extra), acquired_at=p.decoded.acquired_at,
    )


def empty_tiles(meta) -> np.ndarray:
    return np.zeros((0, meta.input_channels, meta.input_size, meta.input_size), np.float32)
