"""How well QC's focus check finds the simulated microscope's autofocus failures, and what it
costs per frame.

The simulated microscope fails its autofocus on 2 % of frames (5-20 um off focus) and says
which in its ground truth. This renders a plate in memory (``--wells`` wells of the demo's
recipes, ``--fields`` fields, a scan every ``--interval`` h up to ``--hours``), measures each
frame with ``scoring.qc.qc_metrics`` and judges them in acquisition order as the daemon does
live: each frame against its field's earlier scans (``focus_check``), a field's first scan
when the next one arrives (``scoring.scorer.late_verdicts``). Prints, per run, the failures
caught, the in-focus frames failed, the lowest ratio of an in-focus frame and the highest of a
caught failure, and the milliseconds ``qc_metrics`` took per frame on one thread; writes JSON
(``benchmarks/results/focus_qc.json``).

    python benchmarks/focus_qc.py --frame 704x520 --wells 24 --hours 120 --interval 8
    python benchmarks/focus_qc.py --modality brightfield --seed 7
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scale import cpu_name  # benchmarks/scale.py: this folder is on the path of a script run from it

HERE = Path(__file__).resolve().parent


def replay(frames: list[tuple[str, float, float, bool]], min_ratio: float) -> dict:
    """Judge (field, hours, sharpness, autofocus failed) in acquisition order; the verdicts."""
    from nscmonitor.core.domain import QCMetrics
    from nscmonitor.scoring.qc import FOCUS_NEIGHBOURS, focus_check
    from nscmonitor.scoring.scorer import late_verdicts
    from nscmonitor.store.focus_series import Neighbour

    seen: dict[str, list[Neighbour]] = {}
    verdict: dict[int, tuple[float | None, bool]] = {}  # frame index -> (ratio, failed)
    for i, (field, hours, sharp, _) in enumerate(frames):
        before = sorted(seen.get(field, []), key=lambda n: abs(n.at - hours))[:FOCUS_NEIGHBOURS]
        qc = QCMetrics(0.0, 0.0, False, "", 0.0, 1.0, 0.0, 1.0, True, sharpness=sharp)
        qc = focus_check(qc, hours, [(n.at, n.sharpness) for n in before], min_ratio)
        for v in late_verdicts({field: {n.id: n for n in before}}, {field: [(i, hours, sharp)]}, {i}, min_ratio):
            verdict[v.image_id] = (v.ratio, v.reason is not None)
            seen[field] = [n if n.id != v.image_id else Neighbour(n.id, n.at, n.sharpness, True, n.passed)
                           for n in seen[field]]
        verdict[i] = (qc.focus_ratio, not qc.passed)
        seen.setdefault(field, []).append(Neighbour(i, hours, sharp, qc.focus_ratio is not None, qc.passed))
    return verdict


def run(args: argparse.Namespace) -> dict:
    from nscmonitor.scoring.qc import qc_metrics
    from nscmonitor.simulate.microscope import Microscope
    from nscmonitor.simulate.render import Camera

    w, h = (int(v) for v in args.frame.split("x"))
    rows = "ABCDEFGH"
    wells = [f"{rows[k // 12]}{k % 12 + 1:02d}" for k in range(args.wells)]
    scope = Microscope(vendor="incucyte", plate_format=96, fields=args.fields, hours=args.hours,
                       interval_h=args.interval, seed=args.seed, wells=wells,
                       camera=Camera(shape=(h, w), bit_depth=args.bit_depth, modality=args.modality))
    frames, cost = [], []
    for f in scope.frames():
        t0 = time.perf_counter()
        sharp = qc_metrics(f.image).sharpness
        cost.append(time.perf_counter() - t0)
        frames.append((f"{f.shot.well}/{f.shot.field}", f.shot.elapsed_h, sharp, bool(f.truth["autofocus_fail"])))
    verdict = replay(frames, args.min_ratio)
    lost = [i for i, fr in enumerate(frames) if fr[3]]
    kept = [i for i, fr in enumerate(frames) if not fr[3]]
    caught = [i for i in lost if verdict[i][1]]
    ratios_kept = [verdict[i][0] for i in kept if verdict[i][0] is not None]
    ratios_caught = [verdict[i][0] for i in caught]
    return {"frame": args.frame, "modality": args.modality, "bit_depth": args.bit_depth, "seed": args.seed,
            "frames": len(frames), "autofocus_failures": len(lost), "caught": len(caught),
            "in_focus_failed": sum(verdict[i][1] for i in kept),
            "unjudged": sum(verdict[i][0] is None for i in range(len(frames))),
            "lowest_in_focus_ratio": round(min(ratios_kept), 3) if ratios_kept else None,
            "highest_caught_ratio": round(max(ratios_caught), 3) if ratios_caught else None,
            "qc_ms_per_frame": round(1e3 * float(np.median(cost)), 2), "min_focus_ratio": args.min_ratio}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frame", default="704x520", help="width x height")
    ap.add_argument("--modality", choices=("phase", "brightfield"), default="phase")
    ap.add_argument("--bit-depth", type=int, choices=(8, 12), default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--wells", type=int, default=24)
    ap.add_argument("--fields", type=int, default=2)
    ap.add_argument("--hours", type=float, default=120.0)
    ap.add_argument("--interval", type=float, default=8.0)
    ap.add_argument("--min-ratio", type=float, default=0.4, help="the daemon's min_focus_ratio")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "focus_qc.json")
    args = ap.parse_args()
    r = run(args)
    r["cpu"] = cpu_name()
    print(f"{r['cpu']}; {args.frame} {args.modality}, {args.bit_depth}-bit, seed {args.seed}")
    print(f"{'frames':>7} {'autofocus failures':>19} {'caught':>7} {'in-focus failed':>16} {'unjudged':>9} "
          f"{'lowest in-focus ratio':>22} {'highest caught ratio':>21} {'QC ms/frame':>12}")
    print(f"{r['frames']:>7} {r['autofocus_failures']:>19} {r['caught']:>7} {r['in_focus_failed']:>16} "
          f"{r['unjudged']:>9} {r['lowest_in_focus_ratio']!s:>22} {r['highest_caught_ratio']!s:>21} "
          f"{r['qc_ms_per_frame']:>12}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(r, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
