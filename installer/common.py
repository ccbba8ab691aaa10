"""What both installers share: the templates shipped in this package, their ``@FIELD@``
filling, the command that starts this very installation, the starter configuration, and
writing files and running commands with ``--dry-run`` printing instead.

Rendering is pure and separate from installing, so ``--dry-run`` and the tests show exactly
what would be written.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from nscmonitor.core.errors import UserFacingError

log = logging.getLogger(__name__)

NAME = "nscmonitor"


def template_path(relative: str) -> Path:
    """The installer templates ship inside the wheel as ``nscmonitor.installer`` (and inside
    the frozen folder, under ``installer/``)."""
    candidates = []
    try:
        from importlib import resources

        candidates.append(Path(str(resources.files("nscmonitor.installer") / relative)))
    except (ImportError, ModuleNotFoundError, TypeError):
        pass
    if getattr(sys, "frozen", False):
        candidates.append(Path(getattr(sys, "_MEIPASS", Path(sys.executable).parent)) / "installer" / relative)
    candidates.append(Path(__file__).resolve().parent / relative)
    for c in candidates:
        if c.is_file():
            return c
    raise UserFacingError(f"installer template {relative} is missing from this installation "
                          f"(looked in: {', '.join(str(c) for c in candidates)})")


def fill(template: str, values: dict[str, str]) -> str:
    """Replace ``@KEY@`` fields; a field left over means the template and the code disagree,
    and a unit with a literal ``@EXEC@`` in it would only fail later, at boot."""
    out = template
    for k, v in values.items():
        out = out.replace(f"@{k}@", v)
    left = sorted(set(re.findall(r"@([A-Z_]+)@", out)))
    if left:
        raise UserFacingError(f"installer template has unfilled fields: {', '.join(left)}")
    return out


def executable() -> list[str]:
    """The absolute command that starts this very installation: the frozen exe, the
    ``nscmonitor`` script beside the venv's python, else ``python -m nscmonitor.cli``.
    Never ``which``: a PATH lookup may find another installation than the one installed."""
    if getattr(sys, "frozen", False):
        return [str(Path(sys.executable).absolute())]
    bindir = Path(sys.executable).absolute().parent
    for name in ("nscmonitor.exe", "nscmonitor") if sys.platform == "win32" else ("nscmonitor",):
        if (bindir / name).is_file():
            return [str(bindir / name)]
    return [str(Path(sys.executable).absolute()), "-m", "nscmonitor.cli"]


STARTER_CONFIG = """\
# nscmonitor configuration (docs/install.md). Add one [[watch]] table per microscope folder,
# then start the service. Network shares: give the mounted path (Linux) or the UNC path
# \\\\server\\share\\folder (Windows); polling is switched on for them automatically.
{db}
# [[watch]]
# path = "/mnt/imager/plate_001"
# experiment = "plate_001"
# profile = "auto"
# plate_format = 96
"""


def starter_config(data_dir: Path | None) -> str:
    db = "" if data_dir is None else (
        f'database_url = "sqlite:///{(data_dir / "nscmonitor.db").as_posix()}"\n'
        f'models_dir = "{(data_dir / "models").as_posix()}"\n')
    return STARTER_CONFIG.format(db=db)


def write_file(path: Path, text: str, *, dry_run: bool, mode: int = 0o644, keep: bool = False) -> None:
    if dry_run:
        print(f"--- {path}{' (kept if present)' if keep else ''}\n{text}")
        return
    if keep and path.exists():
        print(f"kept {path}")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    part.write_text(text, encoding="utf-8")
    os.chmod(part, mode)
    os.replace(part, path)
    print(f"wrote {path}")


def run_command(cmd: Sequence[str], *, dry_run: bool, check: bool = True) -> int:
    if dry_run:
        print("would run: " + shlex.join(cmd))
        return 0
    log.info("running %s", shlex.join(cmd))
    try:
        rc = subprocess.run(list(cmd), timeout=120).returncode
    except FileNotFoundError as exc:
        raise UserFacingError(f"{cmd[0]} not found: {exc}") from exc
    if rc and check:
        raise UserFacingError(f"'{shlex.join(cmd)}' failed with exit code {rc}")
    return rc
