"""One training run on several processes: process group, rank helpers, the class-balancing
sampler and the reductions that make every rank see the whole validation set.

A run started by torchrun (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` in the environment) joins
a process group: gloo on the CPU, nccl on CUDA with one GPU per local rank. Without those
variables everything here degrades to a world of one, so the single-process path runs the
same code and gives the same numbers as before.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from nscmonitor.core.errors import UserFacingError

#: a collective that waits longer than this (rank 0 still exporting a large model while the
#: others wait at the final barrier) fails instead of hanging for ever
TIMEOUT = timedelta(hours=1)


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1
    local_size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0 writes checkpoints, metrics, the calibration set and the ONNX export."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world_from_env(env: dict[str, str] | None = None) -> World:
    env = os.environ if env is None else env
    size = int(env.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(rank=int(env["RANK"]), local_rank=int(env.get("LOCAL_RANK", "0")), size=size,
                 local_size=int(env.get("LOCAL_WORLD_SIZE", str(size))))


def resolve_device(device: str) -> str:
    """``auto``: the GPU when torch sees one, else the CPU (a lab's GPU PC retrains on its GPU
    without anyone setting it); anything else as given."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def init(device: str, world: World) -> torch.device:
    """Join the process group torchrun set up and return this rank's device."""
    if not world.distributed:
        return torch.device(device)
    cuda = device.startswith("cuda")
    if cuda:
        if not torch.cuda.is_available():
            raise UserFacingError("--device cuda asked for, but torch sees no CUDA GPU here")
        if world.local_rank >= torch.cuda.device_count():
            raise UserFacingError(f"{world.local_size} processes on this machine but torch sees "
                                  f"{torch.cuda.device_count()} GPU(s): use at most one process per GPU")
        dev = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT,
                                **({"device_id": dev} if cuda else {}))
    return dev


def close(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def rank_seed(seed: int, rank: int) -> int:
    """Augmentation seed of one rank: rank 0 keeps the single-process seed, the others draw
    their own streams (the same stream on every rank would repeat each augmentation N times)."""
    return seed + 1_000_003 * rank


@contextlib.contextmanager
def quiet_unless_main(world: World) -> Iterator[None]:
    """Rank 0 speaks for the run; the others keep stderr (warnings, tracebacks) only."""
    if world.main:
        yield
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            yield


def all_reduce_sum(values: np.ndarray, world: World, device: torch.device) -> np.ndarray:
    """Element-wise sum over ranks (float64 on the wire so counts stay exact)."""
    if not world.distributed:
        return np.asarray(values, np.float64)
    t = torch.as_tensor(np.asarray(values, np.float64), device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().numpy()


class BalancedDistributedSampler:
    """Training order of one rank, cut from ONE global order that every rank draws alike.

    The global order is today's single-process order: a permutation, or with ``weights``
    (``balance = "sampler"``) n draws with replacement, each class drawn with probability
    proportional to its weight, so rare classes are seen as often as common ones. Rank r
    takes every N-th element starting at r, after the order is padded to a multiple of N
    with its own first elements (as torch's DistributedSampler does), so every rank runs
    the same number of steps, which DistributedDataParallel needs. A strided share of i.i.d.
    class-balanced draws is itself class balanced, so the balance holds globally and on
    every rank. ``set_epoch`` reshuffles; all ranks must call it with the same epoch."""

    def __init__(self, labels: np.ndarray, world: World, *, weights: np.ndarray | None = None,
                 shuffle: bool = True, seed: int = 0) -> None:
        self.labels = np.asarray(labels)
        self.world = world
        self.weights = weights
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_order(self) -> np.ndarray:
        n = len(self.labels)
        rng = np.random.default_rng(self.seed * 1000 + self.epoch)
        if self.weights is not None:
            p = np.asarray(self.weights, np.float64)[self.labels]
            return rng.choice(n, size=n, replace=True, p=p / p.sum())
        return rng.permutation(n) if self.shuffle else np.arange(n)

    def indices(self) -> np.ndarray:
        order = self.global_order()
        size = self.world.size
        if size > 1 and len(order):
            pad = -len(order) % size
            order = np.concatenate([order, np.resize(order, pad)]) if pad else order
        return order[self.world.rank::size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return -(-len(self.labels) // self.world.size)


def shard(n: int, world: World) -> np.ndarray:
    """This rank's share of an evaluation set: every element exactly once over all ranks
    (no padding: the reduced metrics must count each validation tile once)."""
    return np.arange(world.rank, n, world.size)


def per_rank_batch(batch_size: int, world: World) -> int:
    """``batch_size`` stays the global batch (the optimiser's steps per epoch, learning rate
    and schedule mean the same on one process or N), split over the ranks."""
    return max(1, -(-batch_size // world.size))
