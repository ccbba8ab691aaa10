"""How well could any reader score against the evaluation protocol's well labels? The ceiling
set by the labels themselves, measured on the simulator's ground truth.

The protocol judges a well against its condition's dominant fate (``well`` label mode). What a
well holds differs: plate efficiency, each well's own draw, and fate-specific division and death
move its live cells away from the recipe. This script gives every well the best reading no image
can beat: the true fate shares of its live cells at each hour (the export's per-tile counts,
averaged over the well's tiles), mapped to a label (a) by their majority (binary: neuron against
astrocyte + oligodendrocyte) and (b) by a logistic regression on those shares fitted on the
training export's wells at that hour. A reader of images can only approach these figures.

    python benchmarks/label_ceiling.py --train data/train --test data/test-recipes \\
        --test data/test-doses --test data/test-mixtures --json label_ceiling.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from nscmonitor.core.domain import MULTICLASS
from nscmonitor.training import data as D


def wells(export: str, scheme: str, label_mode: str = "well") -> list[dict]:
    """Per well: its label, condition, and its live cells' fate shares per hour."""
    recs, _ = D.discover(export, label_mode)
    recs, _ = D.for_scheme(recs, scheme)
    out: dict[tuple, dict] = defaultdict(lambda: {"shares": defaultdict(list)})
    for r in recs:
        w = out[r.well_key]
        w["label"], w["condition"], w["export"] = r.label, r.condition, Path(export).name
        w["shares"][float(r.elapsed_h)].append([r.fractions.get(c, 0.0) for c in MULTICLASS])
    return list(out.values())


def shares_at(ws: list[dict], h: float) -> np.ndarray:
    return np.array([np.mean(w["shares"][h], axis=0) for w in ws])


def majority(sh: np.ndarray, scheme: str) -> np.ndarray:
    if scheme == "binary":
        return np.where(sh[:, 0] >= sh[:, 1] + sh[:, 2], "neuron", "glia")
    return np.array([MULTICLASS[i] for i in sh.argmax(axis=1)])


def ceiling(train: str, tests: list[str], scheme: str, label_mode: str = "well") -> dict:
    from sklearn.linear_model import LogisticRegression

    tr = wells(train, scheme, label_mode)
    te = [w for t in tests for w in wells(t, scheme, label_mode)]
    hours = sorted(set.intersection(*(set(w["shares"]) for w in te + tr)))
    rows = {}
    for h in hours:
        y = np.array([w["label"] for w in te])
        sh = shares_at(te, h)
        maj = majority(sh, scheme)
        lr = LogisticRegression(C=10, max_iter=5000, class_weight="balanced").fit(
            np.log(shares_at(tr, h) + 0.02), [w["label"] for w in tr]).predict(np.log(sh + 0.02))
        by_export = {}
        for name in sorted({w["export"] for w in te}):
            sel = np.array([w["export"] == name for w in te])
            by_export[name] = {"wells": int(sel.sum()), "majority": float(np.mean(maj[sel] == y[sel]))}
        rows[f"{h:g} h"] = {"wells": len(te), "majority": float(np.mean(maj == y)),
                            "lr": float(np.mean(lr == y)),
                            "lr_balanced": float(np.mean([np.mean(lr[y == c] == c) for c in sorted(set(y))])),
                            "by_export": by_export,
                            "majority_wrong_by_condition": dict(sorted(
                                {c: int(np.sum((maj != y) & (np.array([w["condition"] for w in te]) == c)))
                                 for c in {w["condition"] for w in te}}.items()))}
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", required=True, help="training tiles export (for the regression)")
    ap.add_argument("--test", action="append", required=True, help="held-out test export (repeat)")
    ap.add_argument("--schemes", default="multiclass,binary")
    ap.add_argument("--json", help="write every row here")
    ap.add_argument("--label-mode", choices=("well", "endpoint"), default="well",
                    help="the label judged against: the condition's dominant fate (the protocol's, default) or "
                         "the majority of the well's live cells at its last scan (an end-point stain)")
    a = ap.parse_args(argv)
    out = {s: ceiling(a.train, a.test, s, a.label_mode) for s in a.schemes.split(",") if s}
    for scheme, rows in out.items():
        print(f"| {scheme}: hour | wells | majority of live cells | regression on true shares (balanced) | "
              "majority by test export |")
        print("|---|---|---|---|---|")
        for h, r in rows.items():
            per = ", ".join(f"{k} {v['majority']:.2f}" for k, v in r["by_export"].items())
            print(f"| {h} | {r['wells']} | {r['majority']:.2f} | {r['lr']:.2f} ({r['lr_balanced']:.2f}) | {per} |")
        print()
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
