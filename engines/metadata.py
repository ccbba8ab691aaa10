"""The model's contract with the daemon, carried inside the artefact.

Preprocessing travels with the model (house rule 9): the daemon tiles and normalises by
what the file says, and refuses a file whose metadata is missing or inconsistent rather
than guessing, because a wrong guess gives plausible-looking but wrong readouts.

Input contract of every exported graph: float32 ``N x input_channels x S x S`` where each
tile was scaled per image so that the ``p_low`` percentile maps to 0 and ``p_high`` to 1
(clipped to [-0.5, 1.5]). If ``normalization["in_graph"]`` is false the daemon then applies
``(x - mean) / std``; exports from ``nscmonitor.training`` fold that (and the grey to
3-channel replication) into the first convolution, so they declare ``in_graph: true``.
``calibration_sha256`` names the calibration/held-out tile set the training run wrote beside
the model (``engines.calibration``); older files without it stay loadable.
Output: ``output`` is ``"logits"`` (softmax with ``temperature`` applied by the engine)
or ``"probabilities"``. ``ood`` (None for older models and models from elsewhere: the flag is
then unavailable, never an error) describes the out-of-distribution score the graph computes as
its second output: ``{"output": "ood", "method", "threshold", "quantile", ...}``; an image whose
mean tile score exceeds ``threshold`` is flagged (``training.ood``). Its ``zoom`` record, where
present (models trained on tiles of 64 px and more since 2026-12-07), holds the zoom response's
Gaussian and threshold (``nscmonitor.core.zoom_response``), a second test the daemon runs on
its own tiles, and in models fitted since the seventh session of that day a third, the zoom-out
response (``out_threshold``, ``out_gain``), since the eighth a fourth, the image's contrast sign
(``sign_side``, ``sign_threshold``, ``sign_gain``); records without them serve the tests they have.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nscmonitor.core.calibration import call_rule_of, well_calibration_of
from nscmonitor.core.errors import UserFacingError
from nscmonitor.core.zoom_response import STATISTICS

FORMAT_VERSION = 1
METADATA_KEY = "nscmonitor"
SCHEMES = ("binary", "multiclass", "custom")


class MetadataError(ValueError):
    """The model artefact has no usable nscmonitor metadata."""


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    version: str
    scheme: str
    classes: tuple[str, ...]
    input_size: int
    input_channels: int = 1
    pixel_size_um: float | None = None
    normalization: dict[str, Any] = field(
        default_factory=lambda: {"p_low": 1.0, "p_high": 99.8, "mean": 0.0, "std": 1.0, "in_graph": True}
    )
    output: str = "logits"
    temperature: float = 1.0
    data_hash: str | None = None
    #: sha256 of the calibration.npz written beside the model by its training run (None for
    #: models from elsewhere and for files written before calibration sets existed)
    calibration_sha256: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    arch: str | None = None
    int8_tolerance: dict[str, float] = field(
        default_factory=lambda: {"top1_agreement": 0.99, "well_readout_pp": 1.0}
    )
    #: the out-of-distribution score's graph output and flag threshold (see the module docstring)
    ood: dict[str, Any] | None = None
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate(self)

    def to_json(self) -> str:
        d = asdict(self)
        d["classes"] = list(self.classes)
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelMetadata":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MetadataError(f"metadata is not valid JSON: {exc}") from exc
        if not isinstance(d, dict):
            raise MetadataError("metadata must be a JSON object")
        return cls.from_dict(d)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelMetadata":
        required = ("name", "version", "scheme", "classes", "input_size")
        missing = [k for k in required if k not in d]
        if missing:
            raise MetadataError(f"metadata lacks required keys: {', '.join(missing)}")
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        kwargs = {k: v for k, v in d.items() if k in known}
        if unknown:
            kwargs.setdefault("extra", {})
            kwargs["extra"] = {**kwargs.get("extra", {}), **{k: d[k] for k in unknown}}
        kwargs["classes"] = tuple(kwargs["classes"])
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise MetadataError(f"metadata has a bad value: {exc}") from exc


def _check_zoom(z: Any) -> None:
    """The zoom response's record, checked once so that a damaged one is a clear error at load,
    not a numpy error in the middle of a plate."""
    d = len(STATISTICS)
    try:
        means = np.asarray(z["means"], np.float64)
        whiten = np.asarray(z["whiten"], np.float64)
        numbers = [float(z[k]) for k in ("unit", "threshold", "gain")]
        out = [float(z[k]) for k in ("out_threshold", "out_gain")] if "out_threshold" in z else [0.0, 1.0]
        sign = ([float(z[k]) for k in ("sign_threshold", "sign_gain", "sign_side")] if "sign_threshold" in z
                else [0.0, 1.0, 1.0])
        min_tile = int(z.get("min_tile", 0))
    except (TypeError, KeyError, ValueError) as exc:
        raise MetadataError(f"ood.zoom must hold means, whiten, unit, threshold and gain (and out_gain with "
                            f"out_threshold, sign_gain and sign_side with sign_threshold): {exc}") from exc
    if (means.ndim != 2 or means.shape[1] != d or not len(means) or whiten.shape != (d, d)
            or not (np.all(np.isfinite(means)) and np.all(np.isfinite(whiten))
                    and np.all(np.isfinite(numbers + out + sign)))
            or numbers[0] <= 0 or numbers[2] <= 0 or out[1] <= 0 or sign[1] <= 0 or sign[2] not in (-1.0, 1.0)
            or min_tile < 0):
        raise MetadataError(f"ood.zoom must hold K x {d} class means, a {d} x {d} whitening, a positive unit and "
                            "gains, finite thresholds and a contrast-sign side of -1 or 1")


def validate(m: ModelMetadata) -> None:
    if m.format_version > FORMAT_VERSION:
        raise MetadataError(
            f"metadata format {m.format_version} is newer than this nscmonitor understands "
            f"({FORMAT_VERSION}); upgrade nscmonitor"
        )
    if m.scheme not in SCHEMES:
        raise MetadataError(f"scheme must be one of {SCHEMES}, not {m.scheme!r}")
    if len(m.classes) < 2 or len(set(m.classes)) != len(m.classes):
        raise MetadataError(f"classes must be at least two distinct names, got {list(m.classes)}")
    if not isinstance(m.input_size, int) or not 8 <= m.input_size <= 4096:
        raise MetadataError(f"input_size must be an integer tile size in pixels, got {m.input_size!r}")
    if m.input_channels not in (1, 3):
        raise MetadataError(f"input_channels must be 1 or 3, got {m.input_channels!r}")
    if m.pixel_size_um is not None and not (isinstance(m.pixel_size_um, (int, float)) and m.pixel_size_um > 0):
        raise MetadataError(f"pixel_size_um must be positive, got {m.pixel_size_um!r}")
    if m.output not in ("logits", "probabilities"):
        raise MetadataError(f"output must be 'logits' or 'probabilities', got {m.output!r}")
    if not m.temperature > 0:
        raise MetadataError(f"temperature must be positive, got {m.temperature!r}")
    norm = m.normalization
    for k in ("p_low", "p_high"):
        if k not in norm:
            raise MetadataError(f"normalization lacks {k!r}")
    if not 0 <= norm["p_low"] < norm["p_high"] <= 100:
        raise MetadataError("normalization needs 0 <= p_low < p_high <= 100")
    if m.calibration_sha256 is not None and not (isinstance(m.calibration_sha256, str)
                                                 and len(m.calibration_sha256) == 64):
        raise MetadataError(f"calibration_sha256 must be a sha256 hex digest, got {m.calibration_sha256!r}")
    if m.ood is not None:
        thr = m.ood.get("threshold") if isinstance(m.ood, dict) else None
        if not (isinstance(thr, (int, float)) and thr == thr and isinstance(m.ood.get("output"), str)):
            raise MetadataError(f"ood must name its graph output and a numeric threshold, got {m.ood!r}")
        if m.ood.get("zoom") is not None:
            _check_zoom(m.ood["zoom"])
    if not norm.get("in_graph", False) and not norm.get("std", 1.0) > 0:
        raise MetadataError("normalization std must be positive")
    try:
        well_calibration_of(m.extra)
        call_rule_of(m.extra)
    except UserFacingError as exc:
        raise MetadataError(str(exc)) from exc


def read_onnx_metadata(path: str | Path) -> ModelMetadata:
    """Read metadata without building an inference session (cheap, for doctor/registry)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise MetadataError(f"model file not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends for non-ONNX files
        raise MetadataError(f"{path} is not a readable ONNX model: {exc}") from exc
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        raise MetadataError(
            f"{path} has no nscmonitor metadata (key {METADATA_KEY!r}); export it with "
            "'nscmonitor train' / training.export, or see docs/training.md"
        )
    return ModelMetadata.from_json(props[METADATA_KEY])


def write_onnx_metadata(model: Any, meta: ModelMetadata) -> None:
    """Set the metadata on an in-memory ``onnx.ModelProto`` (replacing an earlier one)."""
    keep = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    for p in keep:
        model.metadata_props.append(p)
    entry = model.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = meta.to_json()
