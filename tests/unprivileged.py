"""Run one test again without root's power over file permissions.

Root reads a file whatever its mode (CAP_DAC_OVERRIDE), so a test of an unreadable file would
only skip in CI, which runs as root. In a new user namespace (``unshare --user``) the process keeps
its user id on the file system, so it owns and may chmod what it created, but holds no capability
over the host's files: a file of mode 0 is unreadable to it, as to any ordinary account."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

#: set in the re-run, so that a namespace which still reads every file skips instead of recursing
ENV = "NSCMONITOR_TEST_UNPRIVILEGED"


def rerun_unprivileged(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Run ``request``'s test in a child pytest inside a new user namespace and fail with its
    output unless it passed; skip where no such namespace can be made, or inside the re-run."""
    if os.environ.get(ENV):
        pytest.skip("this user namespace still reads files whatever their permissions")
    if shutil.which("unshare") is None or subprocess.run(["unshare", "--user", "true"],
                                                         capture_output=True).returncode != 0:
        pytest.skip("this account reads files whatever their permissions (root, or no POSIX file modes), and no "
                    "user namespace can be made (unshare --user) to drop that right")
    root = Path(request.config.rootpath)
    base = tmp_path / "unprivileged"
    proc = subprocess.run(["unshare", "--user", sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           f"--basetemp={base}", request.node.nodeid],
                          cwd=root, capture_output=True, text=True, timeout=280, env=_child_env())
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-2000:]


def _child_env() -> dict[str, str]:
    """This process's environment for the re-run, without what pytest and its xdist worker set
    for themselves (the child is a whole pytest run of its own)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST_", "PYTEST_CURRENT_TEST"))}
    return {**env, ENV: "1"}
