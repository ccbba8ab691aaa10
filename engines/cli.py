"""``nscmonitor engine build | list | bench``. Heavy imports happen inside the commands."""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path

from nscmonitor.core.errors import UserFacingError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    engine = sub.add_parser("engine", help="build, list and benchmark inference engines")
    esub = engine.add_subparsers(dest="engine_command", metavar="ENGINE_COMMAND")
    engine.set_defaults(func=lambda args: (engine.print_help(), 2)[1])

    build = esub.add_parser("build", help="build a TensorRT engine or an int8 ONNX model, gated against fp32")
    build.add_argument("model", help="the fp32 ONNX model")
    build.add_argument("--backend", choices=("trt", "ort-int8"), default="ort-int8",
                       help="ort-int8: the Q/DQ model for OpenVINO and ONNX Runtime (MODEL.int8.onnx); when the plain "
                            "recipe fails its gate, the layer groups that need it are kept fp32 and it is gated again")
    prec = build.add_mutually_exclusive_group()
    prec.add_argument("--fp32", dest="precision", action="store_const", const="fp32")
    prec.add_argument("--fp16", dest="precision", action="store_const", const="fp16",
                      help="TensorRT fp16 (the default for --backend trt; on TensorRT 11 from an fp16 copy of MODEL)")
    prec.add_argument("--int8", dest="precision", action="store_const", const="int8",
                      help="int8; for --backend trt parsed from the signed symmetric Q/DQ model beside MODEL "
                           "(MODEL.int8-trt.onnx), which is quantised from the calibration tiles first when missing")
    build.add_argument("--calibration", metavar="DIR",
                       help="tiles folder (tiles.csv: train split calibrates, val/test split validates); default: "
                            "the calibration set that travels with the model (calibration.npz beside it)")
    build.add_argument("--cache", metavar="DIR", help="TensorRT engine cache (default: beside the model)")
    build.add_argument("--max-batch", type=int, default=32)
    build.add_argument("--n-calib", type=int, default=128, help="calibration tiles (default 128)")
    build.add_argument("--n-heldout", type=int, default=512, help="held-out tiles for the gate (default 512)")
    build.add_argument("--force", action="store_true", help="rebuild even if a valid cached engine exists")
    build.set_defaults(func=cmd_build)

    auto = esub.add_parser(
        "autobuild", help="build, gate and record the best engine this machine has for a model (what register, "
        "train, promote and the daemon start on their own)",
        description="Builds the fastest engine this machine has for MODEL (TensorRT int8/fp16 where an NVIDIA GPU "
        "and TensorRT are present; on CPUs OpenVINO or ONNX Runtime int8 and, where the CPU has bf16 units, the "
        "fp32 model in bf16 on OpenVINO), gates each against the fp32 ONNX on the model's held-out tiles, times "
        "those that pass against fp32, serves the fastest and records the outcome in engine-status.json beside "
        "the model. The bf16 engine is checked first; once it has passed and runs at least as fast as fp32 it is "
        "recorded as ready, so the daemon serves it while the int8 file is still being built. Does nothing when "
        "an engine was already built, or already failed its gate, under the same model, calibration set, runtimes "
        "and machine (use --force to build anyway); a build that failed for the machine (a full disk, no "
        "permission) is built again. Works in a temporary folder of its own and removes those that stopped "
        "builds left. Exit code 0 when an engine is ready, 1 when fp32 serves.")
    auto.add_argument("model", help="the fp32 ONNX model (a registry version's model.onnx or a run's)")
    auto.add_argument("--calibration", metavar="DIR",
                      help="tiles folder to calibrate and gate with when the model carries no calibration set")
    auto.add_argument("--threads", type=int, default=0, help="CPU threads for quantisation and gates (0: all)")
    auto.add_argument("--force", action="store_true", help="build even if the recorded outcome is current")
    auto.set_defaults(func=cmd_autobuild)

    lst = esub.add_parser("list", help="backends available here and engines built for a model")
    lst.add_argument("model", nargs="?", help="an ONNX model whose int8 variant and TensorRT engines to list")
    lst.add_argument("--cache", metavar="DIR")
    lst.set_defaults(func=cmd_list)

    bench = esub.add_parser("bench", help="images/s and latency per backend, side by side")
    bench.add_argument("model")
    bench.add_argument("--backends", default="ort-cpu,ort-int8,torch",
                       help="comma-separated (tensorrt, torch-cuda, ort-cuda, ort-int8, ort-cpu, torch, "
                            "openvino-int8, openvino-bf16, openvino-fp32)")
    bench.add_argument("--batch", default="1,8,32", help="comma-separated batch sizes")
    bench.add_argument("--tiles", metavar="DIR", help="real tiles for agreement with fp32 (else timing only)")
    bench.add_argument("--threads", type=int, default=0)
    bench.add_argument("--seconds", type=float, default=3.0, help="timed seconds per backend and batch")
    bench.add_argument("--cache", metavar="DIR")
    bench.set_defaults(func=cmd_bench)


