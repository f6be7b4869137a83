"""Task ``"lm"``: word- and character-level language models with truncated BPTT.

    text files -> vocabulary + id streams -> B columns -> truncated BPTT (hidden state carried, detached)
    -> per-epoch validation/test perplexity (word) or bits per character (char) -> metrics/checkpoint/plot

Truncated back-propagation through time: the training stream is cut into ``batch_size`` contiguous columns
(:func:`lowbit.data.text.batchify`); each step takes the next ``bptt`` rows as input and the rows shifted
by one as targets, starts from the previous step's final hidden state with its graph cut
(``detach``), so the state carries information across the whole epoch while gradients flow through at most
``bptt`` steps. The state is reset to zeros at the start of every epoch and of every evaluation, so an epoch
is a pure function of the weights at its start: a run resumed from the checkpoint of epoch e (model,
optimizer, schedule, RNG) continues exactly as the uninterrupted one.

Evaluation uses the same scheme with ``eval_batch_size`` columns; the mean cross-entropy L (nats/token) over
all predicted tokens gives perplexity ``exp(L)`` (word level) and bits per character ``L / ln 2``.

Under ``torchrun`` every process takes an equal share of the columns (:mod:`lowbit.train.distributed`), gradients are
averaged by DistributedDataParallel, and loss sums are combined across processes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ...data.text import TextCorpus, Vocabulary, batchify, load_corpus
from ...errors import CheckpointError, ConfigError, DataError
from ...models.lm import split_model_args
from ...registry import TASKS
from .. import distributed
from ..checkpoint import model_from_checkpoint, read_checkpoint
from ..config import TrainConfig
from ..engine import Task

LN2 = math.log(2.0)


def load_lm_data(cfg: TrainConfig, data_dir=None) -> TextCorpus:
    """The corpus a configuration names (its ``model_args`` settings, see :data:`lowbit.models.lm.LM_SETTINGS`),
    cut to ``train_subset`` / ``test_subset`` tokens when those are set."""
    corpus = load_corpus(split_model_args(cfg.model_args)[1], data_dir)
    if cfg.train_subset:
        corpus.train = corpus.train[: cfg.train_subset]
    if cfg.test_subset:
        corpus.test = corpus.test[: cfg.test_subset]
        if corpus.valid is not None:
            corpus.valid = corpus.valid[: cfg.test_subset]
    return corpus


def lm_columns(ids: np.ndarray, batch: int, ctx: Optional[distributed.Context] = None) -> torch.Tensor:
    """A token stream as ``batch`` contiguous columns (N, batch); this rank's share of them under torchrun."""
    data = batchify(ids, batch)
    if ctx is not None and ctx.distributed:
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


