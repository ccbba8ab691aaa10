"""Training, evaluation, export and explanation of the tile classifier.

Importing this package costs nothing: torch is imported by the submodules that need it, so
the daemon and the CLI can name ``nscmonitor.training`` without paying for torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def demo_model(out_dir: str | Path, tiles_dir: str | Path, **kwargs: Any) -> Path:
    """Train, export and cache a small model for the demo; see ``training.demo_training``."""
    from nscmonitor.training.demo_training import demo_model as _demo_model

    return _demo_model(out_dir, tiles_dir, **kwargs)


__all__ = ["demo_model"]
