"""The optics statistics table of docs/simulator.md: simulated frames against real ones.

    python -m nscmonitor.simulate.stats_table [--plates 3]

Renders the frames the optics test uses (704 x 520, the five recipes, 3 plates) at 0, 48 and
96 h in phase contrast and bright field, and prints a markdown table of the medians (and
ranges) of image_stats.frame_stats beside the real ranges.
"""

from __future__ import annotations

import argparse

from nscmonitor.simulate.image_stats import REAL_RANGES, SIMULATOR_BEFORE, frame_stats, summarise
from nscmonitor.simulate.microscope import Microscope
from nscmonitor.simulate.render import Camera

WELLS = ("A01", "A03", "A05", "A07", "A09")  # the five recipes on the default plate map
HOURS = (0.0, 48.0, 96.0)
PERCENT = {"contrast", "p1", "p99", "fine_share", "slow_illumination"}


def collect(plates: int, modality: str) -> dict[float, list[dict[str, float]]]:
    out: dict[float, list[dict[str, float]]] = {h: [] for h in HOURS}
    for plate in range(plates):
        for well in WELLS:
            scope = Microscope(fields=1, hours=max(HOURS), interval_h=48, seed=0, plate_index=plate, wells=[well],
                               camera=Camera(shape=(520, 704), modality=modality))
            for shot in scope.shots():
                if shot.elapsed_h in out:
                    out[shot.elapsed_h].append(frame_stats(scope.render(shot).image))
    return out


def _fmt(key: str, v: float) -> str:
    return f"{100 * v:+.1f} %" if key in ("p1", "p99") else f"{100 * v:.2f} %" if key in PERCENT else f"{v:.2f}"


def table(plates: int = 3) -> str:
    cols = [("PC", h) for h in HOURS] + [("PC", "48+96"), ("BF", "48+96")]
    data = {}
    for mod, name in (("phase", "PC"), ("brightfield", "BF")):
        by = collect(plates, mod)
        for h in HOURS:
            data[(name, h)] = summarise(by[h])
        data[(name, "48+96")] = summarise(by[48.0] + by[96.0])
    head = "| statistic | " + " | ".join(f"{m} {h if isinstance(h, str) else f'{h:.0f} h'}" for m, h in cols)
    lines = [head + " | real | before |", "|---" * (len(cols) + 3) + "|"]
    for k, (lo, hi) in REAL_RANGES.items():
        cells = [_fmt(k, data[c][k][0]) for c in cols]
        before = SIMULATOR_BEFORE.get(k)
        was = f"{_fmt(k, before[0])} .. {_fmt(k, before[1])}" if before else "-"
        lines.append(f"| {k} | " + " | ".join(cells) + f" | {_fmt(k, lo)} .. {_fmt(k, hi)} | {was} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plates", type=int, default=3)
    print(table(ap.parse_args().plates))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
