"""Inference backends side by side: images/s, latency, agreement with fp32, peak memory.

    python benchmarks/inference.py --model RUN_DIR/model.onnx --tiles TILES_DIR
    python benchmarks/inference.py                      # random-weights ResNet50, synthetic tiles

Each backend runs in its own process (so peak memory is its own and torch is not imported
into the ONNX Runtime measurements), one after another on the same machine. Without
``--model`` a torchvision ResNet50 with RANDOM weights is exported: its timings are real, but
its logits are near-tied, so agreement figures mean nothing and the output says so. Results
go to a JSON file and a Markdown table (pasted into docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CPU_BACKENDS = ("torch-eager", "torch-cl", "ort-fp32", "ort-int8", "ov-int8", "ov-int8-2s", "ov-int8-bf16stem", "ov-int8-bf16",
                "ov-bf16")
GPU_BACKENDS = ("ort-cuda", "torch-cuda-fp16-eager", "torch-cuda-fp16", "tensorrt-fp16", "tensorrt-int8")
ORDER = CPU_BACKENDS + GPU_BACKENDS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="trained fp32 ONNX (RUN_DIR/model.onnx; torch backends use RUN_DIR/best.pt)")
    ap.add_argument("--input-size", type=int,
                    help="re-export --model's checkpoint (RUN_DIR/best.pt) at this tile size, e.g. 224 for a "
                         "model trained on 64 px tiles (ResNets are size-agnostic; tiles are resampled)")
    ap.add_argument("--tiles", help="labelled tiles folder (tiles.csv): train calibrates, val/test measure agreement")
    ap.add_argument("--sizes", default="224,128", help="tile sizes for the random model (a given model has its own)")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--backends", default=",".join(CPU_BACKENDS),
                    help=f"comma-separated, from {', '.join(ORDER)} (ov-*: OpenVINO, optional)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seconds", type=float, default=5.0, help="timed seconds per backend and batch size")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run all backends round-robin this many times and report medians (noisy machines)")
    ap.add_argument("--n-heldout", type=int, default=128)
    ap.add_argument("--n-calib", type=int, default=64)
    ap.add_argument("--work", help="folder for exported models and engines (default: a temp dir)")
    ap.add_argument("--out", default="benchmarks/results", help="folder for the JSON and Markdown results")
    ap.add_argument("--worker", nargs=4, metavar=("BACKEND", "MODEL", "HELDOUT_NPY", "OUT_JSON"), help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def make_random_model(work: Path, size: int) -> Path:
    """Export a seeded random ResNet50 (and its best.pt) for one tile size."""
    import torch
    import torchvision

    from nscmonitor.core.domain import MULTICLASS
    from nscmonitor.engines.metadata import ModelMetadata
    from nscmonitor.engines.torch import export_onnx, save_checkpoint, with_prelude

    run = work / f"random-resnet50-{size}"
    onnx_path = run / "model.onnx"
    if onnx_path.is_file():
        return onnx_path
    torch.manual_seed(0)
    net = torchvision.models.resnet50(weights=None, num_classes=len(MULTICLASS)).eval()
    meta = ModelMetadata(name="resnet50-RANDOM-WEIGHTS", version="untrained", scheme="multiclass",
                         classes=MULTICLASS, input_size=size, arch="resnet50",
                         normalization={"p_low": 1.0, "p_high": 99.8, "mean": 0.449, "std": 0.226, "in_graph": True})
    save_checkpoint(run / "best.pt", net, "resnet50", meta)
    export_onnx(with_prelude(net, meta), meta, onnx_path)
    return onnx_path


def resized_model(model: Path, size: int, work: Path) -> Path:
    """The trained run's weights exported at another input size, with its best.pt beside."""
    import shutil
    from dataclasses import replace

    from nscmonitor.engines.metadata import read_onnx_metadata
    from nscmonitor.engines.torch import build_network, checkpoint_for, export_onnx, load_checkpoint

    meta = replace(read_onnx_metadata(model), input_size=size)
    ckpt = load_checkpoint(checkpoint_for(model))
    run = work / f"{model.parent.name}-at-{size}"
    run.mkdir(parents=True, exist_ok=True)
    shutil.copy(checkpoint_for(model), run / "best.pt")
    export_onnx(build_network(ckpt, meta), meta, run / "model.onnx")
    return run / "model.onnx"


