"""The well forecast's own out-of-distribution score: how unlike the forecast's training images
a frame is, from the features the forecast reads of it (``well_sequence.frame_features``).

Why its own, not the tile model's flag: the two models are trained on different data (the
demo's tile model from 48 h on, the forecast from induction), so the tile model's score flags
induction frames the forecast was trained on (docs/training.md, "Out-of-distribution flag").
Why these features: the 27 the forecast reads and two optics features measured beside them
(``well_sequence.optics_features``: how the intensities spread about the background, which
tells phase contrast from bright field); all are stored for every frame (a forecast is
recomputed from the store without decoding an image again), and they are cheap to score (a
29-number Gaussian distance). A model fitted before the optics features existed has a
27-number record and scores the stored vectors' first 27.

The score: each feature is log-compressed (``transform``: the blob counts and texture
energies have long right tails) and standardised, and the frame's squared Mahalanobis distance
to the training images' mean (1 % ridge on the correlation matrix) is taken; its square root
is the score. The threshold is a quantile of scores of whole plates the fit never saw: each
plate of the fitting set is scored by a fit on the others (leave one plate out), so the
plate-to-plate variation a new plate brings is inside the threshold, not flagged (a
threshold from one validation plate flagged 12-24 % of the next plate's images; measured in
docs/training.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

METHOD = "mahalanobis-log-features"
#: share of in-domain images (of plates the fit did not see) left under the threshold
QUANTILE = 0.96
#: ridge added to the standardised features' correlation matrix before it is inverted
RIDGE = 0.01
#: a feature whose fitted spread (transformed units) is below this carries no model of its
#: variation and is left out of the score (a blob count that is always 0 on small tiles)
MIN_SPREAD = 1e-3
#: each standardised feature is clipped to this many spreads, so a rare count (one blob where
#: the fitted images had none) cannot outweigh the other 26 features by itself
Z_CLIP = 8.0


def transform(features: np.ndarray) -> np.ndarray:
    """Signed log compression: near-linear for small values, logarithmic for the long tails."""
    x = np.asarray(features, np.float64)
    return np.sign(x) * np.log1p(10.0 * np.abs(x))


@dataclass(frozen=True)
class FrameOOD:
    """A fitted score and its threshold, as stored in the forecast model's metadata."""

    mean: np.ndarray
    scale: np.ndarray
    precision: np.ndarray  # rows and columns of features left out are 0
    threshold: float
    z_clip: float = Z_CLIP

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Score of each row of ``features`` (N x D, the measured frame features). Rows of the
        first d < D features only (stored before the later ones were measured) are scored by
        the fitted Gaussian's marginal over those d: never larger than the full score, so such
        a frame is flagged less readily, not more."""
        x = np.atleast_2d(np.asarray(features, np.float64))
        d = x.shape[1]
        if d > len(self.mean):
            raise ValueError(f"{d} features for a score fitted on {len(self.mean)}")
        z = standardise(x, self.mean[:d], self.scale[:d], self.z_clip)
        precision = self.precision if d == len(self.mean) else self._marginal(d)
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", z, precision, z), 0.0))

    def _marginal(self, d: int) -> np.ndarray:
        keep = np.flatnonzero(np.abs(self.precision).sum(axis=0) > 0)  # features the fit did not leave out
        cov = np.linalg.inv(self.precision[np.ix_(keep, keep)])
        sub = keep[keep < d]
        out = np.zeros((d, d))
        if len(sub):
            pos = np.searchsorted(keep, sub)
            out[np.ix_(sub, sub)] = np.linalg.inv(cov[np.ix_(pos, pos)])
        return out

    def flags(self, features: np.ndarray) -> np.ndarray:
        """True where a frame is unlike the training images; a frame whose features are not
        finite (a damaged stored row) is flagged rather than trusted."""
        s = self.scores(features)
        return ~np.isfinite(s) | (s > self.threshold)

    def record(self, **extra: object) -> dict:
        return {"method": METHOD, "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "precision": self.precision.tolist(), "threshold": float(self.threshold), "z_clip": self.z_clip,
                **extra}

    @classmethod
    def from_record(cls, rec: dict | None, n_features: int | Sequence[int]) -> FrameOOD | None:
        """None when the model has no record (the flag is unavailable); ``ValueError`` with the
        reason when the record is there but unusable (another method, not for one of the
        feature counts ``n_features`` allows, not finite)."""
        if not rec:
            return None
        if rec.get("method") != METHOD:
            raise ValueError(f"out-of-distribution method {rec.get('method')!r}, this daemon scores {METHOD!r}")
        try:
            mean, scale = np.asarray(rec["mean"], np.float64), np.asarray(rec["scale"], np.float64)
            precision, threshold = np.asarray(rec["precision"], np.float64), float(rec["threshold"])
            z_clip = float(rec.get("z_clip", Z_CLIP))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"out-of-distribution record unreadable ({exc})") from exc
        allowed = (n_features,) if isinstance(n_features, int) else tuple(n_features)
        n = mean.shape[0] if mean.ndim == 1 else -1
        if n not in allowed or scale.shape != (n,) or precision.shape != (n, n):
            raise ValueError(f"out-of-distribution record is not for {' or '.join(map(str, allowed))} features")
        if not (np.isfinite(mean).all() and np.isfinite(precision).all() and np.isfinite(threshold)
                and (scale > 0).all() and z_clip > 0):
            raise ValueError("out-of-distribution record holds values that are not finite")
        return cls(mean, scale, precision, threshold, z_clip)


def standardise(features: np.ndarray, mean: np.ndarray, scale: np.ndarray, z_clip: float = Z_CLIP) -> np.ndarray:
    """Transformed, centred, scaled and clipped features (N x D); NaN stays NaN."""
    z = (transform(np.atleast_2d(features)) - mean) / scale
    return np.where(np.isnan(z), z, np.clip(z, -z_clip, z_clip))


def fit_gaussian(features: np.ndarray, ridge: float = RIDGE) -> FrameOOD:
    """The score fitted on ``features`` (N x D, N > 1), threshold not set (inf)."""
    x = transform(features)
    mean, spread = x.mean(axis=0), x.std(axis=0)
    keep = spread >= MIN_SPREAD
    scale = np.where(keep, spread, 1.0)
    z = standardise(features, mean, scale)[:, keep]
    corr = np.atleast_2d(np.cov(z, rowvar=False)) + ridge * np.eye(int(keep.sum()))
    precision = np.zeros((x.shape[1], x.shape[1]))
    precision[np.ix_(keep, keep)] = np.linalg.inv(corr)
    return FrameOOD(mean, scale, precision, float("inf"))


def fit(features: np.ndarray, plates: Sequence[object], *, quantile: float = QUANTILE,
        ridge: float = RIDGE) -> tuple[FrameOOD, dict]:
    """The score on every image of ``features`` and its threshold: the ``quantile`` of
    leave-one-plate-out scores (each plate scored by a fit on the others). With one plate the
    threshold is the quantile of the images' own in-sample scores, which a new plate will
    exceed more often: the record says which (``threshold_from``)."""
    x = np.asarray(features, np.float64)
    plates = np.asarray([str(p) for p in plates])
    if x.ndim != 2 or len(plates) != len(x):
        raise ValueError("the forecast's out-of-distribution score needs one feature row per image")
    finite = np.isfinite(x).all(axis=1)  # an image whose features could not be measured is left out
    x, plates = x[finite], plates[finite]
    if len(x) < 2:
        raise ValueError("the forecast's out-of-distribution score needs at least two images' features")
    names = sorted(set(plates))
    held: list[np.ndarray] = []
    if len(names) > 1:
        for p in names:
            rest = plates != p
            if rest.sum() > 1:
                held.append(fit_gaussian(x[rest], ridge).scores(x[~rest]))
    out = fit_gaussian(x, ridge)
    scores = np.concatenate(held) if held else out.scores(x)
    threshold = float(np.quantile(scores[np.isfinite(scores)], quantile))
    fitted = FrameOOD(out.mean, out.scale, out.precision, threshold)
    info = {"threshold": threshold, "quantile": quantile, "ridge": ridge, "n_images": int(len(x)),
            "n_left_out": int((~finite).sum()), "n_plates": len(names),
            "threshold_from": "leave-one-plate-out" if held else "in-sample (one plate)",
            "flagged_held_out_plates": float(np.mean(scores > threshold))}
    return fitted, info
