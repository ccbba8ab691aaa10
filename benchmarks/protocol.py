"""The evaluation protocol end to end: render, train several seeds, evaluate, print the tables.

What a reported figure rests on (docs/training.md, "Evaluation protocol"):

1. a training export of ``--train-plates`` plates with the fixed recipes (the simulator
   keeps its last plate for test; training keeps a whole other plate out for validation);
2. test plates the training never saw, one export each, each with its own plate-level
   biology (timing, efficiency, density, deaths, recorded in its tiles.json): the recipes on
   a fresh plate, a dose axis of a neuronal inducer and random fate mixtures, so two of the
   three hold conditions no training plate had;
3. ``--seeds`` trainings per scheme (binary and multiclass) through ``nscmonitor train``;
4. ``nscmonitor evaluate`` of all seeds of a scheme on all test plates at once: wells as the
   unit, 95 % intervals, per plate and pooled, each seed and the spread, and the classical
   baseline fitted on the same training plates (``--baseline-from``).

Every step is the documented command line (run as a child process), so the recipe in the
docs and this script cannot drift apart. The defaults are a smoke configuration (a tiny CNN,
128 px tiles read at 64 px, 20 epochs) that runs in about ten minutes on two cores; the real figures come from
``--arch resnet50 --tile-size 224 --epochs ...``. Writes OUT/protocol.json (settings, commands,
where each evaluation is) and OUT/eval-SCHEME/evaluation.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

TEST_SETS = (("test-recipes", "recipes", 101), ("test-doses", "dose", 102), ("test-mixtures", "mixtures", 103))


def nscmonitor(*args: str, log: list[dict]) -> str:
    """One documented command; stops the protocol with its output when it fails."""
    argv = [sys.executable, "-m", "nscmonitor", *args]
    t0 = time.perf_counter()
    res = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    log.append({"command": "nscmonitor " + " ".join(args), "seconds": round(time.perf_counter() - t0, 1),
                "rc": res.returncode})
    if res.returncode != 0:
        sys.stderr.write(res.stdout[-4000:] + res.stderr[-4000:])
        raise SystemExit(f"failed: nscmonitor {' '.join(args)}")
    return res.stdout


def render(out: Path, a: argparse.Namespace, log: list[dict]) -> tuple[Path, list[Path]]:
    common = ["--tile-size", str(a.tile_size), "--hours", a.hours, "--wells-per-condition", str(a.wells_per_condition)]
    train = out / "data" / "train"
    if not (train / "tiles.csv").is_file():
        nscmonitor("simulate-tiles", str(train), "--plates", str(a.train_plates), "--seed", str(a.data_seed),
                   "--conditions", "recipes", *common, log=log)
    tests = []
    for name, conditions, seed in TEST_SETS:
        d = out / "data" / name
        if not (d / "tiles.csv").is_file():
            nscmonitor("simulate-tiles", str(d), "--plates", "1", "--seed", str(seed + a.data_seed),
                       "--conditions", conditions, *common, log=log)
        tests.append(d)
    return train, tests


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="protocol-run", help="folder for data, runs and evaluations")
    ap.add_argument("--seeds", default="0,1,2", help="training seeds (default 0,1,2)")
    ap.add_argument("--schemes", default="binary,multiclass")
    ap.add_argument("--arch", default="tiny")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch-size", type=int, default=None, help="training batch (default: train's own)")
    ap.add_argument("--min-train-h", type=float, default=None,
                    help="train on tiles from this hour on (validation and test keep every hour)")
    ap.add_argument("--tile-size", type=int, default=128, help="tile in simulated px (1.24 um/px)")
    ap.add_argument("--image-size", type=int, default=64, help="model input in px (tiles are resized to it)")
    ap.add_argument("--train-plates", type=int, default=4,
                    help="plates of the training export: the simulator keeps the last for test, training one for val")
    ap.add_argument("--wells-per-condition", type=int, default=4)
    ap.add_argument("--hours", default="0,24,48,72,96,120")
    ap.add_argument("--data-seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--resamples", type=int, default=2000)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    log: list[dict] = []
    train, tests = render(out, a, log)
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    evaluations = {}
    for scheme in [s.strip() for s in a.schemes.split(",") if s.strip()]:
        runs = []
        for seed in seeds:
            run = out / "runs" / f"{a.arch}-{scheme}-s{seed}"
            if not (run / "best.pt").is_file() or not (run / "metrics.json").is_file():
                extra = []
                for flag, value in (("--batch-size", a.batch_size), ("--min-train-h", a.min_train_h)):
                    extra += [flag, str(value)] if value is not None else []
                nscmonitor("train", "--data", str(train), "--scheme", scheme, "--arch", a.arch, "--epochs",
                           str(a.epochs), "--seed", str(seed), "--threads", str(a.threads), "--out", str(run),
                           "--image-size", str(a.image_size), "--lr", str(a.lr), "--no-export", *extra, log=log)
            runs.append(str(run))
        ev = out / f"eval-{scheme}"
        data = [x for d in tests for x in ("--data", str(d))]
        printed = nscmonitor("evaluate", *runs, *data, "--split", "all", "-o", str(ev), "--resamples",
                             str(a.resamples), "--baseline-from", str(train), log=log)
        print(f"## {scheme}\n\n{printed}")
        evaluations[scheme] = str(ev / "evaluation.json")
    (out / "protocol.json").write_text(json.dumps(
        {"settings": vars(a), "train_data": str(train), "test_data": [str(t) for t in tests],
         "evaluations": evaluations, "commands": log}, indent=2) + "\n")
    print(f"wrote {out / 'protocol.json'}")


if __name__ == "__main__":
    main()
