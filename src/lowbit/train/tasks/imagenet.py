"""Task ``"imagenet"``: ImageNet-style folders streamed through a ``DataLoader``.

    lowbit train imagenet-alexnet --data-dir /data/imagenet
    torchrun --nproc_per_node=8 -m lowbit train imagenet-resnet18-pact-sawb --data-dir /data/imagenet

Batches come from ``TrainConfig.data_workers`` processes (:mod:`lowbit.data.imagenet` decodes and
augments); under torchrun each rank takes every world_size-th image of the epoch's permutation. Evaluation
reports top-1 (``test_accuracy``) and top-5 on ``val``.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from ...data.imagenet import ImageFolder, load_imagenet
from ...registry import TASKS
from .. import distributed
from ..engine import Task
from ..losses import get_loss
from .image import classify


def epoch_indices(n: int, seed: int, epoch: int, rank: int, world: int) -> List[int]:
    """This rank's share of epoch ``epoch``'s permutation: every world-th index, the permutation padded by
    its own beginning so that every rank gets the same count (DDP needs equal step counts)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch)).tolist()
    total = math.ceil(n / world) * world
    order = (order * math.ceil(total / max(n, 1)))[:total]
    return order[rank::world]


@torch.no_grad()
def evaluate_loader(model: nn.Module, dataset: ImageFolder, loss_fn, batch_size: int, workers: int, device,
                    ctx: Optional[distributed.Context] = None) -> Tuple[float, float, float]:
    """(mean loss, top-1, top-5 accuracy) over ``dataset``; each rank takes every world_size-th image."""
    model.eval()
    n = len(dataset)
    idx = list(range(n))
    if ctx is not None and ctx.distributed:
        idx = idx[ctx.rank::ctx.world_size]
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=idx, num_workers=workers,
                                         pin_memory=device.type == "cuda")
    loss_sum = top1 = top5 = 0.0
    for x, y in loader:
        x = x.to(device, non_blocking=True).float()
        y = y.to(device)
        out = model(x)
        loss_sum += float(loss_fn(out, y)) * len(y)
        k = min(5, out.shape[1])
        best = out.topk(k, dim=1).indices
        top1 += float((best[:, 0] == y).sum())
        top5 += float((best == y[:, None]).any(dim=1).sum())
    if ctx is not None:
        loss_sum, top1, top5 = distributed.all_sum([loss_sum, top1, top5], ctx)
    n = max(n, 1)
    return loss_sum / n, top1 / n, top5 / n


@TASKS.register("imagenet")
class ImageNetTask(Task):
    def load(self, data_dir, ctx, log) -> None:
        cfg = self.cfg
        self.train_set, self.val_set, self.source = load_imagenet(
            cfg.model_args.get("num_classes"), cfg.train_subset, cfg.test_subset, cfg.seed, data_dir, log)
        log(f"data: {self.source}: train {len(self.train_set)} / val {len(self.val_set)} images, "
            f"{len(self.train_set.classes)} classes")
        self.loss_fn = get_loss(cfg.loss)

    def _local_batch(self, ctx) -> int:
        return max(1, self.cfg.batch_size // ctx.world_size)

    def steps_per_epoch(self, ctx) -> int:
        return math.ceil(math.ceil(len(self.train_set) / ctx.world_size) / self._local_batch(ctx))

    def batches(self, epoch, ctx):
        self.train_set.set_seed(self.cfg.seed * 100003 + epoch)
        indices = epoch_indices(len(self.train_set), self.cfg.seed, epoch, ctx.rank, ctx.world_size)
        loader = torch.utils.data.DataLoader(self.train_set, batch_size=self._local_batch(ctx), sampler=indices,
                                             num_workers=self.cfg.data_workers, pin_memory=ctx.device.type == "cuda")
        for x, y in loader:
            yield x.to(ctx.device, non_blocking=True).float(), y.to(ctx.device, non_blocking=True)

    def loss(self, train_model, model, batch):
        x, y = batch
        return classify(train_model, x, y, self.loss_fn, self.cfg.channels_last)

    def evaluate(self, model, ctx) -> Dict[str, float]:
        loss, top1, top5 = evaluate_loader(model, self.val_set, self.loss_fn, self.cfg.eval_batch_size,
                                           self.cfg.data_workers, ctx.device, ctx)
        return {"test_loss": loss, "test_accuracy": top1, "test_top5": top5}

    def describe(self, r) -> str:
        return (f"epoch {r['epoch']}: train loss {r['train_loss']:.4f} acc {r['train_accuracy']:.4f} | "
                f"val loss {r['test_loss']:.4f} top-1 {r['test_accuracy']:.4f} top-5 {r['test_top5']:.4f} | "
                f"{r['wall_time']:.0f}s")

    def summary(self, last) -> Dict:
        return {**super().summary(last), "test_top5": last.get("test_top5")}
