"""What reading training images through the daemon's ``decode`` costs on a tiles export.

Training reads every image with ``decode`` (the daemon's reader: header checks, the scored
channel, the content hash). On a simulator tiles export (one small TIFF per tile) the
questions are what the daemon's reader costs against the plain ``tifffile.imread`` training
used before, and whether the content hash is worth skipping (training hashes its whole data
set once beforehand, ``data_hash``): this measures, per file, ``tifffile.imread``, ``decode``
with and without its content hash, the hash alone, and the whole training path
(``image_tiles``, which skips the hash: decode, percentiles, resampling, tiling). Each is timed ``--repeats``
times over the same files, interleaved, and the median is reported. Prints a table and
writes JSON (benchmarks/results/training_reader.json).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from nscmonitor.readers.decode import decode
from nscmonitor.training import data as D


def write_tiles(folder: Path, n: int, size: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = folder / f"t{i:05d}.tif"
        tifffile.imwrite(p, np.clip(rng.normal(1200, 60, (size, size)), 0, 4095).astype(np.uint16),
                         photometric="minisblack")
        paths.append(p)
    return paths


def file_hash(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--size", type=int, default=224, help="tile edge in pixels (the simulator's default)")
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "training_reader.json")
    args = ap.parse_args()
    steps = {
        "tifffile.imread (former)": lambda p: tifffile.imread(p),
        "content hash only": lambda p: file_hash(p),
        "decode with hash (daemon)": lambda p: decode(p),
        "decode, content_hash=False": lambda p: decode(p, content_hash=False),
        "image_tiles (training path)": lambda p: D.image_tiles(p, args.size, args.image_size),
    }
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_tiles(Path(tmp), args.files, args.size)
        for p in paths[:50]:  # warm the page cache and imports
            D.image_tiles(p, args.size, args.image_size)
        times: dict[str, list[float]] = {k: [] for k in steps}
        for _ in range(args.repeats):
            for name, fn in steps.items():
                t0 = time.perf_counter()
                for p in paths:
                    fn(p)
                times[name].append((time.perf_counter() - t0) / len(paths) * 1e3)
    rows = {k: statistics.median(v) for k, v in times.items()}
    share = (rows["decode with hash (daemon)"] - rows["decode, content_hash=False"]) \
        / rows["image_tiles (training path)"]
    print(f"{args.files} TIFFs of {args.size} x {args.size} uint16, median of {args.repeats}")
    print(f"{'step':<30} {'ms per file':>12}")
    for k, v in rows.items():
        print(f"{k:<30} {v:>12.3f}")
    print(f"the hash would add {share:.1%} to the training path")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"files": args.files, "size": args.size, "image_size": args.image_size,
                                    "repeats": args.repeats, "ms_per_file": rows, "hash_share": share,
                                    "machine": platform.platform(), "python": platform.python_version()},
                                   indent=2) + "\n")


if __name__ == "__main__":
    main()
