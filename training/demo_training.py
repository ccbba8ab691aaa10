"""A small real model for ``make demo``: minutes on a laptop CPU, cached by data hash.

Its numbers are those of a few minutes of training on demo data; the metrics inside the ONNX
say so, and the demo should not present them as the product's accuracy.

Defaults (see docs/training.md, "Recipe"): resnet18 on the simulator's 224 px tiles shrunk
to 96 px (2.9 µm/px: several cells of context per tile), every tile labelled with its well's
fate (``label_mode="well"``, as end-point stains label a well in the product), trained on
tiles from 24 h on (earlier tiles carry almost no fate signal by construction).
"""

from __future__ import annotations

from pathlib import Path

from nscmonitor.training import data as D
from nscmonitor.training import splits as S


def demo_model(out_dir: str | Path, tiles_dir: str | Path, *, scheme: str = "multiclass", arch: str = "resnet18",
               image_size: int | None = 96, epochs: int = 20, batch_size: int = 32, threads: int = 0,
               force: bool = False, progress: bool = True, lr: float = 1e-3, label_mode: str = "well",
               min_train_h: float | None = 24.0, amp: bool = True, channels_last: bool = True) -> Path:
    """Train ``arch`` on ``tiles_dir`` into ``out_dir`` and return ``out_dir/model.onnx``.

    A model already there trained on the same data (same data hash, scheme and arch) is
    returned without training, so repeated demos start at once. ``amp=False`` trains in fp32
    (faster than emulated bf16 where oneDNN is held below the CPU's bf16 units).
    """
    from nscmonitor.engines.metadata import MetadataError, read_onnx_metadata

    out = Path(out_dir)
    onnx_path = out / "model.onnx"
    if onnx_path.is_file() and not force:
        records, _ = D.discover(tiles_dir, label_mode)
        records, _ = D.for_scheme(records, scheme)
        dhash = D.data_hash(S.assign_splits(records, seed=0))
        try:
            md = read_onnx_metadata(onnx_path)
            if (md.data_hash == dhash and md.scheme == scheme and md.arch == arch
                    and (md.extra or {}).get("label_mode", "tile") == label_mode):
                return onnx_path
        except MetadataError:
            pass
    from nscmonitor.training.train import TrainConfig, main

    main(TrainConfig(data=str(tiles_dir), out=str(out), scheme=scheme, arch=arch, image_size=image_size,
                     epochs=epochs, batch_size=batch_size, lr=lr, warmup_epochs=1.0, threads=threads,
                     patience=epochs, progress=progress, label_mode=label_mode, min_train_h=min_train_h,
                     amp=amp, channels_last=channels_last))
    return onnx_path
