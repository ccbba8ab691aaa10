"""The time-aware well model: a small GRU over a well's frames up to time t.

Each step is one time point of the well (texture features pooled over its tiles and fields,
normalised against the plate's induction scan, plus the hours since induction;
``nscmonitor.scoring.well_sequence``). The GRU is causal by construction: its output at step
t is a function of steps 0..t only, so the forecast at t never sees a later frame (tested).
Every step is trained against the well's end-point fate, so one model forecasts at every
hour. A GRU rather than attention or a per-hour classifier: it carries the well's history in
a few dozen numbers, handles uneven and missing time points through the hours input, and
exports to ONNX as one small graph the daemon runs on CPU in microseconds. ``train-forecast``
serves three of them from consecutive seeds as one graph (``MeanLogits``), and a binary
forecast as the four-fate model read as neuron vs glia (``BinaryFromMulticlass``).

ONNX contract: input ``sequence`` ``1 x T x D`` float32 (one well, any number of time points),
output ``logits`` ``1 x T x K`` (the daemon reads the last step of the frames it has); metadata key ``nscmonitor_forecast``
(``forecast_metadata``): kind, classes, scheme, normalisation, feature set and tile size,
hours scale, temperature, data hash, training figures, and the forecast's own
out-of-distribution record (``ood``, ``nscmonitor.scoring.forecast_ood``; absent in models
exported before it, which serve with the flag unavailable).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nscmonitor.scoring import well_sequence as WS

FORECAST_KEY = WS.FORECAST_KEY
FEATURES = WS.EXTRACTOR


class WellGRU(nn.Module):
    def __init__(self, d_in: int, n_classes: int, hidden: int = 32):
        super().__init__()
        self.gru = nn.GRU(d_in, hidden, batch_first=True)
        self.head = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.gru(x)
        return self.head(h)


class BinaryFromMulticlass(nn.Module):
    """The neuron-vs-glia forecast read off a multiclass well model: after the multiclass
    temperature, logits log P(neuron) and log(P(astrocyte) + P(oligodendrocyte)), whose softmax
    renormalises over the committed fates (undifferentiated has no binary answer). On 624 and
    on 1,456 held-out binary wells (docs/training.md, "The binary forecast") it called at most
    2 % of wells wrong for five of six seeds (0-4.8 %; means of three seeds 0.1-0.4 %) where a
    GRU trained on the binary labels did so for one (1.3-14.5 %; means 4.3-11.7 %), and was
    better calibrated before 48 h; it also learns from the undifferentiated wells, which the
    binary labels leave out."""

    def __init__(self, model: nn.Module, temperature: float, classes: Sequence[str]) -> None:
        super().__init__()
        self.model, self.temperature = model, float(temperature)
        self.neuron = list(classes).index("neuron")
        self.glia = [list(classes).index(c) for c in ("astrocyte", "oligodendrocyte")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """In log space: where a well is almost surely undifferentiated, its neuron and glia
        shares are tiny, and their ratio is only stable as a difference of logs."""
        lp = torch.log_softmax(self.model(x) / self.temperature, dim=-1)
        return torch.stack([lp[..., self.neuron], torch.logsumexp(lp[..., self.glia], dim=-1)], dim=-1)


def _pad(seqs: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    t = max(len(s) for s in seqs)
    x = np.zeros((len(seqs), t, seqs[0].shape[1]), np.float32)
    m = np.zeros((len(seqs), t), bool)
    for i, s in enumerate(seqs):
        x[i, :len(s)], m[i, :len(s)] = s, True
    return torch.from_numpy(x), torch.from_numpy(m)


def step_probs(model: nn.Module, seqs: Sequence[np.ndarray], temperature: float = 1.0) -> list[np.ndarray]:
    """Per well, T x K probabilities: row t is the forecast from frames 0..t."""
    model.eval()
    x, _ = _pad(seqs)
    with torch.no_grad():
        p = torch.softmax(model(x) / temperature, dim=-1).numpy()
    return [p[i, :len(s)] for i, s in enumerate(seqs)]


def _loss(model: WellGRU, x: torch.Tensor, m: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    logits = model(x)
    yy = y[:, None].expand(-1, x.shape[1])
    per = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), yy.reshape(-1), weight=weight,
                                      reduction="none").reshape(yy.shape)
    return (per * m).sum() / m.sum()


def train_gru(train: Sequence[np.ndarray], y_train: Sequence[int], val: Sequence[np.ndarray], y_val: Sequence[int],
              n_classes: int, *, seed: int = 0, epochs: int = 400, hidden: int = 32, noise: float = 0.1,
              lr: float = 3e-3, progress: bool = False) -> tuple[WellGRU, dict[str, Any]]:
    """Full-batch Adam with class weights and feature noise; the epoch with the lowest
    validation loss (a held-out plate) is kept, and a temperature is fitted on it."""
    from rich.progress import track

    torch.manual_seed(seed)
    x, m = _pad(train)
    y = torch.as_tensor(list(y_train))
    counts = torch.bincount(y, minlength=n_classes).float()
    weight = torch.where(counts > 0, counts.sum() / (n_classes * counts.clamp(min=1)), torch.zeros(()))
    xv, mv = _pad(val)
    yv = torch.as_tensor(list(y_val))
    model = WellGRU(x.shape[-1], n_classes, hidden)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-3)
    best, best_state, best_epoch = float("inf"), None, 0
    for epoch in track(range(epochs), description="well model", disable=not progress, transient=True):
        model.train()
        jitter = torch.randn_like(x) * noise
        jitter[..., -1] = 0.0  # the hours are exact
        loss = _loss(model, x + jitter, m, y, weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.eval()
        with torch.no_grad():
            vl = float(_loss(model, xv, mv, yv, weight))
        if vl < best:
            best, best_epoch = vl, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    temperature = fit_temperature(model, xv, mv, yv)
    return model, {"best_epoch": best_epoch, "val_loss": best, "temperature": temperature, "epochs": epochs,
                   "hidden": hidden, "seed": seed}


class MeanLogits(nn.Module):
    """Well models trained from different seeds, their logits averaged: one seed's forecast
    can be confidently wrong on conditions training never had where another's is not
    (docs/training.md, "The binary forecast": single seeds read as binary called 0-4.8 % of
    held-out wells wrong, means of three 0.2-0.3 %; on 1,456 wells 0.1-0.4 %)."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(dim=0)


