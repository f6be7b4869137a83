"""The training loop for image classifiers, readable top to bottom.

    data -> model -> optimizer (LR scale + latent clip) -> schedule -> [resume] -> epochs -> metrics/plots

Every epoch ends with an atomic checkpoint (model, optimizer, schedule, RNG state, history), so
``resume=True`` continues an interrupted run and gives the same result as an uninterrupted one with the
same seed: the batch order of epoch e is drawn from a generator seeded by (seed, e), and the global RNG
(dropout, stochastic quantizers) is restored from the checkpoint.

Other kinds of task (e.g. language models) register their own loop in :data:`TASKS`.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from . import distributed
from .checkpoint import load_model_state, model_from_config, read_checkpoint, save_checkpoint
from .config import TrainConfig, validate
from .errors import CheckpointError, ConfigError, DataError
from .fileio import atomic_write
from .losses import get_loss
from .norm import recalibrate_batch_norm
from .optim import build_optimizer, build_scheduler
from .pact_sawb import pact_l2_penalty
from .plotting import plot_curves

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"
CURVES = "curves.png"


def keep_freed_memory() -> None:
    """Ask glibc to keep freed large blocks instead of returning them to the OS.

    Each training step allocates big temporaries (a 4096x4096 layer's binarized weights and their
    gradient are 64 MB each). By default glibc serves those with fresh ``mmap``s and unmaps them on free,
    so every step page-faults the same memory again; on a binary MLP that costs more than the sign itself.
    Reusing the heap removes that. No-op where glibc is not the allocator.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: serve blocks up to 1 GiB from the heap
        libc.mallopt(-1, (1 << 31) - 1)  # M_TRIM_THRESHOLD: do not give the heap top back after each free
    except (OSError, AttributeError):
        pass


def load_image_data(cfg: TrainConfig, data_dir=None, log=print):
    """Train and test splits as uint8 tensors (N, C, H, W) and int64 labels, checked against the model."""
    from .data import load_dataset

    allow_sample = cfg.dataset == "mnist"
    train = load_dataset(cfg.dataset, "train", data_dir=data_dir, allow_sample=allow_sample)
    test = load_dataset(cfg.dataset, "test", data_dir=data_dir, allow_sample=allow_sample)
    if train.is_sample:
        log(f"NOTE: full {cfg.dataset} not found; training on the {train.source}. "
            f"Put the files under --data-dir or LOWBIT_DATA for the full set.")
    num_classes = int(cfg.model_args.get("num_classes", train.num_classes))
    for ds in (train, test):
        if ds.labels.size and (ds.labels.min() < 0 or ds.labels.max() >= num_classes):
            raise DataError(
                f"{ds.name} {ds.split} labels range over [{ds.labels.min()}, {ds.labels.max()}], "
                f"but the model has {num_classes} classes"
            )
    expected = cfg.model_args.get("in_shape")
    if expected is not None and list(train.images.shape[1:]) != list(expected):
        raise DataError(f"{cfg.dataset} images have shape {list(train.images.shape[1:])}, model expects {expected}")

    def subset(ds, n):
        if n:
            return torch.from_numpy(np.ascontiguousarray(ds.images[:n])), torch.from_numpy(ds.labels[:n])
        return torch.from_numpy(ds.images), torch.from_numpy(ds.labels)

    return subset(train, cfg.train_subset), subset(test, cfg.test_subset), train.source


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, loss_fn, batch_size: int,
             device, ctx: Optional[distributed.Context] = None):
    """(mean loss, accuracy) of ``model`` on uint8 images; with a distributed context each rank takes a
    shard and the sums are combined."""
    model.eval()
    n = len(labels)
    idx = torch.arange(n)
    if ctx is not None and ctx.distributed:
        idx = idx[ctx.rank::ctx.world_size]
    loss_sum = correct = 0.0
    for start in range(0, len(idx), batch_size):
        b = idx[start:start + batch_size]
        x = images[b].to(device, non_blocking=True).float()
        y = labels[b].to(device)
        out = model(x)
        loss_sum += float(loss_fn(out, y)) * len(b)
        correct += float((out.argmax(1) == y).sum())
    if ctx is not None:
        loss_sum, correct = distributed.all_sum([loss_sum, correct], ctx)
    return loss_sum / max(n, 1), correct / max(n, 1)


def _check_resume(saved: Dict, cfg: TrainConfig, path: Path) -> None:
    """A checkpoint only continues the run it came from: same recipe, model and model arguments."""
    old = saved["config"]
    for key in ("recipe", "dataset", "model", "model_args", "task"):
        if old.get(key) != getattr(cfg, key):
            raise CheckpointError(
                f"--resume: {path} was written by a different run ({key} = {old.get(key)!r}, "
                f"this run has {getattr(cfg, key)!r}); use another --out directory"
            )


