"""Plate-aware early reading and the time-aware well model, measured under the evaluation
protocol: wells as the unit, 95 % intervals, held-out test plates (one export each).

Compares, per scheme, at every hour (one readout per well):

- the per-hour classical baseline (``nscmonitor.simulate.baseline``: logistic regression on
  tile texture features, one classifier per hour, well = mean tile probability), raw;
- the same features pooled per well and time point, one classifier per hour, under each
  normalisation: none, the plate's induction scan (``plate0``), that and the well's own
  change since induction (``plate0+well0``), and (reference, not servable) a same-hour
  z-score over the plate's wells;
- the GRU well model (``training.temporal``) on ``plate0+well0`` sequences, one line per
  training seed, forecasting at each hour from the frames up to it;
- the mean of each three consecutive seeds' GRUs (``temporal.MeanLogits`` with one temperature
  on the validation wells: what ``train-forecast`` exports);
- for the binary question, beside the GRU trained on the binary labels, the multiclass GRUs
  read as neuron vs glia (``temporal.BinaryFromMulticlass``: what ``train-forecast --scheme
  binary`` exports where the labels name the four fates).

Per-hour classifiers fit on the training export's train and val wells; the GRU trains on
train wells and stops and calibrates on the validation plate. Writes OUT/well_forecast.json
and prints markdown tables; with ``--export`` also writes OUT/forecast-SCHEME.onnx (seed 0).

Earliest confident calls (``training.calls``: the rule chosen on the validation wells, each
test well's first call under it) for the GRU, which reads each well's history, beside the
per-hour classifier on the same features, which reads only the frame at t (for its rule, a
copy fitted on the train wells alone scores the validation wells).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from nscmonitor.scoring import well_sequence as WS
from nscmonitor.training import data as D
from nscmonitor.training import splits as S
from nscmonitor.training import well_frames as WF
from nscmonitor.training.evaluate import held_out_records
from nscmonitor.training.forecast_train import call_wells, earliest_calls
from nscmonitor.training.protocol import protocol_report

N_TEXTURE = 15  # the simulator baseline's features come first in the model's vector
ROWS = ("12 h", "24 h", "36 h", "48 h", "72 h", "from 48 h")


def features(records, cache: Path) -> np.ndarray:
    if cache.is_file():
        z = np.load(cache, allow_pickle=False)
        if list(z["paths"]) == [r.path for r in records]:
            return z["feats"]
    f = WF.tile_feature_table(records)
    np.savez(cache, feats=f, paths=np.asarray([r.path for r in records]))
    return f


def per_hour_lr(train_x: list[np.ndarray], train_y, test_x: list[np.ndarray], k: int) -> list[np.ndarray]:
    """One logistic regression per hour (the sequences' last column) fitted on the training
    wells' frames at that hour; each test frame is scored by its hour's classifier."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rows = [(s[t, :-1], s[t, -1], y) for s, y in zip(train_x, train_y) for t in range(len(s))]
    out = [np.zeros((len(s), k)) for s in test_x]
    for h in sorted({round(float(r[1]), 6) for r in rows}):
        tr = [(f, y) for f, hh, y in rows if round(float(hh), 6) == h]
        if len({y for _, y in tr}) < 2:
            continue
        m = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=2000, class_weight="balanced"))
        m.fit(np.array([f for f, _ in tr]), [y for _, y in tr])
        for s, o in zip(test_x, out):
            for t in range(len(s)):
                if round(float(s[t, -1]), 6) == h:
                    o[t, m.classes_] = m.predict_proba(s[t:t + 1, :-1])[0]
    return out


