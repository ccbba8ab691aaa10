"""The steps of a training run: in-memory batches, one epoch, evaluation with the
early-stopping score, the optimiser and its schedule, and the mixed-precision choice."""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from nscmonitor.training import distributed as dd
from nscmonitor.training.train_data import Split, TrainConfig
from nscmonitor.training.transforms import AugmentConfig, augment

log = logging.getLogger("nscmonitor.training")


def batches(split: Split, batch_size: int, *, shuffle: bool, weights: np.ndarray | None = None, seed: int = 0,
            order: np.ndarray | None = None):
    """In-memory batches: the tiles are small and decoded once, so a DataLoader's worker
    processes would cost more than they save on a 2-core machine. ``order`` (a rank's share
    from ``BalancedDistributedSampler``) replaces the order drawn from ``seed``."""
    n = len(split.y)
    if order is None:
        rng = np.random.default_rng(seed)
        if weights is not None:
            p = weights[split.y]
            order = rng.choice(n, size=n, replace=True, p=p / p.sum())
        else:
            order = rng.permutation(n) if shuffle else np.arange(n)
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        if shuffle and len(idx) < 2 < n:
            break  # a lone sample breaks BatchNorm's training statistics
        target = split.y[idx] if split.soft is None else split.soft[idx]
        yield torch.from_numpy(split.x[idx].astype(np.float32)).unsqueeze(1), torch.from_numpy(target)


def class_weights(y: np.ndarray, k: int) -> np.ndarray:
    """Inverse frequency, mean 1: rare oligodendrocytes count as much as common neurons."""
    counts = np.bincount(y, minlength=k).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / k, 0.0)
    return w / w[counts > 0].mean()


def cpu_bf16_supported() -> bool:
    """bf16 pays on the CPU only with native bf16 units (AVX512-BF16 or AMX); elsewhere oneDNN
    emulates it and training gets slower, so the answer decides whether ``amp`` uses it."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError) as exc:
        log.info("cannot tell whether this CPU has bf16 units (%s): training in fp32", exc)
        return False


def amp_dtype(cfg: TrainConfig, device) -> torch.dtype | None:
    """Mixed precision for training and validation: fp16 with a loss scaler on CUDA, bf16 (no
    scaler needed: fp32's exponent range) on CPUs with bf16 units, else none. Weights, the
    temperature fit, the test report and the export stay fp32."""
    if not cfg.amp:
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_bf16_supported():
        return torch.bfloat16
    return None


def _to_model_layout(x: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x


def train_one_epoch(model, criterion, optimizer, scheduler, split: Split, device, epoch: int,
                    cfg: TrainConfig, scaler=None, sample_weights=None, progress=None,
                    dtype: torch.dtype | None = None, world: dd.World = dd.World()) -> dict[str, float]:
    """One pass over this rank's share of the epoch's order; loss and accuracy are summed
    over all ranks, so every rank returns the whole epoch's numbers."""
    model.train()
    aug = AugmentConfig(**cfg.augment)
    gen = torch.Generator().manual_seed(dd.rank_seed(cfg.seed * 1000 + epoch, world.rank))
    sampler = dd.BalancedDistributedSampler(split.y, world, weights=sample_weights, seed=cfg.seed)
    sampler.set_epoch(epoch)
    order = sampler.indices()
    batch_size = dd.per_rank_batch(cfg.batch_size, world)
    n_batches = math.ceil(len(order) / batch_size)
    task = progress.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=n_batches, loss=float("nan")) if progress else None
    total, seen, correct = 0.0, 0, 0
    for x, y in batches(split, batch_size, shuffle=True, order=order):
        x = _to_model_layout(augment(x, aug, gen).to(device, non_blocking=True), cfg)
        y = y.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(x)
            loss = criterion(logits, y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        total += loss.item() * len(y)
        seen += len(y)
        correct += (logits.argmax(1) == (y.argmax(1) if y.dim() == 2 else y)).sum().item()
        if progress:
            progress.update(task, advance=1, loss=total / seen)
    if progress:
        progress.remove_task(task)
    total, seen, correct = dd.all_reduce_sum(np.array([total, seen, correct]), world, device)
    return {"loss": float(total / max(seen, 1)), "accuracy": float(correct / max(seen, 1))}


@torch.no_grad()
def predict_logits(model, x: np.ndarray, device, batch_size: int = 128, dtype: torch.dtype | None = None,
                   channels_last: bool = False) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        xb = torch.from_numpy(x[i:i + batch_size].astype(np.float32)).unsqueeze(1).to(device)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out.append(model(xb).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def evaluate(model, criterion, split: Split, device, batch_size: int = 128, dtype: torch.dtype | None = None,
             channels_last: bool = False, world: dd.World = dd.World(),
             num_classes: int | None = None) -> dict[str, float]:
    """Validation loss, accuracy and balanced accuracy (the early-stopping score). Each rank
    scores its share of the set; the loss sum and the confusion matrix are summed over the
    ranks, so every rank gets the whole set's numbers and takes the same early-stopping
    decision. ``criterion`` must average (its sum is rebuilt from the mean)."""
    idx = dd.shard(len(split.y), world)
    k = num_classes or int(split.y.max()) + 1
    logits = predict_logits(model, split.x[idx], device, batch_size, dtype, channels_last)
    y = split.y[idx]
    loss_sum = float(criterion(torch.from_numpy(logits).to(device), torch.from_numpy(y).to(device)).item()) * len(y) \
        if len(y) else 0.0
    confusion = np.zeros((k, k), np.float64)
    if len(y):
        np.add.at(confusion, (y, logits.argmax(1)), 1)
    sums = dd.all_reduce_sum(np.concatenate([[loss_sum], confusion.ravel()]), world, device)
    loss_sum, confusion = sums[0], sums[1:].reshape(k, k)
    n = confusion.sum()
    support = confusion.sum(1)
    present = support > 0
    return {"loss": float(loss_sum / max(n, 1)), "accuracy": float(np.trace(confusion) / max(n, 1)),
            "balanced_accuracy": float(np.mean(np.diag(confusion)[present] / support[present])) if present.any()
            else None}


def build_optim(model, cfg: TrainConfig, steps_per_epoch: int):
    """AdamW with decoupled weight decay (not on norms and biases) and a per-step cosine
    schedule after a linear warm-up: robust defaults for training from scratch or fine-tuning."""
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = max(1, int(cfg.warmup_epochs * steps_per_epoch))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)
