"""Out-of-distribution flag: the flagged share of in-domain and out-of-domain images.

Renders a small simulated phase-contrast training set, trains the small model the training
tests use (``arch="tiny"``), and scores through the exported ONNX and the daemon's own engine
(``OrtCpuEngine.infer_with_ood``) with the threshold read from the model's metadata:
- in-domain: the model's validation images (where the threshold was set), its held-out
  test plate, and ``--held-out-plates`` more plates rendered with another seed (a held-out
  rate of one plate, some 45 fields, moves by 2 % with each field);
- each kind of ``nscmonitor.simulate.out_of_domain`` (bright field, 5x, inverted, blank
  fields, natural-texture-like patterns), at most ``--images`` each, an image being a field;
  the 5x fields twice: served at their own scale, as a file without a pixel size is
  (``magnification``), and resampled to the model's scale by their pixel size, as the daemon
  serves a file that states it (``5x, pixel size known``; whether the daemon's pixel-size
  check, ``scoring.stages.pixel_size_mismatch``, flags such a file besides is printed below
  the table).
Beside the served score (Mahalanobis over the input statistics, the contrast sign, the stages
and the pooled features, ``training.ood``) it prints, on the same trained weights and at the
same in-domain rate: the sum served before (squared distances, no contrast sign), today's
layers with their squared distances summed and with each layer's validation mean as its
unit instead of its median (both tried), the score served before that
(Mahalanobis on the pooled features alone), each layer alone, the energy score and the top
softmax probability (the measurements behind the choice). The served score is judged at the
threshold its model stores (since 2026-12-05 the 96th percentile over the validation plate and
each training plate left out of the fit, so its validation rate is not exactly 4 %); the others
at the 96th percentile of the validation images alone, the rule the served score had when they
were measured. Last, the image-level OR rule measured as a lead on eight trainings and not served
(``OR_RULE``: an image's mean of the sum of roots over the 97.5th percentile of the validation
images', or its mean of the contrast sign's root alone over the 98.5th; both thresholds from the
validation images), so that it is judged on trainings it was not chosen on. And the lead for 5x
fields served without a pixel size (``SCALE``): a direction in the network's features that tells
the training fields at their own scale from the same fields at half and twice it (made here from
the training plates' own cuts, with focus, noise and fine texture drawn at random so that they
do not tell the scales apart), alone and as a second test beside the served score. Where the
model has a zoom response (``nscmonitor.core.zoom_response``, tiles of 64 px and more), the
served row flags as the daemon does, any test (``SERVED_SUM``: the graph's score alone,
``ZOOM_ALONE``: the response alone, ``ZOOM_OUT_ALONE``: its mirror for fields at twice the
model's magnification, each tile shrunk 2x, ``SIGN_ALONE``: the image's contrast sign, each at
its stored threshold).
- real instrument frames of another kind (``--real``, by default the shared reference's
  third-party ImageXpress output when it lies beside the repository: fluorescence of other
  cells at 4x and 20x), decoded and resampled by the pixel size their files state, as the
  daemon serves them; the pixel-size check flags the 4x ones besides (printed below the table).
An image is a field; its score is the mean of its tiles' scores, as in the daemon.
``--refit`` fits the OOD head again on a run trained before (same weights, new head).

    nice -n 10 python benchmarks/ood.py --out /tmp/ood  [--arch tiny] [--epochs 6] [--plates 3] [--refit]
        [--json benchmarks/results/ood.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np


def tiles_of(images: list[list[np.ndarray]], pre, src_um: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images as their raw cuts -> model tiles (each cut scaled alone, as a tiles-export file
    is) and each tile's image index. A cut of a known pixel size ``src_um`` is resampled by
    it, as the daemon resamples a file that states its pixel size, and gives every tile of
    its grid; without, it is read as one training tile."""
    xs, idx = [], []
    for i, cuts in enumerate(images):
        for c in cuts:
            tiles = pre.tiles(c, factor=pre.factor(src_um, tile_px=c.shape[0])).tiles[:, 0]
            xs.extend(tiles)
            idx.extend([i] * len(tiles))
    return np.stack(xs)[:, None].astype(np.float32), np.asarray(idx)


def scores(engine, session, x: np.ndarray, batch: int = 256) -> dict[str, np.ndarray]:
    """The served score and, from the graph's raw logits, the two logit-only candidates. In
    batches, as the daemon runs them: a real 4x frame resampled to a 10x model's scale is some
    900 tiles of 96 px, and a ResNet's activations for thousands of tiles at once exhaust memory."""
    ood = np.concatenate([engine.infer_with_ood(x[i:i + batch])[1] for i in range(0, len(x), batch)])
    logits = np.concatenate([session.run(["logits"], {"input": x[i:i + batch]})[0]
                             for i in range(0, len(x), batch)]).astype(np.float64)
    top = logits.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    return {"served": ood.astype(np.float64), "energy": -lse, "msp": -np.exp(top[:, 0] - lse)}


