"""The well forecast's own out-of-distribution flag (``nscmonitor.scoring.forecast_ood``),
measured as ``train-forecast`` fits it: on a time-lapse tiles export, fitted on the training
and validation plates' images with the leave-one-plate-out threshold, then the share of images
flagged on the test plate (never fitted on), its induction frames, and images of other kinds
(``nscmonitor.simulate.out_of_domain``: bright field, 5x at its own scale, inverted test-plate
fields, blank fields, textures), each cut into the export's tile size and averaged the way the
daemon averages a frame's tiles. Prints a table and writes JSON.

    python benchmarks/forecast_ood.py --data FORECAST_TILES_EXPORT [--n 40] [--json out.json]

The demo's forecast export (``make demo`` renders it as ``demo-out/forecast-tiles``) is the
data docs/training.md quotes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a time-lapse tiles export (from induction on)")
    ap.add_argument("--n", type=int, default=40, help="images of each other kind")
    ap.add_argument("--seed", type=int, default=3, help="seed of the other kinds' images")
    ap.add_argument("--workers", type=int, default=None, help="processes reading the export (default: every CPU)")
    ap.add_argument("--json", type=Path, help="write the rows here")
    a = ap.parse_args(argv)

    from nscmonitor.scoring import well_sequence as WS
    from nscmonitor.simulate import out_of_domain as OD
    from nscmonitor.training import data as D
    from nscmonitor.training import splits as S
    from nscmonitor.training import well_frames as WF
    from nscmonitor.training.data import read_image
    from nscmonitor.training.forecast_train import fit_frame_ood

    t0 = time.perf_counter()
    records, info = D.discover(a.data, "endpoint")
    records = S.assign_splits(D.for_scheme(records, "multiclass")[0], seed=0)
    px = int(info.tile_size)
    feats = np.asarray(list(WF.read_features(records, px, a.workers)), np.float64)
    ood, fit = fit_frame_ood(records, feats)
    if ood is None:
        raise SystemExit(f"no score could be fitted: {fit['unavailable']}")
    split = np.array([r.split for r in records])
    hours = np.array([r.elapsed_h for r in records], np.float64)
    test = split == "test"
    rows = {"held-out plates (leave-one-plate-out, where the threshold sits)":
            (fit["flagged_held_out_plates"], int(fit["n_images"])),
            "test plate (never fitted on)": (float(ood.flags(feats[test]).mean()), int(test.sum())),
            "test plate, induction frames": (float(ood.flags(feats[test & (hours <= WS.BASELINE_MAX_H)]).mean()),
                                             int((test & (hours <= WS.BASELINE_MAX_H)).sum()))}
    in_domain = [[read_image(r.path, channel=r.channel)] for r in np.asarray(records, dtype=object)[test][::7]]
    for kind in OD.KINDS:
        images = OD.images(kind, a.n, px, in_domain=in_domain, seed=a.seed)
        x = np.asarray([np.mean([WS.tile_vector(c) for c in cuts], axis=0) for cuts in images])
        rows[kind] = (float(ood.flags(x).mean()), len(x))
    seconds = time.perf_counter() - t0
    print(f"| images ({a.data}; threshold {fit['threshold']:.3g}, {fit['threshold_from']}) | n | flagged |")
    print("|---|---:|---:|")
    for name, (share, n) in rows.items():
        print(f"| {name} | {n} | {share:.1%} |")
    print(f"({seconds:.0f} s on {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs)")
    if a.json:
        a.json.write_text(json.dumps({"data": str(a.data), "fit": fit, "seconds": seconds,
                                      "rows": {k: {"flagged": v[0], "n": v[1]} for k, v in rows.items()}},
                                     indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
