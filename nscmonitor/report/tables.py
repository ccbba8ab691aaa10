"""The experiment's readouts as per-plate grids (time point x well), the shape the wide sheet,
the Prism table and the HTML report all start from.

Built from the store's read side (``Repo.readouts``) for one model version, so every export
and the report show the very numbers of the tidy CSV. A readout names one number per well
and time point: ``prob:<class>`` (mean over the well's fields, with the sd across fields) or
``fraction:<class>`` (share of the well's tiles predicted as that class).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from nscmonitor.core.errors import UserFacingError
from nscmonitor.report.export import choose_version
from nscmonitor.store.reads import Repo


@dataclass(frozen=True)
class WellInfo:
    name: str
    row: int
    col: int
    condition: str | None
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PlateGrid:
    """One plate, one model version. Arrays are T x W (time points x wells), NaN = no data."""

    experiment: str
    plate: str
    model_version: str
    classes: tuple[str, ...]
    wells: tuple[WellInfo, ...]
    time_keys: np.ndarray  # T
    elapsed_h: np.ndarray  # T: the scan's start (earliest well) in hours since induction
    acquired_at: tuple[datetime | None, ...]  # T: the scan's start
    prob_mean: np.ndarray  # T x W x K
    prob_sd: np.ndarray  # T x W x K
    fraction: np.ndarray  # T x W x K
    n_images: np.ndarray  # T x W (0 = no readout)
    n_qc_failed: np.ndarray  # T x W
    #: T x W images flagged out of distribution (NaN: no flag from the model, or no readout)
    n_ood: np.ndarray | None = None

    @property
    def attribute_names(self) -> list[str]:
        names: list[str] = []
        for w in self.wells:
            names.extend(k for k in w.attributes if k not in names)
        return names

    def readouts(self) -> list[str]:
        return [f"prob:{c}" for c in self.classes] + [f"fraction:{c}" for c in self.classes]

    def values(self, readout: str) -> tuple[np.ndarray, np.ndarray | None]:
        """(T x W values, T x W sd or None when the readout has no sd)."""
        kind, _, cls = readout.partition(":")
        if cls not in self.classes or kind not in ("prob", "fraction"):
            raise UserFacingError(f"unknown readout {readout!r} (have: {', '.join(self.readouts())})")
        k = self.classes.index(cls)
        if kind == "prob":
            return self.prob_mean[:, :, k], self.prob_sd[:, :, k]
        return self.fraction[:, :, k], None


def readout_label(readout: str) -> str:
    kind, _, cls = readout.partition(":")
    return f"P({cls}), mean over fields" if kind == "prob" else f"fraction of tiles predicted {cls}"


def readout_slug(readout: str) -> str:
    kind, _, cls = readout.partition(":")
    return f"{kind}_" + "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in cls)


def plate_grids(repo: Repo, experiment_id: int, version: str) -> list[PlateGrid]:
    """All plates of the experiment for one model version, wells in plate order (row, column)."""
    attrs = repo.well_attributes(experiment_id)
    by_plate: dict[str, list] = {}
    for ro in repo.readouts(experiment_id, version):
        by_plate.setdefault(ro.plate, []).append(ro)
    grids = []
    for plate in sorted(by_plate):
        ros = by_plate[plate]
        classes = next((ro.classes for ro in ros if ro.classes), ())
        wells: dict[str, WellInfo] = {}
        for ro in sorted(ros, key=lambda r: (r.row, r.col)):
            wells.setdefault(ro.well, WellInfo(ro.well, ro.row, ro.col, ro.condition, attrs.get((plate, ro.well), {})))
        keys = np.array(sorted({ro.timepoint for ro in ros}), np.int64)
        t_of = {int(t): i for i, t in enumerate(keys)}
        w_of = {name: i for i, name in enumerate(wells)}
        T, W, K = len(keys), len(wells), len(classes)
        pm, ps, fr = (np.full((T, W, K), np.nan) for _ in range(3))
        n_img = np.zeros((T, W), np.int64)
        n_qc = np.zeros((T, W), np.int64)
        n_ood = np.full((T, W), np.nan)
        elapsed = np.full(T, np.nan)
        acquired: list[datetime | None] = [None] * T
        for ro in ros:
            t, w = t_of[ro.timepoint], w_of[ro.well]
            n_img[t, w], n_qc[t, w] = ro.n_images, ro.n_qc_failed
            n_ood[t, w] = np.nan if ro.n_ood is None else ro.n_ood
            if ro.elapsed_h is not None and not (elapsed[t] <= ro.elapsed_h):
                elapsed[t] = ro.elapsed_h
            if ro.acquired_at is not None and (acquired[t] is None or ro.acquired_at < acquired[t]):
                acquired[t] = ro.acquired_at
            if ro.n_images > 0 and len(ro.prob_mean) == K:
                pm[t, w], fr[t, w] = ro.prob_mean, ro.fraction
                if len(ro.prob_sd) == K:
                    ps[t, w] = [np.nan if v is None else v for v in ro.prob_sd]
        grids.append(PlateGrid(ros[0].experiment, plate, version, tuple(classes), tuple(wells.values()), keys, elapsed,
                               tuple(acquired), pm, ps, fr, n_img, n_qc, n_ood))
    return grids


def experiment_grids(repo: Repo, experiment: str, model_version: str | None = None,
                     active=None) -> tuple[int, str | None, list[PlateGrid]]:
    """(experiment id, version used, grids): the same experiment lookup and version choice as
    the tidy export."""
    exp_id = repo.experiment_id(experiment)
    if exp_id is None:
        names = ", ".join(e.name for e in repo.experiments()) or "none"
        raise UserFacingError(f"no experiment named {experiment!r} in the database (have: {names})")
    version = choose_version(repo, exp_id, model_version, active)
    return exp_id, version, plate_grids(repo, exp_id, version) if version else []