def layer_scores(model, splits, sets: dict, k: int) -> dict[str, dict[str, np.ndarray]]:
    """Per set, each layer's own Mahalanobis distance (fitted on the training split as the
    served head fits it), the pooled features' with the ridge served before, and three sums of
    the layers: the one served before (squared distances in units of their validation
    median, no contrast sign), today's layers' squared distances, and today's layers' roots
    with each one's validation mean as its unit instead of its median."""
    from nscmonitor.training import ood as T

    names = T.layer_names(model)
    train = T.features(model, splits["train"].x)
    fitted = [T.fit_mahalanobis(f, splits["train"].y, k) for f in train]
    ridge, T.RIDGE = T.RIDGE, 1e-3
    try:
        before = T.fit_mahalanobis(train[-1], splits["train"].y, k)
    finally:
        T.RIDGE = ridge

    def dist(f: np.ndarray, means: np.ndarray, whiten: np.ndarray) -> np.ndarray:
        return np.min([(((f - m) @ whiten) ** 2).sum(axis=1) for m in means.astype(np.float64)], axis=0)

    out = {}
    for name, (x, _) in sets.items():
        feats = T.features(model, x[:, 0])
        out[name] = {"before: pooled only": dist(feats[-1], *before),
                     **{f"layer: {n}": dist(f, *g) for n, f, g in zip(names, feats, fitted)}}
    median = {n: np.median(out["val"][f"layer: {n}"]) for n in names}
    mean = {n: np.mean(out["val"][f"layer: {n}"]) for n in names}
    for name, d in out.items():
        d["before: squares summed, no contrast sign"] = sum(
            d[f"layer: {n}"] / median[n] for n in names if n != "contrast sign")
        d["squares summed"] = sum(d[f"layer: {n}"] / median[n] for n in names)
        d["roots summed, mean as the unit"] = sum(np.sqrt(d[f"layer: {n}"] / mean[n]) for n in names)
        d[ROOTS] = sum(np.sqrt(d[f"layer: {n}"] / median[n]) for n in names)
        if "contrast sign" in names:
            d[SIGN_ROOT] = np.sqrt(d["layer: contrast sign"] / median["contrast sign"])
    return out


#: the lead for 5x fields served without a pixel size (docs/training.md): a direction in the
#: features of the stages after the stem and the pooled ones that tells the training tiles from
#: the same fields at half and at twice the scale (a logistic regression on tiles the benchmark
#: makes from the training plates' own fields); an image's score is the mean over its tiles of
#: -log p(own scale), judged alone and as a second test beside the served score
SCALE = {"name": "scale direction (own scale against 1/2 and 2x of the training fields)", "skip_layers": 3,
         "or_quantile": 0.98}


def _down2(c: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A region at half its scale: 2 x 2 block means, with the camera's per-pixel noise put back
    (a block mean keeps a quarter of the noise variance; an instrument at that pixel size has it
    whole, so 0.85, about sqrt(3/4), of a one-pixel difference's noise is added)."""
    c = np.asarray(c, np.float64)
    h, w = c.shape[0] // 2 * 2, c.shape[1] // 2 * 2
    c = c[:h, :w]
    noise = (c[0::2, 0::2] - c[1::2, 1::2]) / np.sqrt(2)
    return _nuisance(c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)) + 0.85 * noise, rng)


