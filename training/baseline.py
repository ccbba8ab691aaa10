"""The classical baseline under the evaluation protocol, beside the models.

The simulator's baseline (``nscmonitor.simulate.baseline``: logistic regression on a dozen
texture features per tile) is fitted here the way a model is trained: on the training split
that training draws with the same seed (whole plates kept out for validation and test), in
the same scheme and label mode, pooled over hours (a tile classifier without a time input,
like the CNNs), and judged by the same protocol on the same test tiles. A model that does not
clearly beat it has learned little beyond texture statistics. Needs scikit-learn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nscmonitor.training import data as D
from nscmonitor.training import splits as S


def tile_features_of(records: Sequence[D.TileRecord]) -> np.ndarray:
    """Texture features of each record's image, read once per file through the daemon's
    reader (a tiles export: one tile per file)."""
    from nscmonitor.core.texture import tile_features

    cache: dict[tuple, np.ndarray] = {}
    out = []
    for r in records:
        key = (r.path, r.channel)
        if key not in cache:
            cache[key] = tile_features(D.read_image(r.path, channel=r.channel))
        out.append(cache[key])
    return np.asarray(out, np.float64)


def baseline_probs(train: Sequence[D.TileRecord], test: Sequence[D.TileRecord], classes: Sequence[str]) -> np.ndarray:
    """Fit on ``train``, return test probabilities in ``classes`` order (a class training
    lacked gets probability 0)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    index = {c: i for i, c in enumerate(classes)}
    y = np.asarray([index[r.label] for r in train])
    if len(set(y.tolist())) < 2:
        raise D.DataError("the baseline needs at least two classes in the training split")
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=2000, class_weight="balanced"))
    model.fit(tile_features_of(train), y)
    p = model.predict_proba(tile_features_of(test))
    out = np.zeros((len(test), len(classes)))
    out[:, model.classes_] = p
    return out


def baseline_evaluation(train_data: str | Path, test_data: Sequence[str | Path], *, scheme: str,
                        label_mode: str = "well", split: str = "test", seed: int = 0,
                        min_train_h: float | None = None, train_conditions_from: Sequence[str] | None = None,
                        plate_draws: dict[str, dict] | None = None, bootstrap_seed: int = 0,
                        n_boot: int | None = None) -> dict[str, Any]:
    """The baseline's protocol report (as ``evaluate_model``'s ``protocol``) and what it was fitted on."""
    from nscmonitor.training.evaluate import held_out_records
    from nscmonitor.training.intervals import N_BOOT
    from nscmonitor.training.protocol import protocol_report

    classes = list(D.scheme_classes(scheme))
    records, _ = D.discover(train_data, label_mode)
    records, _ = D.for_scheme(records, scheme)
    records = S.assign_splits(records, seed=seed)
    train = [r for r in records if r.split == "train" and (min_train_h is None or r.elapsed_h is None
                                                           or r.elapsed_h >= min_train_h)]
    test, used = held_out_records(list(test_data), label_mode, scheme, split)
    probs = baseline_probs(train, test, classes)
    y = np.asarray([classes.index(r.label) for r in test])
    conditions = train_conditions_from or sorted({r.condition for r in train if r.condition}) or None
    return {"model": "baseline: logistic regression on tile texture features, pooled over hours",
            "train_data": str(train_data), "train_tiles": len(train), "seed": seed, "split": used,
            "scheme": scheme, "label_mode": label_mode,
            "protocol": protocol_report(probs, y, test, classes, train_conditions=conditions,
                                        plate_draws=plate_draws, seed=bootstrap_seed, n_boot=n_boot or N_BOOT)}
