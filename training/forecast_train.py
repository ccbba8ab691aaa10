"""Train the time-aware well model (``temporal``) from a labelled tiles export and export it as
the ``forecast_model`` the daemon serves: the product's own command for it
(``nscmonitor train-forecast``), where only the measurement script could before.

The splits are training's (whole plates for validation and test, ``splits.assign_splits``), the
input is what the daemon computes (``well_frames``: tile features averaged per well and time,
normalised against the plate's induction scan), and the figures printed at the end are the
held-out wells' accuracy per hour, each forecast made from the frames up to that hour.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nscmonitor.core.errors import UserFacingError
from nscmonitor.core.names import to_db
from nscmonitor.scoring import forecast_ood as FO
from nscmonitor.scoring import well_sequence as WS
from nscmonitor.training import data as D
from nscmonitor.training import splits as S
from nscmonitor.training import temporal as T
from nscmonitor.training import well_frames as WF

NORMALISATION = "plate0+well0"
#: GRUs per forecast (``temporal.MeanLogits``): read as binary on 624 held-out wells, single
#: seeds called 0-4.8 % of wells wrong, means of three 0.2-0.3 % (0.1-0.4 % on 1,456; docs/training.md)
MEMBERS = 3


def learning_labels(records: Sequence[D.TileRecord], scheme: str) -> tuple[list[D.TileRecord], list[str]]:
    """The records the well model learns from and its classes. A binary forecast learns the
    four fates wherever every label names one (``temporal.BinaryFromMulticlass`` reads it as
    neuron vs glia; measured better than learning the binary labels), and the binary labels
    themselves where some label is only "glia" (a lab whose stains tell no more)."""
    if scheme == "binary":
        four, _ = D.for_scheme(records, "multiclass")
        if four and len(four) == len(records):
            return four, list(D.MULTICLASS)
    kept, notes = D.for_scheme(records, scheme)
    for n in notes:
        print(f"note: {n}")
    return kept, list(D.scheme_classes(scheme))


def answer_index(well: WF.Well, classes: Sequence[str]) -> int | None:
    """A well's truth in ``classes``: its label, or for the binary question its mixture's
    neuron-vs-glia answer where known (else its label's); None where the scheme has no answer
    for it (an undifferentiated well in the binary scheme)."""
    lab = well.label
    if "glia" in classes:
        r = well.records[0] if well.records else None
        lab = r.binary if r is not None and r.binary is not None else D.scheme_label(well.label, "binary")
    return list(classes).index(lab) if lab in classes else None


def per_hour_accuracy(probs: Sequence[np.ndarray], wells: Sequence[WF.Well], truth: Sequence[int]) -> dict[str, Any]:
    """Held-out wells right at each hour (the forecast at t reads the frames up to t), with the
    95 % Wilson interval: one readout per well and hour, so n is wells."""
    from nscmonitor.training.intervals import wilson

    by_h: dict[float, list[bool]] = {}
    for p, w, y in zip(probs, wells, truth):
        for t, h in enumerate(w.hours):
            by_h.setdefault(float(h), []).append(int(np.argmax(p[t])) == y)
    return {f"{h:g} h": {"accuracy": float(np.mean(v)), "ci95": list(wilson(int(sum(v)), len(v)) or ()),
                         "wells": len(v)} for h, v in sorted(by_h.items())}


def call_wells(probs: Sequence[np.ndarray], wells: Sequence[WF.Well], truth: Sequence[int]) -> list[dict[str, Any]]:
    """Per well its forecast time course (row t: from the frames up to t), as the confident-call
    rule of the dashboard and report reads one (``training.calls``)."""
    return [{"well": "/".join(w.key), "probs": np.asarray(p), "hours": np.asarray(w.hours, np.float64), "y": int(y),
             "condition": w.condition or "-"} for p, w, y in zip(probs, wells, truth)]


def earliest_calls(val: list[dict[str, Any]], held: list[dict[str, Any]], classes: Sequence[str]) -> dict[str, Any]:
    """The confident-call rule (threshold, persistence) chosen on the validation wells' forecast
    time courses, as for the tile model, then each held-out well's earliest call under it, by
    condition: wrong calls as a share of wells, and the median hours to a call."""
    from nscmonitor.training import calls as C

    rule, on_val = C.choose_rule(val, classes)
    return {"rule": rule.record(chosen_on="validation", validation=on_val),
            "by_condition": C.by_condition(held, rule, classes)}


def load_stored_features(path: str | Path) -> dict[str, np.ndarray]:
    """Stored path -> feature vector, as ``schedule.forecast_retrain`` writes them. Vectors
    of another length (stored before the optics features were measured) are left out: those
    images are read again, so every image gives the same features to the model and its
    out-of-distribution fit."""
    with np.load(path, allow_pickle=False) as z:
        return {str(p): np.asarray(v, np.float64) for p, v in zip(z["paths"], z["values"])
                if len(v) == WS.STORED_FEATURES}


def mean_accuracy(per_hour: dict[str, Any]) -> float | None:
    """One figure for a forecast on held-out wells: its accuracy averaged over the hours (each
    hour's forecast from the frames up to it), so early hours weigh as much as late ones."""
    acc = [v["accuracy"] for v in per_hour.values()]
    return float(np.mean(acc)) if acc else None


def compare_with(path: str | Path, wells: Sequence[WF.Well], held: Sequence[int], truth: Sequence[int],
                 classes: Sequence[str], geometry: tuple[int, float | None],
                 wells_at: Callable[[int, float | None], list[WF.Well]]) -> dict[str, Any]:
    """The forecast model serving now, read on the candidate's held-out wells (``held``, indices
    into ``wells``): the same wells, frames and truth, each input computed as that model's
    daemon stage would (its normalisation against the same plate references, its tile size in
    pixels of its pixel size: ``wells_at(px, um)`` recomputes the wells' features when that
    differs from the candidate's ``geometry``). A model that cannot load,
    or answers other classes, is reported as such and the candidate has nothing to beat."""
    from nscmonitor.scoring.forecast import load_forecast_model, tile_px_for

    try:
        active = load_forecast_model(path)
    except Exception as exc:  # the serving file may be anything a lab configured
        return {"path": str(path), "usable": False, "why": f"cannot load: {exc}"}
    if list(active.meta["classes"]) != list(classes):
        return {"path": str(path), "version": active.version, "usable": False,
                "why": f"classes {active.meta['classes']} are not the candidate's {list(classes)}"}
    own = (tile_px_for(active.meta, None), active.meta.get("pixel_size_um"))
    if own != tuple(geometry):
        wells = wells_at(*own)
    seqs = WF.sequences(wells, active.meta["normalisation"])
    probs = [np.stack([active.probs(seqs[i][:t + 1]) for t in range(len(seqs[i]))]) for i in held]
    per_hour = per_hour_accuracy(probs, [wells[i] for i in held], truth)
    return {"path": str(path), "version": active.version, "usable": True, "per_hour": per_hour,
            "mean_accuracy": mean_accuracy(per_hour)}


def fit_frame_ood(records: Sequence[D.TileRecord], features: np.ndarray
                  ) -> tuple[FO.FrameOOD | None, dict[str, Any]]:
    """The forecast's own out-of-distribution score (``scoring.forecast_ood``), fitted on the
    training and validation plates' images (threshold: leave one plate out) and reported on
    the test plate's, which it never saw. When it cannot be fitted (fewer than two images
    with measurable features) the model is exported without it, and the figures say why: a
    forecast without the flag still serves (flag unavailable)."""
    fit_idx = [i for i, r in enumerate(records) if r.split in ("train", "val")]
    try:
        ood, info = FO.fit(features[fit_idx], [records[i].well_key[:2] for i in fit_idx])
    except ValueError as exc:
        return None, {"unavailable": str(exc)}
    test = [i for i, r in enumerate(records) if r.split == "test"]
    if test:
        info["flagged_test_plate"] = float(np.mean(ood.flags(features[test])))
    return ood, info


def train_forecast(data: str | Path, out: str | Path, *, scheme: str = "multiclass", epochs: int = 300,
                   seed: int = 0, progress: bool = True, compare: str | Path | None = None,
                   version: str | None = None, features: str | Path | None = None,
                   label_mode: str = "well", workers: int | None = None, members: int = MEMBERS) -> dict[str, Any]:
    """Train, evaluate on the held-out plate(s) and write ``OUT/forecast.onnx``; returns the
    figures (also in the file's metadata). ``data`` is a tiles export: the simulator's, or the
    store's labelled images written by ``schedule.retrain.store_dataset``. ``compare``: a
    forecast model read on the same held-out wells (``metrics["compared"]``), which retraining
    uses to decide whether the candidate replaces it. ``features``: an ``.npz`` of ``paths``
    (stored form) and ``values``, the features the daemon kept for those images at the
    export's tile size; such images are not read again. ``label_mode``: "well" (the condition's
    fate, or the majority of a store well's labels) or "endpoint" (the majority of the well's
    live cells at its last scan, from a simulator export's or the labels' fractions: what an
    end-point stain counts, and what the demo judges by). ``workers``: processes that read the
    images (``well_frames.read_features``). The figures are also written to
    ``OUT/forecast_metrics.json``. A binary forecast is the multiclass model read as neuron vs
    glia wherever the labels name the four fates (``learning_labels``). ``members``: GRUs
    trained from seeds ``seed``, ``seed + 1``, ..., served as one model (their mean logits)."""
    from rich.progress import track

    out = Path(out)
    classes = list(D.scheme_classes(scheme))
    if label_mode not in ("well", "endpoint"):
        raise UserFacingError(f"label mode {label_mode!r}: the well model learns one fate per well, 'well' or 'endpoint'")
    records, info = D.discover(data, label_mode)
    records, learn_classes = learning_labels(records, scheme)
    if not info.tile_size:
        raise UserFacingError(f"{data}: the well model needs a tiles export whose tiles.json gives tile_size "
                              "(the daemon cuts each frame into tiles of that size for its features)")
    records = S.assign_splits(records, seed=seed)
    if any(r.elapsed_h is None for r in records):
        raise UserFacingError(f"{data}: every tile needs its hours since induction (elapsed_h) for the well model")
    stored = load_stored_features(features) if features is not None else {}
    reused = [0]
    image_features: list[np.ndarray] = []  # per record, at the export's tile size (the OOD fit)

    geometry = (int(info.tile_size), info.pixel_size_um)  # the export's, as the stored features were measured

    def wells_at(px: int, um: float | None) -> list[WF.Well]:
        ours = (px, um) == geometry
        feats: list[np.ndarray | None] = [stored.get(to_db(r.path)) if ours else None for r in records]
        reused[0] = sum(f is not None for f in feats)
        todo = [i for i, f in enumerate(feats) if f is None]
        it = track(WF.read_features([records[i] for i in todo], px, workers, um), total=len(todo),
                   description="well features", disable=not progress, transient=True)
        for i, f in zip(todo, it):
            feats[i] = f
        if ours:
            image_features[:] = feats
        wells = WF.wells_of(records, np.asarray(feats, np.float64))
        refs = WF.plate_references(wells)
        return [w for w in wells if w.plate_key in refs and WF.well_start(w) is not None]

    wells = wells_at(*geometry)
    n_stored = reused[0]
    n_all = len({r.well_key for r in records})
    if len(wells) < n_all:  # as the daemon gives such a well no forecast, training leaves it out
        print(f"{n_all - len(wells)} of {n_all} wells have no induction (0 h) frame, or their plate has "
              "no induction scan: left out")
    seqs = WF.sequences(wells, NORMALISATION)
    learn_y = [learn_classes.index(w.label) for w in wells]
    y = [answer_index(w, classes) for w in wells]  # None: no answer in the scheme (left out of the figures)
    idx = {s: [i for i, w in enumerate(wells) if w.split == s] for s in ("train", "val", "test")}
    if not idx["train"] or not idx["val"]:
        raise UserFacingError(f"{data}: the well model needs both training and validation wells with an induction "
                              f"frame (got {len(idx['train'])} training and {len(idx['val'])} validation wells)")
    summary = S.split_summary({s: [r for r in records if r.split == s] for s in ("train", "val", "test")})
    if summary["warning"]:
        print(f"warning: {summary['warning']}")
    net, fit = T.train_ensemble([seqs[i] for i in idx["train"]], [learn_y[i] for i in idx["train"]],
                                [seqs[i] for i in idx["val"]], [learn_y[i] for i in idx["val"]], len(learn_classes),
                                seeds=[seed + k for k in range(members)], epochs=epochs, progress=progress)
    read_from = None
    model, temperature = net, fit["temperature"]
    if learn_classes != classes:  # a binary forecast read off the multiclass model
        model, temperature = T.BinaryFromMulticlass(net, fit["temperature"], learn_classes), 1.0
        read_from = {"scheme": "multiclass", "classes": list(learn_classes), "temperature": fit["temperature"]}
        print("binary forecast: the multiclass model read as neuron vs astrocyte + oligodendrocyte")
    held = [i for i in (idx["test"] or idx["val"]) if y[i] is not None]
    val = [i for i in idx["val"] if y[i] is not None]
    probs = T.step_probs(model, [seqs[i] for i in held], temperature)
    metrics = {"split": "test" if idx["test"] else "val (no test plate)", "wells": len(held), "label_mode": label_mode,
               "per_hour": per_hour_accuracy(probs, [wells[i] for i in held], [y[i] for i in held]), "fit": fit}
    if read_from:
        metrics["read_from"] = read_from
    metrics["mean_accuracy"] = mean_accuracy(metrics["per_hour"])
    val_probs = T.step_probs(model, [seqs[i] for i in val], temperature)
    metrics["calls"] = earliest_calls(call_wells(val_probs, [wells[i] for i in val], [y[i] for i in val]),
                                      call_wells(probs, [wells[i] for i in held], [y[i] for i in held]), classes)
    metrics["stored_features"] = {"images": len(records), "reused": n_stored}
    ood, metrics["ood"] = fit_frame_ood(records, np.asarray(image_features, np.float64))
    if compare is not None:
        metrics["compared"] = compare_with(compare, wells, held, [y[i] for i in held], classes, geometry, wells_at)
    meta = T.forecast_metadata(classes=classes, scheme=scheme, normalisation=NORMALISATION, tile_px=info.tile_size,
                               pixel_size_um=info.pixel_size_um, temperature=temperature, read_from=read_from,
                               n_features=WS.MODEL_FEATURES,
                               version=version or f"forecast-{out.resolve().name}",
                               data_hash=D.data_hash(records), metrics=metrics,
                               ood=ood.record(**metrics["ood"]) if ood is not None else None)
    out.mkdir(parents=True, exist_ok=True)
    T.export_forecast(model, meta, out / "forecast.onnx", [seqs[i] for i in held[:4]])
    (out / "forecast_metrics.json").write_text(json.dumps({"version": meta["version"], **metrics}, indent=2))
    return metrics
