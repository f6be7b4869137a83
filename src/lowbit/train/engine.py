"""The training loop: one engine for every task, readable top to bottom.

    task data -> model -> optimizer (LR scale + latent clip) -> schedule -> [resume] -> epochs -> metrics/plots

A *task* (:mod:`lowbit.train.tasks`: image classification, ImageNet folders, language models) supplies the
data, one step's loss, the evaluation and its metric names, and any extra checkpoint fields; this loop owns
everything else: epochs, the progress bar, regularisers, gradient clipping, the optimizer and schedule,
the atomic checkpoint, resume, metrics.json, curves.png, the weight diagnostics (flip ratios and latent-weight
histograms, :mod:`lowbit.train.diagnostics`: flips.png, weights.png) and torchrun.

Every epoch ends with an atomic checkpoint (model, optimizer, schedule, RNG state, history, the task's
extras), so ``resume=True`` continues an interrupted run and gives the same result as an uninterrupted one
with the same seed: a task draws each epoch's order from a generator seeded by (seed, epoch), and the global
RNG (dropout, stochastic quantizers) is restored from the checkpoint.
"""

from __future__ import annotations

import abc
import json
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import torch
from torch import nn
from tqdm import tqdm

from ..errors import CheckpointError
from ..fileio import atomic_write, remove_stale_temp_files
from ..registry import TASKS
from . import distributed
from .checkpoint import load_model_state, model_from_config, read_checkpoint, save_checkpoint
from .config import TrainConfig, validate, validate_model_args
from .diagnostics import WeightDiagnostics, log_tensorboard, plot_diagnostics, tensorboard_writer
from .optim import build_optimizer, build_scheduler
from .plotting import StepCurve, plot_curves

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"
CURVES = "curves.png"
BEST = "best.pt"


class Task(abc.ABC):
    """What a kind of training supplies to :func:`fit`. Subclasses are registered in
    :data:`lowbit.registry.TASKS` under the name a recipe's ``task`` field uses.

    Life cycle: ``Task(cfg)`` -> :meth:`load` (data; may complete ``self.cfg``, e.g. the vocabulary size)
    -> per epoch :meth:`batches` -> :meth:`loss` per batch -> :meth:`evaluate`.
    """

    #: keys of the history records plotted as losses / accuracies
    loss_keys: Sequence[str] = ("train_loss", "test_loss")
    accuracy_keys: Sequence[str] = ("train_accuracy", "test_accuracy")
    #: gradient-norm clip applied by the loop (0: none)
    clip_grad: float = 0.0

    def __init__(self, cfg: TrainConfig):
        self.cfg = TrainConfig.from_dict(cfg.to_dict())
        self.source = ""  # where the data came from, for metrics.json

    @abc.abstractmethod
    def load(self, data_dir, ctx: distributed.Context, log) -> None:
        """Load the data (this rank's share under torchrun)."""

    @abc.abstractmethod
    def steps_per_epoch(self, ctx: distributed.Context) -> int:
        """Number of batches :meth:`batches` yields per epoch on each rank."""

    @abc.abstractmethod
    def batches(self, epoch: int, ctx: distributed.Context):
        """This rank's batches of epoch ``epoch`` (deterministic in (seed, epoch))."""

    @abc.abstractmethod
    def loss(self, train_model: nn.Module, model: nn.Module, batch) -> Tuple[torch.Tensor, float, float]:
        """Forward one batch through ``train_model`` (the DDP wrapper, if any; ``model`` is the bare module).
        Returns (mean loss tensor to minimise, number of predictions, number correct)."""

    def named_losses(self, prefix: str, loss: float) -> Dict[str, float]:
        """Extra names of a mean loss (perplexity, bits per character); none for classifiers."""
        return {}

    @abc.abstractmethod
    def evaluate(self, model: nn.Module, ctx: distributed.Context) -> Dict[str, float]:
        """The epoch's evaluation record entries (``test_loss``, ``test_accuracy``, ...)."""

    def describe(self, record: Dict[str, Any]) -> str:
        """One log line of an epoch's record."""
        return (f"epoch {record['epoch']}: train loss {record['train_loss']:.4f} acc {record['train_accuracy']:.4f} | "
                f"test loss {record['test_loss']:.4f} acc {record['test_accuracy']:.4f} | {record['wall_time']:.0f}s")

    def selection_error(self, record: Dict[str, Any]) -> Any:
        """The error an epoch's record scores on held-out *validation* data (lower is better), or None
        when the run has no validation split. The engine keeps the model of the epoch with the lowest
        (the latest among equals, as the Theano BinaryNet code's ``<=``) in ``best.pt``."""
        return None

    def checkpoint_extras(self) -> Dict[str, Any]:
        """Fields saved in every checkpoint beside the model (e.g. the vocabulary)."""
        return {}

    def check_resume(self, saved: Dict[str, Any], path: Path) -> None:
        """Refuse a checkpoint that does not continue this run's data."""

    def summary(self, last: Dict[str, Any]) -> Dict[str, Any]:
        """Top-level metrics.json entries from the last epoch's record."""
        return {"test_accuracy": last.get("test_accuracy"), "test_loss": last.get("test_loss")}

    def postfix(self, mean_loss: float, accuracy: float) -> Dict[str, str]:
        return {"loss": f"{mean_loss:.4f}", "acc": f"{accuracy:.4f}"}

    def data_title(self) -> str:
        """Which data the run used, in a few words for the plot's title (the sample or the full set)."""
        if self.source.startswith("embedded sample"):
            return f"data: {self.source}"
        return f"data: full {self.cfg.dataset}"

    def curve_unit(self) -> Dict[str, Any]:
        """How the loss plot shows losses: ``label`` (y axis), ``keys`` (epoch record keys in that unit) and
        ``convert`` (mean loss in nats -> that unit, for the per-step curve). Default: the loss itself."""
        return {}


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


