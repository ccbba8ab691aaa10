"""One retrain, end to end, without torch in this process.

labels changed? -> dataset from the store (every earlier image of a labelled well inherits
its end-point label; test wells held out by plate where there are several plates) ->
``python -m nscmonitor.training.train`` in a subprocess (torchrun with ``retrain.nproc``
processes when more than one) with a thread budget and lower priority (a crash or out-of-memory there never takes the daemon down) -> candidate and
active model evaluated on the same held-out images with ONNX Runtime -> gates -> candidate
registered -> this machine's engine built and gated for it (``engines.autobuild``, in a
lower-priority subprocess) -> promote (model and engine together) or reject, with the numbers.
A candidate whose engine fails its gate is rejected unless ``retrain.require_engine`` is
false, in which case it is promoted and served in fp32 with the reason recorded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from nscmonitor.config import Settings
from nscmonitor.core.domain import GLIA
from nscmonitor.engines.metadata import read_onnx_metadata
from nscmonitor.core.errors import UserFacingError
from nscmonitor.hooks import emit
from nscmonitor.labels import read_label_file
from nscmonitor.core.names import to_db
from nscmonitor.readers.formats import channel_for, pixel_size_for
from nscmonitor.registry.registry import Registry
from nscmonitor.schedule.gates import Decision, EvalResult, decide, evaluate_predictions
from nscmonitor.store import retrain as runs
from nscmonitor.store.labels import WellLabel, current_labels, labels_version
from nscmonitor.store.db import ensure_schema, open_engine, masked, open_readonly

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrainOutcome:
    run_id: int
    status: str  # skipped | promoted | rejected | failed
    reason: str
    candidate: str | None = None
    numbers: dict | None = None


@dataclass(frozen=True)
class Sample:
    path: str
    experiment: str
    plate: str
    well: str
    field: int | None
    timepoint: int | None
    elapsed_h: float | None
    label: str
    fractions: dict | None
    split: str
    #: the channel the daemon scored inside a stack or container; training reads that plane
    channel: str | None = None
    #: the watch folder's pixel size for files that state none (as the daemon scored them)
    pixel_size_um: float | None = None


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _stable_hash(key: str) -> int:
    return int(hashlib.sha1(key.encode()).hexdigest(), 16)


def assign_well_splits(wells: list[tuple[str, str, str, str]]) -> dict[tuple[str, str, str], str]:
    """(experiment, plate, well, label) -> split, by well and stratified by label.

    With several plates the last one is the test set (no plate effect leaks into the
    test); otherwise, per label, a fixed hash order sends about a quarter of the wells
    (at least one when there are two or more) to test and about a fifth to validation,
    so every class is in every split the gates and early stopping rely on."""
    plates = sorted({(e, p) for e, p, _, _ in wells})
    out: dict[tuple[str, str, str], str] = {}
    by_label: dict[str, list[tuple[str, str, str]]] = {}
    for e, p, w, lab in wells:
        if len(plates) > 1 and (e, p) == plates[-1]:
            out[(e, p, w)] = "test"
        else:
            by_label.setdefault(lab, []).append((e, p, w))
    for keys in by_label.values():
        keys.sort(key=lambda k: _stable_hash("/".join(k)))
        n = len(keys)
        n_test = 0 if len(plates) > 1 else (max(1, round(n * 0.25)) if n >= 2 else 0)
        n_val = max(1, round(n * 0.2)) if n - n_test >= 2 else 0
        for i, k in enumerate(keys):
            out[k] = "test" if i < n_test else ("val" if i < n_test + n_val else "train")
    return out


def collect_samples(engine, *, up_to: int | None, channel: str | None = None,
                    labels: list[WellLabel] | None = None, watch: Iterable = ()) -> list[Sample]:
    """Every scored, QC-passed image of a labelled well, with the well's label, split and
    scored channel. ``labels`` default to the store's current ones (up to label set
    ``up_to``). The scored channel is the ``channel`` setting of the ``watch`` folder
    (``config.WatchFolder``) the image lies in, which is what the daemon passes to
    ``decode``; for an image outside every configured folder it is the channel its file
    name gave (stored on the image row; where the daemon had a setting, only images of that
    channel were scored), else None (a file's only or first plane)."""
    labels = current_labels(engine, up_to) if labels is None else labels
    by_well = {(lab.experiment, lab.plate, lab.well): lab for lab in labels}
    splits = assign_well_splits([(lab.experiment, lab.plate, lab.well, lab.label) for lab in labels])
    samples: list[Sample] = []
    for img in runs.scored_images(engine):
        lab = by_well.get((img.experiment, img.plate, img.well))
        if lab is None or (channel is not None and img.channel is not None and img.channel != channel):
            continue
        split = splits[(img.experiment, img.plate, img.well)]
        scored = channel_for(watch, img.path, default=img.channel)
        samples.append(Sample(img.path, img.experiment, img.plate, img.well, img.field, img.timepoint, img.elapsed_h,
                              lab.label, lab.fractions, split, scored, pixel_size_for(watch, img.path)))
    return samples


def write_dataset(samples: list[Sample], out_dir: Path, *, tile_size: int | None, pixel_size_um: float | None) -> None:
    """``out_dir/tiles.csv`` + ``tiles.json`` in the training's tiles-export format, pointing
    at the original images (read-only, never copied), each with the channel the daemon
    scored in it and the pixel size it assumed where the file states none (the watch
    folder's setting); the trainer reads that plane and cuts it into tiles of ``tile_size``
    pixels of ``pixel_size_um`` (the same physical field in an image of another
    magnification) as the daemon does."""
    import csv

    out_dir.mkdir(parents=True, exist_ok=True)
    classes = ("neuron", "astrocyte", "oligodendrocyte", "undifferentiated")
    with open(out_dir / "tiles.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "plate", "well", "field", "timepoint", "elapsed_h", "condition", "label",
                    *[f"frac_{c}" for c in classes], "split", "channel", "pixel_size_um"])
        for smp in samples:
            fr = smp.fractions or {}
            w.writerow([to_db(smp.path), f"{smp.experiment}/{smp.plate}", smp.well, smp.field or "", smp.timepoint or "",
                        "" if smp.elapsed_h is None else smp.elapsed_h, "", smp.label,
                        *[fr.get(c, "") for c in classes], smp.split, smp.channel or "",
                        "" if smp.pixel_size_um is None else smp.pixel_size_um])
    (out_dir / "tiles.json").write_text(json.dumps({"pixel_size_um": pixel_size_um, "tile_size": tile_size,
                                                    "classes": list(classes), "source": "store"}))


