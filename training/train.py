"""Train a tile classifier: ``train_one_epoch``, ``evaluate``, ``main(cfg)`` (torchvision
references shape), runnable unattended as ``python -m nscmonitor.training.train --config F``.

One run directory holds everything: ``config.json`` (resolved), ``last.pt`` / ``best.pt``
(atomic), ``metrics.json``, ``evaluation.png`` and ``model.onnx``. Interrupt it and run again
with ``resume`` to continue from the last finished epoch.

``torchrun --nproc-per-node N -m nscmonitor.training.train --config F`` runs the same code on
N processes with DistributedDataParallel (see ``distributed.py``); rank 0 alone writes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nscmonitor.core.errors import UserFacingError
from nscmonitor.training import data as D
from nscmonitor.training import distributed as dd
from nscmonitor.training.model import GREY_MEAN, GREY_STD, build_model, load_weights
from nscmonitor.training.epochs import (_to_model_layout, amp_dtype, batches, build_optim, class_weights,
                                        cpu_bf16_supported, evaluate, predict_logits, train_one_epoch)
from nscmonitor.training.train_data import Split, TrainConfig, prepare_data, validation_of
from nscmonitor.training.transforms import AugmentConfig, augment

# batches, cpu_bf16_supported, _to_model_layout and Split are imported for the callers that
# know them as train's (tests, distributed runs); train_data and epochs hold them.
__all__ = ["Split", "TrainConfig", "_to_model_layout", "amp_dtype", "batches", "build_optim", "checkpoint",
           "class_weights", "cli", "cpu_bf16_supported", "evaluate", "finish", "fit", "main", "predict_logits",
           "prepare_data", "run_metadata", "save_atomic", "summary", "train_one_epoch", "validation_of",
           "well_calls", "write_calibration_set"]

log = logging.getLogger("nscmonitor.training")


def save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".part")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def run_metadata(cfg: TrainConfig, info: D.DataInfo, classes: list[str], dhash: str) -> dict[str, Any]:
    """What export and explain need to rebuild the daemon's preprocessing from a checkpoint."""
    px = D.model_pixel_um(info.pixel_size_um, cfg.tile_size, cfg.image_size) if cfg.tile_size else info.pixel_size_um
    return {"scheme": cfg.scheme, "classes": classes, "arch": cfg.arch, "image_size": cfg.image_size,
            "tile_size": cfg.tile_size, "pixel_size_um": px, "data_hash": dhash,
            "normalization": {"p_low": D.P_LOW, "p_high": D.P_HIGH, "mean": GREY_MEAN, "std": GREY_STD},
            "stem": "grey replicated to 3 channels in training; folded into conv1 at export",
            "temperature": 1.0, "source": info.source, "source_pixel_size_um": info.pixel_size_um,
            "label_mode": cfg.label_mode, "soft_labels": cfg.soft_labels}


def class_balance(cfg: TrainConfig) -> str:
    """``cfg.balance``, except none for soft labels drawn class-balanced: they are shares to
    reproduce, and draws by each tile's majority class bias them in a way nothing undoes
    exactly. Class weights are kept (rare fates still get their share of the gradient) and
    undone on the head after training (``undo_class_weights``)."""
    return "none" if cfg.soft_labels and cfg.balance == "sampler" else cfg.balance