@TASKS.register("lm")
class LMTask(Task):
    """Word or character language models: truncated BPTT over ``batch_size`` columns, hidden state carried
    from step to step (detached) and reset at the start of every epoch and evaluation."""

    def __init__(self, cfg: TrainConfig):
        super().__init__(cfg)
        if cfg.loss not in ("cross_entropy", "ce"):
            raise ConfigError(f"task 'lm' trains with cross-entropy; loss={cfg.loss!r} is not supported")
        _, settings = split_model_args(cfg.model_args)
        self.bptt = int(settings["bptt"])
        self.clip_grad = float(settings["clip_grad"])
        if self.bptt < 1:
            raise ConfigError(f"model.bptt must be >= 1, got {self.bptt}")

    def load(self, data_dir, ctx, log) -> None:
        cfg = self.cfg
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
        self.corpus = corpus
        self.source = corpus.note or ", ".join(f"{k}: {v}" for k, v in corpus.files.items())
        self.train_data = lm_columns(corpus.train, cfg.batch_size, ctx)
        self.evals = {"test": lm_columns(corpus.test, cfg.eval_batch_size, ctx)}
        if corpus.valid is not None:
            self.evals = {"valid": lm_columns(corpus.valid, cfg.eval_batch_size, ctx), **self.evals}
        self.unit = "perplexity" if corpus.level == "word" else "bpc"
        self.loss_keys = ("train_loss",) + tuple(f"{k}_loss" for k in self.evals)
        self.accuracy_keys = ("train_accuracy",) + tuple(f"{k}_accuracy" for k in self.evals)
        log(f"data: {corpus.level} level, vocabulary {v}, tokens " +
            ", ".join(f"{k} {n}" for k, n in corpus.describe()["tokens"].items()))

    def steps_per_epoch(self, ctx) -> int:
        return math.ceil((self.train_data.size(0) - 1) / self.bptt)

    def batches(self, epoch, ctx):
        self.hidden = None  # every epoch starts from a zero state: an epoch is a function of the weights
        data = self.train_data
        for step in range(self.steps_per_epoch(ctx)):
            i = step * self.bptt
            seq = min(self.bptt, data.size(0) - 1 - i)
            yield (data[i:i + seq].to(ctx.device, non_blocking=True),
                   data[i + 1:i + 1 + seq].to(ctx.device, non_blocking=True))

    def loss(self, train_model, model, batch):
        x, y = batch
        if self.hidden is not None:
            self.hidden = model.detach_hidden(self.hidden)  # truncated BPTT: keep the values, cut the graph
        logits, self.hidden = train_model(x, self.hidden)
        return model.loss(logits, y), y.numel(), float((logits.detach().argmax(-1) == y).sum())

    def named_losses(self, prefix, loss):
        return _named(self.corpus.level, prefix, loss)

    def evaluate(self, model, ctx) -> Dict[str, float]:
        record = {}
        for name, data in self.evals.items():
            loss, acc = evaluate_lm(model, data, self.bptt, ctx.device, ctx)
            record.update({f"{name}_loss": loss, **_named(self.corpus.level, name, loss), f"{name}_accuracy": acc})
        return record

    def describe(self, r) -> str:
        key = self.unit
        return (f"epoch {r['epoch']}: train {key} {r[f'train_{key}']:.3f} | " +
                " | ".join(f"{n} {key} {r[f'{n}_{key}']:.3f}" for n in self.evals) + f" | {r['wall_time']:.0f}s")

    def postfix(self, mean_loss, accuracy):
        shown = math.exp(min(mean_loss, 50)) if self.unit == "perplexity" else mean_loss / LN2
        return {"loss": f"{mean_loss:.3f}", ("ppl" if self.unit == "perplexity" else "bpc"): f"{shown:.3f}"}

    def data_title(self) -> str:
        return f"data: {self.cfg.dataset}, trained on {Path(self.corpus.files['train']).name}"

    def curve_unit(self):
        """The plot shows what the command line reports: perplexity (word level) or bits per character."""
        keys = ("train",) + tuple(self.evals)
        if self.unit == "perplexity":
            return {"label": "perplexity", "keys": tuple(f"{k}_perplexity" for k in keys),
                    "convert": lambda loss: math.exp(min(loss, 700.0))}
        return {"label": "bits per character", "keys": tuple(f"{k}_bpc" for k in keys),
                "convert": lambda loss: loss / LN2}

    def checkpoint_extras(self):
        return {"vocab": self.corpus.vocab.to_dict(), "data": self.corpus.describe()}

    def check_resume(self, saved, path) -> None:
        if saved.get("vocab", {}).get("tokens") != self.corpus.vocab.tokens:
            raise CheckpointError(f"--resume: {path} was trained with another vocabulary than these files")

    def summary(self, last):
        return {"data": self.corpus.describe(), "test_loss": last.get("test_loss"),
                "test_accuracy": last.get("test_accuracy"), f"test_{self.unit}": last.get(f"test_{self.unit}")}


def load_lm_checkpoint(path, map_location="cpu"):
    """``(model in eval mode, Vocabulary, checkpoint dict)`` of a language-model checkpoint."""
    data = read_checkpoint(path, map_location)
    if data["config"].get("task") != "lm" or "vocab" not in data:
        raise CheckpointError(f"{path} is not a language-model checkpoint (task {data['config'].get('task')!r})")
    model = model_from_checkpoint(data, str(path))
    model.eval()
    return model, Vocabulary.from_dict(data["vocab"]), data
