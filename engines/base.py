"""The one small contract every backend implements (house rule 8)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from nscmonitor.engines.metadata import ModelMetadata


class EngineError(RuntimeError):
    """A backend cannot load or run this model here (missing package, no GPU, bad file)."""


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


class Engine(ABC):
    """Backends take float32 tiles ``N x C x S x S`` (see metadata.py for the scaling) and
    return class probabilities ``N x K`` in ``metadata.classes`` order. A graph with an
    out-of-distribution output (``metadata.ood``) has ``_run`` return ``(main, ood)``;
    ``infer_with_ood`` hands that score on, None where the model has none."""

    name: str = "engine"
    #: the batch this backend runs best at when larger than the daemon's ``batch_size`` (a GPU
    #: is idle between small batches); callers chunk tiles by the larger of the two
    preferred_batch: int | None = None
    #: inference runs elsewhere (a GPU) and leaves the CPU free: the scorer prepares the next
    #: images meanwhile. False for CPU engines, whose own threads already use every core.
    overlaps_cpu: bool = False

    def __init__(self, model_path: str | Path, metadata: ModelMetadata) -> None:
        self.model_path = Path(model_path)
        self.metadata = metadata

    @abstractmethod
    def load(self) -> None:
        """Import the runtime and build the session; raise EngineError if impossible."""

    @abstractmethod
    def _run(self, tiles: np.ndarray) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Raw graph output for one batch; ``(main, ood)`` when the graph scores OOD too."""

    @property
    def ood_output(self) -> str | None:
        """The graph output holding the OOD score, None when the model has no such score."""
        return str(self.metadata.ood["output"]) if self.metadata.ood else None

    def infer(self, tiles: np.ndarray) -> np.ndarray:
        return self.infer_with_ood(tiles)[0]

    def infer_with_ood(self, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities N x K, OOD score per tile N or None when unavailable)."""
        if tiles.ndim != 4 or tiles.shape[1:] != self.input_shape:
            raise EngineError(f"{self.name}: expected tiles of shape N x {self.input_shape}, got {tiles.shape}")
        if len(tiles) == 0:
            empty = np.zeros(0, np.float32) if self.ood_output else None
            return np.zeros((0, len(self.metadata.classes)), np.float32), empty
        out = self._run(np.ascontiguousarray(tiles, dtype=np.float32))
        out, ood = out if isinstance(out, tuple) else (out, None)
        if ood is not None:
            ood = np.asarray(ood, np.float32).reshape(len(tiles))
        if self.metadata.output == "logits":
            return softmax(out, self.metadata.temperature), ood
        return out.astype(np.float32), ood

    @property
    def input_shape(self) -> tuple[int, int, int]:
        m = self.metadata
        return (m.input_channels, m.input_size, m.input_size)

    def close(self) -> None:
        """Release runtime resources; the default has none."""

    def describe(self) -> str:
        return f"{self.name} ({self.metadata.name} {self.metadata.version})"