def synthetic_tiles(work: Path, size: int) -> Path:
    """Stand-in tiles when none are given (the training package's synthetic cultures)."""
    from nscmonitor.training.synthetic import write_synthetic_tiles

    out = work / f"synthetic-tiles-{size}"
    if not (out / "tiles.csv").is_file():
        write_synthetic_tiles(out, plates=3, wells_per_class=2, timepoints=(24, 48, 96), fields=2, tile_size=size)
    return out


def make_engine(backend: str, model: Path, threads: int, work: Path, batch: int = 0):
    from nscmonitor.engines.metadata import read_onnx_metadata
    from nscmonitor.engines.ort import OrtCpuEngine
    from nscmonitor.engines.torch import TorchEngine

    meta = read_onnx_metadata(model)
    if backend == "torch-eager":
        return TorchEngine(model, meta, threads=threads, channels_last=False)
    if backend == "torch-cl":
        return TorchEngine(model, meta, threads=threads, channels_last=True)
    if backend.startswith("torch-cuda-fp16"):
        from nscmonitor.engines.torch_cuda import TorchCudaEngine

        # the daemon's engine: one CUDA graph captured for the batch timed (-eager: the same
        # fp16 network launched kernel by kernel, to show what the graph saves)
        engine = TorchCudaEngine(model, meta, batch_size=batch or 8, graphs=not backend.endswith("-eager"))
        engine.name = backend
        return engine
    if backend == "ort-fp32":
        return OrtCpuEngine(model, meta, threads=threads)
    if backend == "ort-cuda":
        from nscmonitor.engines.ort import OrtCudaEngine

        return OrtCudaEngine(model, meta)
    if backend == "ort-int8":
        engine = OrtCpuEngine(work / f"{model.parent.name}-{meta.input_size}.int8.onnx", meta, threads=threads)
        engine.name = "ort-int8"
        return engine
    if backend == "ov-bf16":  # the fp32 model in bf16 throughout (engine openvino-bf16; CPUs with bf16 units)
        from nscmonitor.engines import openvino_bf16

        engine = openvino_bf16.engine(model, meta, threads=threads, batch_size=batch, large_batch=0)
        engine.name = backend
        return engine
    if backend.startswith("ov-int8"):
        from nscmonitor.engines.openvino import OpenVinoEngine

        # compiled for the batch timed, as the daemon compiles it for its own; ov-int8-bf16 runs
        # the non-int8 layers in bf16, ov-int8-bf16stem only the stem and the OOD products
        # (CPUs with bf16 units), as the build may choose
        precision = {"-bf16": "bf16", "-bf16stem": "bf16-stem"}.get(backend[len("ov-int8"):], "f32")
        engine = OpenVinoEngine(work / f"{model.parent.name}-{meta.input_size}.int8.onnx", meta, threads=threads,
                                streams=2 if backend.endswith("-2s") else 1, batch_size=batch,
                                precision=precision, require_gate=False)
        engine.name = backend
        return engine
    if backend.startswith("tensorrt-"):
        from nscmonitor.engines.build import find_engine
        from nscmonitor.engines.tensorrt import TrtEngine

        return TrtEngine(model, meta, engine_path=find_engine(model, cache_dir=work / "trt-cache",
                                                             precision=backend.split("-")[1]))
    raise SystemExit(f"unknown backend {backend}")


def worker(backend: str, model: str, heldout_npy: str, out_json: str, batches: list[int], seconds: float,
           threads: int, work: Path) -> None:
    from nscmonitor.engines.bench import peak_rss_mb, time_engine
    from nscmonitor.engines.validate import predict

    x = np.load(heldout_npy)
    t0 = time.perf_counter()
    engine = make_engine(backend, Path(model), threads, work)
    engine.load()
    load_s = time.perf_counter() - t0
    probs = predict(engine, x, 8)
    np.save(Path(out_json).with_suffix(".probs.npy"), probs)
    timings = []
    for b in batches:
        if backend.startswith(("ov-", "torch-cuda-fp16")):  # compiled/captured for a fixed batch: one per batch
            engine.close()
            engine = make_engine(backend, Path(model), threads, work, batch=b)
            engine.load()
        timings.append(time_engine(engine, x, b, min_seconds=seconds).to_dict())
    Path(out_json).write_text(json.dumps({"backend": backend, "load_s": load_s, "timings": timings,
                                          "peak_rss_mb": peak_rss_mb()}))