def undo_class_weights(path: Path, weights: np.ndarray) -> bool:
    """Soft labels trained with class weights: the weighted cross-entropy's optimum is
    ``q_c = w_c p_c / sum_k w_k p_k``, so subtracting ``log w_c`` from the logits (the head's
    bias) makes the served probabilities estimate the shares ``p`` themselves. Done once per
    checkpoint (its metadata records it), so a resumed run does not subtract twice."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    meta = json.loads(saved["metadata"])
    if "class_weights_undone" in meta:
        return False
    bias = saved["state_dict"]["backbone.fc.bias"]
    saved["state_dict"]["backbone.fc.bias"] = bias - torch.log(torch.as_tensor(weights, dtype=bias.dtype))
    meta["class_weights_undone"] = [round(float(w), 6) for w in weights]
    saved["metadata"] = json.dumps(meta)
    save_atomic(saved, path)
    return True


def checkpoint(model, optimizer, scheduler, scaler, epoch: int, meta: dict, state: dict) -> dict[str, Any]:
    return {"state_dict": model.state_dict(), "arch": meta["arch"], "num_classes": len(meta["classes"]),
            "classes": meta["classes"], "epoch": epoch, "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
            "metadata": json.dumps(meta), "state": state}


def _setup(cfg: TrainConfig, world: dd.World = dd.World()):
    """Threads, device (one GPU per local rank) and the process group. ``threads`` is the
    run's budget: N processes on one machine share it (all cores when 0)."""
    from nscmonitor.training.launch import threads_per_process

    if world.distributed:
        torch.set_num_threads(threads_per_process(cfg.threads, world.local_size))
    elif cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserFacingError("--device cuda asked for, but torch sees no CUDA GPU here")
    device = dd.init(cfg.device, world)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    return device, out


