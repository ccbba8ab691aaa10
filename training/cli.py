"""``nscmonitor train | train-forecast | evaluate | explain``. torch is imported inside the command functions
so that ``nscmonitor --help`` and the daemon's commands never pay for it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nscmonitor.core.errors import UserFacingError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    _add_train(sub)
    _add_train_forecast(sub)
    _add_evaluate(sub)
    _add_explain(sub)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a tile classifier (torch), evaluate it and export model.onnx",
                       description="Train, evaluate on held-out wells, and export a verified model.onnx into --out.")
    p.add_argument("--data", help="tiles export (tiles.csv + tiles.json) or class_name/*.tif tree")
    p.add_argument("--scheme", choices=("binary", "multiclass"))
    p.add_argument("--out", help="run directory (checkpoints, config.json, metrics.json, model.onnx)")
    p.add_argument("--config", dest="train_config", help="TOML with TrainConfig settings (CLI flags win)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--int8-aware-steps", type=int, metavar="N",
                   help="after the epochs, N steps of fine-tuning with the int8 engine's rounding simulated, so the "
                        "int8 engine built from the model passes its check with more of the network in int8 "
                        "(default 0: none; ResNets trained here needed it, docs/training.md)")
    p.add_argument("--image-size", type=int, help="model input size in px (tiles are resized to it)")
    p.add_argument("--arch", help="tiny | small | small24 | small16 | resnet18 | resnet34 | resnet50 (default) | resnet101 | resnet152")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--device", help="auto (the default: cuda when torch sees a GPU, else cpu), cpu or cuda")
    p.add_argument("--weights", help="local .pth state dict to start from (never downloaded)")
    p.add_argument("--seed", type=int, help="seed of the split, the initial weights and the batches (default 0)")
    p.add_argument("--threads", type=int,
                   help="torch CPU threads of the run, shared by its --nproc processes (default: all cores)")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="train on N processes with DistributedDataParallel (torchrun on this machine: gloo on "
                        "the CPU, one GPU per process with --device cuda); rank 0 writes checkpoints and model.onnx")
    p.add_argument("--resume", action="store_true", default=None, help="continue from RUN_DIR/last.pt")
    p.add_argument("--no-export", dest="export", action="store_false", default=None)
    p.add_argument("--no-engine", action="store_true",
                   help="do not build this machine's engine (int8 / TensorRT, gated against fp32) beside model.onnx")
    p.add_argument("--label-mode", choices=("well", "tile", "endpoint"),
                   help="simulator tiles: label each tile with its well's recipe fate (well), its well's "
                        "live-cell majority at its last time point (endpoint) or its own cells' majority (tile)")
    p.add_argument("--min-train-h", type=float, help="train only on tiles at or after this many hours")
    p.add_argument("--soft-labels", action="store_true", default=None,
                   help="multiclass: learn shares per fate instead of one fate per tile, so a well's mean "
                        "probabilities estimate its composition: with --label-mode endpoint each well's end-point "
                        "shares (a simulator export's, or frac_<class> of --labels/--from-store), with --label-mode "
                        "tile each simulator tile's own cells (docs/training.md)")
    p.add_argument("--ood-fit-tiles", type=int, metavar="N",
                   help="fit the out-of-distribution flag's Gaussians on at most N training tiles (whole images, "
                        "every plate's share), which shortens the end of a small model's training (default 0: all)")
    p.add_argument("--from-store", action="store_true",
                   help="train on the database's scored images of the wells labelled with 'nscmonitor labels import' "
                        "(--db, else the database of the global --config); every earlier image inherits its well's label")
    p.add_argument("--labels", metavar="CSV",
                   help="like --from-store, with end-point labels from this file (experiment,plate,well and label "
                        "or frac_<class>) instead of the database's; the file is checked but not imported")
    p.add_argument("--db", default=argparse.SUPPRESS, help="database URL for --from-store/--labels (overrides the config)")
    p.add_argument("--tile-size", type=int,
                   help="tile size in image px before resizing to --image-size (store data default: "
                        "[retrain.train] tile_size, else the active model's field of view, else 224)")
    p.set_defaults(func=_train)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="well-level figures with 95 %% intervals of one or more runs on labelled data",
        description="Evaluate one run, or several runs (one per training seed), on labelled test data: "
        "accuracy, balanced accuracy and well-level calibration error (ECE) with 95 % intervals, by time "
        "bin, counting wells (not tiles or time points) as the independent units; per test plate and "
        "pooled; conditions the training never saw apart; with several runs, each seed and the spread. "
        "Writes evaluation.json, evaluation.md (the printed tables) and evaluation.png; a run's own "
        "metrics.json is left alone unless --write-metrics.")
    p.add_argument("model", nargs="+",
                   help="RUN_DIR (best.pt, torch), a .pt checkpoint, or model.onnx (ONNX Runtime); "
                   "several: one per training seed")
    p.add_argument("--data", required=True, action="append",
                   help="labelled test data (repeat for several exports, e.g. one per test plate)")
    p.add_argument("--split", default="test", help="test | val | train | all (data without splits: all)")
    p.add_argument("-o", "--out", help="folder for evaluation.json/.md/.png (default: RUN_DIR/evaluation; "
                   "required with several models)")
    p.add_argument("--write-metrics", action="store_true",
                   help="also replace each run's own metrics.json with this evaluation")
    p.add_argument("--baseline-from", metavar="TRAIN_DATA",
                   help="also fit the classical baseline (logistic regression on tile texture features) on this "
                   "data's training split, drawn as training draws it with the first run's seed, and report it "
                   "the same way")
    p.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the well bootstrap (default 0)")
    p.add_argument("--resamples", type=int, default=None, help="bootstrap resamples (default 2000)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--label-mode", choices=("well", "tile", "endpoint"),
                   help="truth for simulator tiles (default: what the model was trained with)")
    p.set_defaults(func=_evaluate)


def _add_train_forecast(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-forecast", help="train the time-aware well model and export forecast.onnx (the forecast_model setting)",
        description="Train the well forecast (a small GRU over each well's frames up to each time, on tile "
        "features normalised against the plate's induction scan) on a labelled tiles export with several plates "
        "and hours since induction, print the held-out wells' accuracy per hour and write OUT/forecast.onnx for "
        "the forecast_model setting (docs/training.md).")
    p.add_argument("--data", help="tiles export (tiles.csv + tiles.json) with plates and elapsed_h")
    p.add_argument("--from-store", action="store_true",
                   help="train on the database's scored images of the wells labelled with 'nscmonitor labels import' "
                        "(--db, else the database of the global --config); the plates need their induction (0 h) scan")
    p.add_argument("--labels", metavar="CSV", help="like --from-store, with end-point labels from this file")
    p.add_argument("--db", default=argparse.SUPPRESS, help="database URL for --from-store/--labels (overrides the config)")
    p.add_argument("--tile-size", type=int, help="store data: tile size in image px of the features (default as for "
                   "train --from-store)")
    p.add_argument("--out", required=True, help="folder for forecast.onnx")
    p.add_argument("--scheme", choices=("binary", "multiclass"), default="multiclass",
                   help="multiclass (default) or binary: neuron vs glia, read off the four-fate model where every "
                        "label names a fate, else learned from the binary labels")
    p.add_argument("--epochs", type=int, default=300, help="full-batch epochs; the best on validation is kept")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the weights (default 0)")
    p.add_argument("--members", type=int, default=3,
                   help="models trained from seeds SEED, SEED+1, ... and served as one, their logits averaged "
                        "(default 3; 1: a single model)")
    p.add_argument("--compare", metavar="FORECAST.onnx",
                   help="also read this forecast model (e.g. the one serving) on the same held-out wells and print both")
    p.add_argument("--version", help="version name stored in the file and with each forecast "
                   "(default: forecast-<name of OUT>)")
    p.add_argument("--features", metavar="NPZ", help="features the daemon stored for the export's images (paths, "
                   "values; what scheduled retraining passes), used instead of reading those images again")
    p.add_argument("--label-mode", choices=("well", "endpoint"), default="well",
                   help="each well's fate: its condition's (or its labels' majority; default), or 'endpoint', the "
                        "majority of its live cells at its last scan from the export's or the labels' fractions")
    p.set_defaults(func=_train_forecast)


def _train_forecast(args: argparse.Namespace) -> int:
    from nscmonitor.training.forecast_train import train_forecast

    if args.epochs < 1:
        raise UserFacingError(f"--epochs must be 1 or more, not {args.epochs}")
    if args.members < 1:
        raise UserFacingError(f"--members must be 1 or more, not {args.members}")
    data = args.data
    if args.from_store or args.labels:
        if data:
            raise UserFacingError("--data and --from-store/--labels are two sources: give one")
        data = _store_data(args, Path(args.out) / "data", args.tile_size)
    if not data:
        raise UserFacingError("train-forecast needs --data, or --from-store/--labels")
    metrics = train_forecast(data, args.out, scheme=args.scheme, epochs=args.epochs, seed=args.seed,
                             progress=sys.stderr.isatty(), compare=args.compare, version=args.version,
                             features=args.features, label_mode=args.label_mode, members=args.members)
    print(f"held-out wells ({metrics['split']}, n = {metrics['wells']}), accuracy of the forecast at each hour "
          "from the frames up to it [95 % interval]:")
    other = metrics.get("compared") or {}
    for hour, v in metrics["per_hour"].items():
        ci = f" [{v['ci95'][0]:.2f}, {v['ci95'][1]:.2f}]" if v["ci95"] else ""
        beside = ""
        if other.get("usable") and hour in other["per_hour"]:
            beside = f"   {other['version']}: {other['per_hour'][hour]['accuracy']:.2f}"
        print(f"  {hour:>7}  {v['accuracy']:.2f}{ci}  (n = {v['wells']}){beside}")
    calls = metrics["calls"]
    print(f"earliest confident call on the held-out wells (rule chosen on validation: p >= "
          f"{calls['rule']['threshold']:g} over >= {calls['rule']['min_points']} time points):")
    from nscmonitor.training.calls import calls_table

    print(calls_table(calls))
    mean = metrics["mean_accuracy"]
    if other.get("usable"):
        print(f"mean over the hours: {mean:.3f}, {other['version']} {other['mean_accuracy']:.3f} on the same wells")
    elif other:
        print(f"compared model {other['path']}: {other['why']}")
    ood = metrics["ood"]
    test = ood.get("flagged_test_plate")
    if "unavailable" in ood:
        print(f"out-of-distribution flag: not fitted ({ood['unavailable']}); the model serves without it")
    else:
        print(f"out-of-distribution flag (the forecast's own, on its {ood['n_images']} training and validation "
              f"images, threshold {ood['threshold']:.3g} from {ood['threshold_from']}): flags "
              f"{ood['flagged_held_out_plates']:.1%} of plates it was not fitted on"
              + ("" if test is None else f", {test:.1%} of the test plate's images"))
    print(f"wrote {Path(args.out) / 'forecast.onnx'} (set forecast_model to it)")
    return 0


def _add_explain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="Grad-CAM heat map of a model's predicted class over an image")
    p.add_argument("model", help="RUN_DIR (needs best.pt) or a .pt checkpoint")
    p.add_argument("image")
    p.add_argument("-o", "--out", required=True, help="output PNG")
    p.set_defaults(func=_explain)


def _train(args: argparse.Namespace) -> int:
    from nscmonitor.training.train import TrainConfig, main

    cfg = TrainConfig.from_sources(
        args.train_config, data=args.data, scheme=args.scheme, out=args.out, epochs=args.epochs,
        int8_aware_steps=args.int8_aware_steps,
        image_size=args.image_size, arch=args.arch, batch_size=args.batch_size, lr=args.lr, device=args.device,
        weights=args.weights, threads=args.threads, resume=args.resume, export=args.export,
        label_mode=args.label_mode, min_train_h=args.min_train_h, tile_size=args.tile_size, seed=args.seed,
        soft_labels=args.soft_labels, ood_fit_tiles=args.ood_fit_tiles)
    if args.from_store or args.labels:
        if not cfg.out:
            raise UserFacingError("train needs --out")
        if args.data:
            raise UserFacingError("--data and --from-store/--labels are two sources: give one")
        cfg.data = str(_store_data(args, Path(cfg.out) / "data", cfg.tile_size))
    if not cfg.data or not cfg.out:
        raise UserFacingError("train needs --data and --out (or both in --config), or --from-store/--labels")
    if args.nproc < 1:
        raise UserFacingError(f"--nproc must be 1 or more, not {args.nproc}")
    if args.nproc > 1:
        _launch(cfg, args.nproc)
    else:
        try:
            main(cfg)
        except FileNotFoundError as exc:
            raise UserFacingError(str(exc)) from exc
    model = Path(cfg.out) / "model.onnx"
    if cfg.export is not False and not args.no_engine and model.is_file():
        from nscmonitor.engines import autobuild

        print(f"engine: {autobuild.describe(autobuild.ensure(model, threads=cfg.threads or 0))}")
    return 0


def _launch(cfg, nproc: int) -> None:
    """torchrun as a child process rather than ``torch.multiprocessing.spawn`` here: the
    documented ``torchrun ... -m nscmonitor.training.train`` and this command then run one
    code path, torchrun finds a free rendezvous port, and it stops every worker when one
    fails (a spawned worker that dies can leave the others blocked in a collective). The
    resolved settings travel as ``RUN_DIR/launch.toml``, which also resumes the run by hand."""
    import dataclasses
    import os

    from nscmonitor.training.launch import command, run, thread_env, write_toml

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / "launch.toml"
    write_toml(cfg_path, dataclasses.asdict(cfg))
    argv = command(cfg_path, nproc)
    print(f"training on {nproc} processes: {' '.join(argv[1:])}")
    rc = run(argv, env={**os.environ, **thread_env(cfg.threads, nproc)})
    if rc != 0:
        raise UserFacingError(f"training on {nproc} processes failed (exit code {rc}); the messages above say why"
                              + ("; continue with --resume" if (out / "last.pt").is_file() else ""))


def _store_data(args: argparse.Namespace, data_dir: Path, tile_size: int | None) -> Path:
    from nscmonitor.cli.args import settings_from
    from nscmonitor.schedule.retrain import store_dataset

    samples = store_dataset(settings_from(args), data_dir, labels_file=Path(args.labels) if args.labels else None,
                            tile_size=tile_size)
    by_split = {k: sum(smp.split == k for smp in samples) for k in ("train", "val", "test")}
    wells = len({(smp.experiment, smp.plate, smp.well) for smp in samples})
    print(f"store data: {len(samples)} images of {wells} labelled wells ("
          + ", ".join(f"{k} {v}" for k, v in by_split.items()) + f") -> {data_dir}")
    return data_dir


def _evaluate(args: argparse.Namespace) -> int:
    from nscmonitor.engines.metadata import MetadataError
    from nscmonitor.training.evaluate_runs import evaluate_runs, tables

    if args.resamples is not None and args.resamples < 100:
        raise UserFacingError(f"--resamples must be 100 or more, not {args.resamples}")
    try:
        res = evaluate_runs(args.model, args.data, out_dir=args.out, split=args.split, device=args.device,
                            label_mode=args.label_mode, write_run_metrics=args.write_metrics,
                            seed=args.bootstrap_seed, n_boot=args.resamples, baseline_from=args.baseline_from)
    except MetadataError as exc:
        raise UserFacingError(str(exc)) from exc
    for m in res["runs"]:
        print(f"{m['model']}: {m['scheme']} on {m['split']} tiles: accuracy tile {m['tile']['accuracy']:.3f}, "
              f"image {m['image']['accuracy']:.3f}, well x time {m['well']['accuracy']:.3f}")
    print(tables(res))
    print(f"wrote {res['out']}/evaluation.json and evaluation.md"
          + ("; and each run's metrics.json" if args.write_metrics else ""))
    return 0


def _explain(args: argparse.Namespace) -> int:
    from nscmonitor.training.explain import explain_image, write_overlay

    if Path(args.model).suffix == ".onnx":
        raise UserFacingError("explain needs the torch checkpoint: pass the run directory (best.pt), not model.onnx")
    res = explain_image(args.model, args.image)
    write_overlay(res, args.out)
    probs = ", ".join(f"{c} {p:.2f}" for c, p in zip(res["classes"], res["probabilities"]))
    print(f"{args.image}: {res['class']} ({probs}) over {res['n_tiles']} tiles -> {args.out}")
    return 0