def prepare(model: Path, tiles: Path, args: argparse.Namespace, work: Path, backends: list[str]):
    from nscmonitor.engines.calibration import calibration_and_heldout
    from nscmonitor.engines.metadata import read_onnx_metadata

    meta = read_onnx_metadata(model)
    calib, held = calibration_and_heldout(tiles, meta, n_calib=args.n_calib, n_heldout=args.n_heldout)
    notes: dict[str, dict] = {}
    int8_users = [b for b in backends if b == "ort-int8" or b.startswith("ov-int8")]
    if int8_users:
        t0 = time.perf_counter()
        try:
            from nscmonitor.engines.quantize import build_ort_int8, quantize_static_qdq

            int8 = work / f"{model.parent.name}-{meta.input_size}.int8.onnx"
            path, report = build_ort_int8(model, calib, held, out_path=int8, threads=args.threads)
            notes["ort-int8"] = {"build_s": time.perf_counter() - t0, "gate": report.to_dict(),
                                 "published": path is not None, "path": str(int8)}
            if path is None:
                # the gate refused it for serving; its speed is still worth knowing, and it stays in the work dir
                quantize_static_qdq(model, int8, calib.x)
            else:
                record = read_onnx_metadata(int8).extra["int8"]
                for name, key in (("ov-int8", "openvino_gate"), ("ov-int8-bf16stem", "openvino_bf16_stem_gate"),
                                  ("ov-int8-bf16", "openvino_bf16_gate")):
                    ov_gate = record.get(key)
                    notes[name] = {"gate": ov_gate, "published": bool(ov_gate and ov_gate["passed"])}
        except Exception as exc:  # one backend's failure must not cost the other rows
            for b in int8_users:
                notes.setdefault(b, {})["error"] = f"int8 model not built: {_one_line(exc)}"
    for b in backends:
        if b.startswith("tensorrt-"):
            t0 = time.perf_counter()
            try:
                from nscmonitor.engines.build import BuildOptions, build_trt_engine

                path, report = build_trt_engine(model, held, opts=BuildOptions(precision=b.split("-")[1]),
                                                cache_dir=work / "trt-cache", calib=calib)
            except Exception as exc:  # TensorRT raises many types; keep the reason in this row only
                notes[b] = {"build_s": time.perf_counter() - t0, "error": f"build failed: {_one_line(exc)}"}
                continue
            notes[b] = {"build_s": time.perf_counter() - t0, "gate": report.to_dict() if report else None,
                        "published": path is not None}
            if path is None:
                notes[b]["error"] = "failed its gate: " + "; ".join(report.reasons if report else ())
    return meta, held, notes


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


def run_size(model: Path, tiles: Path, args: argparse.Namespace, work: Path, random_model: bool) -> dict:
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    meta, held, notes = prepare(model, tiles, args, work, backends)
    heldout_npy = work / f"heldout-{meta.input_size}.npy"
    np.save(heldout_npy, held.x)
    runs: dict[str, list[dict]] = {b: [] for b in backends}
    errors: dict[str, str] = {}
    probs = {}
    for b in backends:
        if notes.get(b, {}).get("error"):
            errors[b] = notes[b]["error"]
            print(f"[{meta.input_size}px] {b} skipped: {errors[b]}", flush=True)
    for rnd in range(args.rounds):
        for b in backends:
            if b in errors:
                continue
            out_json = work / f"result-{meta.input_size}-{b}-r{rnd}.json"
            cmd = [sys.executable, __file__, "--worker", b, str(model), str(heldout_npy), str(out_json),
                   "--batches", args.batches, "--seconds", str(args.seconds), "--threads", str(args.threads),
                   "--work", str(work)]
            print(f"[{meta.input_size}px] round {rnd + 1}/{args.rounds} {b} (load {os.getloadavg()[0]:.1f}) ...",
                  flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                errors[b] = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
                print(f"  skipped: {errors[b]}", flush=True)
                continue
            r = json.loads(out_json.read_text())
            r["loadavg_1min"] = os.getloadavg()[0]
            runs[b].append(r)
            probs[b] = np.load(out_json.with_suffix(".probs.npy"))
    results = [{"backend": b, "error": errors[b]} if b in errors else _median_of_rounds(b, runs[b]) for b in backends]
    ref = probs.get("ort-fp32")
    if ref is not None:
        from nscmonitor.engines.validate import compare

        for r in results:
            if r["backend"] in probs:
                rep = compare(ref, probs[r["backend"]], held.groups, backend=r["backend"])
                r["agreement"] = {"top1": rep.top1_agreement, "well_readout_pp": rep.well_readout_pp,
                                  "max_abs_prob_diff": rep.max_abs_prob_diff}
    return {"size": meta.input_size, "model": str(model), "model_name": meta.name, "random_weights": random_model,
            "tiles": str(tiles), "n_heldout": len(held), "notes": notes, "results": results}


def _median_of_rounds(backend: str, rounds: list[dict]) -> dict:
    """Backends run round-robin, so each one's median across rounds saw similar machine load
    to the others' (the project's CPUs are shared; DESIGN §6)."""
    timings = []
    for i, t in enumerate(rounds[0]["timings"]):
        per = [r["timings"][i] for r in rounds]
        timings.append({**t, "images_per_s": float(np.median([p["images_per_s"] for p in per])),
                        "latency_ms_p50": float(np.median([p["latency_ms_p50"] for p in per])),
                        "rounds_images_per_s": [p["images_per_s"] for p in per]})
    return {"backend": backend, "timings": timings, "peak_rss_mb": max(r["peak_rss_mb"] for r in rounds),
            "load_s": float(np.median([r["load_s"] for r in rounds])), "rounds": len(rounds),
            "loadavg_1min": [r["loadavg_1min"] for r in rounds]}


def machine() -> dict:
    load = os.getloadavg()
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "loadavg_at_start": load, "time": time.strftime("%Y-%m-%d %H:%M")}


