"""A plate's readouts over time as dense arrays (wells x time points x classes).

The dashboard loads a plate once for the chosen model version; the time slider then
indexes these arrays instead of querying the store, which keeps a slider step on a 384-well,
120-time-point plate well under 100 ms. Live updates merge the few rows that changed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from nscmonitor.core.domain import GLIA
from nscmonitor.core.scans import time_point_name
from nscmonitor.report.calls import EARLY_H, ConfidentCall, confident_call  # noqa: F401 - the rule the report shares


@dataclass(frozen=True)
class Well:
    id: int
    name: str
    row: int
    col: int
    condition: str | None


@dataclass(frozen=True)
class ReadoutRows:
    """Column arrays for N readout rows of one plate and model version, as read from the store."""

    well_id: np.ndarray  # N int64
    time_key: np.ndarray  # N int64
    elapsed_h: np.ndarray  # N float64, NaN when unknown
    classes: tuple[str, ...]
    prob_mean: np.ndarray  # N x K float32, NaN rows when the readout holds no scored image
    prob_sd: np.ndarray  # N x K
    fraction: np.ndarray  # N x K
    n_images: np.ndarray  # N int32
    n_tiles: np.ndarray  # N int32
    n_qc_failed: np.ndarray  # N int32
    confidence: np.ndarray  # N float32
    #: N float32: images flagged out of distribution, NaN where the model gives no flag
    n_ood: np.ndarray | None = None

    @staticmethod
    def empty(classes: tuple[str, ...] = ()) -> ReadoutRows:
        k = len(classes)
        z = np.zeros(0, np.int64)
        return ReadoutRows(z, z, np.zeros(0), classes, np.zeros((0, k), np.float32), np.zeros((0, k), np.float32),
                           np.zeros((0, k), np.float32), z.astype(np.int32), z.astype(np.int32), z.astype(np.int32),
                           np.zeros(0, np.float32), np.zeros(0, np.float32))

    def __len__(self) -> int:
        return len(self.well_id)


@dataclass(frozen=True)
class PlateCube:
    wells: tuple[Well, ...]
    plate_format: int
    classes: tuple[str, ...]
    time_keys: np.ndarray  # T, sorted
    elapsed_h: np.ndarray  # T, mean over the wells read at that key (NaN when unknown)
    has: np.ndarray  # W x T bool: a readout row exists
    prob_mean: np.ndarray  # W x T x K float32, NaN where no data
    prob_sd: np.ndarray
    fraction: np.ndarray
    n_images: np.ndarray  # W x T int32 (0 where no data)
    n_tiles: np.ndarray
    n_qc_failed: np.ndarray
    confidence: np.ndarray  # W x T float32
    #: W x T float32: images flagged out of distribution (NaN: no flag from the model or no data)
    n_ood: np.ndarray | None = None

    @property
    def n_times(self) -> int:
        return len(self.time_keys)

    def well_index(self, name: str) -> int:
        for i, w in enumerate(self.wells):
            if w.name == name:
                return i
        raise KeyError(name)

    def flagged_at(self, t: int) -> np.ndarray:
        """W bool: wells with an image flagged out of distribution at time index ``t``."""
        if self.n_ood is None or not 0 <= t < self.n_times:
            return np.zeros(len(self.wells), bool)
        return np.nan_to_num(self.n_ood[:, t], nan=0.0) > 0

    def flagged_images(self) -> int:
        """Images flagged out of distribution on the whole plate (what the banner counts)."""
        return 0 if self.n_ood is None else int(np.nansum(self.n_ood))

    def time_label(self, t: int) -> str:
        h = self.elapsed_h[t] if 0 <= t < self.n_times else np.nan
        return f"{h:.1f} h" if np.isfinite(h) else f"time point {time_point_name(self.time_keys[t])}"


def build_cube(wells: list[Well], plate_format: int, rows: ReadoutRows) -> PlateCube:
    return merge(empty_cube(wells, plate_format, rows.classes), rows)


def empty_cube(wells: list[Well], plate_format: int, classes: tuple[str, ...]) -> PlateCube:
    w, k = len(wells), len(classes)
    return PlateCube(tuple(wells), plate_format, tuple(classes), np.zeros(0, np.int64), np.zeros(0),
                     np.zeros((w, 0), bool), np.full((w, 0, k), np.nan, np.float32),
                     np.full((w, 0, k), np.nan, np.float32), np.full((w, 0, k), np.nan, np.float32),
                     np.zeros((w, 0), np.int32), np.zeros((w, 0), np.int32), np.zeros((w, 0), np.int32),
                     np.full((w, 0), np.nan, np.float32), np.full((w, 0), np.nan, np.float32))


def merge(cube: PlateCube, rows: ReadoutRows, wells: list[Well] | None = None) -> PlateCube:
    """A new cube with ``rows`` written in (replacing the same well x time key). New wells
    and new time keys grow the arrays; rows of a well the cube does not know are ignored
    unless ``wells`` lists it."""
    if wells is not None:
        known = {w.id for w in cube.wells}
        extra = [w for w in wells if w.id not in known]
        if extra:
            cube = _grow_wells(cube, extra)
    classes = cube.classes or rows.classes
    if len(rows) and rows.classes and tuple(rows.classes) != tuple(classes):
        raise ValueError(f"readouts with classes {rows.classes} cannot join a cube of {classes}")
    if cube.classes != classes:
        cube = empty_cube(list(cube.wells), cube.plate_format, classes)
    if not len(rows):
        return cube
    keys = np.union1d(cube.time_keys, rows.time_key)
    if len(keys) != len(cube.time_keys):
        cube = _grow_times(cube, keys)
    idx_of = {w.id: i for i, w in enumerate(cube.wells)}
    wi = np.array([idx_of.get(int(x), -1) for x in rows.well_id], np.int64)
    ok = wi >= 0
    wi = wi[ok]
    ti = np.searchsorted(cube.time_keys, rows.time_key[ok])
    arrays = {name: getattr(cube, name).copy() for name in
              ("has", "prob_mean", "prob_sd", "fraction", "n_images", "n_tiles", "n_qc_failed", "confidence")}
    arrays["n_ood"] = _ood(cube).copy()
    arrays["has"][wi, ti] = True
    for name in ("prob_mean", "prob_sd", "fraction"):
        arrays[name][wi, ti] = getattr(rows, name)[ok]
    for name in ("n_images", "n_tiles", "n_qc_failed", "confidence"):
        arrays[name][wi, ti] = getattr(rows, name)[ok]
    arrays["n_ood"][wi, ti] = rows.n_ood[ok] if rows.n_ood is not None else np.nan
    elapsed = _elapsed_per_key(cube.time_keys, cube.elapsed_h, rows.time_key[ok], rows.elapsed_h[ok])
    return replace(cube, elapsed_h=elapsed, **arrays)


def _elapsed_per_key(keys: np.ndarray, old: np.ndarray, row_keys: np.ndarray, row_h: np.ndarray) -> np.ndarray:
    """Each time key's hours: the mean over the new rows at that key, or the old value.
    Wells of one scan differ by minutes; one number per key keeps the x axis shared."""
    out = old.copy()
    finite = np.isfinite(row_h)
    if not finite.any():
        return out
    ti = np.searchsorted(keys, row_keys[finite])
    sums = np.bincount(ti, weights=row_h[finite], minlength=len(keys))
    counts = np.bincount(ti, minlength=len(keys))
    upd = counts > 0
    out[upd] = sums[upd] / counts[upd]
    return out


def _grow_times(cube: PlateCube, keys: np.ndarray) -> PlateCube:
    pos = np.searchsorted(keys, cube.time_keys)
    w, t = len(cube.wells), len(keys)

    def grown(a: np.ndarray, fill: object) -> np.ndarray:
        out = np.full((w, t) + a.shape[2:], fill, a.dtype)
        out[:, pos] = a
        return out

    elapsed = np.full(t, np.nan)
    elapsed[pos] = cube.elapsed_h
    return replace(cube, time_keys=keys.astype(np.int64), elapsed_h=elapsed, has=grown(cube.has, False),
                   prob_mean=grown(cube.prob_mean, np.nan), prob_sd=grown(cube.prob_sd, np.nan),
                   fraction=grown(cube.fraction, np.nan), n_images=grown(cube.n_images, 0),
                   n_tiles=grown(cube.n_tiles, 0), n_qc_failed=grown(cube.n_qc_failed, 0),
                   confidence=grown(cube.confidence, np.nan), n_ood=grown(_ood(cube), np.nan))


def _ood(cube: PlateCube) -> np.ndarray:
    """The cube's flag counts, NaN (no flag) for a cube built before they existed."""
    return cube.n_ood if cube.n_ood is not None else np.full(cube.has.shape, np.nan, np.float32)