def store_dataset(settings: Settings, out_dir: Path, *, labels_file: Path | None = None,
                  tile_size: int | None = None) -> list[Sample]:
    """Source (c) for a hand-started training run (``nscmonitor train --from-store/--labels``):
    the store's scored, QC-passed images of labelled wells, written as a tiles export in
    ``out_dir`` that points at the originals. Labels come from ``labels_file`` (checked like
    an import, not saved) or else the store's current ones. The database is only read: a
    mistyped URL is an error, not a new empty database. The tile size defaults as for
    scheduled retraining (``[retrain.train] tile_size``, else the active model's field of
    view, else 224 px)."""
    engine = open_readonly(settings.database_url)
    labels = read_label_file(engine, labels_file) if labels_file is not None else None
    if labels is None and labels_version(engine) is None:
        raise UserFacingError("the database holds no labels: pass --labels FILE.csv or run "
                              "'nscmonitor labels import FILE.csv' first")
    samples = collect_samples(engine, up_to=None, labels=labels, watch=settings.watch)
    if not samples:
        raise UserFacingError(f"no scored, QC-passed images of labelled wells in {masked(settings.database_url)}")
    active = Registry(settings.models_dir, engine).active()
    base_meta = read_onnx_metadata(active.path) if active and tile_size is None else None
    tile, px = _tile_geometry(settings, samples, base_meta)
    write_dataset(samples, Path(out_dir), tile_size=tile_size or tile, pixel_size_um=px)
    return samples


def _tile_geometry(settings: Settings, samples: list[Sample], base_meta) -> tuple[int, float | None]:
    """Tile size in image pixels that covers what the active model sees, and the images'
    pixel size (from the first readable file, else its watch folder's setting, as the daemon
    scored it), so the candidate learns at the same scale."""
    from nscmonitor.readers.decode import DecodeError, decode

    px = None
    for smp in samples[:5]:
        try:
            px = decode(smp.path, channel=smp.channel, content_hash=False).pixel_size_um or smp.pixel_size_um
            break
        except DecodeError:
            continue
    tile = settings.retrain.train.get("tile_size")
    if tile is None and base_meta is not None:
        if base_meta.pixel_size_um and px:
            tile = int(round(base_meta.input_size * base_meta.pixel_size_um / px))
        else:
            tile = base_meta.input_size
    return int(tile or 224), px


def _scheme_label(label: str, classes: tuple[str, ...]) -> str | None:
    if label in classes:
        return label
    if "glia" in classes and label in GLIA:
        return "glia"
    return None