def tile_baseline(tr_recs, tr_feats, te_recs, te_feats, classes) -> np.ndarray:
    """The simulator's per-hour baseline on tiles (probabilities per test tile)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    out = np.zeros((len(te_recs), len(classes)))
    ytr = np.array([classes.index(r.label) for r in tr_recs])
    htr, hte = np.array([r.elapsed_h for r in tr_recs]), np.array([r.elapsed_h for r in te_recs])
    for h in sorted(set(hte.tolist())):
        a, b = htr == h, hte == h
        if len(set(ytr[a].tolist())) < 2:
            continue
        m = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=2000, class_weight="balanced"))
        m.fit(tr_feats[a], ytr[a])
        out[np.ix_(b, m.classes_)] = m.predict_proba(te_feats[b])
    return out


def well_report(probs: list[np.ndarray], wells, classes, train_conditions, n_boot: int) -> dict:
    p = np.concatenate(probs)
    recs = [r for w in wells for r in w.records]
    y = np.array([classes.index(r.label) for r in recs])
    return protocol_report(p, y, recs, classes, train_conditions=train_conditions, n_boot=n_boot)


def summary(rep: dict) -> dict:
    """Pooled rows, and the same rows for the wells whose conditions training had."""
    keys = ("wells", "accuracy", "accuracy_ci", "balanced_accuracy", "balanced_accuracy_ci", "ece", "ece_ci")
    out = {}
    for group, prefix in (("pooled", ""), ("training conditions", "training conditions ")):
        g = rep["groups"].get(group, {})
        out.update({prefix + r: {k: g[r].get(k) for k in keys} for r in ROWS if r in g})
    return out


def run_scheme(a, scheme: str, out: Path) -> dict:
    import torch

    from nscmonitor.training import temporal as T
    from nscmonitor.training.forecast_train import MEMBERS

    classes = list(D.scheme_classes(scheme))
    recs, info = D.discover(a.train, a.label_mode)
    recs, _ = D.for_scheme(recs, scheme)
    recs = [r for r in S.assign_splits(recs, seed=0) if r.split in ("train", "val")]
    te, _ = held_out_records(a.test, a.label_mode, scheme, "all")
    ftr = features(recs, out / f"feats-train-{scheme}.npz")
    fte = features(te, out / f"feats-test-{scheme}.npz")
    w_tr, w_te = WF.wells_of(recs, ftr), WF.wells_of(te, fte)
    y_tr = [classes.index(w.label) for w in w_tr]
    conds = sorted({w.condition for w in w_tr})
    res: dict = {"scheme": scheme, "train_wells": len(w_tr), "test_wells": len(w_te), "methods": {}}
    tile_p = tile_baseline(recs, ftr[:, :N_TEXTURE], te, fte[:, :N_TEXTURE], classes)
    yte = np.array([classes.index(r.label) for r in te])
    res["methods"]["per-hour baseline (tiles, raw)"] = summary(
        protocol_report(tile_p, yte, te, classes, train_conditions=conds, n_boot=a.resamples))
    for norm in ("none", "plate0", "plate0+well0", "same-hour"):
        seq = WF.same_hour_plate_z if norm == "same-hour" else (lambda ws, n=norm: WF.sequences(ws, n))
        p = per_hour_lr(seq(w_tr), y_tr, seq(w_te), len(classes))
        res["methods"][f"per-hour LR, wells, {norm}"] = summary(well_report(p, w_te, classes, conds, a.resamples))
    norm = "plate0+well0"
    tr_s, te_s = WF.sequences(w_tr, norm), WF.sequences(w_te, norm)
    fit = [i for i, w in enumerate(w_tr) if w.split == "train"]
    val = [i for i, w in enumerate(w_tr) if w.split == "val"]
    y_te, w_val, y_val = [classes.index(w.label) for w in w_te], [w_tr[i] for i in val], [y_tr[i] for i in val]

    def calls(p_val: list[np.ndarray], p_te: list[np.ndarray]) -> dict:
        return earliest_calls(call_wells(p_val, w_val, y_val), call_wells(p_te, w_te, y_te), classes)

    collapsed: dict = {}
    res["calls"] = {f"per-hour LR, {norm} (frame at t only)": calls(
        per_hour_lr([tr_s[i] for i in fit], [y_tr[i] for i in fit], [tr_s[i] for i in val], len(classes)),
        per_hour_lr(tr_s, y_tr, te_s, len(classes)))}
    trained = []
    for seed in a.seeds:
        model, info_fit = T.train_gru([tr_s[i] for i in fit], [y_tr[i] for i in fit], [tr_s[i] for i in val],
                                      [y_tr[i] for i in val], len(classes), seed=seed, epochs=a.epochs)
        trained.append((seed, model, info_fit))
        p = T.step_probs(model, te_s, info_fit["temperature"])
        res["calls"][f"GRU {norm}, seed {seed}"] = calls(T.step_probs(model, [tr_s[i] for i in val],
                                                                      info_fit["temperature"]), p)
        res["methods"][f"GRU {norm}, seed {seed}"] = summary(well_report(p, w_te, classes, conds, a.resamples))
        res["methods"][f"GRU {norm}, seed {seed}"]["fit"] = info_fit
        add_calibrated_reference(res["methods"][f"GRU {norm}, seed {seed}"], p, w_te)
        if scheme == "multiclass":
            read = T.BinaryFromMulticlass(model, info_fit["temperature"], classes)
            collapsed.update(collapsed_binary(a, f"GRU {norm}, seed {seed}", T.step_probs(read, [tr_s[i] for i in val]),
                                              w_val, T.step_probs(read, te_s), w_te, conds))
        if a.export and seed == a.seeds[0]:
            meta = T.forecast_metadata(classes=classes, scheme=scheme, normalisation=norm, tile_px=info.tile_size,
                                       pixel_size_um=info.pixel_size_um, temperature=info_fit["temperature"],
                                       n_features=WS.MODEL_FEATURES, version=f"forecast-{scheme}-s{seed}",
                                       data_hash=D.data_hash(recs), metrics=summary(well_report(
                                           p, w_te, classes, conds, 200)))
            T.export_forecast(model, meta, out / f"forecast-{scheme}.onnx", te_s[:4])
    for k in range(0, len(trained) - MEMBERS + 1, MEMBERS):  # what train-forecast exports: seeds averaged
        group = trained[k:k + MEMBERS]
        ens = T.MeanLogits([m for _, m, _ in group])
        xv, mv = T._pad([tr_s[i] for i in val])
        t_ens = T.fit_temperature(ens, xv, mv, torch.as_tensor(y_val))
        name = f"mean of GRUs {norm}, seeds {'+'.join(str(sd) for sd, _, _ in group)}"
        p = T.step_probs(ens, te_s, t_ens)
        res["calls"][name] = calls(T.step_probs(ens, [tr_s[i] for i in val], t_ens), p)
        res["methods"][name] = summary(well_report(p, w_te, classes, conds, a.resamples))
        add_calibrated_reference(res["methods"][name], p, w_te)
        if scheme == "multiclass":
            read = T.BinaryFromMulticlass(ens, t_ens, classes)
            collapsed.update(collapsed_binary(a, name.removeprefix("mean of GRUs "), T.step_probs(
                read, [tr_s[i] for i in val]), w_val, T.step_probs(read, te_s), w_te, conds))
    if collapsed:
        res["binary from multiclass"] = collapsed
    return res


def collapsed_binary(a, label: str, val_q, w_val, te_q, w_te, conds: list[str]) -> dict:
    """The binary answer read off the multiclass GRU (``temporal.BinaryFromMulticlass``, what
    ``train-forecast --scheme binary`` serves) on the wells that have one: its well report under
    the protocol, and its earliest confident calls with the rule chosen on the validation
    wells' time courses, as for any forecast."""
    from dataclasses import replace

    from nscmonitor.training.forecast_train import answer_index

    bin_classes = list(D.BINARY)

    def keep(qs, ws):
        pairs = [(q, w, answer_index(w, bin_classes)) for q, w in zip(qs, ws)]
        return [(q, w, y) for q, w, y in pairs if y is not None]

    v, t = keep(val_q, w_val), keep(te_q, w_te)
    wt_bin = [replace(w, records=[replace(r, label=bin_classes[y]) for r in w.records]) for _, w, y in t]
    qt = [q for q, _, _ in t]
    rows = summary(well_report(qt, wt_bin, bin_classes, conds, a.resamples))
    add_calibrated_reference(rows, qt, wt_bin)
    calls = earliest_calls(call_wells([q for q, _, _ in v], [w for _, w, _ in v], [y for _, _, y in v]),
                           call_wells(qt, [w for _, w, _ in t], [y for _, _, y in t]), bin_classes)
    return {f"multiclass {label} read as binary": {"rows": rows, "calls": calls}}


