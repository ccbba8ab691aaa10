"""Training on two CPU processes for real: torchrun, gloo, DistributedDataParallel, the tiny
model. The export passes the parity check, the metrics match a one-process run within the
seed-to-seed noise, the validation numbers are those of the whole set, and a run whose
processes are stopped mid-training leaves no worker behind and resumes from its last
checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from nscmonitor.cli import main as cli_main
from nscmonitor.engines import read_onnx_metadata
from nscmonitor.training import data as D
from nscmonitor.training.export import check_parity, load_checkpoint
from nscmonitor.training.launch import command, stop, thread_env, write_toml
from nscmonitor.training.synthetic import write_synthetic_tiles
from nscmonitor.training.train import TrainConfig, main

pytestmark = pytest.mark.slow
torch.set_num_threads(1)

#: Noise of a 2-epoch tiny-model run on these tiles, measured as the spread of three
#: one-process runs (seeds 0, 1, 2): test tile accuracy 0.48-0.53, last train loss
#: 1.171-1.187. Two processes differ from one in their augmentation streams and in
#: BatchNorm statistics over half batches, so they may differ by about that much, not more.
ACC_TOL = 0.10
LOSS_REL_TOL = 0.05


@pytest.fixture(scope="module")
def tiles_dir(tmp_path_factory):
    return write_synthetic_tiles(tmp_path_factory.mktemp("tiles") / "d", plates=2, wells_per_class=4,
                                 timepoints=(0, 24, 48, 72, 96), fields=4, tile_size=32, seed=5)


def _history(run: Path) -> list[dict]:
    return torch.load(run / "last.pt", weights_only=True)["state"]["history"]


def test_two_processes_export_with_parity_and_match_one_process(tiles_dir, tmp_path, capsys):
    common = dict(scheme="multiclass", arch="tiny", epochs=2, batch_size=32)
    one = main(TrainConfig(data=str(tiles_dir), out=str(tmp_path / "one"), threads=1, progress=False, export=False,
                           **common))
    capsys.readouterr()
    two_dir = tmp_path / "two"
    assert cli_main(["train", "--data", str(tiles_dir), "--scheme", "multiclass", "--arch", "tiny", "--epochs", "2",
                     "--batch-size", "32", "--out", str(two_dir), "--nproc", "2", "--threads", "2",
                     "--no-engine"]) == 0
    assert "training on 2 processes" in capsys.readouterr().out
    cfg = json.loads((two_dir / "config.json").read_text())
    assert cfg["nproc"] == 2 and cfg["batch_size"] == 32
    two = json.loads((two_dir / "metrics.json").read_text())
    # the export rank 0 wrote loads in the daemon's engine and agrees with its checkpoint
    md = read_onnx_metadata(two_dir / "model.onnx")
    assert md.classes == D.MULTICLASS and md.calibration_sha256
    recs, _ = D.read_tiles_export(tiles_dir)
    x, _, _ = D.load_arrays(recs[::20], D.MULTICLASS, tile_size=32, image_size=32)
    model, meta = load_checkpoint(two_dir)
    assert meta["data_hash"] == one["data_hash"] == two["data_hash"]
    assert check_parity(model, two_dir / "model.onnx", x, md) <= 1e-4
    # same data, same split, same global batch: the numbers agree within the noise
    h1, h2 = _history(tmp_path / "one"), _history(two_dir)
    assert [h["epoch"] for h in h2] == [0, 1]
    assert h2[-1]["train"]["loss"] < h2[0]["train"]["loss"]
    assert abs(h2[-1]["train"]["loss"] - h1[-1]["train"]["loss"]) <= LOSS_REL_TOL * h1[-1]["train"]["loss"]
    assert abs(h2[-1]["val"]["balanced_accuracy"] - h1[-1]["val"]["balanced_accuracy"]) <= ACC_TOL
    assert abs(two["tile"]["accuracy"] - one["tile"]["accuracy"]) <= ACC_TOL
    assert two["tile"]["accuracy"] > 0.35 and one["tile"]["accuracy"] > 0.35  # chance is 0.25


def _evaluate_rank(rank: int, size: int, init_file: str, out_dir: str) -> None:
    """One rank of a real gloo group scoring its share of a validation set."""
    import torch.distributed as dist

    from nscmonitor.training import distributed as dd
    from nscmonitor.training.model import build_model
    from nscmonitor.training.train import Split, evaluate

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=size)
    try:
        split, model = _eval_case(build_model, Split)
        res = evaluate(model, torch.nn.CrossEntropyLoss(), split, torch.device("cpu"), batch_size=16,
                       world=dd.World(rank=rank, size=size), num_classes=4)
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(res))
    finally:
        dist.destroy_process_group()


def _eval_case(build_model, split_type):
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    y = rng.integers(0, 3, 37)  # 37 tiles (odd, not a multiple of the world), class 3 absent
    split = split_type(rng.random((37, 32, 32)).astype(np.float16), y.astype(np.int64), [])
    return split, build_model("tiny", 4).eval()


def test_validation_metrics_are_the_whole_sets_on_every_rank(tmp_path):
    """Summed over a real gloo group of 2, each rank's numbers equal one process scoring all
    37 tiles: early stopping sees the whole validation set, the same on every rank."""
    from nscmonitor.training.evaluate import balanced_accuracy
    from nscmonitor.training.model import build_model
    from nscmonitor.training.train import Split, evaluate, predict_logits

    torch.multiprocessing.spawn(_evaluate_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    split, model = _eval_case(build_model, Split)
    whole = evaluate(model, torch.nn.CrossEntropyLoss(), split, torch.device("cpu"), batch_size=16, num_classes=4)
    pred = predict_logits(model, split.x, torch.device("cpu")).argmax(1)
    assert whole["balanced_accuracy"] == pytest.approx(balanced_accuracy(split.y, pred, 4))
    assert whole["accuracy"] == pytest.approx(float((pred == split.y).mean()))
    for r in ranks:
        assert r["loss"] == pytest.approx(whole["loss"], rel=1e-6)
        assert r["accuracy"] == pytest.approx(whole["accuracy"]) and r["balanced_accuracy"] == pytest.approx(
            whole["balanced_accuracy"])


def test_interrupted_run_stops_every_worker_and_the_documented_torchrun_resumes_it(tiles_dir, tmp_path):
    """First the launch that ``nscmonitor train --nproc`` and scheduled retraining use, stopped
    mid-training the way a time limit or Ctrl-C stops it; then the hand-typed torchrun
    command of the docs continues it with --resume."""
    run = tmp_path / "r"
    cfg = tmp_path / "train.toml"
    cfg.write_text(f'data = "{tiles_dir.as_posix()}"\nout = "{run.as_posix()}"\nscheme = "binary"\narch = "tiny"\n'
                   'epochs = 6\nbatch_size = 32\nthreads = 2\nexport = false\n')
    env = {**os.environ, **thread_env(2, 2)}
    with open(tmp_path / "first.log", "w") as log:
        launcher = subprocess.Popen(command(cfg, 2), stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 240
        while not (run / "last.pt").is_file() and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert launcher.poll() is None, (tmp_path / "first.log").read_text()[-2000:]
        workers = psutil.Process(launcher.pid).children(recursive=True)
        assert len(workers) >= 2
        assert stop(launcher, grace_s=30) != 0
        _, alive = psutil.wait_procs(workers, timeout=2)
    assert not alive  # torchrun's workers live in their own sessions: none may outlive the stop
    killed = torch.load(run / "last.pt", weights_only=True)
    assert killed["epoch"] < 5 and not (run / "metrics.json").exists()
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "nscmonitor.training.train", "--config", str(cfg), "--resume"]
    res = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert f"resuming after epoch {killed['epoch'] + 1}" in res.stdout
    assert res.stdout.count("time per epoch") == 1  # rank 0 speaks for the run
    final = torch.load(run / "last.pt", weights_only=True)
    hist = final["state"]["history"]
    assert final["epoch"] == 5 and [h["epoch"] for h in hist] == list(range(6))
    assert hist[: killed["epoch"] + 1] == killed["state"]["history"]
    assert (run / "metrics.json").is_file() and set(final["state_dict"]) == set(killed["state_dict"])
    assert not any(k.startswith("module.") for k in final["state_dict"])  # the unwrapped model's weights


def test_scheduled_retraining_launches_its_trainer_on_two_processes(tiles_dir, tmp_path):
    """``retrain.nproc`` reaches the trainer: the retraining's own subprocess launch runs
    torchrun with two gloo workers sharing the thread budget, at lower priority, logged."""
    from nscmonitor.schedule.retrain import train_subprocess

    cfg = tmp_path / "train.toml"
    write_toml(cfg, {"data": str(tiles_dir), "out": str(tmp_path / "train"), "scheme": "binary", "arch": "tiny",
                     "epochs": 1, "threads": 2, "progress": False, "export": False})
    rc, tail = train_subprocess(cfg, threads=2, timeout=300, log_path=tmp_path / "train.log", nproc=2)
    assert rc == 0, tail
    assert "DistributedDataParallel: 2 processes (gloo), batch 32 per process, 1 threads each" in tail
    assert json.loads((tmp_path / "train" / "config.json").read_text())["nproc"] == 2
    assert torch.load(tmp_path / "train" / "last.pt", weights_only=True)["epoch"] == 0