def _nuisance(c: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What must not tell the scales apart: focus, noise and fine granular texture, drawn at
    random for every example of every scale (the simulator's granules are drawn per pixel at
    any pixel size, so a 5x field keeps the 10x field's finest texture)."""
    from scipy.ndimage import gaussian_filter

    c = np.asarray(c, np.float64)
    r = rng.uniform()
    if r < 1 / 3:
        c = gaussian_filter(c, rng.uniform(0.4, 0.9))
    elif r < 2 / 3:
        c = c + rng.normal(0.0, 1.0, c.shape) * rng.uniform(0.1, 0.4) * c.std()
    if rng.uniform() < 0.5:
        g = gaussian_filter(rng.standard_normal(c.shape), 0.7)
        base = np.median(c)
        c = base + (c - base) * (1.0 + rng.uniform(0.1, 0.4) * g / g.std())
    return c


def scale_examples(paths: list[str], tile: int, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Raw examples of the training fields at their own scale (two cuts of each block), at half
    (the block) and at twice it (a half-cut square inside the block, each pixel repeated), from
    every complete 2 x 2 block of a field's cuts (``..._YX.tif``: a cut without a live cell was
    never written, so a block with one missing is passed over)."""
    import re

    import tifffile

    fields: dict[tuple[str, str], dict[tuple[int, int], str]] = {}
    for p in dict.fromkeys(paths):
        m = re.match(r"(.*)_(\d)(\d)$", Path(p).stem)
        if m:
            fields.setdefault((str(Path(p).parent), m.group(1)), {})[(int(m.group(2)), int(m.group(3)))] = p
    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = {"own": [], "half": [], "double": []}
    for cuts in fields.values():
        for y, x in sorted(cuts):
            block = [(y, x), (y, x + 1), (y + 1, x), (y + 1, x + 1)]
            if not all(b in cuts for b in block):
                continue
            a = [tifffile.imread(cuts[b]) for b in block]
            region = np.block([[a[0], a[1]], [a[2], a[3]]]).astype(np.float64)
            q = tile // 2
            out["half"].append(_down2(region, rng))
            out["double"].append(_nuisance(np.repeat(np.repeat(region[q:q + tile // 2, q:q + tile // 2], 2, 0), 2, 1),
                                           rng))
            out["own"] += [_nuisance(region[:tile, :tile], rng), _nuisance(region[tile:, tile:], rng)]
    return out


def scale_direction(model, splits, sets: dict, pre, tile: int) -> dict[str, np.ndarray] | None:
    """Per set, each tile's -log p(own scale) under ``SCALE``'s direction (None where the
    training fields hold no complete 2 x 2 block of cuts)."""
    from sklearn.linear_model import LogisticRegression

    from nscmonitor.training import ood as T

    ex = scale_examples([r.path for r in splits["train"].records], tile)
    if not ex["half"]:
        return None

    def feats(x: np.ndarray) -> np.ndarray:
        return np.concatenate(T.features(model, x[:, 0])[SCALE["skip_layers"]:], axis=1).astype(np.float64)

    own = feats(splits["train"].x[:, None].astype(np.float32))
    mu, sd = own.mean(axis=0), own.std(axis=0) + 1e-6
    parts = [own] + [feats(tiles_of([[c] for c in ex[k]], pre)[0]) for k in ("own", "half", "double")]
    y = np.concatenate([np.zeros(len(parts[0]) + len(parts[1])), np.ones(len(parts[2])), np.full(len(parts[3]), 2)])
    clf = LogisticRegression(C=0.1, max_iter=3000).fit((np.concatenate(parts) - mu) / sd, y)
    return {name: -np.log(clf.predict_proba((feats(x) - mu) / sd)[:, 0] + 1e-9) for name, (x, _) in sets.items()}


def scale_or_row(per_image: dict[str, dict[str, np.ndarray]], served_threshold: float) -> dict | None:
    """The served flag (its own threshold, from the metadata) or the scale direction over
    ``SCALE["or_quantile"]`` of the validation images' (None without the direction)."""
    if SCALE["name"] not in per_image["val"]:
        return None
    q = SCALE["or_quantile"]
    ta, tb = served_threshold, np.quantile(per_image["val"][SCALE["name"]], q)
    return {"method": f"served flag or scale direction over q {q} of the validation images", "threshold":
            [float(ta), float(tb)], **{name: float(np.mean((s["served"] > ta) | (s[SCALE["name"]] > tb)))
                                       for name, s in per_image.items()}}


ROOTS, SIGN_ROOT = "roots summed (the served form, validation images' threshold)", "contrast sign's root alone"
SERVED_SUM, ZOOM_ALONE = "served: the graph's score alone", "served: the zoom response alone"
ZOOM_OUT_ALONE = "served: the zoom-out response alone"
SIGN_ALONE = "served: the contrast-sign test alone"
#: the image-level rule measured as a lead on eight trainings (docs/training.md): an image is
#: flagged when its mean of the sum of roots exceeds this quantile of the validation images'
#: or its mean of the contrast sign's root exceeds that one's
OR_RULE = {"name": "image OR rule: roots summed over q 0.975 or contrast sign's root over q 0.985",
           "quantiles": (0.975, 0.985)}


def or_rule_row(per_image: dict[str, dict[str, np.ndarray]]) -> dict | None:
    """The share of each set flagged by ``OR_RULE``, both thresholds from the validation
    images alone (None where the model has no contrast-sign layer)."""
    if SIGN_ROOT not in per_image["val"]:
        return None
    qa, qb = OR_RULE["quantiles"]
    ta, tb = np.quantile(per_image["val"][ROOTS], qa), np.quantile(per_image["val"][SIGN_ROOT], qb)
    return {"method": OR_RULE["name"], "threshold": [float(ta), float(tb)],
            **{name: float(np.mean((s[ROOTS] > ta) | (s[SIGN_ROOT] > tb))) for name, s in per_image.items()}}


def refit(run: Path, cfg: dict) -> None:
    """The OOD head fitted again on the run's trained weights, exported over its model.onnx."""
    from nscmonitor.training import ood as T
    from nscmonitor.training.export import export_onnx, load_checkpoint
    from nscmonitor.training.train import TrainConfig, prepare_data

    model, meta = load_checkpoint(run)
    splits = prepare_data(TrainConfig(**cfg))[0]
    head, meta["ood"] = T.fit(model, splits, "cpu", len(meta["classes"]))
    export_onnx(model, meta, run / "model.onnx", splits["val"].x[:16], name=f"{meta['arch']}-{meta['scheme']}",
                version=run.name, ood=(head, meta["ood"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--arch", default="tiny", help="tiny (the training tests' model) or a resnet")
    ap.add_argument("--tile", type=int, default=32)
    ap.add_argument("--images", type=int, default=60, help="images per out-of-domain kind")
    ap.add_argument("--plates", type=int, default=3,
                    help="simulated plates: the last is the test plate, one validates, the others train")
    ap.add_argument("--seed", type=int, default=0, help="the simulated training plates' seed (held-out plates: 7, or 8 "
                                                         "when this is 7)")
    ap.add_argument("--held-out-plates", type=int, default=4, help="in-domain plates of another seed, never trained on")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--refit", action="store_true", help="fit the OOD head again on a run already trained")
    ap.add_argument("--real", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real",
                    help="folder of real instrument output scored as one more kind (ImageXpress TIFFs under it); "
                         "left out when absent")
    a = ap.parse_args()

    import torch

    from nscmonitor.core import zoom_response
    from nscmonitor.engines import read_onnx_metadata
    from nscmonitor.engines.ort import OrtCpuEngine
    from nscmonitor.scoring.preprocess import Preprocess
    from nscmonitor.simulate import out_of_domain as O
    from nscmonitor.scoring.stages import pixel_size_mismatch
    from nscmonitor.simulate.labelled_tiles import export_tiles
    from nscmonitor.training import ood as T
    from nscmonitor.training.train import TrainConfig, main as train, prepare_data

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    data, run = a.out / "sim", a.out / f"run-{a.arch}"
    if not (data / "tiles.csv").is_file():
        export_tiles(data, plates=a.plates, hours=(0, 48, 96), tile_size=a.tile, wells_per_condition=3, grid=(3, 3),
                     seed=a.seed)
    cfg = dict(data=str(data), out=str(run), scheme="multiclass", arch=a.arch, threads=1, progress=False)
    if not (run / "model.onnx").is_file():
        train(TrainConfig(epochs=a.epochs, **cfg))
    elif a.refit:
        refit(run, cfg)
    md = read_onnx_metadata(run / "model.onnx")
    engine = OrtCpuEngine(run / "model.onnx", md)
    engine.load()
    splits = prepare_data(TrainConfig(**cfg))[0]
    pre = Preprocess.from_metadata(md)
    sets = {name: (splits[name].x[:, None].astype(np.float32), T.image_keys(splits[name].records))
            for name in ("val", "test")}
    whole = O.field_cuts([r.path for r in splits["test"].records])
    if a.held_out_plates:
        more = a.out / "held-out"
        if not (more / "tiles.csv").is_file():
            export_tiles(more, plates=a.held_out_plates, hours=(0, 48, 96), tile_size=a.tile, wells_per_condition=3,
                         grid=(3, 3), seed=8 if a.seed == 7 else 7)
        sets["held-out plates"] = tiles_of(O.field_cuts(sorted((more / "tiles").rglob("*.tif"))), pre)
    for kind in O.KINDS:
        sets[kind] = tiles_of(O.images(kind, a.images, a.tile, in_domain=whole, seed=11), pre)
        if kind == "magnification":
            sets["5x, pixel size known"] = tiles_of(O.images(kind, a.images, a.tile, seed=11), pre,
                                                    src_um=O.MAGNIFICATION_PIXEL_SIZE_UM)
    real_other_scale = None
    if (a.real / "ImageXpress").is_dir():
        from nscmonitor.readers.decode import decode

        frames = [decode(p) for p in sorted((a.real / "ImageXpress").rglob("*.tif")) if "_thumb" not in p.name]
        xs, idx = [], []
        for i, d in enumerate(frames):
            tiles = pre.tiles(d.pixels, factor=pre.factor(d.pixel_size_um)).tiles
            xs.append(tiles)
            idx.extend([i] * len(tiles))
        sets["real ImageXpress"] = (np.concatenate(xs).astype(np.float32), np.asarray(idx))
        real_other_scale = sum(pixel_size_mismatch(md, d.pixel_size_um) is not None for d in frames)
    by_scale = pixel_size_mismatch(md, O.MAGNIFICATION_PIXEL_SIZE_UM) is not None
    in_scale = pixel_size_mismatch(md, md.pixel_size_um) is None
    import onnxruntime as ort

    session = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    from nscmonitor.training.export import load_checkpoint

    trained = load_checkpoint(run)[0]
    layers = layer_scores(trained, splits, sets, len(md.classes))
    by_scale_direction = scale_direction(trained, splits, sets, pre, a.tile)
    if by_scale_direction is not None:
        for name in sets:
            layers[name][SCALE["name"]] = by_scale_direction[name]
    per_image = {name: {m: T.image_scores(s, idx) for m, s in {**scores(engine, session, x), **layers[name]}.items()}
                 for name, (x, idx) in sets.items()}
    engine.close()
    stored = {"served": float(md.ood["threshold"])}
    zoom = md.ood.get("zoom")
    if zoom_response.applies(zoom, md.input_size):
        stored.update({SERVED_SUM: stored["served"], ZOOM_ALONE: float(zoom["threshold"])})
        alone = (ZOOM_ALONE, ZOOM_OUT_ALONE, SIGN_ALONE)  # one row per test of zoom_response.TESTS
        stored.update({row: float(zoom[key]) for row, (key, _) in zip(alone, zoom_response.TESTS) if key in zoom})
        for name, (x, idx) in sets.items():
            each = [zoom_response.image_responses(x[idx == i, 0], zoom) for i in range(int(idx.max()) + 1)]
            responses = [None if each[0][i] is None else np.asarray([r[i] for r in each], np.float64)
                         for i in range(len(alone))]
            s = per_image[name]["served"]
            per_image[name].update({SERVED_SUM: s, **{row: r for row, r in zip(alone, responses) if r is not None},
                                    "served": zoom_response.mapped_score(s, responses, zoom, stored["served"])})
    rows = []
    for method in per_image["val"]:
        thr = stored[method] if method in stored else np.quantile(per_image["val"][method], md.ood["quantile"])
        rows.append({"method": method, "threshold": float(thr),
                     **{name: float(np.mean(s[method] > thr)) for name, s in per_image.items()}})
    for rule in (or_rule_row(per_image), scale_or_row(per_image, float(md.ood["threshold"]))):
        if rule is not None:
            rows.append(rule)
    counts = {name: int(len(s["msp"])) for name, s in per_image.items()}
    cols = ["val", "test", *(["held-out plates"] if a.held_out_plates else []), *O.KINDS, "5x, pixel size known",
            *(["real ImageXpress"] if "real ImageXpress" in sets else [])]
    print("| score | " + " | ".join(f"{c} (n={counts[c]})" for c in cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for r in rows:
        print(f"| {r['method']} | " + " | ".join(f"{100 * r[c]:.0f} %" for c in cols) + " |")
    print(f"pixel-size check (daemon): a {O.MAGNIFICATION_PIXEL_SIZE_UM} um/px file against the model's "
          f"{md.pixel_size_um} um/px: {'flagged' if by_scale else 'NOT flagged'}; one at the model's own pixel size: "
          f"{'not flagged' if in_scale else 'FLAGGED'} (max ratio {md.ood.get('max_pixel_size_ratio')})")
    if real_other_scale is not None:
        print(f"real ImageXpress frames flagged by the pixel-size check as well: {real_other_scale} of "
              f"{counts['real ImageXpress']} (the 4x ones)")
    print(f"({time.perf_counter() - t0:.0f} s; served: {md.ood['method']}, threshold {md.ood['threshold']:.4g} "
          "from the metadata)")
    if a.json:
        a.json.write_text(json.dumps({"rows": rows, "images": counts, "ood": md.ood, "epochs": a.epochs, "arch": a.arch,
                                      "tile": a.tile, "plates": a.plates, "seed": a.seed,
                                      "pixel_size_check": {"5x flagged": by_scale, "own pixel size passes": in_scale,
                                                           "real frames flagged": real_other_scale},
                                      "seconds": round(time.perf_counter() - t0),
                                      "load_average": list(os.getloadavg())}, indent=2) + "\n")


if __name__ == "__main__":
    main()