def table(res: dict, row: str) -> str:
    def cell(d, k):
        v = d.get(row, {})
        if v.get(k) is None:
            return "-"
        ci = v.get(f"{k}_ci")
        return f"{v[k]:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{v[k]:.2f}"
    lines = [f"| method ({res['scheme']}, {row}) | wells | accuracy [95 % CI] | balanced accuracy [95 % CI] |",
             "|---|---|---|---|"]
    for name, d in res["methods"].items():
        lines.append(f"| {name} | {d.get(row, {}).get('wells', '-')} | {cell(d, 'accuracy')} | "
                     f"{cell(d, 'balanced_accuracy')} |")
    return "\n".join(lines)


def add_calibrated_reference(rows: dict, probs: list[np.ndarray], wells) -> None:
    """Beside each hour's ECE, the ECE a perfectly calibrated model with the same top-class
    confidences would show on as many wells (``evaluate.ece_if_calibrated``: median and 95th
    percentile), so a measured ECE can be read against its own noise floor."""
    from nscmonitor.training.evaluate import ece_if_calibrated

    conf = np.concatenate([q.max(axis=1) for q in probs])
    hours = np.concatenate([np.asarray(w.hours, np.float64) for w in wells])
    for row in ROWS:
        if row.endswith(" h") and row in rows and not row.startswith("from"):
            rows[row]["ece_if_calibrated"] = ece_if_calibrated(conf[hours == float(row.split()[0])])


