"""Import contracts that import-linter cannot see: ``gui/``, ``engines/`` and ``training/``
are installed into ``nscmonitor.*`` by package-dir mapping, outside the folder grimp scans.
The core's own contract (no Qt, no torch) is import-linter's, run by ``make test``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("folder, forbidden", [
    ("gui", {"torch", "torchvision", "tensorrt"}),
    ("engines", {"PySide6", "pyqtgraph"}),
    ("training", {"PySide6", "pyqtgraph"}),
])
def test_folder_never_imports(folder: str, forbidden: set[str]) -> None:
    files = sorted((REPO / folder).rglob("*.py"))
    assert files
    bad = {str(p.relative_to(REPO)): sorted(imported_modules(p) & forbidden) for p in files}
    assert not {k: v for k, v in bad.items() if v}


def test_core_modules_import_heavy_runtimes_only_inside_functions() -> None:
    """The engines' torch/TensorRT/OpenVINO imports stay inside functions, so the daemon's
    import path needs none of them (DESIGN house rule 8; ONNX Runtime is the base install's
    CPU engine, so the int8 calibration reader may subclass it at module level)."""
    heavy = {"torch", "torchvision", "tensorrt", "openvino"}
    offenders = []
    for p in sorted((REPO / "engines").rglob("*.py")):
        tree = ast.parse(p.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = {a.name.split(".")[0] for a in node.names} if isinstance(node, ast.Import) else \
                    {(node.module or "").split(".")[0]}
                if names & heavy:
                    offenders.append(f"{p.name}: {sorted(names & heavy)}")
    assert not offenders