def evaluate_model(model_path: Path, samples: list[Sample], *, threads: int = 1) -> EvalResult:
    """Image-level accuracy of an ONNX model on held-out images, through the daemon's own
    preprocessing, so the gate measures what the daemon would serve."""
    from nscmonitor.engines.ort import OrtCpuEngine
    from nscmonitor.readers.decode import DecodeError, decode
    from nscmonitor.scoring.preprocess import Preprocess

    meta = read_onnx_metadata(model_path)
    eng = OrtCpuEngine(model_path, meta, threads=threads)
    eng.load()
    y_true, y_pred, hours = [], [], []
    pre = Preprocess.from_metadata(meta)
    for smp in samples:
        lab = _scheme_label(smp.label, meta.classes)
        if lab is None:
            continue
        try:
            dec = decode(smp.path, channel=smp.channel, content_hash=False)
        except DecodeError as exc:
            log.warning("%s: left out of the evaluation: %s", smp.path, exc.reason)
            continue
        grid = pre.tiles(dec.pixels, factor=pre.factor(dec.pixel_size_um or smp.pixel_size_um))
        if len(grid.tiles) == 0:
            continue
        probs = np.concatenate([eng.infer(grid.tiles[i:i + 32]) for i in range(0, len(grid.tiles), 32)])
        y_true.append(lab)
        y_pred.append(meta.classes[int(probs.mean(axis=0).argmax())])
        hours.append(smp.elapsed_h)
    eng.close()
    return evaluate_predictions(y_true, y_pred, hours, meta.classes)


def train_subprocess(cfg_path: Path, *, threads: int, timeout: float | None, log_path: Path,
                     nproc: int = 1) -> tuple[int, str]:
    """The trainer in a lower-priority child (``nproc`` > 1: torchrun with that many
    DistributedDataParallel workers sharing the ``threads`` budget); a time limit stops
    every worker, not only the launcher."""
    from nscmonitor.training.launch import command

    return lowered_subprocess(command(cfg_path, nproc), threads=threads, timeout=timeout, log_path=log_path,
                              nproc=nproc)


def lowered_subprocess(argv: list[str], *, threads: int, timeout: float | None, log_path: Path,
                       nproc: int = 1) -> tuple[int, str]:
    """``argv`` at lower priority with its thread budget, output to ``log_path``; (exit code,
    negative when stopped, and the log's tail)."""
    from nscmonitor.training.launch import run, thread_env

    env = {**os.environ, **thread_env(max(threads, 1), nproc)}
    kw: dict = {}
    if sys.platform == "win32":
        kw["creationflags"] = subprocess.BELOW_NORMAL_PRIORITY_CLASS
    else:
        kw["preexec_fn"] = lambda: os.nice(10)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as logf:
        rc = run(argv, env=env, timeout=timeout, stdout=logf, stderr=subprocess.STDOUT, **kw)
    tail = log_path.read_text(errors="replace")[-2000:]
    return rc, tail


def _write_train_config(settings: Settings, run_dir: Path, data_dir: Path, base_meta,
                        train_overrides: dict | None) -> Path:
    """The trainer's TOML: the data just written, the active model's scheme (so a candidate
    answers the same question), the retrain settings, then the overrides of this run."""
    values = {"data": str(data_dir), "out": str(run_dir / "train"), "scheme": base_meta.scheme if base_meta and
              base_meta.scheme in ("binary", "multiclass") else "multiclass",
              "epochs": settings.retrain.epochs, "device": settings.retrain.device, "threads": settings.retrain.threads,
              "progress": False, **settings.retrain.train, **(train_overrides or {})}
    from nscmonitor.training.launch import write_toml

    cfg_path = run_dir / "train.toml"
    write_toml(cfg_path, values)
    return cfg_path


def _judge(candidate_path: Path, active_path: Path | None, test: list, n_images: int) -> tuple[Decision, dict]:
    """Candidate and active model scored on the same held-out images; the decision and the
    numbers the run records."""
    cand_eval = evaluate_model(candidate_path, test)
    act_eval = evaluate_model(active_path, test) if active_path is not None else None
    decision: Decision = decide(cand_eval, act_eval)
    numbers = {"candidate": asdict(cand_eval), "active": asdict(act_eval) if act_eval else None,
               "n_test_images": len(test), "n_images": n_images, "rules": decision.reasons}
    return decision, numbers


