"""The gate every built engine passes before it may serve.

A reduced-precision engine (int8, fp16, another runtime) can be fast and subtly wrong; the
scientist would only see plausible but shifted readouts. So each build is compared with the
ONNX reference (ONNX Runtime CPU fp32) on real held-out tiles, and the comparison measures
what matters downstream: top-1 agreement per tile and the well-level readout in percentage
points. The readout gated is the well's mean class probability; the fraction of tiles per
predicted class is reported beside it but not gated on its own, because with the few
held-out tiles per well of a gate set one flipped tile moves it by 100/n points (the daemon's
wells hold hundreds of tiles); top-1 agreement already bounds it on average.

Top-1 agreement is gated on the tiles the reference calls clearly: those whose top class
leads the runner-up by at least ``clear_margin`` (0.10 probability by default). On a tile
whose two best classes sit within a few points of each other, any faithful low-precision
engine flips the winner now and then, and such a flip moves that tile's contribution to the
well readout by a few points only; counting it as a disagreement failed engines whose well
readouts moved by half a percentage point. A flip on a clear tile, in contrast, is a real
error. So the gate is: agreement >= 99 % on clear tiles AND every well's mean-probability
readout within 1 pp; agreement on all tiles is reported beside it. When fewer than
``MIN_CLEAR`` tiles (or under a fifth of them) are clear, the model is too uncertain for the
split to mean much and agreement is gated on all tiles instead.

The same run also reads both engines' out-of-distribution scores. The threshold in the
model's metadata was set on fp32 scores, and a reduced-precision backbone gives every tile a
slightly different score: on the demo model the OpenVINO int8 engine scored the demo plate's
frames 10 % higher than fp32, so at the fp32 threshold it flagged 9.8 % of them against
fp32's 6.0 %. The gate fits the engine's score as a line of the reference's over the same
tiles and records where the fp32 threshold lands on it (``ood_threshold``); the engine
serves with that threshold (``engines.select``), so it flags the images fp32 would (5.3 %,
98 % of the frames' flags the same as fp32's, against 96 % at the fp32 threshold).

The readout is gated on the part of its error that does not average away (``readout_split``).
An engine's error on a tile is two things: a part the tiles of a well share (a class shifted
everywhere, or in wells of one kind), which moves the daemon's readout whatever the number of
tiles, and independent noise from tile to tile, which a readout divides by the square root of
its tiles. The gate's held-out wells hold 6 to 16 tiles; the daemon's readouts hold one or more
whole frames (140 tiles per field for the ResNet50 of docs/training.md on 1408x1040 frames). The
four ResNet50s trained here read 0.83-1.71 pp all-int8 on the old statistic (the largest
held-out well's difference) with per-class mean differences of 0.01-0.3 pp; on run 9's file
on OpenVINO (1.03 pp, on the smallest well, of 6 tiles) the wells differed from each other as
much as the tiles' own noise predicts, no more. A bias-corrected file that did shift one class
there by 0.5 pp on average read 1.86 pp: the old statistic mixes the two. So:
- **shared part**, gated at ``well_readout_pp``, per class the larger of: each held-out
  well's difference shrunk towards the mean difference by how much of it its tiles' noise
  explains (empirical Bayes), and the shift of a well not among them (the mean difference
  plus ``NEW_WELL_Z`` between-well standard deviations); the between-well variance taken at
  its one-sided 95 % upper bound (Q-profile), so that a well of its own kind keeps its shift,
  and the mean's own 95 % uncertainty added. Where the set cannot be split (fewer than
  ``MIN_SPLIT_WELLS`` wells or ``MIN_WITHIN_DF`` tiles beyond one per well, or a single well)
  the figure is the old statistic;
- **tile noise**, gated at ``tile_noise_ratio``: the engine's independent noise per tile as a
  share of how much the reference's own tiles differ within a well (floored at the readout
  tolerance), the spread every readout already averages. At 0.2 the engine widens a readout's
  spread by at most 2 % at any number of tiles; the four ResNet50s' all-int8 files read 0.07-0.10.
The held-out wells' readout difference stays in the report (``well_readout_pp``).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from nscmonitor.engines.base import Engine

log = logging.getLogger(__name__)

DEFAULT_TOLERANCE = {"top1_agreement": 0.99, "well_readout_pp": 1.0, "clear_margin": 0.10, "tile_noise_ratio": 0.2}
MIN_CLEAR = 20
#: the batch gates run at (and build timings time): OpenVINO compiles for it, as for the daemon's
GATE_BATCH = 8
#: fewest tiles with both engines' OOD scores for a threshold of the candidate's own
MIN_OOD_TILES = 20
#: fewest wells, and tiles beyond one per well, to tell a well's shared shift from tile noise
MIN_SPLIT_WELLS = 5
MIN_WITHIN_DF = 20
#: the one-sided level of the bounds on the between-well variance and on the mean shift
SPLIT_LEVEL = 0.05
#: a well not among the held-out ones: its shift is bounded at this many between-well standard
#: deviations from the mean (one well in 80 beyond it: about one per 96-well plate)
NEW_WELL_Z = 2.5


@dataclass(frozen=True)
class GateReport:
    backend: str
    n_tiles: int
    n_groups: int
    top1_agreement: float
    well_readout_pp: float
    max_abs_prob_diff: float
    mean_abs_prob_diff: float
    tolerance: dict[str, float]
    passed: bool
    reasons: tuple[str, ...] = field(default_factory=tuple)
    tiles_source: str = ""
    fraction_pp: float = 0.0
    #: agreement on the tiles the reference calls clearly (margin >= clear_margin), the
    #: gated figure; None when too few tiles were clear and all tiles were gated instead
    top1_agreement_clear: float | None = None
    n_clear: int = 0
    #: layer groups the int8 model keeps in fp32 beyond the recipe's stem and head (chosen by
    #: ``engines.mixed_precision`` when the plain recipe failed its gate)
    kept_fp32: tuple[str, ...] = ()
    #: the OOD threshold this engine serves with: where the model's fp32 threshold
    #: (``ood_threshold_reference``) lands on the line fitted through both engines' scores of
    #: the gate's tiles; None for a model without the score or too few tiles (the engine then
    #: keeps the model's threshold)
    ood_threshold: float | None = None
    ood_threshold_reference: float | None = None
    #: the gated readout figure: the part of the readout difference a well's tiles share (see
    #: the module docstring); None in reports written before the gate split the readout
    shared_readout_pp: float | None = None
    #: the engine's independent noise per tile (pp, largest class) and its share of the
    #: reference's own within-well tile spread (the gated figure)
    tile_noise_pp: float | None = None
    tile_noise_ratio: float | None = None

    @property
    def readout_gated_pp(self) -> float:
        """The readout figure this report was gated on (older reports gated the held-out wells')."""
        return self.well_readout_pp if self.shared_readout_pp is None else self.shared_readout_pp

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["reasons"] = list(self.reasons)
        d["kept_fp32"] = list(self.kept_fp32)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GateReport":
        return cls(**{**d, "reasons": tuple(d.get("reasons", ())), "kept_fp32": tuple(d.get("kept_fp32", ()))})

    def summary(self) -> str:
        verdict = "passed" if self.passed else "FAILED: " + "; ".join(self.reasons)
        clear = (f"top-1 agreement {self.top1_agreement_clear:.2%} on {self.n_clear} clear tiles "
                 f"(margin >= {self.tolerance.get('clear_margin', 0):.2f}), "
                 if self.top1_agreement_clear is not None else "")
        return (f"{self.backend}: {clear}top-1 agreement {self.top1_agreement:.2%} on all {self.n_tiles} tiles, "
                f"well readout diff {self.well_readout_pp:.2f} pp over {self.n_groups} wells{self._split_text()}, "
                f"max |dp| {self.max_abs_prob_diff:.4f}{kept_text(self.kept_fp32)}{self._ood_text()} -> {verdict}")

    def _split_text(self) -> str:
        if self.shared_readout_pp is None:
            return ""
        noise = (f", tile noise {self.tile_noise_pp:.2f} pp = {self.tile_noise_ratio:.0%} of the tiles' own spread"
                 if self.tile_noise_ratio is not None and self.tile_noise_pp is not None else "")
        return f" (shared by a well's tiles {self.shared_readout_pp:.2f} pp{noise})"

    def _ood_text(self) -> str:
        if self.ood_threshold is None or self.ood_threshold_reference is None:
            return ""
        return f", OOD threshold {self.ood_threshold_reference:.4g} (fp32) -> {self.ood_threshold:.4g} here"


def kept_text(kept: tuple[str, ...] | list[str] | None) -> str:
    """How a gate line names the layer groups kept in fp32 (empty when none were)."""
    if not kept:
        return ""
    shown = ", ".join(list(kept)[:4]) + (f" and {len(kept) - 4} more" if len(kept) > 4 else "")
    return f", {len(kept)} layer group(s) kept fp32 ({shown})"


def readout_text(gate: dict[str, Any]) -> str:
    """How status lines name a gate record's readout figure: the gated part a well's tiles share
    with the held-out wells' difference beside it, or the latter alone for records from before."""
    held = gate.get("well_readout_pp", 0) or 0
    shared = gate.get("shared_readout_pp")
    if not isinstance(shared, (int, float)):
        return f"well readout within {held:.2f} pp"
    return f"well readout within {shared:.2f} pp (shared by a well's tiles; {held:.2f} pp over the held-out wells)"


def well_readouts(probs: np.ndarray, groups: tuple[str, ...] | list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per group: mean class probability (G x K) and fraction of tiles predicted as each
    class (G x K), the two readouts the store keeps per well."""
    groups_arr = np.asarray(groups)
    k = probs.shape[1]
    means, fracs = [], []
    for g in dict.fromkeys(groups_arr.tolist()):
        p = probs[groups_arr == g]
        means.append(p.mean(axis=0))
        fracs.append(np.bincount(p.argmax(axis=1), minlength=k) / len(p))
    return np.asarray(means), np.asarray(fracs)


@dataclass(frozen=True)
class ReadoutSplit:
    """The readout difference (pp) split into what a well's tiles share and tile noise."""

    shared_pp: float
    noise_pp: float
    noise_ratio: float
    #: False where the set could not be split: ``shared_pp`` is then the held-out wells' own
    split: bool


def chi2_lower(df: int, level: float = SPLIT_LEVEL) -> float:
    """The chi-square distribution's lower ``level`` quantile with ``df`` degrees of freedom."""
    from scipy.stats import chi2

    return float(chi2.ppf(level, df))


def between_well_variance_upper(means: np.ndarray, sampling_var: np.ndarray) -> float:
    """One-sided upper bound of the variance of the wells' true means around their common
    mean (Q-profile, Viechtbauer 2007): the tau^2 at which Cochran's Q of ``means`` with
    variances ``sampling_var + tau^2`` falls to the chi-square's lower quantile. 0 when the
    wells vary no more than their tiles' noise explains at the bound's level."""
    from scipy.optimize import brentq

    target = chi2_lower(len(means) - 1)

    def excess(t2: float) -> float:  # Q falls as tau^2 rises
        w = 1.0 / (t2 + sampling_var)
        mu = float((w * means).sum() / w.sum())
        return float((w * (means - mu) ** 2).sum()) - target

    if excess(0.0) <= 0:
        return 0.0
    hi = float(means.var() + sampling_var.max()) + 1e-9
    while excess(hi) > 0:
        hi *= 2.0
    return float(brentq(excess, 0.0, hi, xtol=1e-9))


def readout_split(reference: np.ndarray, candidate: np.ndarray, groups: tuple[str, ...] | list[str],
                  *, floor_pp: float) -> ReadoutSplit:
    """Split the candidate's well readout difference into the part a well's tiles share and
    the independent noise per tile (module docstring). ``floor_pp``: the spread below which
    the reference's own tiles count as this (so a class nobody predicts gates nothing)."""
    d = (np.asarray(candidate, np.float64) - np.asarray(reference, np.float64)) * 100
    r = np.asarray(reference, np.float64) * 100
    _, well = np.unique(np.asarray(list(groups)), return_inverse=True)
    n_wells = int(well.max()) + 1
    n = np.bincount(well, minlength=n_wells).astype(np.float64)

    def well_means(x: np.ndarray) -> np.ndarray:
        return np.stack([np.bincount(well, weights=x[:, k], minlength=n_wells) for k in range(x.shape[1])], 1) / n[:, None]

    dm = well_means(d)
    df = len(d) - n_wells

    def within_sd(x: np.ndarray) -> np.ndarray:
        return np.sqrt(((x - well_means(x)[well]) ** 2).sum(axis=0) / df) if df > 0 else x.std(axis=0)

    noise, spread = within_sd(d), within_sd(r)
    ratio = float(np.max(noise / np.maximum(spread, floor_pp)))
    old = float(np.max(np.abs(dm)))
    if n_wells < MIN_SPLIT_WELLS or df < MIN_WITHIN_DF:
        return ReadoutSplit(old, float(noise.max()), ratio, False)
    from scipy.stats import norm

    z_mean = float(norm.ppf(1.0 - SPLIT_LEVEL))
    shared = 0.0
    for k in range(d.shape[1]):
        v = np.maximum(noise[k] ** 2 / n, 1e-12)
        t2 = between_well_variance_upper(dm[:, k], v)
        w = 1.0 / (t2 + v)
        mu = float((w * dm[:, k]).sum() / w.sum())
        held = float(np.max(np.abs(mu + (dm[:, k] - mu) * t2 / (t2 + v))))
        unseen = abs(mu) + NEW_WELL_Z * float(np.sqrt(t2))
        shared = max(shared, max(held, unseen) + z_mean / float(np.sqrt(w.sum())))
    return ReadoutSplit(shared, float(noise.max()), ratio, True)


def ood_threshold_for(reference: np.ndarray, candidate: np.ndarray, threshold: float) -> float | None:
    """The candidate engine's OOD threshold that flags what ``threshold`` flags on the
    reference's scores: the least-squares line of the candidate's tile scores on the
    reference's, evaluated at the threshold (a line maps a tile mean as it maps each tile, and
    an image's score is its tiles' mean). None when fewer than ``MIN_OOD_TILES`` tiles have both
    scores finite, the reference's scores do not vary, or the line does not rise."""
    ref, cand = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    ok = np.isfinite(ref) & np.isfinite(cand)
    if ref.shape != cand.shape or int(ok.sum()) < MIN_OOD_TILES or np.ptp(ref[ok]) <= 0:
        return None
    slope, intercept = np.polyfit(ref[ok], cand[ok], 1)
    if not slope > 0:
        return None
    mapped = float(slope * float(threshold) + intercept)
    return mapped if np.isfinite(mapped) else None


def compare(reference: np.ndarray, candidate: np.ndarray, groups: tuple[str, ...] | list[str] | None,
            *, backend: str, tolerance: dict[str, float] | None = None, tiles_source: str = "",
            ood: tuple[np.ndarray | None, np.ndarray | None, float | None] | None = None) -> GateReport:
    """Compare two probability arrays for the same tiles. Without groups all tiles form one
    well. ``ood``: (reference OOD scores, candidate OOD scores, the model's threshold) of the
    same tiles, for the threshold the candidate serves with."""
    report = _compare(reference, candidate, groups, backend=backend, tolerance=tolerance, tiles_source=tiles_source)
    if ood is None or any(v is None for v in ood):
        return report
    ref_ood, cand_ood, threshold = ood
    return replace(report, ood_threshold=ood_threshold_for(ref_ood, cand_ood, threshold),
                   ood_threshold_reference=float(threshold))


def _compare(reference: np.ndarray, candidate: np.ndarray, groups: tuple[str, ...] | list[str] | None,
             *, backend: str, tolerance: dict[str, float] | None = None, tiles_source: str = "") -> GateReport:
    tol = {**DEFAULT_TOLERANCE, **(tolerance or {})}
    if reference.shape != candidate.shape or reference.ndim != 2 or len(reference) == 0:
        return GateReport(backend, len(candidate), 0, 0.0, 100.0, 1.0, 1.0, tol, False,
                          (f"output shape {candidate.shape} differs from reference {reference.shape}",),
                          tiles_source)
    if not np.all(np.isfinite(candidate)):
        return GateReport(backend, len(candidate), 0, 0.0, 100.0, 1.0, 1.0, tol, False,
                          ("candidate produced NaN or infinite probabilities",), tiles_source)
    groups = list(groups) if groups is not None else ["all"] * len(reference)
    same = reference.argmax(1) == candidate.argmax(1)
    agree = float(np.mean(same))
    top2 = np.sort(reference, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) >= float(tol["clear_margin"])
    n_clear = int(clear.sum())
    agree_clear = float(np.mean(same[clear])) if n_clear >= max(MIN_CLEAR, 0.2 * len(same)) else None
    diff = np.abs(reference - candidate)
    ref_mean, ref_frac = well_readouts(reference, groups)
    cand_mean, cand_frac = well_readouts(candidate, groups)
    readout_pp = float(np.max(np.abs(ref_mean - cand_mean)) * 100)
    fraction_pp = float(np.max(np.abs(ref_frac - cand_frac)) * 100)
    split = readout_split(reference, candidate, groups, floor_pp=float(tol["well_readout_pp"]))
    if not split.split:  # the held-out wells' own figure, to the last digit
        split = replace(split, shared_pp=readout_pp)
    reasons = []
    if agree_clear is not None and agree_clear < tol["top1_agreement"]:
        reasons.append(f"top-1 agreement {agree_clear:.2%} < {tol['top1_agreement']:.2%} on the {n_clear} tiles "
                       f"the reference calls clearly (margin >= {tol['clear_margin']:.2f})")
    elif agree_clear is None and agree < tol["top1_agreement"]:
        reasons.append(f"top-1 agreement {agree:.2%} < {tol['top1_agreement']:.2%} on all {len(same)} tiles "
                       f"(only {n_clear} clear tiles, too few to gate on)")
    if split.shared_pp > tol["well_readout_pp"]:
        reasons.append(f"well readout differs by {split.shared_pp:.2f} pp > {tol['well_readout_pp']:.2f} pp"
                       + (f" in the part a well's tiles share ({readout_pp:.2f} pp over the held-out wells)"
                          if split.split else ""))
    if split.noise_ratio > tol["tile_noise_ratio"]:
        reasons.append(f"tile noise {split.noise_pp:.2f} pp is {split.noise_ratio:.0%} of the tiles' own spread "
                       f"within a well > {tol['tile_noise_ratio']:.0%}")
    return GateReport(backend, len(reference), len(set(groups)), agree, readout_pp, float(diff.max()),
                      float(diff.mean()), tol, not reasons, tuple(reasons), tiles_source, fraction_pp,
                      agree_clear, n_clear, shared_readout_pp=split.shared_pp, tile_noise_pp=split.noise_pp,
                      tile_noise_ratio=split.noise_ratio)


def predict(engine: Engine, x: np.ndarray, batch_size: int = GATE_BATCH) -> np.ndarray:
    return predict_with_ood(engine, x, batch_size)[0]


def predict_with_ood(engine: Engine, x: np.ndarray,
                     batch_size: int = GATE_BATCH) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities and, when the graph has the score, OOD scores of ``x`` in chunks."""
    runs = [engine.infer_with_ood(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    probs = np.concatenate([p for p, _ in runs])
    scores = [s for _, s in runs]
    return probs, (np.concatenate(scores) if runs and all(s is not None for s in scores) else None)


def ood_of_gate(meta: Any, ref_ood: np.ndarray | None,
                cand_ood: np.ndarray | None) -> tuple[np.ndarray | None, np.ndarray | None, float | None] | None:
    """``compare``'s ``ood`` argument for a model whose metadata carries a threshold."""
    threshold = (getattr(meta, "ood", None) or {}).get("threshold")
    return None if threshold is None else (ref_ood, cand_ood, float(threshold))


def serving_metadata(meta: Any, gate: dict[str, Any] | GateReport | None) -> Any:
    """The metadata an engine serves with: the model's, with the OOD threshold its gate fitted
    for this engine (the model's own kept as ``threshold_fp32``). A gate without one (a model
    without the score, an engine gated before the threshold was fitted) changes nothing; nor
    does a damaged one (not a finite number), which is logged: the model's threshold still holds."""
    rec = gate.to_dict() if isinstance(gate, GateReport) else (gate or {})
    mapped = rec.get("ood_threshold")
    if not getattr(meta, "ood", None) or mapped is None:
        return meta
    try:
        mapped = float(mapped)
    except (TypeError, ValueError):
        mapped = float("nan")
    if not np.isfinite(mapped):
        log.warning("gate record of %s holds an unusable OOD threshold %r; the model's own serves",
                    rec.get("backend", "an engine"), rec.get("ood_threshold"))
        return meta
    own = float(meta.ood.get("threshold_fp32", meta.ood["threshold"]))
    return replace(meta, ood={**meta.ood, "threshold": float(mapped), "threshold_fp32": own})


def validate_engine(candidate: Engine, reference: Engine, x: np.ndarray, groups: tuple[str, ...] | None = None,
                    *, tolerance: dict[str, float] | None = None, batch_size: int = GATE_BATCH,
                    tiles_source: str = "") -> GateReport:
    """Run both loaded engines on the same tiles and compare. ``tolerance`` defaults to the
    model's own ``int8_tolerance`` so the model's author, not this code, decides the bar."""
    tol = tolerance if tolerance is not None else dict(reference.metadata.int8_tolerance)
    ref, ref_ood = predict_with_ood(reference, x, batch_size)
    cand, cand_ood = predict_with_ood(candidate, x, batch_size)
    report = compare(ref, cand, groups, backend=candidate.name, tolerance=tol, tiles_source=tiles_source,
                     ood=ood_of_gate(reference.metadata, ref_ood, cand_ood))
    (log.info if report.passed else log.warning)("validation gate: %s", report.summary())
    return report


def write_report(report: GateReport, path: str | Path) -> Path:
    """Keep the evidence next to the artefact (or next to where a rejected one would have
    been) so 'why is the GPU not used?' has an answer on disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".part")
    tmp.write_text(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    os.replace(tmp, path)
    return path
