"""A classical baseline on simulated tiles: is the fate signal there, and does it grow?

Logistic regression on a dozen texture/shape features per tile, trained per time point on
train+val wells and scored on held-out test wells. Balanced accuracy is reported because
the classes are unbalanced (chance = 1 / number of classes present). Run it to refresh the
table in the docs::

    python -m nscmonitor.simulate.baseline --out docs/baseline.md

Needs scikit-learn (a dev/train extra, imported only here).
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from nscmonitor.core.texture import tile_features


def _truths(root: Path, truth: str, scheme: str):
    """tiles.csv row -> label under ``truth`` and ``scheme`` (None: the row has no answer)."""
    import json

    from nscmonitor.simulate.culture import export_conditions

    if truth not in ("tile", "well") or scheme not in ("multiclass", "binary"):
        raise ValueError(f"truth must be tile|well and scheme multiclass|binary, not {truth!r}/{scheme!r}")
    meta = json.loads((root / "tiles.json").read_text(encoding="utf-8")) if (root / "tiles.json").is_file() else {}
    conds = export_conditions(meta.get("conditions"))

    def label(row: dict) -> str | None:
        if truth == "well":
            cond = conds[row["condition"]]
            return cond.label if scheme == "multiclass" else cond.binary
        lab = row["label"]
        if scheme == "multiclass":
            return lab
        return None if lab == "undifferentiated" else ("neuron" if lab == "neuron" else "glia")

    return label


def _features_by_hour(root: Path, label_of) -> dict[float, list[tuple[np.ndarray, str, str, tuple]]]:
    """Each labelled tile's features, label, split and (plate, well), grouped by hour; tiles
    without an answer under the chosen truth are left out."""
    import tifffile

    by_hour: dict[float, list[tuple[np.ndarray, str, str, tuple]]] = defaultdict(list)
    with open(root / "tiles.csv", newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            lab = label_of(r)
            if lab is None:
                continue
            by_hour[float(r["elapsed_h"])].append(
                (tile_features(tifffile.imread(root / r["path"])), lab, r["split"], (r["plate"], r["well"])))
    return by_hour


def _test_scores(model, te: list[tuple[np.ndarray, str, tuple]]) -> dict:
    """Tile and well scores of a fitted model on one hour's test tiles (features, label,
    well); a well's call is the mean class probability over its tiles."""
    from sklearn.metrics import balanced_accuracy_score, recall_score

    xte, yte = np.array([f for f, _, _ in te]), [y for _, y, _ in te]
    pred = model.predict(xte)
    classes = sorted(set(yte))
    rec = recall_score(yte, pred, labels=classes, average=None, zero_division=0)
    proba = model.predict_proba(xte)
    wells: dict[tuple, list[int]] = defaultdict(list)
    for i, (_, _, w) in enumerate(te):
        wells[w].append(i)
    w_true = [Counter(yte[i] for i in idx).most_common(1)[0][0] for idx in wells.values()]
    w_pred = [model.classes_[int(proba[idx].mean(axis=0).argmax())] for idx in wells.values()]
    return {
        "n_test": len(te),
        "accuracy": float(np.mean(pred == np.array(yte))),
        "balanced_accuracy": float(balanced_accuracy_score(yte, pred)),
        "chance": 1.0 / len(classes), "recall": dict(zip(classes, (float(v) for v in rec))),
        "n_test_wells": len(w_true), "well_accuracy": float(np.mean(np.array(w_pred) == np.array(w_true))),
        "well_balanced_accuracy": float(balanced_accuracy_score(w_true, w_pred)),
    }