def run_retrain(settings: Settings, *, trigger: str = "schedule", force: bool = False,
                train_overrides: dict | None = None, timeout: float | None = None,
                still_owner: Callable[[], bool] | None = None) -> RetrainOutcome:
    """``still_owner``: asked just before promotion, for a run of a schedule shared by several
    daemons (``ownership.OwnedSchedule.ticket``); False keeps the candidate registered but
    unpromoted, because another daemon may have taken the schedule over meanwhile."""
    engine = open_engine(settings.database_url)
    ensure_schema(engine)
    reg = Registry(settings.models_dir, engine)
    labels_ver = labels_version(engine)
    active = reg.active()
    hook = settings.retrain.hook
    run_id = runs.start_run(engine, trigger=trigger, labels_version=labels_ver,
                            baseline_version=active.version if active else None)

    def finish(status: str, reason: str, **kw) -> RetrainOutcome:  # runs.finish_run's columns
        runs.finish_run(engine, run_id, status=status, reason=reason, **kw)
        level = {"failed": "error", "rejected": "warning"}.get(status, "info")
        if status != "skipped":
            emit(engine, f"retrain_{status}", reason, level=level, hook=hook,
                 data={"run": run_id, "candidate": kw.get("candidate_version"), "numbers": kw.get("numbers")})
        log.info("retrain %d %s: %s", run_id, status, reason)
        return RetrainOutcome(run_id, status, reason, kw.get("candidate_version"), kw.get("numbers"))

    if labels_ver is None:
        return finish("skipped", "no labels imported yet ('nscmonitor labels import FILE.csv')")
    if not force and active is not None and active.labels_version == labels_ver:
        return finish("skipped", f"labels unchanged since the active model (label set {labels_ver})")
    run_dir = settings.models_dir / "retrain" / f"run-{run_id:04d}"
    data_dir = run_dir / "data"
    base_meta = read_onnx_metadata(active.path) if active else None
    samples = collect_samples(engine, up_to=labels_ver, watch=settings.watch)
    try:
        tile, px = _tile_geometry(settings, samples, base_meta)
        write_dataset(samples, data_dir, tile_size=tile, pixel_size_um=px)
    except OSError as exc:
        return finish("failed", f"cannot write the training data: {exc}")
    test = [smp for smp in samples if smp.split == "test"]
    if len({smp.label for smp in samples if smp.split == "train"}) < 2 or not test:
        return finish("failed", f"too few labelled images to train and test ({len(samples)} images)",
                      run_dir=str(run_dir))
    forecast = _forecast_step(settings, engine, samples, (tile, px), run_dir, run_id)
    cfg_path = _write_train_config(settings, run_dir, data_dir, base_meta, train_overrides)
    rc, tail = train_subprocess(cfg_path, threads=settings.retrain.threads, timeout=timeout,
                                log_path=run_dir / "train.log", nproc=settings.retrain.nproc)
    candidate_path = run_dir / "train" / "model.onnx"
    if rc != 0 or not candidate_path.is_file():
        why = "killed (time limit or signal)" if rc < 0 else f"exited with code {rc}"
        return finish("failed", f"training {why}; see {run_dir / 'train.log'}: {tail.strip()[-300:]}",
                      run_dir=str(run_dir), numbers={"forecast": forecast} if forecast else None)
    decision, numbers = _judge(candidate_path, Path(active.path) if active else None, test, len(samples))
    if forecast:
        numbers["forecast"] = forecast
    info = reg.register(run_dir / "train", labels_version=labels_ver, activate_if_first=False)
    free_registered_copies(run_dir / "train", Path(info.path).parent)
    if decision.promote:
        decision = _engine_gate(settings, Path(info.path), info.version, decision, numbers)
    if decision.promote and still_owner is not None and not still_owner():
        decision = Decision(False, decision.reasons + [
            "not promoted: this daemon lost the retrain schedule while the candidate trained (its database "
            "connection ended), so another daemon may run it now"])
    if not decision.promote:
        return finish("rejected", "; ".join(decision.reasons), candidate_version=info.version, numbers=numbers,
                      run_dir=str(run_dir))
    reg.promote(info.version, reason="; ".join(decision.reasons))
    if settings.retrain.rescore:
        n = mark_for_rescore(engine)
        numbers["rescore_queued"] = n
    return finish("promoted", "; ".join(decision.reasons), candidate_version=info.version, numbers=numbers,
                  run_dir=str(run_dir))


