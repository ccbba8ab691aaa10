"""Per-image quality control. Failed frames are stored and shown, but left out of well
readouts: a blank, saturated or badly defocused frame would otherwise drag a well's
fate estimate towards whatever the model says about noise.

Focus is judged against the same field's own frames, not against a fixed number: how much
fine detail an in-focus frame holds depends on the cells, the modality and the optics (on
the project's real ImageXpress fixtures the measure below spans 4-1,160 between in-focus
frames), while an autofocus failure takes most of it from one frame of a field whose
neighbours in time keep it (docs/reliability.md, "Out-of-focus frames")."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from scipy import ndimage

from nscmonitor.core.domain import OUT_OF_FOCUS, QCMetrics
from nscmonitor.scoring.preprocess import percentiles


def qc_metrics(img: np.ndarray, *, p_low: float = 1.0, p_high: float = 99.8, min_focus: float = 0.0,
               max_saturation: float = 0.05) -> QCMetrics:
    """The frame's own checks. ``sharpness`` is the variance of the discrete Laplacian over
    that of a Gaussian Laplacian at 1.5 px, both of the half-size frame: fine detail over
    detail at the scale of cell edges, which a defocus removes first. A ratio of two
    filters of the same pixels, it does not move with gain, offset or exposure."""
    if img.dtype.kind == "f":
        finite = np.isfinite(img)
        bad = int(img.size - np.count_nonzero(finite))
        if bad:
            return _nonfinite(img, finite, bad)
    lo, hi = percentiles(img, (p_low, p_high))
    vmin, vmax = float(img.min()), float(img.max())
    blank = vmax == vmin or (hi - lo) <= 1e-6 * max(abs(hi), 1.0)
    if img.dtype.kind == "u":
        full = float(np.iinfo(img.dtype).max)
        sat = float(np.count_nonzero(img >= full)) / img.size if vmax >= full else 0.0
    else:
        sat = 0.0
    focus = sharpness = 0.0
    if not blank:
        small = img[::2, ::2].astype(np.float32)
        small = (small - lo) / (hi - lo)
        focus = float(ndimage.gaussian_laplace(small, sigma=1.5).var())
        if focus > 0.0:
            sharpness = float(ndimage.laplace(small).var()) / focus
    reason = None
    if blank:
        reason = "blank frame (no signal)"
    elif sat > max_saturation:
        reason = f"saturated ({sat:.1%} of pixels at full scale)"
    elif focus < min_focus:
        reason = f"out of focus (LoG variance {focus:.2e} < {min_focus:.2e})"
    return QCMetrics(focus=focus, saturation=sat, blank=bool(blank), dtype=str(img.dtype), min=vmin, max=vmax,
                     p_low=float(lo), p_high=float(hi), passed=reason is None, reason=reason, sharpness=sharpness)


#: how many of the field's frames nearest in time make its reference
FOCUS_NEIGHBOURS = 4


def focus_ratio(sharpness: float, at: float, neighbours: Sequence[tuple[float, float]],
                k: int = FOCUS_NEIGHBOURS) -> tuple[float, int] | None:
    """``sharpness`` over the median of the ``k`` frames of the same field nearest to ``at``
    in time (``neighbours``: their (time, sharpness); unmeasured ones do not count), and how
    many made that median; None when there is none or the frame has no sharpness."""
    usable = sorted(((abs(t - at), v) for t, v in neighbours if v > 0.0 and math.isfinite(v)), key=lambda dv: dv[0])
    if sharpness <= 0.0 or not usable:
        return None
    near = [v for _, v in usable[:k]]
    return sharpness / float(np.median(near)), len(near)


def focus_reason(ratio: float, n: int, min_ratio: float) -> str | None:
    """The QC reason of a frame that kept ``ratio`` of its field's fine detail, or None when
    it passes (or the check is off, ``min_ratio`` 0)."""
    if min_ratio <= 0.0 or ratio >= min_ratio:
        return None
    return (f"{OUT_OF_FOCUS} (fine detail {ratio:.2f} of this field's {n} nearest frame{'s' if n > 1 else ''}; "
            f"fails below {min_ratio:g})")


def focus_check(qc: QCMetrics, at: float, neighbours: Sequence[tuple[float, float]], min_ratio: float,
                k: int = FOCUS_NEIGHBOURS) -> QCMetrics:
    """``qc`` with its sharpness judged against the median of the ``k`` frames of the same
    field (well, field, channel, z plane) nearest to it in time: ``neighbours`` are their
    (time, sharpness), ``at`` is this frame's time. Below ``min_ratio`` of that median the
    frame fails as out of focus.

    The median of several frames keeps one earlier failure from becoming the reference,
    and frames that failed are kept among the neighbours on purpose: when a field's focus
    changes for good (another objective or exposure), the changed frames become its
    reference after a few scans instead of failing for the rest of the experiment. A frame
    with no neighbour yet (a field's first scan) is judged later, when its field's next scan
    is scored (``store.focus_series``); one that failed already keeps its reason, and no
    frame fails when ``min_ratio`` is 0 (the check switched off)."""
    got = focus_ratio(qc.sharpness, at, neighbours, k)
    if got is None:
        return qc
    ratio, n = got
    reason = focus_reason(ratio, n, min_ratio) if qc.passed else None
    if reason is None:
        return replace(qc, focus_ratio=ratio)
    return replace(qc, focus_ratio=ratio, passed=False, reason=reason)


def _nonfinite(img: np.ndarray, finite: np.ndarray, bad: int) -> QCMetrics:
    """The rule for float frames holding NaN or infinity (a failed flat-field division, a
    dead-pixel map): the frame fails QC with the count in the reason, is stored and shown
    like any QC failure, and is not scored; masking would let a detector fault pass as
    biology, and silently dropping the frame hid it before."""
    vals = img[finite]
    vmin, vmax = (float(vals.min()), float(vals.max())) if vals.size else (0.0, 0.0)
    return QCMetrics(focus=0.0, saturation=0.0, blank=False, dtype=str(img.dtype), min=vmin, max=vmax, p_low=vmin,
                     p_high=vmax, passed=False, reason=f"{bad} of {img.size} pixels are NaN or infinite (not scored)",
                     nonfinite=bad)
