"""Task ``"image"``: classification of in-memory image datasets (MNIST, Fashion-MNIST, CIFAR-10, SVHN).

The whole dataset is held as uint8 tensors; each epoch's order is a permutation drawn from a generator
seeded by (seed, epoch), and under torchrun each rank takes every world_size-th image of it. With
``bn_recalibrate = N`` the batch norms' running statistics are re-estimated over a fixed draw of N
training images before every evaluation (:func:`lowbit.nn.norm.recalibrate_batch_norm`). With
``random_shift = N`` every training image is translated by its own random offset of up to N pixels
(:func:`random_shift`), drawn from a generator seeded by (seed, epoch) as the order is.

With ``valid_size = N`` the last N training images are held out (BinaryNet's Theano MNIST script trains
on the first 50,000 and validates on the last 10,000): every epoch is also evaluated on them, and
:meth:`ImageTask.selection_error` (the validation error) picks the epoch whose model the engine keeps in
``best.pt`` and whose test accuracy metrics.json reports as ``test_accuracy_at_best_valid``, the figure the
paper quotes ("test error at the best-validation epoch").
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import numpy as np
import torch
from torch import nn

from ...errors import DataError
from ...nn.norm import recalibrate_batch_norm
from ...registry import TASKS
from .. import distributed
from ..config import TrainConfig
from ..engine import Task
from ..losses import get_loss


def load_image_data(cfg: TrainConfig, data_dir=None, log=print):
    """Train and test splits as uint8 tensors (N, C, H, W) and int64 labels, checked against the model."""
    from ...data import load_dataset

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

    x_train, y_train = subset(train, cfg.train_subset)
    if cfg.valid_size >= len(y_train):
        raise DataError(f"valid_size={cfg.valid_size} holds out every training image ({train.name} has "
                        f"{len(y_train)}{' with train_subset' if cfg.train_subset else ''}); it must be smaller")
    n_train = len(y_train) - cfg.valid_size
    valid = (x_train[n_train:], y_train[n_train:]) if cfg.valid_size else None
    return (x_train[:n_train], y_train[:n_train]), valid, subset(test, cfg.test_subset), train.source


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


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Each image (N, C, H, W) translated by its own (dy, dx), uniform in [-max_shift, max_shift]^2; pixels
    shifted in from outside are 0. out[n, :, y, x] = images[n, :, y - dy, x - dx] where that is inside."""
    n, _, h, w = images.shape
    s = int(max_shift)
    padded = nn.functional.pad(images, (s, s, s, s))
    # the crop of the padded image that starts at (s - dy, s - dx) is the image moved by (dy, dx)
    start = torch.randint(0, 2 * s + 1, (2, n), generator=generator)
    rows = (start[0][:, None] + torch.arange(h))[:, :, None]  # (N, H, 1)
    cols = (start[1][:, None] + torch.arange(w))[:, None, :]  # (N, 1, W)
    return padded[torch.arange(n)[:, None, None], :, rows, cols].permute(0, 3, 1, 2).contiguous()


def classify(train_model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn, channels_last: bool = False):
    """(mean loss, count, number correct) of one labelled batch: the step every classifier task shares.
    ``channels_last``: hand the convs an NHWC batch, the layout of the model's weights (cfg.channels_last)."""
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    out = train_model(x)
    return loss_fn(out, y), len(y), float((out.argmax(1) == y).sum())


@TASKS.register("image")
class ImageTask(Task):
    def load(self, data_dir, ctx, log) -> None:
        cfg = self.cfg
        (self.x_train, self.y_train), self.valid, (self.x_test, self.y_test), self.source = load_image_data(cfg, data_dir, log)
        if self.valid is not None:
            self.loss_keys = ("train_loss", "valid_loss", "test_loss")
            self.accuracy_keys = ("train_accuracy", "valid_accuracy", "test_accuracy")
        held_out = f" / valid {len(self.valid[1])} (the last training images)" if self.valid else ""
        log(f"data: {cfg.dataset} train {len(self.y_train)}{held_out} / test {len(self.y_test)} from {self.source}")
        self.loss_fn = get_loss(cfg.loss)
        self.device = ctx.device
        # Images for BN recalibration: a fixed random draw, the same on every rank (identical statistics).
        draw = torch.randperm(len(self.y_train), generator=torch.Generator().manual_seed(cfg.seed))
        self.recal_images = self.x_train[draw[:cfg.bn_recalibrate]]

    def _local_batch(self, ctx) -> int:
        return max(1, self.cfg.batch_size // ctx.world_size)

    def steps_per_epoch(self, ctx) -> int:
        return math.ceil(len(self.y_train) / ctx.world_size / self._local_batch(ctx))

    def batches(self, epoch, ctx):
        epoch_seed = self.cfg.seed * 100003 + epoch
        order = torch.randperm(len(self.y_train), generator=torch.Generator().manual_seed(epoch_seed))
        order = order[ctx.rank::ctx.world_size]
        b = self._local_batch(ctx)
        shifts = torch.Generator().manual_seed(epoch_seed * 2 + 1 + ctx.rank * 7919) if self.cfg.random_shift else None
        for step in range(self.steps_per_epoch(ctx)):
            idx = order[step * b:(step + 1) * b]
            x = self.x_train[idx]
            if shifts is not None:
                x = random_shift(x, self.cfg.random_shift, shifts)
            yield x.to(ctx.device, non_blocking=True).float(), self.y_train[idx].to(ctx.device)

    def loss(self, train_model, model, batch):
        x, y = batch
        return classify(train_model, x, y, self.loss_fn, self.cfg.channels_last)

    def evaluate(self, model, ctx) -> Dict[str, float]:
        if self.cfg.bn_recalibrate:  # replace the stale running averages before evaluating and saving
            recalibrate_batch_norm(model, self.recal_images, self.cfg.batch_size, ctx.device)
        record = {}
        if self.valid is not None:
            loss, acc = evaluate(model, *self.valid, self.loss_fn, self.cfg.eval_batch_size, ctx.device, ctx)
            record.update(valid_loss=loss, valid_accuracy=acc)
        loss, acc = evaluate(model, self.x_test, self.y_test, self.loss_fn, self.cfg.eval_batch_size, ctx.device, ctx)
        return {**record, "test_loss": loss, "test_accuracy": acc}

    def selection_error(self, record) -> Optional[float]:
        return 1.0 - record["valid_accuracy"] if "valid_accuracy" in record else None

    def describe(self, record) -> str:
        line = super().describe(record)
        if "valid_accuracy" in record:
            line = line.replace(" | test", f" | valid acc {record['valid_accuracy']:.4f} | test", 1)
        return line
