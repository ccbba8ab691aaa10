"""The pieces of multi-process training that need no process group: the class-balancing
distributed sampler, rank seeds, the thread split and the launch config torchrun's workers read."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nscmonitor.training import distributed as dd
from nscmonitor.training.launch import command, thread_env, threads_per_process, write_toml
from nscmonitor.training.train import Split, TrainConfig, batches, class_weights

torch.set_num_threads(1)


def _labels(counts: list[int]) -> np.ndarray:
    return np.concatenate([np.full(n, k) for k, n in enumerate(counts)]).astype(np.int64)


@pytest.mark.parametrize("n, size", [(10, 1), (10, 2), (11, 2), (11, 3), (7, 4)])
def test_rank_shares_are_one_padded_global_order(n: int, size: int) -> None:
    y = _labels([n // 2, n - n // 2])
    shares = [dd.BalancedDistributedSampler(y, dd.World(rank=r, size=size), seed=3) for r in range(size)]
    for s in shares:
        s.set_epoch(5)
    idx = [s.indices() for s in shares]
    assert len({len(i) for i in idx}) == 1 and len(idx[0]) == len(shares[0]) == -(-n // size)
    interleaved = np.stack(idx, axis=1).ravel()  # rank r holds positions r, r + N, ...
    assert sorted(set(interleaved.tolist())) == list(range(n))  # every tile seen this epoch
    assert np.array_equal(interleaved[:n], shares[0].global_order())
    assert np.array_equal(interleaved[n:], interleaved[: len(interleaved) - n])  # padding repeats the start


def test_one_process_keeps_the_single_process_order() -> None:
    """World of one: exactly the order today's single-process batches draw, with and without
    the balancing sampler, so a run on one process gives the numbers it always gave."""
    y = _labels([30, 5, 12])
    split = Split(np.zeros((len(y), 2, 2), np.float16), y, [])
    w = class_weights(y, 3)
    for weights in (None, w):
        s = dd.BalancedDistributedSampler(y, dd.World(), weights=weights, seed=2)
        s.set_epoch(4)
        old = np.concatenate([yb.numpy() for _, yb in batches(split, 8, shuffle=True, weights=weights,
                                                               seed=2 * 1000 + 4)])
        assert np.array_equal(y[s.indices()][: len(old)], old)


def test_balancing_sampler_keeps_class_balance_on_every_rank() -> None:
    y = _labels([1800, 200])
    w = class_weights(y, 2)
    for epoch in range(2):
        for rank in range(2):
            s = dd.BalancedDistributedSampler(y, dd.World(rank=rank, size=2), weights=w, seed=0)
            s.set_epoch(epoch)
            frac = np.bincount(y[s.indices()], minlength=2) / len(s)
            assert frac == pytest.approx([0.5, 0.5], abs=0.06)  # 1000 draws: 3 sd is 0.05
    plain = dd.BalancedDistributedSampler(y, dd.World(rank=1, size=2), seed=0)
    assert np.bincount(y[plain.indices()], minlength=2)[1] / len(plain) == pytest.approx(0.1, abs=0.03)


def test_set_epoch_reshuffles_and_every_rank_draws_the_same_order() -> None:
    y = _labels([50, 50])
    a, b = (dd.BalancedDistributedSampler(y, dd.World(rank=r, size=2), seed=1) for r in (0, 1))
    a.set_epoch(0)
    b.set_epoch(0)
    assert np.array_equal(a.global_order(), b.global_order())
    assert set(a.indices().tolist()).isdisjoint(b.indices().tolist())
    first = a.indices()
    a.set_epoch(1)
    assert not np.array_equal(first, a.indices())


def test_rank_seeds_differ_and_rank_zero_keeps_the_seed() -> None:
    assert dd.rank_seed(7000, 0) == 7000
    assert len({dd.rank_seed(7000, r) for r in range(4)}) == 4


def test_world_comes_from_torchruns_environment() -> None:
    assert dd.world_from_env({}) == dd.World() and dd.World().main and not dd.World().distributed
    w = dd.world_from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert (w.rank, w.local_rank, w.size, w.local_size, w.main, w.distributed) == (3, 1, 4, 2, False, True)
    assert [dd.shard(5, dd.World(rank=r, size=2)).tolist() for r in (0, 1)] == [[0, 2, 4], [1, 3]]
    assert dd.per_rank_batch(64, dd.World(size=2)) == 32 and dd.per_rank_batch(5, dd.World(size=2)) == 3


def test_thread_budget_is_split_over_the_processes() -> None:
    assert threads_per_process(8, 2) == 4 and threads_per_process(3, 2) == 1 and threads_per_process(1, 4) == 1
    assert threads_per_process(0, 2, cores=16) == 8
    assert thread_env(6, 3) == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}


def test_launch_command_and_config_round_trip(tmp_path) -> None:
    assert command("c.toml", 1)[1:] == ["-m", "nscmonitor.training.train", "--config", "c.toml"]
    argv = command("c.toml", 3, resume=True)
    assert argv[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=3"]
    assert argv[-4:] == ["nscmonitor.training.train", "--config", "c.toml", "--resume"]
    import dataclasses

    cfg = TrainConfig(data='d "quoted"\\x', out="o", arch="tiny", lr=1e-5, weights=None, min_train_h=24.0,
                      augment={"flips": False, "noise": 0.5})
    write_toml(tmp_path / "c.toml", dataclasses.asdict(cfg))
    assert TrainConfig.from_sources(str(tmp_path / "c.toml")) == cfg


def test_a_time_limit_stops_the_launch_with_sigterm_then_sigkill() -> None:
    import signal
    import subprocess
    import sys

    from nscmonitor.training.launch import run, stop

    assert run([sys.executable, "-c", "import time; time.sleep(60)"], timeout=0.5) == -9
    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, sys, time\n"
                                 "signal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint(flush=True)\ntime.sleep(60)"],
                                stdout=subprocess.PIPE)
    stubborn.stdout.readline()  # SIGTERM is ignored from here on
    assert stop(stubborn, grace_s=0.5) == -signal.SIGKILL
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    assert stop(polite, grace_s=30) == -signal.SIGTERM


def test_auto_trains_on_the_gpu_when_torch_sees_one_and_on_the_cpu_otherwise(monkeypatch):
    assert TrainConfig(data="d", out="o").device == "auto"
    assert dd.resolve_device("cpu") == "cpu" and dd.resolve_device("cuda") == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the one fake: whether a GPU is there
    assert dd.resolve_device("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dd.resolve_device("auto") == "cuda"