def resume_run(ckpt_path: Path, cfg: TrainConfig, model: nn.Module, optimizer, scheduler, ctx, log) -> Tuple[Dict, List, int, float]:
    """Restore model, optimizer, schedule and global RNG from the run's checkpoint.

    Returns ``(saved, history, start_epoch, elapsed_seconds)``; ``saved`` is the raw checkpoint for checks a
    task adds (e.g. the language model's vocabulary)."""
    if not ckpt_path.exists():
        raise CheckpointError(f"--resume: no checkpoint at {ckpt_path}")
    saved = read_checkpoint(ckpt_path, map_location=ctx.device)
    _check_resume(saved, cfg, ckpt_path)
    load_model_state(model, saved["model_state"], str(ckpt_path))
    optimizer.load_state_dict(saved["optimizer_state"])
    scheduler.load_state_dict(saved["scheduler_state"])
    torch.set_rng_state(saved["rng_state"])
    history, start_epoch = saved["history"], int(saved["epoch"])
    elapsed = history[-1]["wall_time"] if history else 0.0
    log(f"resumed from {ckpt_path} after epoch {start_epoch}")
    return saved, history, start_epoch, elapsed


def data_parallel(model: nn.Module, ctx) -> nn.Module:
    """The module to train: ``model`` itself, or its DistributedDataParallel wrapper under torchrun."""
    if not ctx.distributed:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)


def train_image(cfg: TrainConfig, out_dir, data_dir=None, resume: bool = False, progress: bool = True) -> Dict:
    validate(cfg)
    keep_freed_memory()
    ctx = distributed.setup()
    log = print if ctx.is_main else (lambda *a, **k: None)
    out_dir = Path(out_dir)
    torch.manual_seed(cfg.seed)

    # ---- data ----------------------------------------------------------------------------------------
    (x_train, y_train), (x_test, y_test), source = load_image_data(cfg, data_dir, log)
    log(f"data: {cfg.dataset} train {len(y_train)} / test {len(y_test)} from {source}")

    # ---- model, loss, optimizer, schedule -----------------------------------------------------------
    model = model_from_config(cfg.to_dict()).to(ctx.device)
    loss_fn = get_loss(cfg.loss)
    optimizer = build_optimizer(model, cfg.optimizer, lr=cfg.lr_start, lr_scale=cfg.lr_scale)
    local_batch = max(1, cfg.batch_size // ctx.world_size)
    steps_per_epoch = math.ceil(len(y_train) / ctx.world_size / local_batch)
    scheduler = build_scheduler(optimizer, cfg.lr_start, cfg.lr_end, cfg.epochs * steps_per_epoch)

    # ---- resume ---------------------------------------------------------------------------------------
    history, start_epoch, elapsed_before = [], 0, 0.0
    ckpt_path = out_dir / CHECKPOINT
    if resume:
        _, history, start_epoch, elapsed_before = resume_run(ckpt_path, cfg, model, optimizer, scheduler, ctx, log)
    train_model = data_parallel(model, ctx)

    # Images for BN recalibration: a fixed random draw, the same on every rank (identical statistics).
    recal_images = x_train[torch.randperm(len(y_train), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.bn_recalibrate]]

    # ---- epochs ---------------------------------------------------------------------------------------
    t0 = time.time() - elapsed_before
    for epoch in range(start_epoch, cfg.epochs):
        train_model.train()
        order = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(cfg.seed * 100003 + epoch))
        order = order[ctx.rank::ctx.world_size]
        loss_sum = correct = seen = 0.0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                   disable=not (progress and ctx.is_main), dynamic_ncols=True, mininterval=0.5)
        for step in bar:
            b = order[step * local_batch:(step + 1) * local_batch]
            x = x_train[b].to(ctx.device, non_blocking=True).float()
            y = y_train[b].to(ctx.device)
            batch_loss, batch_correct = train_step(train_model, model, x, y, loss_fn, optimizer, scheduler, cfg.pact_l2)
            loss_sum += batch_loss
            correct += batch_correct
            seen += len(b)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}", refresh=False)
        bar.close()
        loss_sum, correct, seen = distributed.all_sum([loss_sum, correct, seen], ctx)
        if cfg.bn_recalibrate:  # replace the stale running averages before evaluating and saving
            recalibrate_batch_norm(model, recal_images, cfg.batch_size, ctx.device)
        test_loss, test_acc = evaluate(model, x_test, y_test, loss_fn, cfg.eval_batch_size, ctx.device, ctx)
        record = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / seen,
            "train_accuracy": correct / seen,
            "test_loss": test_loss,
            "test_accuracy": test_acc,
            "lr": optimizer.param_groups[-1]["lr"],
            "wall_time": time.time() - t0,
        }
        history.append(record)
        log(f"epoch {epoch + 1}: train loss {record['train_loss']:.4f} acc {record['train_accuracy']:.4f} | "
            f"test loss {test_loss:.4f} acc {test_acc:.4f} | {record['wall_time']:.0f}s")
        end_epoch(ckpt_path, out_dir, cfg, model, optimizer, scheduler, history, source, ctx)

    metrics = build_metrics(cfg, history, source, ctx)
    distributed.teardown(ctx)
    return metrics