def _grow_wells(cube: PlateCube, extra: list[Well]) -> PlateCube:
    n = len(extra)

    def grown(a: np.ndarray, fill: object) -> np.ndarray:
        return np.concatenate([a, np.full((n,) + a.shape[1:], fill, a.dtype)])

    return replace(cube, wells=cube.wells + tuple(extra), has=grown(cube.has, False),
                   prob_mean=grown(cube.prob_mean, np.nan), prob_sd=grown(cube.prob_sd, np.nan),
                   fraction=grown(cube.fraction, np.nan), n_images=grown(cube.n_images, 0),
                   n_tiles=grown(cube.n_tiles, 0), n_qc_failed=grown(cube.n_qc_failed, 0),
                   confidence=grown(cube.confidence, np.nan), n_ood=grown(_ood(cube), np.nan))


# --- readouts the plate map can colour by -----------------------------------------------
@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    fixed_range: tuple[float, float] | None  # None: scale to the data


def metrics_for(classes: tuple[str, ...]) -> list[Metric]:
    out = []
    if "neuron" in classes:
        out += [Metric("fraction:neuron", "Predicted neuron fraction", "share of tiles", (0.0, 1.0)),
                Metric("prob:neuron", "P(neuron)", "probability", (0.0, 1.0))]
    if "glia" in classes or any(c in classes for c in GLIA):
        out.append(Metric("prob:glia", "P(glia)", "probability", (0.0, 1.0)))
    out += [Metric(f"fraction:{c}", f"Fraction {c}", "share of tiles", (0.0, 1.0)) for c in classes if c != "neuron"]
    out += [Metric(f"prob:{c}", f"P({c})", "probability", (0.0, 1.0)) for c in classes
            if c not in ("neuron", "glia")]
    out += [Metric("confidence", "Confidence (mean top probability)", "probability", (0.0, 1.0)),
            Metric("qc_failed", "QC failures", "images", None),
            Metric("n_images", "Images scored", "images", None)]
    return out