def markdown(report: dict) -> str:
    from nscmonitor.engines.validate import readout_text

    lines = []
    for block in report["sizes"]:
        title = f"### {block['model_name']} at {block['size']}x{block['size']}"
        if block["random_weights"]:
            title += " - RANDOM WEIGHTS (timings real, agreement meaningless)"
        lines += [title, "", f"{report['machine']['cpu']}, {report['threads']} threads, "
                  f"agreement on {block['n_heldout']} held-out tiles from `{Path(block['tiles']).name}`", "",
                  "| backend | batch | images/s | p50 latency ms | top-1 vs fp32 | readout diff pp | peak RSS MB |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r in block["results"]:
            if "error" in r:
                lines.append(f"| {r['backend']} | - | - | - | - | - | skipped: {r['error'][:160]} |")
                continue
            ag = r.get("agreement", {})
            for t in r["timings"]:
                lines.append(f"| {r['backend']} | {t['batch']} | {t['images_per_s']:.1f} | {t['latency_ms_p50']:.0f} | "
                             f"{ag.get('top1', float('nan')):.2%} | {ag.get('well_readout_pp', float('nan')):.2f} | "
                             f"{r['peak_rss_mb']:.0f} |")
        for name in ("ort-int8", "ov-int8"):
            gate = block["notes"].get(name, {}).get("gate")
            if gate:
                verdict = "passed" if gate["passed"] else "FAILED " + "; ".join(gate["reasons"])
                lines += ["", f"{name} gate on {gate['n_tiles']} held-out tiles: top-1 {gate['top1_agreement']:.2%}, "
                          f"{readout_text(gate)} -> {verdict}"]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    if args.worker:
        worker(*args.worker, batches=batches, seconds=args.seconds, threads=args.threads, work=Path(args.work))
        return 0
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="nscm-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine(), "threads": args.threads, "batches": batches, "sizes": []}
    if args.model:
        from nscmonitor.engines.metadata import read_onnx_metadata

        model = Path(args.model)
        if args.input_size and args.input_size != read_onnx_metadata(model).input_size:
            model = resized_model(model, args.input_size, work)
        size = read_onnx_metadata(model).input_size
        tiles = Path(args.tiles) if args.tiles else synthetic_tiles(work, size)
        report["sizes"].append(run_size(model, tiles, args, work, random_model=False))
    else:
        print("no --model: exporting a RANDOM-WEIGHTS ResNet50 (agreement figures will be meaningless)")
        for size in [int(s) for s in args.sizes.split(",")]:
            tiles = Path(args.tiles) if args.tiles else synthetic_tiles(work, size)
            report["sizes"].append(run_size(make_random_model(work, size), tiles, args, work, random_model=True))
    report["machine"]["loadavg_at_end"] = os.getloadavg()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M")
    (out / f"inference-{stamp}.json").write_text(json.dumps(report, indent=2))
    md = markdown(report)
    (out / f"inference-{stamp}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
