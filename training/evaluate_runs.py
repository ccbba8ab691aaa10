"""``nscmonitor evaluate`` over one run or several (one per training seed): what each run
trained on, what the test plates' manifests drew, the protocol per run, the spread over
seeds, and the files. A run's own ``metrics.json`` (written by training, carried into its
model file) is only replaced on request; the evaluation goes to ``evaluation.json`` in its
own folder."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nscmonitor.core.errors import UserFacingError
from nscmonitor.training import protocol as P
from nscmonitor.training.evaluate import evaluate_model, write_figure, write_metrics

PLATE_KEYS = ("plate", "plate_name", "name")


def run_dir(model: Path) -> Path:
    return model if model.is_dir() else model.parent


def run_context(model: Path) -> dict[str, Any]:
    """Seed, validation summary and training conditions of a run from its config.json; for
    runs older than the record of training conditions, the training split of the data the
    run names, when that data is still there and carries a split column."""
    path = run_dir(model) / "config.json"
    cfg = json.loads(path.read_text()) if path.is_file() else {}
    validation = cfg.get("validation") or {}
    conditions = validation.get("train_conditions")
    if conditions is None and cfg.get("data") and (Path(cfg["data"]) / "tiles.csv").is_file():
        from nscmonitor.training.data import read_tiles_export

        recs, _ = read_tiles_export(cfg["data"])
        conditions = sorted({r.condition for r in recs if r.split == "train" and r.condition}) or None
    return {"seed": cfg.get("seed"), "validation": validation or None, "train_conditions": conditions or None,
            "arch": cfg.get("arch")}


def plate_draws(data: Sequence[str | Path]) -> dict[str, dict[str, Any]]:
    """Per-plate draws recorded in each export's tiles.json (plate-level biology: timing and
    efficiency shifts, ...), keyed like the evaluation's plates. Any top-level list of
    objects naming a plate, or object keyed by plate name, counts; an export without such a
    record gives nothing, and the tables say '-'."""
    out: dict[str, dict[str, Any]] = {}
    for d in data:
        path = Path(d) / "tiles.json"
        try:
            meta = json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, ValueError) as exc:
            raise UserFacingError(f"{path}: unreadable manifest ({exc})") from exc
        plates = _plate_names(Path(d))
        prefix = Path(d).name if len(data) > 1 else ""
        for name, draws in _per_plate(meta, plates).items():
            out.setdefault(P.plate_name(prefix, name), {}).update(draws)
    return out


def _plate_names(data: Path) -> set[str]:
    path = data / "tiles.csv"
    if not path.is_file():
        return set()
    with path.open(newline="") as fh:
        return {row.get("plate") or "" for row in csv.DictReader(fh)} - {""}


def _per_plate(meta: dict[str, Any], plates: set[str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for key, value in meta.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for v in value:
                name = next((v[k] for k in PLATE_KEYS if isinstance(v.get(k), str)), None)
                if name in plates:
                    found.setdefault(name, {}).update(_flat(v))
        elif isinstance(value, dict) and plates & set(value) and all(isinstance(value[p], dict)
                                                                    for p in plates & set(value)):
            for name in plates & set(value):
                found.setdefault(name, {}).update(_flat(value[name]))
    return found


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested draws as dotted keys; the per-well draws (``wells``) stay in the export, and a
    plate's own record (``plate``: ``plate_t50_shift_h``, ...) loses the repeated prefix."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if k == "wells" and isinstance(v, dict):
            continue
        if isinstance(v, dict):
            out.update(_flat(v, "" if k == "plate" else f"{prefix}{k}."))
        else:
            out[f"{prefix}{k.removeprefix('plate_') if k != 'plate_name' else k}"] = v
    return out


def evaluate_runs(models: Sequence[str | Path], data: Sequence[str | Path], *, out_dir: str | Path | None = None,
                  split: str = "test", device: str = "cpu", label_mode: str | None = None,
                  write_run_metrics: bool = False, seed: int = 0, n_boot: int | None = None,
                  baseline_from: str | Path | None = None) -> dict[str, Any]:
    """Evaluate every run on the same test data; write evaluation.json and evaluation.md
    (the tables) into ``out_dir`` (one run: RUN_DIR/evaluation by default; several runs:
    required), evaluation.png for one run, and each run's metrics.json only when
    ``write_run_metrics``. ``baseline_from``: also fit the classical baseline on that
    training data's training split and report it the same way."""
    models = [Path(m) for m in models]
    if not models:
        raise UserFacingError("evaluate needs at least one model")
    if out_dir is None and len(models) > 1:
        raise UserFacingError("several models: give -o/--out for the combined evaluation")
    out = Path(out_dir) if out_dir else run_dir(models[0]) / "evaluation"
    draws = plate_draws(data)
    runs = []
    for model in models:
        ctx = run_context(model)
        m = evaluate_model(model, data, split=split, device=device, label_mode=label_mode,
                           train_conditions=ctx["train_conditions"], plate_draws=draws, seed=seed, n_boot=n_boot)
        m.update(seed=ctx["seed"], training_validation=ctx["validation"], arch=ctx["arch"])
        runs.append(m)
        if write_run_metrics:  # training's own keys (best epoch, data hash, validation) stay
            own = run_dir(model) / "metrics.json"
            write_metrics(run_dir(model), {**(json.loads(own.read_text()) if own.is_file() else {}), **m})
    result: dict[str, Any] = {"runs": runs}
    if len(runs) > 1:
        result["seed_spread"] = P.seed_spread([r["protocol"] for r in runs])
    if baseline_from:
        from nscmonitor.training.baseline import baseline_evaluation

        first = runs[0]
        result["baseline"] = baseline_evaluation(
            baseline_from, data, scheme=first["scheme"], label_mode=first["label_mode"], split=split,
            seed=first.get("seed") or 0, train_conditions_from=run_context(models[0])["train_conditions"],
            plate_draws=draws, bootstrap_seed=seed, n_boot=n_boot)
    out.mkdir(parents=True, exist_ok=True)
    write_metrics(out, runs[0] if len(runs) == 1 else result, name="evaluation.json")
    (out / "evaluation.md").write_text(tables(result) + "\n", encoding="utf-8")
    if len(runs) == 1:
        m = runs[0]
        write_figure(out / "evaluation.png", m, m["classes"], f"{m.get('arch') or ''} {m['scheme']} ({m['split']})")
    shown = [{**r, "label": f"seed {r.get('seed')}"} for r in runs]
    if "baseline" in result:
        shown.append({**result["baseline"], "label": "baseline"})
    P.write_figure(out / "protocol.png", shown, f"{runs[0].get('arch') or ''} {runs[0]['scheme']}: {len(runs)} run(s), "
                   f"{result['runs'][0]['protocol']['wells']} test wells on {len(runs[0]['protocol']['plates'])} plate(s)")
    result["out"] = str(out)
    return result


