"""Per-image quality control. Failed frames are stored and shown, but left out of well
readouts: a blank, saturated or badly defocused frame would otherwise drag a well's
fate estimate towards whatever the model says about noise."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from nscmonitor.core.domain import QCMetrics
from nscmonitor.scoring.preprocess import percentiles


def qc_metrics(img: np.ndarray, *, p_low: float = 1.0, p_high: float = 99.8, min_focus: float = 0.0,
               max_saturation: float = 0.05) -> QCMetrics:
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
    focus = 0.0
    if not blank:
        small = img[::2, ::2].astype(np.float32)
        small = (small - lo) / (hi - lo)
        focus = float(ndimage.gaussian_laplace(small, sigma=1.5).var())
    reason = None
    if blank:
        reason = "blank frame (no signal)"
    elif sat > max_saturation:
        reason = f"saturated ({sat:.1%} of pixels at full scale)"
    elif focus < min_focus:
        reason = f"out of focus (LoG variance {focus:.2e} < {min_focus:.2e})"
    return QCMetrics(focus=focus, saturation=sat, blank=bool(blank), dtype=str(img.dtype), min=vmin, max=vmax,
                     p_low=float(lo), p_high=float(hi), passed=reason is None, reason=reason)


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
