"""Checkpoint -> ``model.onnx`` the daemon can load with no further step.

The graph takes the daemon's N x 1 x S x S percentile-scaled tiles (grey replication and
mean/std folded into conv1, see ``model.fold_stem``), has a dynamic batch, opset 17, and
carries ``ModelMetadata``. It is verified before it is moved into place: the ONNX checker,
the daemon's own ``OrtCpuEngine`` loading it from its metadata, and torch-vs-ONNX-Runtime
parity on real tiles. A failed check leaves no model.onnx behind.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nscmonitor.engines.metadata import ModelMetadata, read_onnx_metadata, write_onnx_metadata
from nscmonitor.engines.ort import OrtCpuEngine
from nscmonitor.training.model import GreyClassifier, build_model, fold_stem

OPSET = 17
PARITY_TOL = 1e-4


class ExportError(RuntimeError):
    """The exported graph failed a check; nothing was moved into place."""


def model_metadata(meta: dict[str, Any], *, name: str, version: str,
                   ood: dict[str, Any] | None = None) -> ModelMetadata:
    norm = {**meta["normalization"], "in_graph": True}
    return ModelMetadata(
        name=name, version=version, scheme=meta["scheme"], classes=tuple(meta["classes"]),
        input_size=int(meta["image_size"]), input_channels=1, pixel_size_um=meta.get("pixel_size_um"),
        normalization=norm, output="logits", temperature=float(meta.get("temperature", 1.0)),
        data_hash=meta.get("data_hash"), calibration_sha256=meta.get("calibration_sha256"), metrics=meta.get("metrics", {}), arch=meta["arch"],
        extra={"stem": meta.get("stem"), "tile_size_px": meta.get("tile_size"), "opset": OPSET,
               "label_mode": meta.get("label_mode", "tile"), "soft_labels": bool(meta.get("soft_labels", False)),
               **{k: meta[k] for k in ("well_calibration", "call_rule") if meta.get(k)}},
        ood=ood,
    )


def export_onnx(model: GreyClassifier, meta: dict[str, Any], path: str | Path, x_check: np.ndarray, *,
                name: str = "nscmonitor", version: str = "1", ood: tuple[Any, dict[str, Any]] | None = None,
                ) -> ModelMetadata:
    """Write ``path`` (via ``path.part``) after checker, engine load and parity pass. ``ood``
    (``training.ood.fit``'s head and record) adds the OOD score as the graph's second output."""
    import onnx

    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    model = model.cpu().eval()
    folded = fold_stem(model).eval()
    names = ["logits"]
    if ood is not None:
        from nscmonitor.training.ood import ScoredNet

        folded = ScoredNet(folded, ood[0]).eval()
        names.append(str(ood[1]["output"]))
    size = int(meta["image_size"])
    dummy = torch.zeros(2, 1, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(folded, (dummy,), str(tmp), dynamo=False, opset_version=OPSET,
                          input_names=["input"], output_names=names,
                          dynamic_axes={"input": {0: "N"}, **{n: {0: "N"} for n in names}})
    proto = onnx.load(str(tmp))
    md = model_metadata(meta, name=name, version=version, ood=ood[1] if ood else None)
    write_onnx_metadata(proto, md)
    proto.producer_name = "nscmonitor.training"
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(tmp))
    try:
        check_parity(model, tmp, x_check, md, ood_head=ood[0] if ood else None)
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return md


def check_parity(model: GreyClassifier, onnx_path: Path, x: np.ndarray, md: ModelMetadata,
                 tol: float = PARITY_TOL, ood_head: Any = None) -> float:
    """Max |p_torch - p_ort| over a real batch, through the daemon's engine; raises above tol.
    With ``ood_head`` the graph's OOD score must match torch's to 1e-3 relative."""
    x = np.asarray(x, np.float32)[:, None] if np.asarray(x).ndim == 3 else np.asarray(x, np.float32)
    engine = OrtCpuEngine(onnx_path, read_onnx_metadata(onnx_path))
    engine.load()
    try:
        p_ort, ood_ort = engine.infer_with_ood(x)
    finally:
        engine.close()
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).double() / md.temperature
        p_torch = torch.softmax(logits, dim=1).numpy()
    diff = float(np.abs(p_ort - p_torch).max())
    if not diff <= tol:
        raise ExportError(f"torch vs ONNX Runtime probabilities differ by {diff:.2e} (> {tol:.0e})")
    if ood_head is not None:
        from nscmonitor.training.ood import ScoredNet

        with torch.no_grad():
            want = ScoredNet(copy.deepcopy(model).eval(), ood_head)(torch.from_numpy(x))[1].numpy()
        if ood_ort is None or not np.allclose(ood_ort, want, rtol=1e-3, atol=1e-3):
            raise ExportError("the graph's OOD score differs from torch's (or is missing)")
    return diff


def load_checkpoint(path: str | Path) -> tuple[GreyClassifier, dict[str, Any]]:
    """A run dir (uses best.pt) or a .pt file -> (model in eval mode, metadata dict)."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        from nscmonitor.core.errors import UserFacingError
        raise UserFacingError(f"no checkpoint at {path}")
    checkpoint_data = torch.load(str(path), map_location="cpu", weights_only=True)
    model = build_model(checkpoint_data["arch"], checkpoint_data["num_classes"])
    model.load_state_dict(checkpoint_data["state_dict"])
    return model.eval(), json.loads(checkpoint_data["metadata"])
