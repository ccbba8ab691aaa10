"""Free the disk that superseded model versions hold, keeping what rollback and provenance need.

Every registration copies a model, its checkpoint and calibration tiles into
``versions/<version>/``, and the engines built from it go there too; for a ResNet50 that is
over 0.4 GB (the model 94 MB, its checkpoint with the optimiser's state 283 MB, the int8
model, the tiles, the compiled graphs), and scheduled retraining adds a version (promoted or
rejected) whenever the labels change. On an instrument PC left alone for months that folder
is what fills the disk. ``nscmonitor models prune`` removes the folders of versions nobody can
be served from without a deliberate step, and keeps:

* the active version;
* the ``keep`` most recent rollback targets (retired versions in the order rollback takes them);
* candidates no later-registered version was promoted over (still awaiting a decision);
* any version whose folder is not the registry's own (a path outside ``versions/``).

A removed version keeps its database row (state ``removed``, hash, metadata, metrics): every
prediction names the version that made it, and that record must outlive the files. The folder
is first renamed inside the transaction that marks the row (so a version promoted meanwhile, or
a folder that cannot be moved because another process holds a file in it, is left as it was),
then deleted; a leftover renamed folder from an interrupted prune is finished, or restored when
its row was not marked, at the next prune.

Retrain runs that ended keep their log, configuration and data list; their checkpoints
(``last.pt``, ``best.pt``: 283 MB each for a ResNet50) go with a prune too. A registered run's
were removed at registration (``schedule.retrain.free_registered_copies``); what is left is
the checkpoints of runs that failed or were stopped, which the schedule never resumes.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nscmonitor.store.registry import ModelInfo

log = logging.getLogger(__name__)

#: rollback targets a prune keeps unless told otherwise
DEFAULT_KEEP = 3

#: prefix of a version folder being removed (renamed first, deleted second)
REMOVING = ".removing-"

#: what is said of a removed version's files wherever its engine would be
REMOVED_NOTE = "files removed by 'nscmonitor models prune' (the record stays)"


@dataclass(frozen=True)
class Decision:
    version: str
    state: str
    remove: bool
    reason: str


@dataclass
class PruneReport:
    decisions: list[Decision]
    removed: list[str] = field(default_factory=list)
    freed_bytes: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)
    #: (run id, status, checkpoint bytes) of ended retrain runs whose checkpoints go (or would)
    runs: list[tuple[int, str, int]] = field(default_factory=list)


def plan(versions: list[ModelInfo], versions_dir: Path, keep: int) -> list[Decision]:
    """What a prune keeping ``keep`` rollback targets would do with each version, and why."""
    if keep < 0:
        raise ValueError("keep must be >= 0")
    targets = sorted((v for v in versions if v.state == "retired" and v.activated_at is not None),
                     key=lambda v: v.activated_at, reverse=True)
    kept_targets = {v.version for v in targets[:keep]}
    ours = Path(versions_dir).resolve()
    out = []
    for v in versions:
        if v.state == "removed":
            continue
        if _folder_of(v.path) != ours:
            out.append(Decision(v.version, v.state, False, f"its files are not in the registry's folder ({v.path!r})"))
        elif v.state == "active":
            out.append(Decision(v.version, v.state, False, "active"))
        elif v.version in kept_targets:
            n = [t.version for t in targets].index(v.version) + 1
            out.append(Decision(v.version, v.state, False, f"rollback target {n} of the {keep} kept"))
        elif v.state == "retired" and v.activated_at is not None:
            out.append(Decision(v.version, v.state, True, f"retired; older than the {keep} rollback target(s) kept"))
        elif v.state == "retired":
            out.append(Decision(v.version, v.state, True, "retired by a rollback (rollback does not return to it)"))
        elif v.state != "candidate":
            out.append(Decision(v.version, v.state, False, f"state {v.state!r} is not one a prune decides on"))
        elif (newer := _promoted_after(v, versions)) is not None:
            out.append(Decision(v.version, v.state, True, f"candidate never promoted; {newer.version}, registered "
                                "after it, was promoted"))
        else:
            out.append(Decision(v.version, v.state, False, "candidate: no version registered after it was "
                                "promoted (awaiting a decision)"))
    return out


def _folder_of(path: str | Path) -> Path | None:
    """The folder holding ``path``'s folder, resolved; None for a path no file system takes (a
    database row with a NUL byte in it): such a row is never the registry's, so nothing of it
    is deleted."""
    try:
        return Path(path).resolve().parent.parent
    except (OSError, ValueError) as exc:
        log.warning("prune: %r is not a path (%s); left alone", path, exc)
        return None


def _promoted_after(candidate: ModelInfo, versions: list[ModelInfo]) -> ModelInfo | None:
    """A version registered after ``candidate`` that has been active (only an active version
    becomes retired): the decision the candidate waited for was made. A rollback re-activating
    an older version is no decision about a newer candidate."""
    return next((v for v in versions if v.state in ("active", "retired") and v.created_at > candidate.created_at),
                None)


def folder_bytes(folder: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError as exc:
                log.warning("prune: cannot read the size of %s: %s", os.path.join(root, name), exc)
    return total


def prune(db, versions_dir: Path, *, keep: int, dry_run: bool) -> PruneReport:
    """Remove the folders ``plan`` marks (or only report them with ``dry_run``)."""
    from nscmonitor.store.registry import list_versions, remove_version

    versions_dir = Path(versions_dir)
    if not dry_run:
        finish_interrupted(db, versions_dir)
    infos = {v.version: v for v in list_versions(db)}
    report = PruneReport(plan(list(infos.values()), versions_dir, keep))
    for d in report.decisions:
        folder = Path(infos[d.version].path).parent
        report.sizes[d.version] = folder_bytes(folder) if folder.is_dir() else 0
        if not d.remove or dry_run:
            continue
        size = report.sizes[d.version]
        aside = versions_dir / f"{REMOVING}{folder.name}"  # the folder's own name: never a path from a row

        def move(folder: Path = folder, aside: Path = aside) -> None:
            if folder.is_dir():
                os.replace(folder, aside)

        try:
            done = remove_version(db, d.version, states=(d.state,), commit_files=move, freed_bytes=size,
                                  reason=f"nscmonitor models prune --keep {keep}: {d.reason}")
        except OSError as exc:
            report.failed.append((d.version, f"its folder could not be moved (in use?): {exc}; left as it was"))
            continue
        except Exception:
            if aside.is_dir() and not folder.exists():
                try:
                    os.replace(aside, folder)  # the row was not marked: the folder goes back
                except OSError as exc:
                    log.error("prune: %s could not be moved back to %s (%s); the next prune restores it",
                              aside, folder, exc)
            raise
        if not done:
            report.failed.append((d.version, "its state changed meanwhile; left as it was"))
            continue
        _delete(aside)
        report.removed.append(d.version)
        report.freed_bytes += size
    for run_id, status, files in run_checkpoints(db, versions_dir.parent / "retrain"):
        size = 0
        for f in files:
            try:
                n = f.stat().st_size
                if not dry_run:
                    f.unlink()
                size += n
            except OSError as exc:
                report.failed.append((f"retrain run {run_id}", f"{f} not removed: {exc}"))
        report.runs.append((run_id, status, size))
        if not dry_run:
            report.freed_bytes += size
    return report


#: what an ended retrain run leaves that a prune removes
RUN_CHECKPOINTS = ("last.pt", "best.pt")


def run_checkpoints(db, retrain_dir: Path) -> list[tuple[int, str, list[Path]]]:
    """(run id, status, checkpoint files) of retrain runs that ended, whose folder is in
    ``retrain_dir`` (never a folder elsewhere) and still holds checkpoints."""
    from nscmonitor.store.retrain import ended_runs

    ours = Path(retrain_dir).resolve()
    out = []
    for run_id, status, run_dir in ended_runs(db):
        if not run_dir or _folder_of(Path(run_dir) / "train") != ours:
            continue
        files = [Path(run_dir) / "train" / n for n in RUN_CHECKPOINTS if (Path(run_dir) / "train" / n).is_file()]
        if files:
            out.append((run_id, status, files))
    return out


def finish_interrupted(db, versions_dir: Path) -> None:
    """A prune stopped between its two steps left ``.removing-<version>``: deleted when the
    row says removed, renamed back when the transaction did not commit."""
    from nscmonitor.store.registry import find_version

    if not versions_dir.is_dir():
        return
    for aside in versions_dir.glob(f"{REMOVING}*"):
        version = aside.name[len(REMOVING):]
        info = find_version(db, version)
        if info is not None and info.state == "removed":
            _delete(aside)
            continue
        home = versions_dir / version
        if home.exists():
            log.warning("prune: %s left from an interrupted prune beside %s; not touched", aside, home)
            continue
        try:
            os.replace(aside, home)
            log.warning("prune: restored %s from an interrupted prune", home)
        except OSError as exc:
            log.warning("prune: cannot restore %s from an interrupted prune: %s", home, exc)


def _delete(folder: Path) -> None:
    def report(_func, path, exc) -> None:
        log.warning("prune: %s not deleted (%s); removed at the next prune", path, exc)

    if sys.version_info >= (3, 12):
        shutil.rmtree(folder, onexc=report)
    else:
        shutil.rmtree(folder, onerror=lambda func, path, info: report(func, path, info[1]))


def describe(report: PruneReport, *, dry_run: bool) -> list[str]:
    mb = {v: s / 1e6 for v, s in report.sizes.items()}
    lines = []
    for d in report.decisions:
        verb = ("would remove" if dry_run else "removed" if d.version in report.removed else "not removed") \
            if d.remove else "keep"
        lines.append(f"  {verb:<13} {d.version:<40} {d.state:<10} {mb.get(d.version, 0):>8.1f} MB  {d.reason}")
    for run_id, status, size in report.runs:
        lines.append(f"  {'would remove' if dry_run else 'removed':<13} checkpoints of retrain run {run_id} "
                     f"({status}) {size / 1e6:>8.1f} MB")
    for v, why in report.failed:
        lines.append(f"  ! {v}: {why}")
    if dry_run:
        n = sum(d.remove for d in report.decisions)
        total = sum(report.sizes.get(d.version, 0) for d in report.decisions if d.remove)
        total += sum(size for _, _, size in report.runs)
        lines.append(f"{n} version(s) and the checkpoints of {len(report.runs)} ended retrain run(s) would be "
                     f"removed, {total / 1e6:.1f} MB freed (dry run: nothing changed)")
    else:
        lines.append(f"{len(report.removed)} version(s) and the checkpoints of {len(report.runs)} ended retrain "
                     f"run(s) removed, {report.freed_bytes / 1e6:.1f} MB freed"
                     + (f"; {len(report.failed)} left as they were" if report.failed else ""))
    return lines