def evaluate(tiles_dir: str | Path, *, truth: str = "tile", scheme: str = "multiclass",
             pooled_from: float | None = None) -> list[dict]:
    """Per time point: n_train, n_test, accuracy, balanced accuracy, chance, per-class recall
    (tiles), and the well-level accuracy of the mean probability over a well's test tiles.

    ``truth="tile"`` labels a tile with the majority fate of its cells; ``"well"`` with its
    well's fate (the condition's dominant class, or neuron vs glia for ``scheme="binary"``),
    the truth the ResNet models are trained and judged on (docs/training.md).

    By default one classifier is fitted per time point, so it is told the hour. With
    ``pooled_from`` one classifier is fitted on every train/val tile from that hour on and
    scored per time point: the information a tile classifier without a time input has."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    root = Path(tiles_dir)
    by_hour = _features_by_hour(root, _truths(root, truth, scheme))

    def fit(items: list) -> object:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=2000, class_weight="balanced"))
        return model.fit(np.array([f for f, _, _, _ in items]), [y for _, y, _, _ in items])

    pooled, n_pooled = None, 0
    if pooled_from is not None:
        train = [it for h, items in by_hour.items() if h >= pooled_from for it in items if it[2] != "test"]
        pooled, n_pooled = fit(train), len(train)
    rows = []
    for hour in sorted(by_hour):
        items = by_hour[hour]
        tr = [(f, y) for f, y, s, _ in items if s != "test"]
        te = [(f, y, w) for f, y, s, w in items if s == "test"]
        if not tr or not te or len({y for _, y in tr}) < 2:
            continue
        model = pooled or fit([it for it in items if it[2] != "test"])
        rows.append({"elapsed_h": hour, "n_train": n_pooled if pooled else len(tr), **_test_scores(model, te)})
    return rows


def markdown(rows: list[dict], command: str, params: str) -> str:
    classes = sorted({c for r in rows for c in r["recall"]})
    head = (["elapsed h", "train tiles", "test tiles", "accuracy", "balanced acc.", "chance"]
            + [f"recall {c}" for c in classes] + ["test wells", "well acc.", "well balanced acc."])
    lines = ["# Classical baseline on simulated tiles", "",
             "Logistic regression on 15 texture features per tile (`nscmonitor/simulate/baseline.py`), trained "
             "on train+val wells (per time point unless the parameters below say pooled), scored on held-out "
             "test wells (a whole plate). Balanced "
             "accuracy: mean per-class recall; chance = 1 / classes present. The fate signal is "
             "near-invisible at 0 h by construction and grows with commitment s(t). Well level: the mean "
             "class probability over a well's test tiles at that time point.", "",
             f"Generated by `{command}` ({params}).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"{r['elapsed_h']:g}", str(r["n_train"]), str(r["n_test"]), f"{r['accuracy']:.2f}",
                 f"{r['balanced_accuracy']:.2f}", f"{r['chance']:.2f}"]
        cells += [f"{r['recall'].get(c, float('nan')):.2f}" for c in classes]
        cells += [str(r["n_test_wells"]), f"{r['well_accuracy']:.2f}", f"{r['well_balanced_accuracy']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from nscmonitor.simulate.labelled_tiles import export_tiles

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/baseline.md")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--plates", type=int, default=2)
    ap.add_argument("--wells-per-condition", type=int, default=6)
    ap.add_argument("--data", help="an existing tiles export (e.g. a training run's) instead of rendering one")
    ap.add_argument("--truth", choices=("tile", "well"), default="tile",
                    help="tile: majority fate of the tile's cells; well: the well's fate (as the models are trained)")
    ap.add_argument("--scheme", choices=("multiclass", "binary"), default="multiclass")
    ap.add_argument("--pooled-from", type=float, metavar="H",
                    help="one classifier for all tiles from H hours on instead of one per time point")
    args = ap.parse_args(argv)
    hours = (0, 12, 24, 48, 72, 96, 120)
    t0 = time.perf_counter()
    command = "python -m nscmonitor.simulate.baseline " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.data:
        rows = evaluate(args.data, truth=args.truth, scheme=args.scheme, pooled_from=args.pooled_from)
        fitted = "one classifier per time point" if args.pooled_from is None else \
            f"one classifier for all tiles from {args.pooled_from:g} h"
        params = f"export {args.data}, {args.truth} truth, {args.scheme}, {fitted}, {time.perf_counter() - t0:.0f} s"
    else:
        with tempfile.TemporaryDirectory() as tmp:
            export_tiles(tmp, plates=args.plates, hours=hours, seed=args.seed,
                         wells_per_condition=args.wells_per_condition)
            rows = evaluate(tmp, truth=args.truth, scheme=args.scheme, pooled_from=args.pooled_from)
        params = (f"seed {args.seed}, {args.plates} plates, {args.wells_per_condition} wells per condition x 5 "
                  f"conditions, 1 field, 2x2 tiles of 224 px at 1.24 um/px, {args.truth} truth, {args.scheme}, "
                  f"{time.perf_counter() - t0:.0f} s")
    Path(args.out).write_text(markdown(rows, command.strip(), params), encoding="utf-8")
    print(Path(args.out).read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
