"""``nscmonitor models prune``: superseded versions' folders are freed, what rollback and
provenance need stays, and a folder that cannot be moved or a prune cut short loses nothing.
Real SQLite registry, real version folders of real (tiny) ONNX models, the real command line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from sqlalchemy import text

from nscmonitor.cli import main as cli_main
from nscmonitor.engines.tiny import build_tiny_classifier
from nscmonitor.registry.registry import Registry
from nscmonitor.store.db import ensure_schema, open_engine


@pytest.fixture()
def lab(tmp_path: Path):
    """v1..v3 promoted in turn, v4 a candidate rejected (v5 promoted after it), v5 active,
    v6 a candidate registered after v5: the history a few months of retraining leave."""
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'database_url = "sqlite:///{(tmp_path / "nsc.db").as_posix()}"\n'
                   f'models_dir = "{(tmp_path / "models").as_posix()}"\nlog_dir = "{(tmp_path / "logs").as_posix()}"\n')
    db = open_engine(f"sqlite:///{tmp_path / 'nsc.db'}")
    ensure_schema(db)
    reg = Registry(tmp_path / "models", db)
    for i in range(1, 7):
        src = tmp_path / "runs" / f"v{i}" / "model.onnx"
        src.parent.mkdir(parents=True)
        build_tiny_classifier(src, input_size=32, seed=i)
        reg.register(src, version=f"v{i}", activate_if_first=(i == 1))
        # an engine cache, as the daemon leaves beside a model it served on OpenVINO
        blob = tmp_path / "models" / "versions" / f"v{i}" / "openvino-cache" / "08c46528f99c" / "1.blob"
        blob.parent.mkdir(parents=True)
        blob.write_bytes(os.urandom(20_000))
        if i in (2, 3, 5):
            reg.promote(f"v{i}")
    return cfg, db, reg, tmp_path / "models" / "versions"


def _states(reg: Registry) -> dict[str, str]:
    return {v.version: v.state for v in reg.list()}


def _prune(cfg: Path, capsys, *args: str) -> tuple[int, dict]:
    rc = cli_main(["--config", str(cfg), "models", "prune", "--json", *args])
    return rc, json.loads(capsys.readouterr().out)


def test_prune_keeps_active_rollback_targets_and_new_candidates(lab, capsys) -> None:
    cfg, db, reg, versions = lab
    rc, dry = _prune(cfg, capsys, "--keep", "1", "--dry-run")
    assert rc == 0 and dry["removed"] == []
    plan = {v["version"]: v["remove"] for v in dry["versions"]}
    assert plan == {"v1": True, "v2": True, "v3": False, "v4": True, "v5": False, "v6": False}
    assert all(v["bytes"] > 20_000 for v in dry["versions"])
    assert sorted(p.name for p in versions.iterdir()) == [f"v{i}" for i in range(1, 7)]

    rc, done = _prune(cfg, capsys, "--keep", "1")
    assert rc == 0 and sorted(done["removed"]) == ["v1", "v2", "v4"]
    assert done["freed_bytes"] == sum(v["bytes"] for v in dry["versions"] if v["remove"])
    assert sorted(p.name for p in versions.iterdir()) == ["v3", "v5", "v6"]
    states = _states(reg)
    assert states == {"v1": "removed", "v2": "removed", "v3": "retired", "v4": "removed", "v5": "active",
                      "v6": "candidate"}
    # the record of a removed version stays: its hash and metadata are the provenance of its predictions
    v1 = reg.get("v1")
    assert len(v1.sha256) == 64 and v1.meta["classes"]
    assert cli_main(["--config", str(cfg), "models", "show", "v1"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["state"] == "removed" and "models prune" in shown["engine"]["message"]
    with db.connect() as c:
        removed = [json.loads(d) if isinstance(d, str) else d
                   for (d,) in c.execute(text("select data from events where kind = 'model_removed'"))]
    assert sorted(d["version"] for d in removed) == ["v1", "v2", "v4"] and all(d["bytes"] > 0 for d in removed)

    # rollback still reaches the kept target, and no further
    assert cli_main(["--config", str(cfg), "models", "rollback"]) == 0
    assert reg.active().version == "v3"
    assert cli_main(["--config", str(cfg), "models", "rollback"]) == 2
    assert "nothing to roll back to" in capsys.readouterr().err
    # a removed version cannot be promoted: its file is gone, and the command says so
    assert cli_main(["--config", str(cfg), "models", "promote", "v2"]) == 2
    assert "missing" in capsys.readouterr().err
    assert reg.active().version == "v3"
    # after the rollback: the version rolled back from is no rollback target; the candidate
    # registered after it still awaits a decision (the rollback was none about it)
    rc, again = _prune(cfg, capsys, "--keep", "1", "--dry-run")
    assert rc == 0 and {v["version"]: v["remove"] for v in again["versions"]} == {"v3": False, "v5": True,
                                                                                    "v6": False}


def test_a_folder_that_cannot_be_moved_is_left_as_it_was(lab, capsys) -> None:
    cfg, db, reg, versions = lab
    # the rename target is taken by a non-empty folder: the OS refuses the move, as Windows does
    # for a folder whose files another process holds open
    blocker = versions / ".removing-v2"
    blocker.mkdir()
    (blocker / "x").write_text("something")
    rc, out = _prune(cfg, capsys, "--keep", "1")
    assert rc == 1
    assert [f["what"] for f in out["failed"]] == ["v2"] and "could not be moved" in out["failed"][0]["reason"]
    assert sorted(out["removed"]) == ["v1", "v4"]
    assert _states(reg)["v2"] == "retired" and (versions / "v2" / "model.onnx").is_file()


def test_a_prune_cut_short_is_finished_or_undone_at_the_next(lab, capsys) -> None:
    cfg, db, reg, versions = lab
    # cut short after the move, before the row was marked: the folder comes back
    (versions / "v6").rename(versions / ".removing-v6")
    # cut short after the row was marked, before the delete: the delete is finished
    rc, _ = _prune(cfg, capsys, "--keep", "2")
    assert rc == 0
    assert (versions / "v6" / "model.onnx").is_file() and _states(reg)["v6"] == "candidate"
    (versions / ".removing-v1").mkdir()
    (versions / ".removing-v1" / "model.onnx").write_bytes(b"left over")
    rc, _ = _prune(cfg, capsys, "--keep", "2")
    assert rc == 0 and not (versions / ".removing-v1").exists()


def test_rollback_refuses_a_target_whose_file_is_gone(lab, capsys) -> None:
    cfg, db, reg, versions = lab
    (versions / "v3" / "model.onnx").unlink()
    assert cli_main(["--config", str(cfg), "models", "rollback"]) == 2
    err = capsys.readouterr().err
    assert "refusing to roll back to v3" in err and "missing" in err
    assert reg.active().version == "v5" and _states(reg)["v3"] == "retired"


def test_doctor_says_what_the_version_folders_hold_and_what_a_prune_frees(lab, capsys) -> None:
    cfg, db, reg, versions = lab
    cli_main(["--config", str(cfg), "doctor"])
    line = next(x for x in capsys.readouterr().out.splitlines() if "models folder" in x)
    assert "in 6 version folder(s)" in line and "free" in line
    # keeping 3 rollback targets (v3, v2, v1), only the candidate v4 goes
    assert "would free" in line and "(1 superseded version(s)), keeping 3 rollback targets" in line
    _prune(cfg, capsys, "--keep", "0")
    cli_main(["--config", str(cfg), "doctor"])
    line = next(x for x in capsys.readouterr().out.splitlines() if "models folder" in x)
    assert "in 2 version folder(s)" in line and "would free" not in line


def test_checkpoints_of_ended_retrain_runs_go_their_logs_stay(lab, capsys, tmp_path: Path) -> None:
    """A failed run's checkpoints (the schedule never resumes it) go with a prune; a run still
    training, and a run folder outside the models folder, are not touched."""
    from nscmonitor.store.retrain import finish_run, start_run

    cfg, db, reg, versions = lab
    retrain = versions.parent / "retrain"
    folders = {}
    for name, status, where in (("failed", "failed", retrain), ("running", None, retrain),
                                ("elsewhere", "failed", tmp_path / "other")):
        run_id = start_run(db, trigger="schedule", labels_version=None, baseline_version="v5")
        folder = where / f"run-{run_id:04d}"
        (folder / "train").mkdir(parents=True)
        for f in ("last.pt", "best.pt"):
            (folder / "train" / f).write_bytes(os.urandom(4000))
        (folder / "train.log").write_text("epoch 1\n")
        if status:
            finish_run(db, run_id, status=status, reason="killed", run_dir=str(folder))
        folders[name] = (run_id, folder)
    rc, dry = _prune(cfg, capsys, "--dry-run")
    assert dry["runs"] == [{"run": folders["failed"][0], "status": "failed", "checkpoint_bytes": 8000}]
    assert (folders["failed"][1] / "train" / "last.pt").is_file()
    cli_main(["--config", str(cfg), "doctor"])
    line = next(x for x in capsys.readouterr().out.splitlines() if "models folder" in x)
    assert "the checkpoints of 1 ended retrain run(s)" in line
    rc, done = _prune(cfg, capsys)
    assert rc == 0 and done["runs"] == dry["runs"]
    failed = folders["failed"][1]
    assert not (failed / "train" / "last.pt").exists() and not (failed / "train" / "best.pt").exists()
    assert (failed / "train.log").read_text() == "epoch 1\n"
    for name in ("running", "elsewhere"):
        assert (folders[name][1] / "train" / "last.pt").is_file() and (folders[name][1] / "train" / "best.pt").is_file()
    rc, again = _prune(cfg, capsys, "--dry-run")
    assert again["runs"] == []
