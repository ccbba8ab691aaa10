"""A training run's settings and data: ``TrainConfig`` (every knob, from defaults, a TOML file
and overrides) and the train/val/test splits loaded into memory once (``prepare_data``)."""

from __future__ import annotations

import dataclasses
import logging
import tomllib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nscmonitor.core.errors import UserFacingError
from nscmonitor.training import data as D
from nscmonitor.training import splits as S
from nscmonitor.training.transforms import AugmentConfig

log = logging.getLogger("nscmonitor.training")


@dataclass
class TrainConfig:
    """Every knob of a run; the resolved copy is saved as RUN_DIR/config.json."""

    data: str = ""
    out: str = ""
    scheme: str = "binary"
    arch: str = "resnet50"
    image_size: int | None = None
    tile_size: int | None = None
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.05
    balance: str = "weights"
    min_train_h: float | None = None
    label_mode: str = "well"
    patience: int = 6
    device: str = "auto"  # cuda when torch sees a GPU (distributed.resolve_device)
    amp: bool = True
    channels_last: bool = True
    threads: int = 0
    weights: str | None = None
    resume: bool = False
    seed: int = 0
    val_frac: float = 0.15
    test_frac: float = 0.15
    export: bool = True
    progress: bool = True
    augment: dict[str, Any] = field(default_factory=dict)
    #: steps of int8-aware fine-tuning after the epochs (``training.int8_aware``; 0: none)
    int8_aware_steps: int = 0
    int8_aware_lr: float = 2e-5
    #: train on each well's end-point shares instead of its majority fate (multiclass only)
    soft_labels: bool = False
    #: at most this many training tiles (whole images, every plate's share) fit the OOD head's
    #: Gaussians (``training.ood.fit_subset``); 0: all of them
    ood_fit_tiles: int = 0

    def __post_init__(self) -> None:
        # read only after the epochs: a bad value would otherwise surface when the run is nearly done
        steps, lr = self.int8_aware_steps, self.int8_aware_lr
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise UserFacingError(f"int8_aware_steps must be a whole number >= 0, got {steps!r}")
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < 1:
            raise UserFacingError(f"int8_aware_lr must be a number between 0 and 1, got {lr!r}")
        cap = self.ood_fit_tiles
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
            raise UserFacingError(f"ood_fit_tiles must be a whole number >= 0 (0: every training tile), got {cap!r}")
        if not isinstance(self.soft_labels, bool):
            raise UserFacingError(f"soft_labels must be true or false, got {self.soft_labels!r}")
        if self.soft_labels and self.scheme != "multiclass":
            raise UserFacingError("soft_labels needs the multiclass scheme: a well's end-point shares are per fate")

    @classmethod
    def from_sources(cls, toml_path: str | None = None, **overrides: Any) -> "TrainConfig":
        """Defaults <- TOML file <- explicit overrides (None means 'not given')."""
        values: dict[str, Any] = {}
        if toml_path:
            try:
                with open(toml_path, "rb") as fh:
                    doc = tomllib.load(fh)
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise UserFacingError(f"cannot read training config {toml_path}: {exc}") from exc
            values.update(doc.get("train", doc))
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        unknown |= {f"augment.{k}" for k in values.get("augment", {})} - {
            f"augment.{f.name}" for f in dataclasses.fields(AugmentConfig)}
        if unknown:
            raise UserFacingError(f"unknown training setting(s): {', '.join(sorted(unknown))}")
        return cls(**values)


@dataclass
class Split:
    x: np.ndarray
    y: np.ndarray
    records: list
    #: per tile, the probabilities to learn (soft labels) instead of ``y``; None: ``y``
    soft: np.ndarray | None = None


def validation_of(splits: dict[str, Split]) -> dict[str, Any]:
    """Where validation sits (its own plate or the training plates, with the warning) and
    the conditions training saw, for config.json and metrics.json."""
    return S.split_summary({name: s.records for name, s in splits.items()})


def prepare_data(cfg: TrainConfig) -> tuple[dict[str, Split], D.DataInfo, list[str], str]:
    records, info = D.discover(cfg.data, cfg.label_mode)
    classes = list(D.scheme_classes(cfg.scheme))
    records, notes = D.for_scheme(records, cfg.scheme)
    for n in notes:
        log.warning("%s", n)
        print(f"note: {n}")
    records = S.assign_splits(records, val_frac=cfg.val_frac, test_frac=cfg.test_frac, seed=cfg.seed)
    validation = S.split_summary({s: [r for r in records if r.split == s] for s in D.SPLITS})
    if validation["warning"]:
        log.warning("%s", validation["warning"])
        print(f"warning: {validation['warning']}")
    dhash = D.data_hash(records)
    tile = cfg.tile_size or info.tile_size
    size = cfg.image_size or tile or 64
    splits = {}
    for name in D.SPLITS:
        recs = [r for r in records if r.split == name]
        if name == "train" and cfg.min_train_h is not None:
            recs = [r for r in recs if r.elapsed_h is None or r.elapsed_h >= cfg.min_train_h]
        x, y, tr = D.load_arrays(recs, classes, tile_size=tile, image_size=size, progress=cfg.progress,
                                 model_um=D.model_pixel_um(info.pixel_size_um, tile, size))
        # validation keeps the hard labels: early stopping and calibration judge the call
        soft = D.soft_targets(tr, classes) if cfg.soft_labels and name == "train" else None
        splits[name] = Split(x, y, tr, soft)
    if len(splits["train"].y) == 0 or len(splits["val"].y) == 0:
        raise D.DataError("need labelled tiles in both the train and val splits")
    cfg.image_size, cfg.tile_size = size, tile
    return splits, info, classes, dhash