def free_registered_copies(train_dir: Path, version_dir: Path) -> int:
    """A retrain run's model, checkpoint, calibration tiles and engines, once its candidate is
    registered, live on in the version folder; the run's own copies (and ``last.pt``, the
    resume point of a run that has ended) would more than double the disk every retrain takes:
    660 MB more for a ResNet50 (model 94 MB, two checkpoints with the optimiser's state 283 MB
    each), at every change of the labels. Only byte-identical copies (same relative path) are
    removed; the run's log, configuration and metrics that differ stay. Returns the bytes freed."""
    from nscmonitor.engines.enginefile import file_sha256

    freed = 0
    files = sorted(p for p in train_dir.rglob("*") if p.is_file() and not p.is_symlink()) if train_dir.is_dir() else []
    for p in files:
        rel = p.relative_to(train_dir)
        copy = version_dir / rel
        try:
            same = str(rel) == "last.pt" or (copy.is_file() and copy.stat().st_size == p.stat().st_size
                                            and file_sha256(copy) == file_sha256(p))
            if same:
                size = p.stat().st_size
                p.unlink()
                freed += size
        except OSError as exc:
            log.warning("retrain: %s not removed after registration (%s)", p, exc)
    for d in sorted((d for d in train_dir.rglob("*") if d.is_dir() and not d.is_symlink()),
                    key=lambda q: len(q.parts), reverse=True) if train_dir.is_dir() else []:
        try:
            if not any(d.iterdir()):
                d.rmdir()
        except OSError as exc:
            log.warning("retrain: empty folder %s not removed (%s)", d, exc)
    if freed:
        log.info("retrain: %.1f MB of %s held in %s too, removed", freed / 1e6, train_dir, version_dir)
    return freed


def _forecast_step(settings: Settings, engine, samples: list[Sample], geometry: tuple[int, float | None],
                   run_dir: Path, run_id: int) -> dict | None:
    """The well forecast's own retrain (``forecast_retrain``) when the lab serves one and
    ``retrain.forecast`` is on; its outcome is an event (and the notification hook) of its own."""
    if settings.forecast_model is None or not settings.retrain.forecast:
        return None
    from nscmonitor.schedule.forecast_retrain import retrain_forecast

    try:
        out = retrain_forecast(settings, engine, samples, run_dir, run_id, fallback=geometry)
    except Exception as exc:  # the forecast's retrain must never take the tile model's with it
        log.exception("retrain %d: the forecast step failed", run_id)
        out = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    level = {"failed": "error", "rejected": "warning"}.get(out["status"], "info")
    emit(engine, f"forecast_{out['status']}", out["reason"], level=level, hook=settings.retrain.hook,
         data={"run": run_id, "version": out.get("version")})
    log.info("retrain %d: well forecast %s: %s", run_id, out["status"], out["reason"])
    return out


def _engine_gate(settings: Settings, model_path: Path, version: str, decision: Decision, numbers: dict) -> Decision:
    """Build and gate the candidate's engine before it may take over, so promotion switches
    model and engine together; then check which engine would serve it here."""
    from nscmonitor.engines import autobuild
    from nscmonitor.engines.select import select as select_engine

    if autobuild.wants_build(settings.engine):
        status = autobuild.ensure(model_path, threads=settings.retrain.threads, quiet=True,
                                  timeout=ENGINE_BUILD_TIMEOUT_S)
        numbers["engine_build"] = autobuild.summary(model_path, version)
        if status is None or status.state != "ready":
            why = autobuild.describe(status, version)
            if settings.retrain.require_engine:
                return Decision(False, decision.reasons + [f"{why} (retrain.require_engine is on)"])
            decision = Decision(True, decision.reasons + [f"promoted for fp32 serving: {why}"])
    try:
        sel = select_engine(model_path, settings.engine, batch_size=settings.batch_size, threads=1,
                            cache_dir=settings.models_dir / "engines")
        numbers["engine"] = sel.engine.name
        sel.engine.close()
    except Exception as exc:  # no engine can serve it here: do not promote
        return Decision(False, decision.reasons + [f"no validated engine on this machine: {exc}"])
    return decision


def mark_for_rescore(engine) -> int:
    """Queue earlier images of experiments still acquiring for the new model, at low
    priority: the runner takes them only when nothing new waits."""
    return runs.mark_for_rescore(engine, acquiring_since=_now() - timedelta(days=RUNNING_DAYS))


#: a candidate's engine build that takes longer is stopped (builds take seconds to minutes; a
#: hung one would otherwise hold the retrain job, and with it every later retrain, for ever)
ENGINE_BUILD_TIMEOUT_S = 3600.0

#: an experiment counts as running (worth rescoring) if an image arrived this recently
RUNNING_DAYS = 7
