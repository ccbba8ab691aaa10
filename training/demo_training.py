"""A small real model for ``make demo``: minutes on a 2-core CPU, cached by data hash.

Its numbers are those of a few minutes of training on demo data; the metrics inside the ONNX
say so, and the demo should not present them as the product's accuracy.

Defaults (measured against the alternatives in docs/training.md, "Demo model"): the
``small16`` CNN (``small`` at half its widths: on a 2-core AVX2-only CPU its six epochs take
about 25 s each against 43-47 for ``small24`` and 64-74 for ``small``, and it read the demo plate
as well in three seeds) at the camera's own pixel size (112 px tiles of 112 source pixels, 1.24 µm/px):
neurites and oligodendrocyte processes are a pixel wide or less, and every shrink tried (96 or
64 px from 224) lost neuron-directed and oligodendrocyte-directed wells. Labels are the
majority fate of the well's live cells at its last scan (``label_mode="endpoint"``, what an
end-point stain gives), with inverse-frequency class weights: without them the common
astrocyte and undifferentiated labels pulled every committed well's readout to astrocyte.
Trained on tiles from 48 h on, where the fates have begun to show, for 6 epochs at a learning
rate of 4e-3 after a 1.5-epoch warm-up: with the wider ``small`` model 12 epochs read the demo
plate no better and took 433 s in fp32, over the 4 minutes a CPU without bf16 instructions has
(6 epochs: 205 s in fp32 there; ``small16``: 160 s on an AVX2-only Zen 3).
The out-of-distribution head's Gaussians are fitted on 4,096 of the 10,752 training tiles
(``ood_fit_tiles``): the forward pass over all of them was most of the time after the epochs.
"""

from __future__ import annotations

from pathlib import Path

from nscmonitor.training import data as D
from nscmonitor.training import splits as S


def demo_model(out_dir: str | Path, tiles_dir: str | Path, *, scheme: str = "multiclass", arch: str = "small16",
               image_size: int | None = 112, tile_size: int | None = 112, epochs: int = 6, batch_size: int = 64,
               threads: int = 0, force: bool = False, progress: bool = True, lr: float = 4e-3,
               label_mode: str = "endpoint", min_train_h: float | None = 48.0, amp: bool = True,
               channels_last: bool = True, warmup_epochs: float = 1.5, soft_labels: bool = False,
               ood_fit_tiles: int = 4096) -> Path:
    """Train ``arch`` on ``tiles_dir`` into ``out_dir`` and return ``out_dir/model.onnx``.

    A model already there trained on the same data with the same recipe (data hash, scheme,
    arch, label mode, input size) is returned without training, so repeated demos start at
    once. ``amp`` trains in bf16 where the CPU has bf16 instructions (``epochs.amp_dtype``)
    and in fp32 elsewhere.
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
                    and (md.extra or {}).get("label_mode", "tile") == label_mode
                    and bool((md.extra or {}).get("soft_labels", False)) == soft_labels
                    and (image_size is None or md.input_size == image_size)):
                return onnx_path
        except MetadataError:
            pass
    from nscmonitor.training.train import TrainConfig, main

    main(TrainConfig(data=str(tiles_dir), out=str(out), scheme=scheme, arch=arch, image_size=image_size,
                     tile_size=tile_size, epochs=epochs, batch_size=batch_size, lr=lr, warmup_epochs=warmup_epochs,
                     threads=threads, patience=epochs, progress=progress, label_mode=label_mode,
                     min_train_h=min_train_h, amp=amp, channels_last=channels_last, soft_labels=soft_labels,
                     ood_fit_tiles=ood_fit_tiles))
    return onnx_path


def demo_forecast(out_dir: str | Path, tiles_dir: str | Path, *, epochs: int = 300, force: bool = False,
                  progress: bool = True) -> Path:
    """Train the demo's well forecast on ``tiles_dir`` (a time-lapse export from induction on)
    into ``out_dir`` and return ``out_dir/forecast.onnx``; one already there from the same data
    with the same recipe is returned as it is. Labels are the wells' end-point live-cell
    majority, as for the demo model and as the demo judges its wells. A cached model from
    before the forecast had its own out-of-distribution score, or from before that score read
    the optics features, or from before it averaged several seeds, is trained again."""
    from nscmonitor.scoring import well_sequence as WS
    from nscmonitor.scoring.forecast import ForecastModelError, load_forecast_model
    from nscmonitor.training.forecast_train import MEMBERS, train_forecast

    out = Path(out_dir)
    path = out / "forecast.onnx"
    if path.is_file() and not force:
        records, _ = D.discover(tiles_dir, "endpoint")
        records, _ = D.for_scheme(records, "multiclass")
        try:
            meta = load_forecast_model(path).meta
        except (ForecastModelError, ValueError, KeyError):  # a damaged cache is trained again
            meta = {}
        if (meta.get("data_hash") == D.data_hash(S.assign_splits(records, seed=0))
                and (meta.get("metrics") or {}).get("label_mode") == "endpoint"
                and len((meta.get("ood") or {}).get("mean", ())) == WS.STORED_FEATURES
                and len(((meta.get("metrics") or {}).get("fit") or {}).get("members", [None])) == MEMBERS):
            return path
    train_forecast(tiles_dir, out, epochs=epochs, progress=progress, label_mode="endpoint", version="demo-forecast")
    return path