def _ints(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError as exc:
        raise UserFacingError(f"expected comma-separated integers, got {text!r}") from exc


def cmd_build(args: argparse.Namespace) -> int:
    from nscmonitor.engines.base import EngineError
    from nscmonitor.engines.calibration import calibration_and_heldout, load_model_tiles
    from nscmonitor.engines.metadata import MetadataError, read_onnx_metadata

    try:
        meta = read_onnx_metadata(args.model)
        if args.calibration:
            calib, held = calibration_and_heldout(args.calibration, meta, n_calib=args.n_calib,
                                                  n_heldout=args.n_heldout)
        else:
            own = load_model_tiles(Path(args.model), meta)
            if own is None:
                raise UserFacingError(f"{args.model} has no calibration set beside it (calibration.npz); "
                                      "pass --calibration DIR (a labelled tiles folder)")
            calib, held = own.calib, own.heldout
        if args.backend == "ort-int8":
            if args.precision not in (None, "int8"):
                raise UserFacingError("--backend ort-int8 builds int8 only")
            path, report = _build_int8(Path(args.model), calib, held)
        else:
            from nscmonitor.engines.build import BuildOptions, build_trt_engine

            opts = BuildOptions(precision=args.precision or "fp16", max_batch=args.max_batch,
                                opt_batch=min(8, args.max_batch))
            path, report = build_trt_engine(args.model, held, opts=opts, cache_dir=args.cache, calib=calib,
                                            force=args.force)
    except (EngineError, MetadataError) as exc:
        raise UserFacingError(str(exc)) from exc
    if report is not None:
        print(report.summary())
    if path is None:
        print("no engine published: it failed the validation gate (report written beside the model)")
        return 1
    if report is not None and not report.passed:
        print(f"int8 model kept for OpenVINO only (its own gate passed; ONNX Runtime refuses it): {path}")
        return 0
    print(f"engine ready: {path}")
    return 0


def _build_int8(model: Path, calib, held):
    """The int8 build as on arrival: the plain recipe, then, when it fails, the mixed-precision
    search, whose steps show as a progress bar."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from nscmonitor.engines.autobuild import has_openvino
    from nscmonitor.engines.mixed_precision import build_int8

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as prog:
        task = prog.add_task("quantising to int8 and gating against fp32", total=None)

        def detail(done: int, total: int, msg: str) -> None:
            prog.update(task, description=msg, completed=done, total=total)

        path, report, _ = build_int8(model, calib, held, want_openvino=has_openvino(), progress=detail)
    return path, report


def cmd_autobuild(args: argparse.Namespace) -> int:
    import time

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from nscmonitor.engines import autobuild as ab
    from nscmonitor.engines.build_scratch import scratch

    model = Path(args.model)
    if not model.is_file():
        raise UserFacingError(f"model file not found: {model}")
    console = Console(stderr=True)
    lock = ab.BuildLock(ab.lock_path(model))
    try:
        got = lock.acquire()
    except OSError as exc:
        raise UserFacingError(f"cannot build beside {model}: {exc} (the engine lives in the model's folder, "
                              "which must be writable)") from exc
    if not got:
        console.print(f"another build of {model} is running; waiting for it")
        while not lock.acquire():
            time.sleep(0.5)
    with lock:
        status = ab.read_status(model)
        cal = args.calibration or (status.calibration_dir if status else None)
        action = ab.decide(status, ab.fingerprint(model, calibration_dir=cal),
                           artefact_present=ab.artefact_present(model, status), build_running=False)
        if args.force or action == "build":
            targets = ab.targets_here()
            with Progress(SpinnerColumn(), TextColumn("[bold]engine[/bold] {task.description}"), BarColumn(),
                          MofNCompleteColumn(), TimeElapsedColumn(), console=console) as prog:
                # loading the tiles, each target's gate, and timing each CPU engine against fp32
                # (the OpenVINO int8 build also certifies the file for ONNX Runtime, timed too; the
                # bf16 engine is timed early too, to serve while the rest is built)
                steps = (1 + len(targets) + sum(t in ab.SPEED_FIELDS for t in targets) + ("openvino-int8" in targets)
                         + ("openvino-bf16" in targets))
                task = prog.add_task(f"for {model.parent.name}: {' > '.join(targets)}", total=steps)

                def step(msg: str) -> None:
                    prog.update(task, description=msg, advance=1)

                search: list = []  # the mixed-precision search's own bar, added when a search starts

                def detail(done: int, total: int, msg: str) -> None:
                    if not search:
                        search.append(prog.add_task(msg, total=total))
                    prog.update(search[0], description=msg, completed=done, total=total)

                with scratch():  # removed however the build ends, now or by the next build
                    status = ab.run_build(model, calibration_dir=cal, threads=args.threads, progress=step,
                                          targets=targets, detail=detail)
                prog.update(task, completed=steps, description="done")
    print(ab.describe(status))
    return 0 if status is not None and status.state == "ready" else 1


def _backend_status() -> list[tuple[str, str]]:
    rows = []
    from nscmonitor.ops.runtime_packages import TENSORRT_DISTRIBUTIONS, installed_versions, tensorrt_check

    trt = importlib.util.find_spec("tensorrt") is not None
    trt_state = tensorrt_check(installed_versions(TENSORRT_DISTRIBUTIONS))
    rows.append(("tensorrt", "not installed (pip install 'nscmonitor[gpu]')" if not trt else
                 "installed" if trt_state is None else trt_state[1] if trt_state[0] else f"unusable: {trt_state[1]}"))
    from nscmonitor.engines.autobuild import gpu_names

    gpus = gpu_names()
    torch_here = importlib.util.find_spec("torch") is not None
    rows.append(("torch-cuda", "no NVIDIA GPU" if not gpus else "torch not installed" if not torch_here else
                 f"{gpus[0]} (serves RUN_DIR/best.pt in fp16 once build on arrival has gated it)"))
    try:
        import onnxruntime as ort

        providers = ort.get_available_providers()
        disabled = os.environ.get("NSCMONITOR_DISABLE_ORT", "") not in ("", "0")
        ort_state = "disabled by NSCMONITOR_DISABLE_ORT" if disabled else f"onnxruntime {ort.__version__}"
        rows.append(("ort-cuda", ort_state if "CUDAExecutionProvider" in providers
                     else "no CUDAExecutionProvider (needs onnxruntime-gpu)"))
        rows.append(("ort-int8", ort_state + " (needs a gated .int8.onnx beside the model)"))
        rows.append(("ort-cpu", ort_state))
    except ImportError:
        rows += [(b, "onnxruntime not installed") for b in ("ort-cuda", "ort-int8", "ort-cpu")]
    torch = importlib.util.find_spec("torch") is not None
    rows.append(("torch", "installed (serves RUN_DIR/best.pt)" if torch else "not installed"))
    ov = importlib.util.find_spec("openvino") is not None
    if not ov:
        rows += [(b, "not installed (optional: pip install openvino)") for b in ("openvino-int8", "openvino-bf16")]
        return rows
    from nscmonitor.engines.openvino import has_bf16

    rows.append(("openvino-int8", "installed (needs a .int8.onnx beside the model with OpenVINO's own gate passed)"))
    rows.append(("openvino-bf16", "installed; this CPU has bf16 units (serves the fp32 model in bf16 once build on "
                 "arrival has gated it)" if has_bf16() else "installed; this CPU has no bf16 units"))
    return rows


def cmd_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    table = Table(title="backends")
    table.add_column("backend")
    table.add_column("status")
    for name, state in _backend_status():
        table.add_row(name, escape(state))
    console.print(table)
    if not args.model:
        return 0
    from nscmonitor.engines.build import default_cache_dir
    from nscmonitor.engines.enginefile import EngineCache
    from nscmonitor.engines.metadata import MetadataError, read_onnx_metadata
    from nscmonitor.engines.ort import int8_gate, int8_path_for

    arts = Table(title=f"engines for {args.model}")
    for col in ("artefact", "kind", "built for", "gate"):
        arts.add_column(col)
    int8 = int8_path_for(args.model)
    if int8.is_file():
        try:
            int8_meta = read_onnx_metadata(int8)
            gate = int8_gate(int8_meta) or {}
            mixed = ((int8_meta.extra.get("int8") or {}).get("settings") or {}).get("mixed_precision") or {}
            if gate and mixed.get("kept_fp32_groups"):
                gate = {**gate, "kept_fp32": mixed["kept_fp32_groups"]}
            arts.add_row(str(int8), "ort int8", "any CPU", _gate_text(gate))
        except MetadataError as exc:
            arts.add_row(str(int8), "ort int8", "?", f"unreadable: {exc}")
    for path, ef, reason in EngineCache(args.cache or default_cache_dir(args.model)).entries():
        if ef is None:
            arts.add_row(str(path), "tensorrt", "?", f"unusable: {reason}")
        else:
            k = ef.key
            arts.add_row(str(path), f"tensorrt {k.precision} batch {k.min_batch}-{k.max_batch}",
                         f"{k.gpu_name} sm{k.compute_capability} TensorRT {k.trt_version}", _gate_text(ef.gate or {}))
    console.print(arts)
    from nscmonitor.engines.autobuild import summary

    console.print(f"engine on this machine (engine-status.json): {escape(summary(Path(args.model))['message'])}")
    return 0


def _gate_text(gate: dict) -> str:
    if not gate:
        return "not validated"
    verdict = "passed" if gate.get("passed") else "FAILED"
    from nscmonitor.engines.validate import kept_text, readout_text

    return (f"{verdict}: top-1 {gate.get('top1_agreement', 0):.2%}, {readout_text(gate)}"
            + kept_text(gate.get("kept_fp32")))


def cmd_bench(args: argparse.Namespace) -> int:
    import numpy as np
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from nscmonitor.engines.base import EngineError
    from nscmonitor.engines.bench import time_engine
    from nscmonitor.engines.metadata import MetadataError, read_onnx_metadata
    from nscmonitor.engines.select import canonical, make_engine
    from nscmonitor.engines.validate import compare, predict

    try:
        meta = read_onnx_metadata(args.model)
    except MetadataError as exc:
        raise UserFacingError(str(exc)) from exc
    batches = _ints(args.batch)
    backends = [canonical(b.strip()) for b in args.backends.split(",") if b.strip()]
    held = None
    if args.tiles:
        from nscmonitor.engines.calibration import HELD_OUT_SPLITS, load_tiles

        held = load_tiles(args.tiles, meta, splits=HELD_OUT_SPLITS, limit=256)
        x = held.x
    else:
        x = np.random.default_rng(0).uniform(0, 1, (max(batches), *(meta.input_channels, meta.input_size,
                                                                     meta.input_size))).astype(np.float32)
    reference = None
    table = Table(title=f"{meta.name} {meta.version} ({meta.input_size}px)"
                  + ("" if held else " - random tiles: timing only, no agreement"))
    for col in ("backend", "batch", "images/s", "p50 ms", "p90 ms", "top-1 vs fp32"):
        table.add_column(col, justify="right" if col != "backend" else "left")
    for backend in backends:
        try:
            engine = make_engine(backend, Path(args.model), meta, batch_size=max(batches), threads=args.threads,
                                 cache_dir=args.cache)
            engine.load()
        except EngineError as exc:
            table.add_row(backend, "-", "-", "-", "-", escape(f"skipped: {exc}"[:80]))
            continue
        agree = "-"
        if held is not None:
            probs = predict(engine, held.x)
            if reference is None:
                reference = probs if backend == "ort-cpu" else _ort_reference(args.model, meta, held.x)
            agree = f"{compare(reference, probs, held.groups, backend=backend).top1_agreement:.2%}"
        for b in batches:
            if getattr(engine, "request_batch", b) not in (0, b):
                # OpenVINO compiles for the daemon's batch: timed at each batch as it would serve it
                engine.close()
                engine = make_engine(backend, Path(args.model), meta, batch_size=b, threads=args.threads,
                                     cache_dir=args.cache)
                engine.load()
            t = time_engine(engine, x, b, min_seconds=args.seconds)
            table.add_row(engine.name, str(b), f"{t.images_per_s:.1f}", f"{t.latency_ms_p50:.1f}",
                          f"{t.latency_ms_p90:.1f}", agree)
        engine.close()
    Console().print(table)
    return 0


def _ort_reference(model: str, meta, x):
    from nscmonitor.engines.ort import OrtCpuEngine
    from nscmonitor.engines.validate import predict

    ref = OrtCpuEngine(model, meta)
    ref.load()
    try:
        return predict(ref, x)
    finally:
        ref.close()