def class_series(cube: PlateCube, which: str, cls: str) -> tuple[np.ndarray, np.ndarray]:
    """(value, sd across fields) as W x T for one class or for 'glia' (astrocyte +
    oligodendrocyte on a 4-class model; its sd is the root sum of squares of the two sds,
    which ignores their covariance: the band is a guide, the CSV keeps the raw numbers)."""
    arr = cube.prob_mean if which == "prob" else cube.fraction
    sd = cube.prob_sd if which == "prob" else np.zeros_like(cube.fraction)
    if cls in cube.classes:
        i = cube.classes.index(cls)
        return arr[:, :, i], sd[:, :, i]
    if cls == "glia":
        idx = [cube.classes.index(c) for c in GLIA if c in cube.classes]
        if idx:
            return arr[:, :, idx].sum(axis=2), np.sqrt((sd[:, :, idx] ** 2).sum(axis=2))
    raise KeyError(f"class {cls!r} is not in this model's classes {cube.classes}")


def metric_series(cube: PlateCube, key: str) -> np.ndarray:
    """W x T float values of one readout; NaN where the well has no readout at that time."""
    if key.startswith(("prob:", "fraction:")):
        which, cls = key.split(":", 1)
        return class_series(cube, which, cls)[0].astype(np.float64)
    if key == "confidence":
        return cube.confidence.astype(np.float64)
    if key == "qc_failed":
        return np.where(cube.has, cube.n_qc_failed, np.nan)
    if key == "n_images":
        return np.where(cube.has, cube.n_images, np.nan)
    raise KeyError(key)


def metric_at(cube: PlateCube, key: str, t: int) -> np.ndarray:
    """W values at time index ``t`` (a slider step is this one array index)."""
    if cube.n_times == 0:
        return np.full(len(cube.wells), np.nan)
    return metric_series(cube, key)[:, t] if key.startswith(("qc_", "n_")) else _fast_at(cube, key, t)


def _fast_at(cube: PlateCube, key: str, t: int) -> np.ndarray:
    if key == "confidence":
        return cube.confidence[:, t].astype(np.float64)
    which, cls = key.split(":", 1)
    arr = cube.prob_mean if which == "prob" else cube.fraction
    if cls in cube.classes:
        return arr[:, t, cube.classes.index(cls)].astype(np.float64)
    idx = [cube.classes.index(c) for c in GLIA if c in cube.classes]
    if cls == "glia" and idx:
        return arr[:, t][:, idx].sum(axis=1).astype(np.float64)
    raise KeyError(key)


