"""Scoring: claim -> stages -> complete, for one batch of queued images at a time.

The scorer claims due images, runs each through the stages (``scoring.stages``) inside
one error boundary per image, scores the tiles of all of them in engine-sized batches,
and stores the batch in one transaction. Whatever one image does (a codec bug, an absurd
tag, a resampler refusing, a row the database refuses), that image is failed or
quarantined with the reason and the others go on. An engine that fails on every image
hands the batch back to the queue untouched, so no image is lost or scored twice.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import replace
from typing import NamedTuple, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from nscmonitor.config import Settings
from nscmonitor.core.calibration import well_calibration_of
from nscmonitor.core.names import shown
from nscmonitor.core.queue import MAX_ATTEMPTS
from nscmonitor.readers.decode import DecodeError, open_regular, why
from nscmonitor.scoring.forecast import ForecastStage
from nscmonitor.scoring.hot_swap import LoadedModel, ModelSlot
from nscmonitor.scoring.metrics import Metrics, Timings
from nscmonitor.scoring.pacing import claim_cap, next_claim_size, parallel_prepares
from nscmonitor.scoring.preprocess import Preprocess
from nscmonitor.scoring.qc import FOCUS_NEIGHBOURS, focus_check, focus_ratio, focus_reason
from nscmonitor.scoring.stages import Prepared, infer, pixel_size_mismatch, prepare, result
from nscmonitor.store.writer import Claimed, LateVerdict, Scored, Writer

log = logging.getLogger(__name__)

#: the first claim's size, and the most one claim takes by default
FIRST_CLAIM, MAX_CLAIM = 4, 64
#: more threads than this mostly wait on the GIL (8 threads on a 16-core host prepared a
#: 1408x1040 frame in 11 ms of wall time, one thread in 34: part of the work holds it), and
#: each holds a frame while it works
MAX_PREPARE_WORKERS = 8
#: what a file may grow to once decoded and tiled, as a multiple of its size (compressed
#: frames; the last batch's own measure takes over where it is larger)
DECODE_EXPANSION = 4
#: the fewest images in one chunk of a pipelined claim, so that each engine call still batches
#: the tiles of several images
MIN_CHUNK = 4
#: whole batches the served engine may fail in a row before the next engine takes over
#: (``ModelSlot.fail_over``): one failure can be a passing fault, three in a row is the engine
ENGINE_FAILURES_BEFORE_FAIL_OVER = 3

T = TypeVar("T")
R = TypeVar("R")


class Batch(NamedTuple):
    claimed: int
    stored: int


class Scorer:
    def __init__(self, settings: Settings, writer: Writer, slot: ModelSlot, metrics: Metrics, *,
                 channel: Callable[[str], str | None], stop_event: threading.Event,
                 wall: Callable[[], float] = time.time, retry_base_s: float = 5.0,
                 max_attempts: int = MAX_ATTEMPTS, claim_size: int = MAX_CLAIM,
                 forecast: ForecastStage | None = None,
                 pixel_size: Callable[[str], float | None] = lambda path: None) -> None:
        """``channel``: the watch folder's scored channel for an image path; ``pixel_size``:
        its pixel size for files that state none (``config.WatchFolder.pixel_size_um``); ``forecast``: the
        time-aware well model's stage after each stored batch (None: per-image scoring only);
        ``claim_size``: the most images one batch claims (``scoring.pacing`` sizes each claim
        from what the last batches cost, in time and memory, starting small)."""
        self.settings = settings
        self.writer = writer
        self.slot = slot
        self.metrics = metrics
        self.channel = channel
        self.pixel_size = pixel_size
        self.stop_event = stop_event
        self.wall = wall
        self.retry_base_s = retry_base_s
        self.max_attempts = max_attempts
        self.claim_size = claim_size
        self.next_claim = min(FIRST_CLAIM, claim_size)
        self.engine_failures = 0  # whole batches the served engine failed in a row
        self._bytes_per_image = 0.0  # of the last batch's prepared images (frames and tiles)
        self._engine_error = ""  # the served engine's last failure, for the fail-over's reason
        self._pre: tuple[object, Preprocess] | None = None
        self.forecast = forecast
        #: threads that decode, check and tile a claim's images
        self.prepare_workers = max(1, min(MAX_PREPARE_WORKERS, settings.threads or os.cpu_count() or 1))

    def process_batch(self) -> Batch:
        model = self.slot.model
        assert model is not None
        started = time.perf_counter()
        size = self.next_claim
        claimed = self.writer.claim(size, self.wall(), model.version, max_attempts=self.max_attempts)
        if not claimed:
            return Batch(0, 0)
        batch = self._score(model, claimed)
        self.next_claim = next_claim_size(len(claimed), size, time.perf_counter() - started,
                                          largest=claim_cap(self.claim_size, self._bytes_per_image))
        return batch

    def _score(self, model: LoadedModel, claimed: list[Claimed]) -> Batch:
        scored = self._prepare_and_infer(model, claimed)
        if scored is None:  # the engine failed: the claim went back to the queue untouched
            return Batch(len(claimed), 0)
        prepared, probs = scored
        if not prepared:
            return Batch(len(claimed), 0)
        prepared, late = self._judge_focus(prepared)
        self._bytes_per_image = sum(p.decoded.pixels.nbytes + (p.grid.tiles.nbytes if p.grid is not None else 0)
                                    for p in prepared) / len(prepared)
        t1 = time.perf_counter()
        pairs = [(p.claimed, (p, pr)) for p, pr in zip(prepared, probs) if pr is not None]
        results = self._each(pairs, "packing the result",
                             lambda pp: result(pp[0], pp[1], model_version=model.version, engine=model.engine))
        stored = self._complete(results)
        if late and stored:
            self._store_late_verdicts(late, model)
        if self.forecast is not None and stored:
            self._forecast(prepared, stored, {p.claimed.id for p in prepared
                                              if pixel_size_mismatch(model.engine.metadata, p.decoded.pixel_size_um)})
        self.metrics.timings.store += time.perf_counter() - t1
        self.metrics.stored(c.path for c in stored)
        return Batch(len(claimed), len(stored))

    def _judge_focus(self, prepared: list[Prepared]) -> tuple[list[Prepared], list[LateVerdict]]:
        """Each image's focus judged against its field's frames nearest in time: those stored
        and those claimed with it (a backlog claims a field's scans together); and the stored
        frames among those that had nothing to be judged by when they were scored (a field's
        first scan), judged now that their field has more. When the store cannot be read,
        the batch goes on without the check (logged): its frames keep their own QC, and the
        write that follows decides, as for any batch, whether they are stored."""
        try:
            series = self.writer.field_series((p.claimed.id for p in prepared), FOCUS_NEIGHBOURS)
        except SQLAlchemyError as exc:
            log.warning("focus check skipped for %d images: cannot read their fields' scans: %s", len(prepared), exc)
            return prepared, []
        here: dict = {}
        stored: dict = {}
        for p in prepared:
            fs = series.get(p.claimed.id)
            if fs is None:
                continue
            stored.setdefault(fs.key, {}).update((n.id, n) for n in fs.stored)
            if p.qc.sharpness > 0.0:
                here.setdefault(fs.key, []).append((p.claimed.id, fs.at, p.qc.sharpness))
        out = []
        claimed = {p.claimed.id for p in prepared}
        for p in prepared:
            fs = series.get(p.claimed.id)
            if fs is not None:  # a frame scored again counts once, with what it is now
                near = [*((n.at, n.sharpness) for n in fs.stored if n.id not in claimed),
                        *((at, v) for other, at, v in here.get(fs.key, ()) if other != p.claimed.id)]
                p = replace(p, qc=focus_check(p.qc, fs.at, near, self.settings.min_focus_ratio))
            out.append(p)
        return out, late_verdicts(stored, here, claimed, self.settings.min_focus_ratio)

    def _store_late_verdicts(self, late: list[LateVerdict], model: LoadedModel) -> None:
        """Earlier frames' focus verdicts stored, and the readouts of those that fail
        recomputed (the serving model's well calibration, which a model served from a file
        has only in its metadata); a store that refuses them is logged, and they are given
        again with the field's next scan."""
        try:
            n = self.writer.store_late_verdicts(late, {model.version: well_calibration_of(model.engine.metadata.extra)})
        except SQLAlchemyError as exc:
            log.warning("could not store the focus verdicts of %d earlier frames: %s", len(late), exc)
            return
        if n:
            log.info("%d earlier frames (their fields' first scans) failed QC as out of focus against the scans "
                     "after them", n)

    def _prepare_and_infer(self, model: LoadedModel,
                           claimed: list[Claimed]) -> tuple[list[Prepared], list] | None:
        """Decode, check and tile the claimed images on ``prepare_workers`` threads, and score
        them; None when the engine failed (everything claimed is then released).

        Why threads: decoding (file reads, codecs), the focus measure and much of numpy's
        work release the GIL, and done one image after another they took far longer than a GPU
        engine's inference (34 ms per 1408x1040 frame against 6). The stages write nothing, so the threads only compute; each image's outcome
        (a failure, content scored already) is handled on this thread, in claim order, by the
        same per-image boundary. Where inference leaves the CPU free (``Engine.overlaps_cpu``,
        the GPU engines), the claim is also cut into chunks and the threads prepare the next
        chunk while the engine scores this one; on a CPU engine the claim is one chunk, since
        the engine's own threads already use every core. Decode and preprocess are booked as
        the time this thread waited for them (shared between the two by the threads' own
        times), so the pipeline's shares still add up to its wall time."""
        meta = model.engine.metadata
        try:
            pre: Preprocess | Exception = self._preprocess(meta)
        except Exception as exc:  # metadata it refuses fails the images (in _outcome), never the daemon
            pre = exc
        largest = max(_file_size(c.path) for c in claimed) * DECODE_EXPANSION
        workers = parallel_prepares(min(len(claimed), self.prepare_workers), max(self._bytes_per_image, largest))
        size = max(workers, MIN_CHUNK) if model.engine.overlaps_cpu else len(claimed)
        chunks = [claimed[i:i + size] for i in range(0, len(claimed), size)]
        prepared: list[Prepared] = []
        probs: list = []
        timings = self.metrics.timings
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prepare") as pool:
            pending = self._submit(pool, chunks[0], pre, meta)
            for k in range(len(chunks)):
                current = pending
                t0 = time.perf_counter()
                wait([f for _, f, _ in current])
                self._book_prepare(current, time.perf_counter() - t0)
                pending = self._submit(pool, chunks[k + 1], pre, meta) if k + 1 < len(chunks) else []
                ready = [p for _, p in self._each(((c, (c, f)) for c, f, _ in current), "preparing the image",
                                                   self._outcome) if p is not None]
                if not ready:
                    continue
                t0 = time.perf_counter()
                out = self._infer(model, ready)
                timings.inference += time.perf_counter() - t0
                if out is None:
                    later = [c.id for chunk in chunks[k + 1:] for c in chunk]
                    self.writer.release([p.claimed.id for p in prepared + ready] + later)
                    if not self._fail_over_after_repeated_failures():
                        self.stop_event.wait(self.retry_base_s)
                    return None
                prepared += ready
                probs += out
        return prepared, probs

    def _fail_over_after_repeated_failures(self) -> bool:
        """After ``ENGINE_FAILURES_BEFORE_FAIL_OVER`` failed batches in a row, the next engine
        the selector offers serves (True); the images were handed back and are scored by it."""
        if self.engine_failures < ENGINE_FAILURES_BEFORE_FAIL_OVER:
            return False
        if not self.slot.fail_over(f"{self.engine_failures} batches in a row: {self._engine_error}"):
            return False
        self.engine_failures = 0
        return True

    def _submit(self, pool: ThreadPoolExecutor, chunk: list[Claimed], pre: Preprocess | Exception,
                meta) -> list[tuple[Claimed, Future, Timings]]:
        out = []
        for c in chunk:
            own = Timings()
            out.append((c, pool.submit(self._compute, c, pre, meta, own), own))
        return out

    def _book_prepare(self, done: list[tuple[Claimed, Future, Timings]], waited: float) -> None:
        decode, prep = sum(t.decode for _, _, t in done), sum(t.preprocess for _, _, t in done)
        if decode + prep > 0:
            self.metrics.timings.decode += waited * decode / (decode + prep)
            self.metrics.timings.preprocess += waited * prep / (decode + prep)

    def prepare(self, c: Claimed) -> Prepared | None:
        """The stages before inference for one image; an image whose content was scored
        already is marked done here (None)."""
        meta = self.slot.model.engine.metadata
        out = self._compute(c, self._preprocess(meta), meta, self.metrics.timings)
        if out is None:
            self.writer.unchanged(c.id)
        return out

    def _compute(self, c: Claimed, pre: Preprocess | Exception, meta, timings: Timings) -> Prepared | None:
        if isinstance(pre, Exception):
            raise pre
        return prepare(c, pre, meta, max_pixels=self.settings.max_pixels, channel=self.channel(c.path),
                       timings=timings, pixel_size_um=self.pixel_size(c.path))

    def _outcome(self, item: tuple[Claimed, Future]) -> Prepared | None:
        c, future = item
        out = future.result()  # the thread's exception, raised here inside the boundary
        if out is None:
            self.writer.unchanged(c.id)
        return out

    def _preprocess(self, meta) -> Preprocess:
        """One ``Preprocess`` per served model, built inside the per-image boundary: metadata
        it refuses fails the images, never the daemon."""
        if self._pre is None or self._pre[0] is not meta:
            self._pre = (meta, Preprocess.from_metadata(meta))
        return self._pre[1]

    def _each(self, items: Iterable[tuple[Claimed, T]], what: str,
              stage: Callable[[T], R]) -> list[tuple[Claimed, R]]:
        """The per-image error boundary: ``stage`` on each image's item; an image it raises
        for is failed (or quarantined) with the reason, and the others go on."""
        out = []
        for c, arg in items:
            try:
                out.append((c, stage(arg)))
            except DecodeError as exc:
                self.fail(c, exc.reason, exc.permanent)
            except Exception as exc:  # a bug or an odd file must not stop the daemon
                log.exception("%s: unexpected error while %s", shown(c.path), what)
                self.fail(c, f"unexpected error while {what}: {why(exc)}", False)
        return out

    def _infer(self, model: LoadedModel, prepared: list[Prepared]) -> list | None:
        """Probabilities per image (None for one the engine failed on, which is failed here);
        None when the engine failed on the whole batch (the caller hands the claim back)."""
        try:
            probs, errors = infer(model.engine, prepared, self.settings.batch_size)
        except Exception as exc:  # the engine, not an image, is at fault
            log.error("engine %s failed on a batch: %s; the batch goes back to the queue", model.engine.name, exc)
            self.writer.event("engine_error", str(exc), level="error")
            self.engine_failures += 1
            self._engine_error = why(exc)
            return None
        self.engine_failures = 0
        for c, exc in errors:
            self.fail(c, f"the engine failed on this image: {why(exc)}", False)
        return probs

    def _complete(self, results: list[tuple[Claimed, Scored]]) -> list[Claimed]:
        """Store the batch in one transaction; if that fails, each image alone, so one row
        the database refuses cannot fail the others. Returns the images stored."""
        if not results:
            return []
        try:
            self.writer.complete([r for _, r in results])
            return [c for c, _ in results]
        except Exception as exc:  # a database hiccup must not stop the daemon; retry later
            log.exception("could not store the results of %d images", len(results))
            if len(results) == 1:
                self.fail(results[0][0], f"could not store the result: {why(exc)}", False)
                return []
        done = []
        for c, r in results:
            try:
                self.writer.complete([r])
                done.append(c)
            except Exception as exc:  # this image's row is the problem: fail it alone
                log.exception("%s: could not store the result", shown(c.path))
                self.fail(c, f"could not store the result: {why(exc)}", False)
        return done

    def _forecast(self, prepared: list[Prepared], stored: list[Claimed], other_scale: set[int]) -> None:
        """The second stage on the stored images that passed QC (a saturated or out-of-focus
        frame is no data for it, as it is none for the well readout), except those whose file says
        they were taken through another objective (``other_scale``: the pixel-size check of
        the out-of-distribution flag): such a frame is another kind of image for the forecast
        too, so it is no data for it (no features, no time point), as for a confident call.
        The tile model's OOD *score* does not leave frames out: it measures distance from the
        tile model's own training data, and a tile model trained from 48 h on (the demo's)
        flags a third of the induction frames, which the forecast was trained on. Its failure
        is logged and recorded as an event; the batch's readouts are already stored and the
        forecasts follow with the well's next image."""
        ids = {c.id for c in stored} - other_scale
        images = [(p.claimed.id, p.decoded.pixels, p.decoded.pixel_size_um) for p in prepared
                  if p.claimed.id in ids and p.grid is not None and p.qc.passed]
        refused = self.forecast.refresh()
        if refused:
            self.writer.event("forecast_error", refused, level="error")
        try:
            self.forecast.after_batch(images)
        except Exception as exc:  # the forecast must never stop per-image scoring
            log.exception("well forecast failed for a batch of %d images", len(images))
            self.writer.event("forecast_error", f"well forecast failed: {why(exc)}", level="error")

    def fail(self, c: Claimed, reason: str, permanent: bool) -> None:
        """Failed with exponential backoff, or quarantined (permanent, or attempts used up)."""
        retry_at = self.wall() + self.retry_base_s * (2 ** (c.attempts - 1))
        state = self.writer.fail(c.id, reason, permanent=permanent, retry_at=retry_at, max_attempts=self.max_attempts)
        log.warning("%s: %s (%s)", shown(c.path), reason, state)


def late_verdicts(stored: dict, here: dict, claimed: set[int], min_ratio: float) -> list[LateVerdict]:
    """Verdicts for the stored frames of the claim's fields that had nothing to be judged by
    when they were scored (a field's first scan): each against the field's other stored
    frames the claim's reads brought (``stored``: field -> {id: Neighbour}) and the claim's
    own (``here``: field -> [(id, position, sharpness)]). A frame that failed QC otherwise gets
    its ratio but keeps its reason; one claimed again is judged with the claim instead."""
    late = []
    for key, known in stored.items():
        for n in known.values():
            if n.judged or n.id in claimed:
                continue
            near = [*((o.at, o.sharpness) for o in known.values() if o.id != n.id and o.id not in claimed),
                    *((at, v) for _, at, v in here.get(key, ()))]
            got = focus_ratio(n.sharpness, n.at, near)
            if got is not None:
                late.append(LateVerdict(n.id, got[0], focus_reason(*got, min_ratio) if n.passed else None))
    return late


def requeue_readable(writer: Writer) -> None:
    """Files quarantined because they could not be opened go back to the queue as soon as
    they can be: fixing permissions changes neither size nor mtime, so intake's
    changed-file rule would never notice."""
    back = []
    for image_id, path in writer.unreadable_quarantined().items():
        try:
            with open_regular(path):
                back.append(image_id)
        except (OSError, DecodeError):
            continue
    if back and writer.requeue(back):
        log.info("%d file(s) quarantined as unreadable can be read now; queued again", len(back))


def _file_size(path: str) -> int:
    """A claimed file's size, a lower bound of what decoding it holds (0 when it cannot be
    read: its stage will say why)."""
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