def train_step(train_model: nn.Module, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn, optimizer,
               scheduler, pact_l2: float = 0.0) -> Tuple[float, float]:
    """One optimisation step on a batch: forward (through ``train_model``, the DDP wrapper if any), loss
    plus ``pact_l2`` times the PACT alpha penalty of ``model``, backward, optimizer step (its post-step hook
    clips the latent weights to [-1, 1]) and schedule step. Returns (loss summed over the batch, number
    correct) for the epoch's running averages."""
    out = train_model(x)
    loss = loss_fn(out, y)
    objective = loss + pact_l2 * pact_l2_penalty(model) if pact_l2 > 0 else loss
    optimizer.zero_grad(set_to_none=True)
    objective.backward()
    optimizer.step()
    scheduler.step()
    return loss.item() * len(y), float((out.argmax(1) == y).sum())


def end_epoch(ckpt_path: Path, out_dir: Path, cfg: TrainConfig, model: nn.Module, optimizer, scheduler,
              history, source, ctx) -> None:
    """Rank 0 writes the epoch's atomic checkpoint (everything ``resume_run`` restores), metrics and
    curves; every rank waits for it."""
    if ctx.is_main:
        save_checkpoint(ckpt_path, {
            "config": cfg.to_dict(), "model_state": model.state_dict(),
            "optimizer_state": optimizer.state_dict(), "scheduler_state": scheduler.state_dict(),
            "rng_state": torch.get_rng_state(), "epoch": len(history), "history": history,
        })
        write_metrics(out_dir, cfg, history, source, ctx)
    distributed.barrier(ctx)


def build_metrics(cfg: TrainConfig, history, source, ctx) -> Dict:
    last = history[-1] if history else {}
    return {
        "recipe": cfg.recipe,
        "config": cfg.to_dict(),
        "data_source": source,
        "world_size": ctx.world_size,
        "device": str(ctx.device),
        "epochs": history,
        "test_accuracy": last.get("test_accuracy"),
        "test_loss": last.get("test_loss"),
        "wall_time": last.get("wall_time"),
    }


def write_metrics(out_dir: Path, cfg: TrainConfig, history, source, ctx) -> None:
    metrics = build_metrics(cfg, history, source, ctx)
    atomic_write(out_dir / METRICS, lambda f: f.write(json.dumps(metrics, indent=2).encode()))
    plot_curves(history, out_dir / CURVES, title=f"{cfg.recipe}")


def train_lm(cfg: TrainConfig, out_dir, data_dir=None, resume: bool = False, progress: bool = True) -> Dict:
    """Language models (word/character level, truncated BPTT): see :mod:`lowbit.rnn.lm`."""
    from .rnn.lm import train_lm as _train_lm

    return _train_lm(cfg, out_dir, data_dir=data_dir, resume=resume, progress=progress)


def train_imagenet(cfg: TrainConfig, out_dir, data_dir=None, resume: bool = False, progress: bool = True) -> Dict:
    """ImageNet-style folders streamed through a DataLoader: see :mod:`lowbit.imagenet`."""
    from .imagenet import train_imagenet as _train_imagenet

    return _train_imagenet(cfg, out_dir, data_dir=data_dir, resume=resume, progress=progress)


TASKS: Dict[str, Callable[..., Dict]] = {"image": train_image, "lm": train_lm, "imagenet": train_imagenet}


def run(cfg: TrainConfig, out_dir, data_dir=None, resume: bool = False, progress: bool = True) -> Dict:
    """Train ``cfg`` with the loop its task names; returns the metrics written to ``out_dir/metrics.json``."""
    if cfg.task not in TASKS:
        raise ConfigError(f"unknown task {cfg.task!r}; known: {', '.join(sorted(TASKS))}")
    return TASKS[cfg.task](cfg, out_dir, data_dir=data_dir, resume=resume, progress=progress)
