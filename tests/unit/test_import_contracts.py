"""Import contracts, checked on the real modules. ``gui/``, ``engines/`` and ``training/``
are installed into ``nscmonitor.*`` by package-dir mapping, outside the folder grimp scans,
so import-linter's contracts (pyproject, run here too when it is installed) cannot see them:
their imports are read here with full module names (relative imports resolved, imports
inside functions included), and each layer is imported whole in a fresh interpreter to see
which runtimes it really loads."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

#: folder -> the package it is installed as
LAYERS = {"nscmonitor": "nscmonitor", "gui": "nscmonitor.gui", "engines": "nscmonitor.engines",
          "training": "nscmonitor.training"}
QT = {"PySide6", "pyqtgraph", "shiboken6"}
TORCH = {"torch", "torchvision", "tensorrt"}


def module_name(path: Path) -> str:
    """``gui/widgets/plate_map_view.py`` -> ``nscmonitor.gui.widgets.plate_map_view``."""
    folder = path.relative_to(REPO).parts[0]
    parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([LAYERS[folder], *parts])


def modules(folder: str) -> list[Path]:
    return sorted(p for p in (REPO / folder).rglob("*.py") if "__pycache__" not in p.parts)


def imported_modules(path: Path) -> set[str]:
    return imports_of(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py")


def imports_of(source: str, module: str, is_package: bool) -> set[str]:
    """Every module ``source`` imports anywhere (also inside functions), by its full name:
    ``from x.y import z`` gives ``x.y`` and ``x.y.z`` (z may be a module); relative imports
    are resolved against ``module``."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names if a.name != "*")
    return out


def hits(names: set[str], forbidden: set[str]) -> list[str]:
    return sorted(n for n in names if any(n == f or n.startswith(f + ".") for f in forbidden))


@pytest.mark.parametrize("folder, forbidden", [
    ("gui", TORCH | {"nscmonitor.daemon", "nscmonitor.cli"}),
    ("engines", QT | {"nscmonitor.gui"}),
    ("training", QT | {"nscmonitor.gui"}),
])
def test_folder_never_imports(folder: str, forbidden: set[str]) -> None:
    """The GUI reads the store and never drives the daemon or the command line; engines
    and training never need Qt."""
    files = modules(folder)
    assert files
    bad = {str(p.relative_to(REPO)): hits(imported_modules(p), forbidden) for p in files}
    assert not {k: v for k, v in bad.items() if v}


def test_only_the_store_imports_the_orm_models() -> None:
    """Everyone else, the GUI and training included, gets plain dataclasses from the store."""
    files = [p for folder in LAYERS for p in modules(folder)
             if not module_name(p).startswith("nscmonitor.store.") and module_name(p) != "nscmonitor.store"]
    bad = {str(p.relative_to(REPO)): hits(imported_modules(p), {"nscmonitor.store.models"}) for p in files}
    assert not {k: v for k, v in bad.items() if v}


def test_imports_are_read_with_full_names() -> None:
    src = ("from . import colors\nfrom ..state.presenter import Presenter\nimport torch.nn as tnn\n"
           "def f():\n    from nscmonitor.daemon import Daemon\n")
    assert imports_of(src, "nscmonitor.gui.widgets.plate_map_view", False) == {
        "nscmonitor.gui.widgets", "nscmonitor.gui.widgets.colors", "nscmonitor.gui.state.presenter",
        "nscmonitor.gui.state.presenter.Presenter", "torch.nn", "nscmonitor.daemon", "nscmonitor.daemon.Daemon"}
    assert imports_of("from .colors import x\n", "nscmonitor.gui.widgets", True) == {
        "nscmonitor.gui.widgets.colors", "nscmonitor.gui.widgets.colors.x"}
    assert hits({"torch.nn", "torchvision", "torchmetrics"}, {"torch"}) == ["torch.nn"]
    assert module_name(REPO / "gui" / "widgets" / "__init__.py") == "nscmonitor.gui.widgets"


_IMPORT_ALL = """
import importlib, json, sys
failed = {}
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed[name] = f"{type(exc).__name__}: {exc}"
print(json.dumps({"failed": failed, "loaded": sorted(sys.modules)}))
"""


def load_layer(folder: str) -> tuple[dict, set[str]]:
    """Import every module of a layer in a fresh interpreter: what failed, and every module
    that ended up loaded (the layer's own imports at import time, however indirect)."""
    names = [module_name(p) for p in modules(folder)
             if p.name != "__main__.py" and "migrations" not in p.relative_to(REPO).parts]
    out = subprocess.run([sys.executable, "-c", _IMPORT_ALL, *names], capture_output=True, text=True,
                         cwd=REPO, timeout=240, env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    return got["failed"], set(got["loaded"])


def test_importing_the_core_loads_no_qt_and_no_torch() -> None:
    """The daemon, the store, the CLI and the reports run where neither is installed (DESIGN
    house rule 8): importing every module of ``nscmonitor/`` must not pull them in."""
    failed, loaded = load_layer("nscmonitor")
    assert not failed
    assert not hits(loaded, QT | TORCH)


def test_importing_the_gui_loads_no_torch_no_daemon_and_no_cli() -> None:
    failed, loaded = load_layer("gui")
    assert not failed
    assert not hits(loaded, TORCH | {"nscmonitor.daemon", "nscmonitor.cli"})


def test_core_modules_import_heavy_runtimes_only_inside_functions() -> None:
    """The engines' torch/TensorRT/OpenVINO imports stay inside functions, so the daemon's
    import path needs none of them (DESIGN house rule 8; ONNX Runtime is the base install's
    CPU engine, so the int8 calibration reader may subclass it at module level)."""
    heavy = TORCH | {"openvino"}
    offenders = []
    for p in modules("engines"):
        tree = ast.parse(p.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = {a.name for a in node.names} if isinstance(node, ast.Import) else {node.module or ""}
                if hits(names, heavy):
                    offenders.append(f"{p.name}: {hits(names, heavy)}")
    assert not offenders


def test_import_linter_contracts_hold() -> None:
    """pyproject's layer contracts for ``nscmonitor/`` (``make test`` runs them too)."""
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(exe).is_file():
        pytest.skip("import-linter is not installed (pip install 'nscmonitor[dev]')")
    out = subprocess.run([exe, "--no-cache"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