def train_ensemble(train: Sequence[np.ndarray], y_train: Sequence[int], val: Sequence[np.ndarray],
                   y_val: Sequence[int], n_classes: int, *, seeds: Sequence[int], epochs: int = 400,
                   progress: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """``train_gru`` once per seed; with several, their mean logits (``MeanLogits``) with one
    temperature fitted on the validation wells, as for a single model."""
    fitted = [train_gru(train, y_train, val, y_val, n_classes, seed=s, epochs=epochs, progress=progress)
              for s in seeds]
    if len(fitted) == 1:
        return fitted[0]
    model = MeanLogits([m for m, _ in fitted])
    xv, mv = _pad(val)
    temperature = fit_temperature(model, xv, mv, torch.as_tensor(list(y_val)))
    members = [{k: f[k] for k in ("seed", "best_epoch", "val_loss", "temperature")} for _, f in fitted]
    return model, {"temperature": temperature, "members": members, "epochs": epochs,
                   "hidden": fitted[0][1]["hidden"], "seed": seeds[0]}


def fit_temperature(model: nn.Module, x: torch.Tensor, m: torch.Tensor, y: torch.Tensor) -> float:
    """One temperature over every step of the validation wells (grid search, robust on few wells)."""
    model.eval()
    with torch.no_grad():
        logits = model(x)
    yy = y[:, None].expand(-1, x.shape[1])[m]
    lg = logits[m]
    grid = np.exp(np.linspace(np.log(0.25), np.log(8.0), 60))
    nll = [float(nn.functional.cross_entropy(lg / t, yy)) for t in grid]
    return float(grid[int(np.argmin(nll))])


def forecast_metadata(*, classes: Sequence[str], scheme: str, normalisation: str, tile_px: int,
                      pixel_size_um: float | None, temperature: float, n_features: int, version: str,
                      data_hash: str | None = None, metrics: dict | None = None,
                      ood: dict | None = None, read_from: dict | None = None) -> dict[str, Any]:
    """``ood``: the forecast's own out-of-distribution record (``scoring.forecast_ood``); a
    model without one loads and forecasts, with its flag unavailable. ``read_from``: where a
    binary forecast is a multiclass model read as neuron vs glia (``BinaryFromMulticlass``),
    that model's classes and temperature (the graph holds both; ``temperature`` is then 1)."""
    return {"kind": "well-forecast", "format_version": 1, "version": version, "scheme": scheme,
            "classes": list(classes), "normalisation": normalisation, "features": FEATURES,
            "n_features": n_features, "input_width": WS.feature_width(n_features, normalisation),
            "tile_px": tile_px, "pixel_size_um": pixel_size_um, "hours_scale": WS.HOURS_SCALE,
            "baseline_max_h": WS.BASELINE_MAX_H, "temperature": temperature, "data_hash": data_hash,
            "input": "sequence", "output": "logits", "metrics": metrics or {}, **({"ood": ood} if ood else {}),
            **({"read_from": read_from} if read_from else {})}


def export_forecast(model: nn.Module, meta: dict[str, Any], path: str | Path, check: Sequence[np.ndarray]) -> Path:
    """ONNX with a dynamic sequence length (one well per call), metadata under ``FORECAST_KEY``; checked
    against torch on ``check`` sequences (each of its own length) before it is moved into place."""
    import onnx
    import onnxruntime as ort

    path = Path(path)
    part = path.with_name(path.name + ".part")
    model.eval()
    with warnings.catch_warnings():  # the legacy exporter's deprecation and GRU batch notes (batch is 1)
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.from_numpy(check[0][None]),), str(part), input_names=["sequence"],
                          output_names=["logits"], opset_version=17, dynamo=False,
                          dynamic_axes={"sequence": {1: "time"}, "logits": {1: "time"}})
    proto = onnx.load(str(part))
    entry = proto.metadata_props.add()
    entry.key, entry.value = FORECAST_KEY, json.dumps(meta)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(part))
    sess = ort.InferenceSession(str(part), providers=["CPUExecutionProvider"])
    for s in check:
        got = sess.run(None, {"sequence": s[None].astype(np.float32)})[0][0]
        with torch.no_grad():
            want = model(torch.from_numpy(s[None].astype(np.float32)))[0].numpy()
        if not np.allclose(got, want, atol=1e-4):
            raise RuntimeError(f"ONNX and torch disagree on a well sequence (max {np.abs(got - want).max():.2g})")
    part.replace(path)
    return path


def build_tiny_forecast(path: str | Path, *, classes: Sequence[str] = ("neuron", "astrocyte", "oligodendrocyte"),
                        normalisation: str = "plate0+well0", tile_px: int = 32, seed: int = 3,
                        version: str = "forecast-test", ood: dict | None = None) -> Path:
    """An untrained (seeded) forecast model with valid metadata: the daemon's and dashboard's
    tests run the real second stage on it without a training run. ``ood``: its
    out-of-distribution record (``scoring.forecast_ood``), none by default."""
    torch.manual_seed(seed)
    n = WS.MODEL_FEATURES
    width = WS.feature_width(n, normalisation)
    model = WellGRU(width, len(classes), hidden=8)
    meta = forecast_metadata(classes=classes, scheme="multiclass" if len(classes) > 2 else "binary",
                             normalisation=normalisation, tile_px=tile_px, pixel_size_um=None, temperature=1.0,
                             n_features=n, version=version, ood=ood)
    check = [np.random.default_rng(seed).normal(size=(3, width)).astype(np.float32)]
    return export_forecast(model, meta, path, check)