def ece_table(res: dict) -> str:
    """Well-level ECE (15 confidence bins, one readout per well and hour) per method and row,
    with its 95 % well-bootstrap interval; the GRU's probabilities are after its temperature."""
    lines = [f"| well ECE ({res['scheme']}) | " + " | ".join(ROWS) + " |", "|---" * (len(ROWS) + 1) + "|"]
    for name, d in res["methods"].items():
        cells = []
        for row in ROWS:
            v = d.get(row, {})
            ci = v.get("ece_ci")
            ref = v.get("ece_if_calibrated")
            cells.append("-" if v.get("ece") is None else
                         f"{v['ece']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "") + f" (n = {v['wells']})"
                         + (f"; calibrated model {ref['median']:.3f} (p95 {ref['p95']:.3f})" if ref else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def calls_table(res: dict) -> str:
    """Per method: wells called, wrong calls (share of all wells), median hours to a call, and
    the same per condition."""
    lines = [f"| earliest confident call ({res['scheme']}) | rule | called / wells | wrong | median h | by condition: "
             "called/wells, wrong, median h |", "|---|---|---|---|---|---|"]
    for name, c in res.get("calls", {}).items():
        by = c["by_condition"]
        a = by["all"]
        med = "-" if a["median_h_to_call"] is None else f"{a['median_h_to_call']:g}"
        per = "; ".join(f"{k} {v['called']}/{v['wells']}, {v['wrong']}, "
                        f"{'-' if v['median_h_to_call'] is None else format(v['median_h_to_call'], 'g')}"
                        for k, v in by.items() if k != "all")
        lines.append(f"| {name} | p >= {c['rule']['threshold']:g} x {c['rule']['min_points']} | {a['called']} / "
                     f"{a['wells']} | {a['wrong']} ({a['wrong_frac']:.2f}) | {med} | {per} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", required=True, help="training tiles export (several plates)")
    ap.add_argument("--test", action="append", required=True, help="held-out test export (repeat)")
    ap.add_argument("--out", default="well-forecast")
    ap.add_argument("--schemes", default="multiclass,binary")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=400)
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--export", action="store_true", help="write forecast-SCHEME.onnx (first seed)")
    ap.add_argument("--label-mode", choices=("well", "endpoint"), default="well",
                    help="the truth: the condition's dominant fate (the protocol's, default) or the majority of "
                         "the well's live cells at its last scan (what an end-point stain counts)")
    a = ap.parse_args(argv)
    a.seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = [run_scheme(a, s.strip(), out) for s in a.schemes.split(",") if s.strip()]
    (out / "well_forecast.json").write_text(json.dumps({"argv": sys.argv[1:], "seconds": time.perf_counter() - t0,
                                                        "results": results}, indent=1, default=float) + "\n")
    for res in results:
        for row in [*ROWS, *(f"training conditions {r}" for r in ("24 h", "48 h"))]:
            print(table(res, row) + "\n")
        print(ece_table(res) + "\n")
        print(calls_table(res) + "\n")
        if "binary from multiclass" in res:
            col = {"scheme": "binary, read off the multiclass GRU",
                   "methods": {k: v["rows"] for k, v in res["binary from multiclass"].items()},
                   "calls": {k: v["calls"] for k, v in res["binary from multiclass"].items()}}
            for row in ("24 h", "48 h", "72 h"):
                print(table(col, row) + "\n")
            print(ece_table(col) + "\n")
            print(calls_table(col) + "\n")
    print(f"{time.perf_counter() - t0:.0f} s; wrote {out / 'well_forecast.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