def regularization(model: nn.Module, cfg: TrainConfig) -> Any:
    """Sum of the regularisers the model's modules declare: a module with a ``regularizer`` attribute (the
    name of its coefficient in the config, e.g. PACT's ``"pact_l2"``) adds ``coefficient *
    module.regularization()``. 0 when there are none or every coefficient is 0."""
    total = 0.0
    for m in model.modules():
        key = getattr(m, "regularizer", None)
        coefficient = float(getattr(cfg, key, 0.0) or 0.0) if isinstance(key, str) else 0.0
        if coefficient > 0:
            total = total + coefficient * m.regularization()
    return total


def mixed_precision(cfg: TrainConfig, device: torch.device):
    """The training forward's autocast context: bfloat16 for ``amp="bf16"`` (on CUDA or CPU), else none.

    Autocast casts only the GEMM-like ops (linear, conv, LSTM cells) to bf16; the quantizers are
    element-wise and keep float32, so their levels (+-1, k-bit grids, PACT codes) are exactly those of an
    fp32 run (``tests/test_train.py`` checks this). The backward runs in the forward's dtypes, and the
    optimizer updates float32 latent weights, so no loss scaling is needed with bf16."""
    import contextlib

    if cfg.amp == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


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

    Returns ``(saved, history, start_epoch, elapsed_seconds)``; ``saved`` is the raw checkpoint for the
    task's own checks (e.g. the language model's vocabulary)."""
    if not ckpt_path.exists():
        raise CheckpointError(f"--resume: no checkpoint at {ckpt_path}")
    saved = read_checkpoint(ckpt_path, map_location=ctx.device)
    _check_resume(saved, cfg, ckpt_path)
    for key, typ in (("optimizer_state", dict), ("scheduler_state", dict), ("rng_state", torch.Tensor),
                     ("epoch", int), ("history", list)):
        if not isinstance(saved.get(key), typ):
            raise CheckpointError(f"--resume: {ckpt_path} has no valid '{key}' (got {type(saved.get(key)).__name__}); "
                                  f"it cannot continue a run: use another --out directory")
    load_model_state(model, saved["model_state"], str(ckpt_path))
    try:
        optimizer.load_state_dict(saved["optimizer_state"])
        scheduler.load_state_dict(saved["scheduler_state"])
        torch.set_rng_state(saved["rng_state"].cpu())
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"--resume: {ckpt_path} holds an optimizer/schedule/RNG state this run cannot "
                              f"use ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
    history, start_epoch = saved["history"], int(saved["epoch"])
    elapsed = history[-1].get("wall_time", 0.0) if history else 0.0
    if not isinstance(elapsed, (int, float)) or not elapsed >= 0:
        raise CheckpointError(f"--resume: {ckpt_path}: the last epoch's wall_time is {elapsed!r}")
    log(f"resumed from {ckpt_path} after epoch {start_epoch}")
    return saved, history, start_epoch, elapsed


def data_parallel(model: nn.Module, ctx) -> nn.Module:
    """The module to train: ``model`` itself, or its DistributedDataParallel wrapper under torchrun."""
    if not ctx.distributed:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)


def fit(cfg: TrainConfig, out_dir, data_dir=None, resume: bool = False, progress: bool = True,
        tensorboard=None) -> Dict:
    """Train ``cfg`` with the task it names; returns the metrics written to ``out_dir/metrics.json``.
    ``tensorboard``: a directory to log every epoch to TensorBoard as well (needs the ``tensorboard`` package)."""
    validate(cfg)
    keep_freed_memory()
    task: Task = TASKS.get(cfg.task)(cfg)
    ctx = distributed.setup()
    log = print if ctx.is_main else (lambda *a, **k: None)
    out_dir = Path(out_dir)
    writer = tensorboard_writer(tensorboard) if tensorboard and ctx.is_main else None
    torch.manual_seed(cfg.seed)

    # ---- data ----------------------------------------------------------------------------------------
    task.load(data_dir, ctx, log)
    cfg = task.cfg  # the task may have completed it from the data (e.g. the vocabulary size)
    validate_model_args(cfg)  # now with the sizes the data filled in

    # ---- model, optimizer, schedule -----------------------------------------------------------------
    model = model_from_config(cfg.to_dict()).to(ctx.device)
    if cfg.channels_last:  # only 4-d tensors (conv weights) change layout; the checkpoint's values do not
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.optimizer, lr=cfg.lr_start, lr_scale=cfg.lr_scale)
    steps_per_epoch = task.steps_per_epoch(ctx)
    scheduler = build_scheduler(optimizer, cfg.lr_start, cfg.lr_end, cfg.epochs * steps_per_epoch)

    # ---- resume ---------------------------------------------------------------------------------------
    history, start_epoch, elapsed_before = [], 0, 0.0
    ckpt_path = out_dir / CHECKPOINT
    if ctx.is_main:  # this run owns out_dir: temp files a killed run left behind are garbage now
        for name in (CHECKPOINT, BEST, METRICS, CURVES):
            remove_stale_temp_files(out_dir / name, older_than_s=0.0)
    if resume:
        saved, history, start_epoch, elapsed_before = resume_run(ckpt_path, cfg, model, optimizer, scheduler, ctx, log)
        task.check_resume(saved, ckpt_path)
    train_model = data_parallel(model, ctx)
    if cfg.compile:  # compiles the forward of the (DDP-wrapped) model; eager evaluation and checkpoints
        train_model = torch.compile(train_model, backend=cfg.compile)
    autocast = mixed_precision(cfg, ctx.device)
    diagnostics = WeightDiagnostics(model)  # signs now: the first epoch's flips count from here

    # ---- epochs ---------------------------------------------------------------------------------------
    t0 = time.time() - elapsed_before
    for epoch in range(start_epoch, cfg.epochs):
        train_model.train()
        loss_sum = correct = seen = 0.0
        curve = StepCurve(epoch, steps_per_epoch)
        t_epoch = time.time()
        bar = tqdm(task.batches(epoch, ctx), total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   unit="batch", disable=not (progress and ctx.is_main), dynamic_ncols=True, mininterval=0.5)
        for batch in bar:
            with autocast:
                loss, count, batch_correct = task.loss(train_model, model, batch)
                objective = loss + regularization(model, cfg)
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            if task.clip_grad > 0:
                nn.utils.clip_grad_norm_(model.parameters(), task.clip_grad)
            optimizer.step()  # its post-step hook clips the latent weights to [-1, 1]
            scheduler.step()
            batch_loss = loss.detach().item()
            loss_sum += batch_loss * count
            correct += batch_correct
            seen += count
            curve.update(batch_loss, batch_correct / max(count, 1))
            bar.set_postfix(task.postfix(loss_sum / seen, correct / seen), refresh=False)
        bar.close()
        loss_sum, correct, seen = distributed.all_sum([loss_sum, correct, seen], ctx)
        train_time = time.time() - t_epoch
        record = {"epoch": epoch + 1, "train_loss": loss_sum / seen, **task.named_losses("train", loss_sum / seen),
                  "train_accuracy": correct / seen}
        record.update(task.evaluate(model, ctx))
        record.update({"lr": optimizer.param_groups[-1]["lr"], "train_items_per_s": seen / max(train_time, 1e-9),
                       "wall_time": time.time() - t0, "steps": curve.samples})
        record.update(diagnostics.epoch())  # flip ratio, saturation, latent-weight histogram per weight tensor
        history.append(record)
        log(task.describe(record))
        if writer is not None:
            log_tensorboard(writer, record, model)
        end_epoch(ckpt_path, out_dir, task, model, optimizer, scheduler, history, ctx)

    metrics = build_metrics(task, history, ctx)
    if writer is not None:
        writer.close()
    distributed.teardown(ctx)
    return metrics


def best_epoch(task: Task, history) -> Any:
    """Index into ``history`` of the best-validation epoch (the latest of equal ones), or None."""
    scored = [(err, i) for i, err in enumerate(map(task.selection_error, history)) if err is not None]
    return min(scored, key=lambda s: (s[0], -s[1]))[1] if scored else None


def end_epoch(ckpt_path: Path, out_dir: Path, task: Task, model: nn.Module, optimizer, scheduler, history, ctx) -> None:
    """Rank 0 writes the epoch's atomic checkpoint (everything ``resume_run`` restores), metrics and
    curves, and ``best.pt`` (a checkpoint without the optimizer state) when this epoch is the
    best-validation one so far; every rank waits for it."""
    if ctx.is_main:
        if history and best_epoch(task, history) == len(history) - 1:  # before checkpoint.pt: a resume redoes it
            save_checkpoint(out_dir / BEST, {"config": task.cfg.to_dict(), "model_state": model.state_dict(),
                                             "epoch": len(history), "history": history, **task.checkpoint_extras()})
        save_checkpoint(ckpt_path, {
            "config": task.cfg.to_dict(), "model_state": model.state_dict(),
            "optimizer_state": optimizer.state_dict(), "scheduler_state": scheduler.state_dict(),
            "rng_state": torch.get_rng_state(), "epoch": len(history), "history": history,
            **task.checkpoint_extras(),
        })
        metrics = build_metrics(task, history, ctx)
        atomic_write(out_dir / METRICS, lambda f: f.write(json.dumps(metrics, indent=2).encode()))
        unit = task.curve_unit()
        plot_curves(history, out_dir / CURVES, title=f"{task.cfg.recipe} ({task.data_title()})",
                    accuracy_keys=task.accuracy_keys, loss_keys=unit.get("keys", task.loss_keys),
                    loss_label=unit.get("label", "loss"), step_loss=unit.get("convert"))
        plot_diagnostics(history, out_dir, title=task.cfg.recipe)
    distributed.barrier(ctx)


def build_metrics(task: Task, history, ctx) -> Dict:
    last = history[-1] if history else {}
    best = best_epoch(task, history)
    selected = {} if best is None else {  # the paper's figure: test accuracy at the best-validation epoch
        "best_epoch": history[best]["epoch"], "best_checkpoint": BEST,
        **{f"{key}_at_best_valid": history[best][key] for key in ("valid_accuracy", "test_accuracy", "test_loss")
           if key in history[best]},
    }
    return {
        "recipe": task.cfg.recipe,
        "task": task.cfg.task,
        "config": task.cfg.to_dict(),
        "data_source": task.source,
        "world_size": ctx.world_size,
        "device": str(ctx.device),
        "epochs": history,
        **task.summary(last),
        **selected,
        "wall_time": last.get("wall_time"),
    }