# --- conditions ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ConditionSeries:
    condition: str
    wells: tuple[str, ...]
    mean: np.ndarray  # T, NaN where no replicate has data
    sd: np.ndarray  # T, sample sd across replicate wells (0 with one replicate)
    n: np.ndarray  # T, replicates with data


def condition_series(cube: PlateCube, values: np.ndarray) -> list[ConditionSeries]:
    """Mean and sd across replicate wells of each condition, per time point; ``values`` is
    W x T (e.g. ``metric_series``). Wells without a condition are grouped as '(none)'."""
    groups: dict[str, list[int]] = {}
    for i, w in enumerate(cube.wells):
        groups.setdefault(w.condition or "(none)", []).append(i)
    out = []
    for cond in sorted(groups):
        idx = groups[cond]
        v = values[idx]
        n = np.isfinite(v).sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(n > 0, np.nansum(v, axis=0) / np.maximum(n, 1), np.nan)
            dev = np.where(np.isfinite(v), v - mean, 0.0)
            sd = np.where(n > 1, np.sqrt((dev ** 2).sum(axis=0) / np.maximum(n - 1, 1)), np.where(n == 1, 0.0, np.nan))
        out.append(ConditionSeries(cond, tuple(cube.wells[i].name for i in idx), mean, sd, n))
    return out


def nearest_time(cube: PlateCube, hours: float) -> int:
    """Index of the time point closest to ``hours`` (the slider keeps its place across reloads)."""
    if cube.n_times == 0:
        return 0
    e = np.where(np.isfinite(cube.elapsed_h), cube.elapsed_h, np.inf)
    return int(np.argmin(np.abs(e - hours)))


def flagged_over(cube: PlateCube, idx: list[int]) -> np.ndarray | None:
    """T: images flagged out of distribution in these wells at each time point (what a call
    over them leaves out); None when the model gives no flag."""
    if cube.n_ood is None or not np.isfinite(cube.n_ood[idx]).any():
        return None
    return np.nansum(cube.n_ood[idx], axis=0)


def mean_over_wells(cube: PlateCube, wells: list[str] | tuple[str, ...], which: str = "prob") -> np.ndarray:
    """T x K class probabilities (or fractions) averaged over some wells, ignoring wells
    without data at a time point: the input of a condition's confident call."""
    idx = [cube.well_index(w) for w in wells]
    v = (cube.prob_mean if which == "prob" else cube.fraction)[idx]
    n = np.isfinite(v).sum(axis=0)
    with np.errstate(invalid="ignore"):
        return np.where(n > 0, np.nansum(v, axis=0) / np.maximum(n, 1), np.nan)


def well_tooltip(cube: PlateCube | None, well: str, t: int, condition: str | None, metric_label: str,
                 value: float | None) -> str:
    """The plate map's hover text for ``well`` at time index ``t``: the coloured metric's
    value, every class's probability and tile fraction, and what the readout rests on."""
    cond = condition or "no condition in the plate map"
    if cube is None or cube.n_times == 0:
        return f"<b>{well}</b> — {cond}<br>no readouts yet"
    i = cube.well_index(well)
    if not cube.has[i, t]:
        return f"<b>{well}</b> — {cond}<br>no readout at {cube.time_label(t)}"
    probs = " ".join(f"{c} {cube.prob_mean[i, t, k]:.2f}" for k, c in enumerate(cube.classes))
    frac = " ".join(f"{c} {cube.fraction[i, t, k]:.2f}" for k, c in enumerate(cube.classes))
    return (f"<b>{well}</b> — {cond}<br>{cube.time_label(t)}: {metric_label} = "
            f"{'no data' if value is None else f'{value:.3g}'}<br>P: {probs}<br>fraction of tiles: {frac}<br>"
            f"{cube.n_images[i, t]} images, {cube.n_tiles[i, t]} tiles, {cube.n_qc_failed[i, t]} QC failed, "
            f"confidence {cube.confidence[i, t]:.2f}{_ood_note(cube, i, t)}")


def _ood_note(cube: PlateCube, i: int, t: int) -> str:
    if cube.n_ood is None or not np.isfinite(cube.n_ood[i, t]):
        return "<br>out-of-distribution flag unavailable for this model"
    n = int(cube.n_ood[i, t])
    return (f"<br><b>{n} of {cube.n_images[i, t]} images unlike the training data: this readout means "
            "little and is left out of calls</b>") if n else ""