def _resume(out: Path, model, optimizer, scheduler, scaler, dhash: str) -> dict:
    saved = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    if json.loads(saved["metadata"])["data_hash"] != dhash:
        raise UserFacingError(f"{out}/last.pt was trained on other data (hash differs); "
                              "start a new run directory instead of --resume")
    model.load_state_dict(saved["state_dict"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    if scaler and saved.get("scaler"):
        scaler.load_state_dict(saved["scaler"])
    state = dict(saved["state"])
    state["start_epoch"] = saved["epoch"] + 1
    return state


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    disable=not (enabled and sys.stdout.isatty()), transient=True)


def fit(cfg: TrainConfig, splits: dict[str, Split], meta: dict, out: Path, device,
        world: dd.World = dd.World()) -> dict:
    """The epoch loop with early stopping; returns the run state (history, best epoch).
    On several processes the model is wrapped in DistributedDataParallel; checkpoints hold
    the unwrapped model's state_dict and only rank 0 writes them."""
    classes = meta["classes"]
    model = _new_model(cfg, len(classes), device, world)
    cw = class_weights(splits["train"].y, len(classes))
    use_w = class_balance(cfg) == "weights"
    criterion = torch.nn.CrossEntropyLoss(weight=torch.tensor(cw, dtype=torch.float32, device=device) if use_w else None,
                                          label_smoothing=cfg.label_smoothing)
    val_criterion = torch.nn.CrossEntropyLoss()
    steps = math.ceil(math.ceil(len(splits["train"].y) / world.size) / dd.per_rank_batch(cfg.batch_size, world))
    optimizer, scheduler = build_optim(model, cfg, steps)
    dtype = amp_dtype(cfg, device)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    print(f"precision: {'mixed ' + str(dtype).removeprefix('torch.') if dtype else 'fp32'} on {device.type}"
          + (", channels-last" if cfg.channels_last else ""))
    state = {"start_epoch": 0, "best_score": -1.0, "best_epoch": -1, "bad_epochs": 0, "history": []}
    if cfg.resume and (out / "last.pt").is_file():
        state = _resume(out, model, optimizer, scheduler, scaler, meta["data_hash"])
        print(f"resuming after epoch {state['start_epoch']} from {out / 'last.pt'}")
    net = model
    if world.distributed:
        model = _wrap_ddp(model, device)
        print(f"DistributedDataParallel: {world.size} processes ({'nccl' if device.type == 'cuda' else 'gloo'}), "
              f"batch {dd.per_rank_batch(cfg.batch_size, world)} per process, {torch.get_num_threads()} threads each")
    sw = cw if class_balance(cfg) == "sampler" else None
    with _progress(cfg.progress and world.main) as progress:
        for epoch in range(state["start_epoch"], cfg.epochs):
            if state["bad_epochs"] >= cfg.patience:
                break
            t0 = time.perf_counter()
            tr = train_one_epoch(model, criterion, optimizer, scheduler, splits["train"], device, epoch, cfg,
                                 scaler, sw, progress, dtype, world)
            va = evaluate(net, val_criterion, splits["val"], device, dtype=dtype, channels_last=cfg.channels_last,
                          world=world, num_classes=len(classes))
            secs = time.perf_counter() - t0
            state["history"].append({"epoch": epoch, "train": tr, "val": va, "seconds": secs})
            score = va["balanced_accuracy"] - 1e-3 * va["loss"]
            improved = score > state["best_score"]
            state.update(best_score=max(score, state["best_score"]), bad_epochs=0 if improved else state["bad_epochs"] + 1)
            if improved:
                state["best_epoch"] = epoch
            if not world.main:
                continue
            saved = checkpoint(net, optimizer, scheduler, scaler, epoch, meta, state)
            if improved:
                save_atomic(saved, out / "best.pt")
            save_atomic(saved, out / "last.pt")
            progress.console.print(
                f"epoch {epoch + 1}/{cfg.epochs}  {secs:.1f} s  train loss {tr['loss']:.4f} acc {tr['accuracy']:.3f}  "
                f"val loss {va['loss']:.4f} acc {va['accuracy']:.3f} bal {va['balanced_accuracy']:.3f}"
                + ("  *best" if improved else ""), soft_wrap=True)
    return state


def _new_model(cfg: TrainConfig, num_classes: int, device, world: dd.World):
    """The network on its device, from the given starting weights unless resuming (the
    checkpoint's then replace them)."""
    model = build_model(cfg.arch, num_classes)
    if cfg.weights and not cfg.resume:
        skipped = load_weights(model, cfg.weights)
        print(f"loaded {cfg.weights} (new or reshaped: {', '.join(skipped) or 'none'})")
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if world.distributed and device.type == "cuda":
        # BatchNorm statistics over the global batch where torch can (SyncBatchNorm is CUDA
        # only); on the CPU each process normalises over its own share of the batch
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def _wrap_ddp(model, device):
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        return DistributedDataParallel(model, device_ids=[device.index], output_device=device.index)
    return DistributedDataParallel(model)


#: validation balanced accuracy the int8-aware fine-tuning may cost before its weights are dropped
INT8_AWARE_MAX_LOSS = 0.03


def int8_aware(cfg: TrainConfig, splits: dict[str, Split], out: Path, device) -> dict[str, Any]:
    """The best checkpoint fine-tuned with int8 rounding simulated (``training.int8_aware``),
    written back as the best checkpoint with the fine-tuning's record in its metadata, so the
    temperature, calibration, OOD head and export that follow see the weights that are served."""
    from nscmonitor.training.int8_aware import finetune

    saved = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    meta = json.loads(saved["metadata"])
    model = build_model(saved["arch"], saved["num_classes"])
    model.load_state_dict(saved["state_dict"])
    model.to(device)
    cw = class_weights(splits["train"].y, saved["num_classes"])
    use_w = class_balance(cfg) == "weights"
    weight = torch.tensor(cw, dtype=torch.float32, device=device) if use_w else None
    criterion = torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
    aug, gen = AugmentConfig(**cfg.augment), torch.Generator().manual_seed(cfg.seed + 7)

    def epoch_batches(epoch: int):  # augmented on the CPU, as in training, then moved to the device
        for x, y in batches(splits["train"], cfg.batch_size, shuffle=True, seed=cfg.seed + 1000 + epoch):
            yield augment(x, aug, gen).to(device), y.to(device)

    def val_score() -> float:
        return evaluate(model, torch.nn.CrossEntropyLoss(), splits["val"], device,
                        num_classes=saved["num_classes"])["balanced_accuracy"]

    before = val_score()
    print(f"int8-aware fine-tuning: {cfg.int8_aware_steps} steps at lr {cfg.int8_aware_lr:g} (int8 rounding "
          "simulated where the engine rounds)")
    with _progress(cfg.progress) as progress:
        record = finetune(model, epoch_batches, criterion, steps=cfg.int8_aware_steps, lr=cfg.int8_aware_lr,
                          augment=lambda x: x, progress=progress)
    after = val_score()
    # a fine-tuning that costs the model its accuracy is not worth a faster engine: the
    # weights before it are kept, and the record says why
    kept = after >= before - INT8_AWARE_MAX_LOSS
    record.update(val_balanced_accuracy_before=round(before, 4), val_balanced_accuracy_after=round(after, 4),
                  kept=kept)
    print(f"int8-aware fine-tuning: {record['steps']} steps in {record['seconds']:.0f} s, last loss "
          f"{record['last_loss']:.4f}; validation balanced accuracy {before:.3f} -> {after:.3f}"
          + ("" if kept else f": more than {INT8_AWARE_MAX_LOSS:g} lower, so the weights before it are kept"))
    meta["int8_aware"] = record
    if kept:
        saved["state_dict"] = {k: v.cpu() for k, v in model.state_dict().items()}
    saved["metadata"] = json.dumps(meta)
    save_atomic(saved, out / "best.pt")
    return record


def finish(cfg: TrainConfig, splits: dict[str, Split], out: Path, device) -> dict[str, Any]:
    """Best checkpoint -> temperature on val -> test report -> metrics, figure, ONNX."""
    from nscmonitor.training import evaluate as E

    saved = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    meta = json.loads(saved["metadata"])
    model = build_model(saved["arch"], saved["num_classes"])
    model.load_state_dict(saved["state_dict"])
    model.to(device).eval()
    classes = meta["classes"]
    val_logits = predict_logits(model, splits["val"].x, device)
    temperature = E.fit_temperature(val_logits, splits["val"].y)
    meta["temperature"] = temperature
    held = "test" if len(splits["test"].y) else "val"
    test_logits = val_logits if held == "val" else predict_logits(model, splits[held].x, device)
    report = E.full_report(test_logits, splits[held].y, splits[held].records, classes, temperature)
    metrics = {"split": held, "temperature": temperature, "best_epoch": saved["epoch"], "data_hash": meta["data_hash"],
               "classes": classes, "scheme": meta["scheme"], "validation": validation_of(splits), **report}
    metrics.update(well_calls(splits, val_logits, test_logits, held, temperature, classes, meta))
    meta["metrics"] = summary(metrics)
    meta["calibration_sha256"] = write_calibration_set(cfg, splits, out, meta)
    from nscmonitor.training import ood as O

    ood_head, meta["ood"] = O.fit(model, splits, device, len(classes), cfg.ood_fit_tiles, cfg.seed)
    saved["ood_head"] = O.head_state(ood_head)
    o = meta["ood"]
    left_out = o.get("flagged_training_plates_left_out")
    print(f"OOD threshold {o['threshold']:.4g} ({o['method']}; the {o['quantile']:.0%} quantile of "
          f"{o['held_out_images']} images from {o['threshold_from']}; Gaussians from {o['fit_tiles']} of "
          f"{o['training_tiles']} training tiles): flags {o['flagged_val']:.1%} of the "
          f"{o['val_images']} validation images"
          + (f" and {left_out:.1%} of the training plates' images left out of the fit" if left_out is not None else ""))
    if o.get("zoom"):
        z = o["zoom"]
        print(f"tests on the tiles' own pixels (zoom responses for fields of another magnification without a "
              f"pixel size, the contrast sign for inverted ones): thresholds {z['threshold']:.4g} (zoom in), "
              f"{z['out_threshold']:.4g} (zoom out) and {z['sign_threshold']:.4g} (contrast sign), set on the same "
              f"{z['images']} images: any test flags {z['flagged_with_score']:.1%} of them (the score alone "
              f"{z['flagged_by_score']:.1%})")
    saved["metadata"] = json.dumps(meta)
    save_atomic(saved, out / "best.pt")
    E.write_metrics(out, metrics)
    E.write_figure(out / "evaluation.png", report, classes, f"{meta['arch']} {meta['scheme']} ({held} split)")
    print(E.time_table(report))
    if E.condition_table(report):
        print(E.condition_table(report))
    if cfg.export:
        from nscmonitor.training.export import export_onnx

        x_check = splits["val"].x[:16]
        export_onnx(model.cpu(), meta, out / "model.onnx", x_check, name=f"{meta['arch']}-{meta['scheme']}",
                    version=out.name, ood=(ood_head.cpu(), meta["ood"]))
        print(f"exported {out / 'model.onnx'}")
    return metrics


def well_calls(splits: dict[str, Split], val_logits: np.ndarray, test_logits: np.ndarray, held: str,
               temperature: float, classes: list[str], meta: dict) -> dict[str, Any]:
    """Well calibration and call rule fitted on the validation wells (into ``meta``, so the
    model carries them), then the held-out wells' ECE and earliest confident calls."""
    from nscmonitor.training import calls as C
    from nscmonitor.training import evaluate as E

    cal, rule, on_val = C.fit_on_validation(E.softmax(val_logits, temperature), splits["val"].y,
                                            splits["val"].records, classes)
    meta["well_calibration"] = cal.record(fitted_on=f"{on_val['wells']} validation wells")
    meta["call_rule"] = rule.record(chosen_on="validation", validation=on_val["calls"])
    probs = E.softmax(test_logits, temperature)
    report = {"well_calibration": meta["well_calibration"], "call_rule": meta["call_rule"],
              "ece_by_time": C.ece_by_time(probs, splits[held].y, splits[held].records, cal),
              "calls": C.held_out_calls(probs, splits[held].y, splits[held].records, classes, cal, rule)}
    print(f"well temperature {cal.temperature:.3g}; call rule p >= {rule.threshold:g} over >= {rule.min_points} "
          f"time points (chosen on validation)")
    print(C.ece_table(report["ece_by_time"]))
    print(C.calls_table(report["calls"]))
    return report


def write_calibration_set(cfg: TrainConfig, splits: dict[str, Split], out: Path, meta: dict) -> str:
    """RAW tiles that travel with the model (calibration.npz + calibration.json): train tiles
    calibrate an int8 engine, val/test tiles gate it, both read through the model's input
    contract when the engine is built. Returns the set's sha256 for the ONNX metadata."""
    from nscmonitor.engines.calibration import N_CALIB, N_HELDOUT, read_manifest, write_model_tiles

    tile = cfg.tile_size
    px = meta.get("source_pixel_size_um") if tile else None
    ci, cw, _, clohi = D.raw_tiles(splits["train"].records, tile, N_CALIB, seed=cfg.seed, source_um=px)
    held = splits["test"].records + splits["val"].records
    hi, hw, hl, hlohi = D.raw_tiles(held, tile, N_HELDOUT, seed=cfg.seed + 1, source_um=px)
    path = write_model_tiles(out, ci, cw, hi, hw, hl, source=f"{meta.get('source', '')}:{cfg.data}",
                             pixel_size_um=px, calib_lohi=clohi, heldout_lohi=hlohi)
    manifest = read_manifest(path)
    print(f"calibration set: {len(ci)} train + {len(hi)} held-out raw tiles -> {path.name}")
    return manifest["sha256"]


def summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The few numbers worth carrying inside the model file."""
    return {"split": metrics["split"], **{f"{lvl}_{k}": metrics[lvl][k] for lvl in ("tile", "image", "well")
                                          for k in ("accuracy", "balanced_accuracy", "accuracy_from_48h")},
            "tile_ece": metrics["tile"]["ece"]}


def main(cfg: TrainConfig | dict[str, Any]) -> dict[str, Any]:
    """Run a whole training job from a config (what the scheduler calls); returns metrics.
    Started by torchrun, this is one rank of a DistributedDataParallel run: rank 0 returns
    the metrics, the others an empty dict once rank 0 has exported."""
    if isinstance(cfg, dict):
        cfg = TrainConfig(**cfg)
    cfg = dataclasses.replace(cfg, device=dd.resolve_device(cfg.device))  # config.json records the device used
    world = dd.world_from_env()
    if not world.main:
        cfg = dataclasses.replace(cfg, progress=False)
    try:
        with dd.quiet_unless_main(world):
            return _run(cfg, world)
    finally:
        dd.close(world)


def _run(cfg: TrainConfig, world: dd.World) -> dict[str, Any]:
    device, out = _setup(cfg, world)
    t0 = time.perf_counter()
    splits, info, classes, dhash = prepare_data(cfg)
    counts = {s: np.bincount(v.y, minlength=len(classes)).tolist() for s, v in splits.items()}
    print(f"tiles per class {classes}: " + ", ".join(f"{s} {c}" for s, c in counts.items())
          + f"  (loaded in {time.perf_counter() - t0:.1f} s; data {dhash[:19]})")
    meta = run_metadata(cfg, info, classes, dhash)
    dtype = amp_dtype(cfg, device)
    resolved = {**dataclasses.asdict(cfg), "precision": str(dtype).removeprefix("torch.") if dtype else "float32",
                "data_hash": dhash, "classes": classes, "pixel_size_um": meta["pixel_size_um"],
                "torch": torch.__version__, "counts": counts, "validation": validation_of(splits)}
    if world.main:
        resolved["nproc"] = world.size
        tmp = out / "config.json.part"
        tmp.write_text(json.dumps(resolved, indent=2))
        os.replace(tmp, out / "config.json")
    state = fit(cfg, splits, meta, out, device, world)
    dd.barrier(world)  # rank 0's last checkpoint is on disk before anyone looks for best.pt
    if state["best_epoch"] < 0 and not (out / "best.pt").is_file():
        raise UserFacingError("training ran no epoch (already finished or stopped early?)")
    secs = [h["seconds"] for h in state["history"]]
    if secs:
        print(f"time per epoch: {np.mean(secs):.1f} s (median {np.median(secs):.1f} s over {len(secs)} epochs)")
    if world.main and cfg.int8_aware_steps > 0:
        int8_aware(cfg, splits, out, device)
    if world.main and cfg.soft_labels and class_balance(cfg) == "weights":
        cw = class_weights(splits["train"].y, len(classes))
        if undo_class_weights(out / "best.pt", cw):
            print("soft labels: class weights undone on the head (logits - log w: "
                  + ", ".join(f"{c} {w:.2f}" for c, w in zip(classes, cw)) + ")")
    metrics = finish(cfg, splits, out, device) if world.main else {}
    dd.barrier(world)  # the other ranks wait until rank 0 has written metrics and model.onnx
    return metrics


def cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nscmonitor.training.train", description="Train from a config file.")
    p.add_argument("--config", required=True, help="TOML file with the settings of TrainConfig")
    p.add_argument("--resume", action="store_true", default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    try:
        # the progress bar shows only on a terminal (and on rank 0); a log file gets lines
        main(TrainConfig.from_sources(args.config, resume=args.resume))
    except UserFacingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def exit_worker(code: int) -> None:
    """End a torchrun worker once its work and the process group are done, without running
    C++ static destructors. A rank that had finished cleanly (rank 0's export on disk, the
    group destroyed) was seen once in CI to abort in interpreter teardown ("terminate called
    without an active exception", a gloo thread still being joined), and torchrun then
    reports the whole run failed; everything the run writes is written and flushed before
    this point, so skipping the teardown loses nothing. A process outside torchrun exits as
    usual."""
    if dd.world_from_env().distributed:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    exit_worker(cli())
