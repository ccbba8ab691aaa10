"""A montage of simulated fields (classes x time, phase contrast and bright field) for the docs.

    python -m nscmonitor.simulate.montage docs/montage.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from nscmonitor.simulate.artefacts import Artefacts
from nscmonitor.simulate.microscope import Microscope
from nscmonitor.simulate.render import Camera

ROWS = (("undifferentiated", "A09"), ("neuron-directed", "A01"), ("astrocyte-directed", "A03"),
        ("oligodendrocyte-directed", "A05"))
PHASE_HOURS = (0, 24, 72, 144)
BF_HOURS = (0, 144)


def montage(seed: int = 3, crop: int = 256) -> np.ndarray:
    """uint8 (rows, cols) image with a label strip above each panel."""
    from PIL import Image, ImageDraw

    panels = []
    for cond, well in ROWS:
        row = []
        for modality, hours in (("phase", PHASE_HOURS), ("brightfield", BF_HOURS)):
            scope = Microscope(fields=1, hours=max(hours), interval_h=24, seed=seed, wells=[well],
                               camera=Camera(shape=(520, 704), modality=modality),
                               artefacts=Artefacts(focus=False, bubbles=False))
            for shot in scope.shots():
                if shot.elapsed_h in hours:
                    img = scope.render(shot).image
                    y0, x0 = (img.shape[0] - crop) // 2, (img.shape[1] - crop) // 2
                    tile = Image.fromarray(img[y0:y0 + crop, x0:x0 + crop])
                    label = Image.new("L", (crop, 16), 255)
                    ImageDraw.Draw(label).text((3, 2), f"{cond.split('-')[0]} {shot.elapsed_h:.0f} h "
                                               f"{'PC' if modality == 'phase' else 'BF'}", fill=0)
                    both = Image.new("L", (crop + 4, crop + 20), 255)
                    both.paste(label, (2, 0))
                    both.paste(tile, (2, 18))
                    row.append(np.asarray(both))
        panels.append(np.hstack(row))
    return np.vstack(panels)


def main(argv: list[str] | None = None) -> int:
    from PIL import Image

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default="docs/montage.png")
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args(argv)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(montage(args.seed)).save(args.out, optimize=True)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
