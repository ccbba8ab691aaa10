"""How a training run is started on several processes, without importing torch.

The launcher is torch's own (``python -m torch.distributed.run --standalone``, i.e. torchrun):
it picks a free rendezvous port on this machine, sets ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``
for each worker, and stops every worker as soon as one fails, so a crashed rank can never
leave the others waiting in a collective. ``nscmonitor train --nproc N`` and scheduled
retraining (``retrain.nproc``) both go through ``command``; a hand-typed
``torchrun --nproc-per-node N -m nscmonitor.training.train --config F`` runs the very same
worker code. This module is shared with the daemon's retraining, which must not import torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: the module each worker runs
WORKER = "nscmonitor.training.train"


def command(cfg_path: str | Path, nproc: int, *, resume: bool = False) -> list[str]:
    """argv of a training run from a TOML config: one in-process worker for ``nproc == 1``,
    else torchrun with ``nproc`` workers on this machine."""
    tail = ["-m", WORKER, "--config", str(cfg_path)] + (["--resume"] if resume else [])
    if nproc <= 1:
        return [sys.executable, *tail]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *tail]


def stop(proc: subprocess.Popen, grace_s: float = 60.0) -> int:
    """Stop a launched run: SIGTERM first, which torchrun forwards to every worker before it
    exits (its workers live in their own sessions, so killing the launcher alone would leave
    them running); SIGKILL only if that takes longer than ``grace_s``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def run(argv: list[str], *, env: Mapping[str, str] | None = None, timeout: float | None = None,
        **popen_kw: Any) -> int:
    """Run a launch to the end; on a time limit or Ctrl-C stop it with ``stop`` (never a
    bare SIGKILL of the launcher). Returns the exit code, negative when stopped by a signal."""
    proc = subprocess.Popen(argv, env=None if env is None else dict(env), **popen_kw)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc)
        return -9
    except KeyboardInterrupt:
        stop(proc)
        raise


def threads_per_process(threads: int, nproc: int, cores: int | None = None) -> int:
    """The run's CPU thread budget (0 = every core) split evenly over its processes: N
    processes each using every core would oversubscribe the CPU and run slower than one."""
    budget = threads if threads > 0 else (cores or os.cpu_count() or 1)
    return max(1, budget // max(nproc, 1))


def thread_env(threads: int, nproc: int) -> dict[str, str]:
    """Environment for the launched processes: OpenMP/MKL pools sized per process (torchrun
    would otherwise force one thread and warn)."""
    n = str(threads_per_process(threads, nproc))
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}


def write_toml(path: Path, values: Mapping[str, Any]) -> None:
    """A ``[train]`` table the workers read (``TrainConfig.from_sources``); None values are
    left out (they mean 'default'), a nested dict (``augment``) becomes a sub-table."""
    lines = ["[train]"]
    tables = []
    for k, v in values.items():
        if v is None:
            continue
        if isinstance(v, Mapping):
            tables.append((k, v))
        else:
            lines.append(f"{k} = {_toml_value(v)}")
    for name, table in tables:
        lines.append(f"\n[train.{name}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def _toml_value(v: Any) -> str:
    if isinstance(v, float) and v != v or v in (float("inf"), float("-inf")):
        raise ValueError(f"cannot write {v!r} to a training config")
    return json.dumps(v)