def tables(result: dict[str, Any]) -> str:
    """The markdown the terminal prints and evaluation.md holds."""
    runs = result["runs"]
    parts = []
    for r in runs:
        head = f"### {r['model']} (seed {r.get('seed')}, {r['scheme']}, {r['split']} tiles)"
        warn = (r.get("training_validation") or {}).get("warning")
        held = r["protocol"].get("held_out_conditions")
        notes = [f"wells {r['protocol']['wells']} on plates {', '.join(r['protocol']['plates'])}",
                 f"held-out conditions: {', '.join(held) if held else 'none' if held is not None else 'unknown'}"]
        if warn:
            notes.append(f"warning (training): {warn}")
        parts += [head, "", "; ".join(notes), "", P.run_table(r["protocol"]), "", P.group_table(r["protocol"]), ""]
        if "calls" in r:
            from nscmonitor.training import calls as C

            rule = r["calls"]["rule"]
            parts += [f"ECE by time bin, well temperature {(r.get('well_calibration') or {}).get('temperature', 1.0):.3g} "
                      "(fitted on the validation wells):", "", C.ece_table(r["ece_by_time"]), "",
                      f"Earliest confident call (p >= {rule['threshold']:g} over >= {rule['min_points']} time points, "
                      "chosen on validation):", "", C.calls_table(r["calls"]), ""]
    if "seed_spread" in result:
        parts += [f"### {len(runs)} runs (training seeds)", "", P.seed_table(
            [{"seed": r.get("seed"), "protocol": r["protocol"]} for r in runs], result["seed_spread"]), "",
            P.seed_group_table(result["seed_spread"]), ""]
    if "baseline" in result:
        b = result["baseline"]
        parts += [f"### Classical baseline ({b['model']}; {b['train_tiles']} training tiles of {b['train_data']}, "
                  f"split seed {b['seed']})", "", P.run_table(b["protocol"]), "", P.group_table(b["protocol"]), ""]
    return "\n".join(parts).rstrip()
