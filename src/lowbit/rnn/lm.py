"""The language-model training loop (task ``"lm"`` of :data:`lowbit.train.TASKS`).

    text files -> vocabulary + id streams -> B columns -> truncated BPTT (hidden state carried, detached)
    -> per-epoch validation/test perplexity (word) or bits per character (char) -> metrics/checkpoint/plot

Truncated back-propagation through time: the training stream is cut into ``batch_size`` contiguous columns
(:func:`lowbit.rnn.text.batchify`); each step takes the next ``bptt`` rows as input and the rows shifted
by one as targets, starts from the previous step's final hidden state with its graph cut
(``detach``), so the state carries information across the whole epoch while gradients flow through at most
``bptt`` steps. The state is reset to zeros at the start of every epoch and of every evaluation, so an epoch
is a pure function of the weights at its start: a run resumed from the checkpoint of epoch e (model,
optimizer, schedule, RNG) continues exactly as the uninterrupted one.

Evaluation uses the same scheme with ``eval_batch_size`` columns; the mean cross-entropy L (nats/token) over
all predicted tokens gives perplexity ``exp(L)`` (word level) and bits per character ``L / ln 2``.

Under ``torchrun`` every process takes an equal share of the columns (``lowbit.distributed``), gradients are
averaged by DistributedDataParallel, and loss sums are combined across processes.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .. import distributed
from ..checkpoint import load_model_state, model_from_config, read_checkpoint, save_checkpoint
from ..config import TrainConfig, validate
from ..errors import CheckpointError, ConfigError, DataError
from ..fileio import atomic_write
from ..optim import build_optimizer, build_scheduler
from ..plotting import plot_curves
from ..train import data_parallel, keep_freed_memory, resume_run
from . import models as _models  # noqa: F401  (registers "rnn_lm")
from .models import split_model_args
from .text import TextCorpus, batchify, load_char_corpus, load_ptb, resolve_data_dir

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"
CURVES = "curves.png"
LN2 = math.log(2.0)


def load_lm_data(cfg: TrainConfig, data_dir=None) -> TextCorpus:
    """The corpus a configuration names (its ``model_args`` settings, see :data:`lowbit.rnn.models.LM_SETTINGS`)."""
    _, s = split_model_args(cfg.model_args)
    if s["level"] == "word":
        corpus = load_ptb(data_dir, s["train_file"], s["valid_file"], s["test_file"], s["vocab_from"])
    elif s["level"] == "char":
        path = Path(str(s["text_file"])).expanduser()
        if not path.is_absolute():
            path = resolve_data_dir(data_dir) / path
        corpus = load_char_corpus(path, float(s["split"]))
    else:
        raise ConfigError(f"model.level must be 'word' or 'char', got {s['level']!r}")
    if cfg.train_subset:
        corpus.train = corpus.train[: cfg.train_subset]
    if cfg.test_subset:
        corpus.test = corpus.test[: cfg.test_subset]
        if corpus.valid is not None:
            corpus.valid = corpus.valid[: cfg.test_subset]
    return corpus


def _columns(ids: np.ndarray, batch: int, ctx: distributed.Context) -> torch.Tensor:
    data = batchify(ids, batch)
    if ctx.distributed:
        data = data[:, ctx.rank::ctx.world_size]
    return torch.from_numpy(np.ascontiguousarray(data))


@torch.no_grad()
def evaluate_lm(model: nn.Module, data: torch.Tensor, bptt: int, device,
                ctx: Optional[distributed.Context] = None) -> Tuple[float, float]:
    """(mean cross-entropy in nats/token, next-token accuracy) over a (N, B) column tensor, hidden state
    carried from segment to segment, starting from zeros."""
    model.eval()
    hidden = None
    loss_sum = correct = count = 0.0
    for i in range(0, data.size(0) - 1, bptt):
        seq = min(bptt, data.size(0) - 1 - i)
        x = data[i:i + seq].to(device)
        y = data[i + 1:i + 1 + seq].to(device)
        logits, hidden = model(x, hidden)
        loss_sum += float(nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1),
                                                      reduction="sum"))
        correct += float((logits.argmax(-1) == y).sum())
        count += y.numel()
    if ctx is not None:
        loss_sum, correct, count = distributed.all_sum([loss_sum, correct, count], ctx)
    return loss_sum / max(count, 1.0), correct / max(count, 1.0)


def _named(level: str, prefix: str, loss: float) -> Dict[str, float]:
    if level == "word":
        return {f"{prefix}_perplexity": math.exp(min(loss, 700.0))}
    return {f"{prefix}_bpc": loss / LN2}


def train_lm(cfg: TrainConfig, out_dir, data_dir=None, resume: bool = False, progress: bool = True) -> Dict:
    """Train a language model; writes ``metrics.json``, ``checkpoint.pt`` (every epoch) and ``curves.png``."""
    validate(cfg)
    if cfg.loss not in ("cross_entropy", "ce"):
        raise ConfigError(f"task 'lm' trains with cross-entropy; loss={cfg.loss!r} is not supported")
    cfg = TrainConfig.from_dict(cfg.to_dict())
    _, settings = split_model_args(cfg.model_args)
    bptt = int(settings["bptt"])
    clip = float(settings["clip_grad"])
    if bptt < 1:
        raise ConfigError(f"model.bptt must be >= 1, got {bptt}")
    keep_freed_memory()  # each step's (T, B, 4H) temporaries: reuse the heap instead of fresh page-faulted mmaps
    ctx = distributed.setup()
    log = print if ctx.is_main else (lambda *a, **k: None)
    out_dir = Path(out_dir)
    torch.manual_seed(cfg.seed)

    # ---- data ----------------------------------------------------------------------------------------
    corpus = load_lm_data(cfg, data_dir)
    v = len(corpus.vocab)
    if int(cfg.model_args.get("vocab_size", 0) or 0) not in (0, v):
        raise DataError(f"model.vocab_size is {cfg.model_args['vocab_size']}, but the data has {v} tokens "
                        f"in its vocabulary (set it to 0 to take it from the data)")
    cfg.model_args["vocab_size"] = v
    if corpus.note:
        log(f"NOTE: {corpus.note}")
    if ctx.world_size > cfg.batch_size or ctx.world_size > cfg.eval_batch_size:
        raise ConfigError(f"batch sizes ({cfg.batch_size}/{cfg.eval_batch_size} columns) must be >= the "
                          f"number of processes ({ctx.world_size})")
    train_data = _columns(corpus.train, cfg.batch_size, ctx)
    evals = {"test": _columns(corpus.test, cfg.eval_batch_size, ctx)}
    if corpus.valid is not None:
        evals = {"valid": _columns(corpus.valid, cfg.eval_batch_size, ctx), **evals}
    log(f"data: {corpus.level} level, vocabulary {v}, tokens " +
        ", ".join(f"{k} {n}" for k, n in corpus.describe()["tokens"].items()))

    # ---- model, optimizer, schedule -------------------------------------------------------------------
    model = model_from_config(cfg.to_dict()).to(ctx.device)
    optimizer = build_optimizer(model, cfg.optimizer, lr=cfg.lr_start, lr_scale=cfg.lr_scale)
    steps_per_epoch = math.ceil((train_data.size(0) - 1) / bptt)
    scheduler = build_scheduler(optimizer, cfg.lr_start, cfg.lr_end, cfg.epochs * steps_per_epoch)

    # ---- resume ---------------------------------------------------------------------------------------
    history, start_epoch, elapsed_before = [], 0, 0.0
    ckpt_path = out_dir / CHECKPOINT
    if resume:
        saved, history, start_epoch, elapsed_before = resume_run(ckpt_path, cfg, model, optimizer, scheduler, ctx, log)
        if saved.get("vocab", {}).get("tokens") != corpus.vocab.tokens:
            raise CheckpointError(f"--resume: {ckpt_path} was trained with another vocabulary than these files")
    train_model = data_parallel(model, ctx)

    # ---- epochs ---------------------------------------------------------------------------------------
    t0 = time.time() - elapsed_before
    for epoch in range(start_epoch, cfg.epochs):
        train_model.train()
        hidden = None
        loss_sum = correct = seen = 0.0
        t_epoch = time.time()
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                   disable=not (progress and ctx.is_main), dynamic_ncols=True, mininterval=0.5)
        for step in bar:
            i = step * bptt
            seq = min(bptt, train_data.size(0) - 1 - i)
            x = train_data[i:i + seq].to(ctx.device, non_blocking=True)
            y = train_data[i + 1:i + 1 + seq].to(ctx.device, non_blocking=True)
            if hidden is not None:
                hidden = model.detach_hidden(hidden)  # truncated BPTT: keep the values, cut the graph
            logits, hidden = train_model(x, hidden)
            loss = model.loss(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach().item() * y.numel()
            correct += float((logits.detach().argmax(-1) == y).sum())
            seen += y.numel()
            mean = loss_sum / seen
            bar.set_postfix(loss=f"{mean:.3f}", **({"ppl": f"{math.exp(min(mean, 50)):.1f}"} if corpus.level == "word"
                                                   else {"bpc": f"{mean / LN2:.3f}"}), refresh=False)
        bar.close()
        loss_sum, correct, seen = distributed.all_sum([loss_sum, correct, seen], ctx)
        train_time = time.time() - t_epoch
        record = {"epoch": epoch + 1, "train_loss": loss_sum / seen, **_named(corpus.level, "train", loss_sum / seen),
                  "train_accuracy": correct / seen}
        for name, data in evals.items():
            l, acc = evaluate_lm(model, data, bptt, ctx.device, ctx)
            record.update({f"{name}_loss": l, **_named(corpus.level, name, l), f"{name}_accuracy": acc})
        record.update({"lr": optimizer.param_groups[-1]["lr"], "train_tokens_per_s": seen / max(train_time, 1e-9),
                       "wall_time": time.time() - t0})
        history.append(record)
        key = "perplexity" if corpus.level == "word" else "bpc"
        log(f"epoch {epoch + 1}: train {key} {record[f'train_{key}']:.3f} | " +
            " | ".join(f"{n} {key} {record[f'{n}_{key}']:.3f}" for n in evals) + f" | {record['wall_time']:.0f}s")
        if ctx.is_main:
            save_checkpoint(ckpt_path, {
                "config": cfg.to_dict(), "model_state": model.state_dict(),
                "optimizer_state": optimizer.state_dict(), "scheduler_state": scheduler.state_dict(),
                "rng_state": torch.get_rng_state(), "epoch": epoch + 1, "history": history,
                "vocab": corpus.vocab.to_dict(), "data": corpus.describe(),
            })
            write_lm_metrics(out_dir, cfg, history, corpus, ctx)
        distributed.barrier(ctx)

    metrics = build_lm_metrics(cfg, history, corpus, ctx)
    distributed.teardown(ctx)
    return metrics


def build_lm_metrics(cfg: TrainConfig, history, corpus: TextCorpus, ctx) -> Dict:
    last = history[-1] if history else {}
    m = {
        "recipe": cfg.recipe,
        "task": "lm",
        "config": cfg.to_dict(),
        "data": corpus.describe(),
        "data_source": corpus.note or ", ".join(f"{k}: {v}" for k, v in corpus.files.items()),
        "world_size": ctx.world_size,
        "device": str(ctx.device),
        "epochs": history,
        "test_loss": last.get("test_loss"),
        "test_accuracy": last.get("test_accuracy"),
        "wall_time": last.get("wall_time"),
    }
    if corpus.level == "word":
        m["test_perplexity"] = last.get("test_perplexity")
    else:
        m["test_bpc"] = last.get("test_bpc")
    return m


def write_lm_metrics(out_dir: Path, cfg: TrainConfig, history, corpus: TextCorpus, ctx) -> None:
    metrics = build_lm_metrics(cfg, history, corpus, ctx)
    atomic_write(out_dir / METRICS, lambda f: f.write(json.dumps(metrics, indent=2).encode()))
    evals = [k for k in ("valid", "test") if history and f"{k}_loss" in history[0]]
    plot_curves(history, out_dir / CURVES, title=f"{cfg.recipe} (loss in nats/token; next-token accuracy)",
                accuracy_keys=("train_accuracy",) + tuple(f"{k}_accuracy" for k in evals),
                loss_keys=("train_loss",) + tuple(f"{k}_loss" for k in evals))


def load_lm_checkpoint(path, map_location="cpu"):
    """``(model in eval mode, Vocabulary, checkpoint dict)`` of a language-model checkpoint."""
    from .text import Vocabulary

    data = read_checkpoint(path, map_location)
    if data["config"].get("task") != "lm" or "vocab" not in data:
        raise CheckpointError(f"{path} is not a language-model checkpoint (task {data['config'].get('task')!r})")
    model = model_from_config(data["config"])
    load_model_state(model, data["model_state"], str(path))
    model.eval()
    return model, Vocabulary.from_dict(data["vocab"]), data
