"""Train / val / test splits of labelled tiles: by well, never by tile, and by plate where
the plates allow it, so what the model is stopped, calibrated and judged on is never what
it trained on (``nscmonitor.training.data`` holds the records; this module only assigns)."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import replace

from nscmonitor.training.data import SPLITS, DataError, TileRecord


def assign_splits(records: Sequence[TileRecord], *, val_frac: float = 0.15, test_frac: float = 0.15,
                  seed: int = 0, respect_given: bool = True) -> list[TileRecord]:
    """Split by well, never by tile, so tiles of one well never sit on both sides.

    Validation drives early stopping and the temperature, so it must see what the test
    sees, a plate the model never trained on: with two or more plates a whole plate is kept
    out of training for validation. Three or more plates: whole plates go to test, val and
    train. Two plates: one trains, the other is split by well into val and test. One plate:
    wells are split (val then shares the plate with training; ``split_summary`` says so).
    A split column in the data wins for test if it is complete and consistent; its train and
    val are redrawn by plate when its val wells sit on training plates and another plate can
    take their place; with no val split, val is taken from train the same way."""
    if respect_given and records and all(r.split in SPLITS for r in records):
        check_splits(records)
        if val_frac > 0 and not any(r.split == "val" for r in records):
            train = assign_splits([r for r in records if r.split == "train"], val_frac=val_frac, test_frac=0,
                                  seed=seed, respect_given=False)
            return train + [r for r in records if r.split != "train"]
        return _val_on_own_plate(records, seed)
    plates = sorted({(r.experiment, r.plate) for r in records})
    if len(plates) == 2:
        return _two_plates(records, plates, val_frac=val_frac, test_frac=test_frac, seed=seed)
    by_plate = len(plates) >= 3
    group_of = (lambda r: (r.experiment, r.plate)) if by_plate else (lambda r: r.well_key)
    split_of = _draw(records, group_of, stratify=not by_plate, val_frac=val_frac, test_frac=test_frac,
                     rng=random.Random(seed))
    out = [replace(r, split=split_of[group_of(r)]) for r in records]
    check_splits(out)
    return out


def _draw(records: Sequence[TileRecord], group_of, *, stratify: bool, val_frac: float, test_frac: float,
          rng: random.Random) -> dict[tuple, str]:
    """Groups (wells or plates) -> split, shuffled per label stratum when ``stratify``."""
    groups: dict[tuple, str] = {}
    for r in records:
        groups.setdefault(group_of(r), r.label)
    strata: dict[str, list] = defaultdict(list)
    for g, lab in sorted(groups.items()):
        strata[lab if stratify else "all"].append(g)
    split_of = {}
    for members in strata.values():
        rng.shuffle(members)
        n = len(members)
        n_test = max(1, round(n * test_frac)) if test_frac > 0 and n >= 3 else 0
        n_val = max(1, round(n * val_frac)) if val_frac > 0 and n >= 2 else 0
        for i, g in enumerate(members):
            split_of[g] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return split_of


def _two_plates(records: Sequence[TileRecord], plates: list[tuple], *, val_frac: float, test_frac: float,
                seed: int) -> list[TileRecord]:
    """One plate trains; the other's wells are split into val and test (in the ratio of the
    two fractions, stratified by label), so neither is judged on a training plate."""
    rng = random.Random(seed)
    held = plates[rng.randrange(2)]
    held_recs = [r for r in records if (r.experiment, r.plate) == held]
    share = test_frac / (test_frac + val_frac) if test_frac + val_frac > 0 else 0.0
    split_of = _draw(held_recs, lambda r: r.well_key, stratify=True, val_frac=1 - share if val_frac > 0 else 0,
                     test_frac=share, rng=rng)
    rest = "val" if val_frac > 0 else "test"  # rounding can leave a well of the held plate undrawn
    out = [replace(r, split=(split_of[r.well_key].replace("train", rest)) if (r.experiment, r.plate) == held
                   else "train") for r in records]
    check_splits(out)
    return out


def _val_on_own_plate(records: Sequence[TileRecord], seed: int) -> list[TileRecord]:
    """Given train/val splits whose val wells share a plate with training are redrawn: the
    plate holding most val wells (ties drawn by ``seed``) becomes val as a whole, the other
    plates train; test stays as given. Unchanged when val already sits on its own plates or
    the train and val wells span a single plate."""
    plate = lambda r: (r.experiment, r.plate)  # noqa: E731
    fit = [r for r in records if r.split in ("train", "val")]
    train_plates = {plate(r) for r in fit if r.split == "train"}
    val_plates = {plate(r) for r in fit if r.split == "val"}
    if not (train_plates & val_plates) or len(train_plates | val_plates) < 2:
        return list(records)
    val_wells = Counter(plate(r) for r in {r.well_key: r for r in fit if r.split == "val"}.values())
    order = sorted(train_plates | val_plates)
    random.Random(seed).shuffle(order)
    held = max(order, key=lambda p: val_wells.get(p, 0))
    out = [replace(r, split="val" if plate(r) == held else "train") if r.split in ("train", "val") else r
           for r in records]
    check_splits(out)
    return out


def split_summary(records_by_split: dict[str, Sequence[TileRecord]]) -> dict:
    """Which plates each split holds, whether validation sits on a plate of its own, the
    conditions training saw (so an evaluation can name held-out conditions), and a warning
    when validation shares a plate with training (one plate given)."""
    plates = {s: sorted({"/".join(p for p in (r.experiment, r.plate) if p) for r in recs})
              for s, recs in records_by_split.items()}
    shared = sorted(set(plates.get("val", [])) & set(plates.get("train", [])))
    warning = None
    if shared:
        warning = (f"validation wells share plate(s) {', '.join(shared) or '(unnamed)'} with training: early "
                   "stopping and the temperature never see a plate shift (give two or more plates to keep "
                   "one out for validation)")
    return {"plates": plates, "val_held_out_plate": not shared and bool(plates.get("val")), "warning": warning,
            "train_conditions": sorted({r.condition for r in records_by_split.get("train", ()) if r.condition})}


def check_splits(records: Sequence[TileRecord]) -> None:
    where: dict[tuple, set] = defaultdict(set)
    for r in records:
        where[r.well_key].add(r.split)
    leaks = [k for k, s in where.items() if len(s) > 1]
    if leaks:
        raise DataError(f"{len(leaks)} wells appear in more than one split (e.g. {leaks[0]}); "
                        "splits must be by well")
