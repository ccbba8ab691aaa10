"""Shared fixtures. Tests run against the installed package; the team's shared reference
folder sits beside the repository and is optional (tests that need it skip with a reason)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared reference folder not found beside the repository ({SHARED})")
    return SHARED


@pytest.fixture(scope="session")
def real_fixtures(shared_dir: Path) -> Path:
    d = shared_dir / "fixtures" / "real"
    if not d.is_dir():
        pytest.skip("real instrument fixtures are absent from the shared folder")
    return d


@pytest.fixture()
def tiny_model(tmp_path: Path) -> Path:
    from nscmonitor.engines.tiny import build_tiny_classifier

    path = tmp_path / "models" / "tiny.onnx"
    build_tiny_classifier(path, input_size=32)
    return path
