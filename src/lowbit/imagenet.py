"""ImageNet: the QNN paper's AlexNet, ResNet-18 with PACT + SAWB, a folder loader and a streaming training loop.

    lowbit train imagenet-alexnet --data-dir /data/imagenet
    torchrun --nproc_per_node=8 -m lowbit train imagenet-resnet18-pact-sawb --data-dir /data/imagenet

Data: ``DATA/train/<class>/*.JPEG`` and ``DATA/val/<class>/*.JPEG`` (the usual layout; ``DATA/imagenet/...``
is found too), decoded with PIL. Training crops are the standard random-resized crop to 224 (area 8-100%,
aspect 3/4-4/3) plus a horizontal flip; evaluation resizes the shorter side to 256 and takes the center
224 x 224. The loader yields uint8 images, like every lowbit dataset, and the ImageNet mean/std
normalization is the first module of the models (:class:`Normalize`): it is saved with the model, and a
deployed model takes raw 8-bit pixels. Each image's augmentation is drawn from a generator seeded by
(seed, epoch, index), so it does not depend on the number of workers and a resumed run sees the same crops.

Training (task ``"imagenet"``) streams batches with a ``DataLoader`` (``TrainConfig.data_workers``
processes), runs data-parallel under ``torchrun`` via :mod:`lowbit.distributed` (each rank takes every
world_size-th image of the epoch's permutation), evaluates top-1/top-5 on ``val`` after each epoch, and
checkpoints atomically every epoch for ``--resume``, like :func:`lowbit.train.train_image`.

These models are trained in PyTorch only: the bit-packed runtime does not export them (yet).
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from . import distributed
from .checkpoint import model_from_config
from .config import TrainConfig, recipe, validate
from .errors import ConfigError, DataError
from .layers import QuantAct, QuantConv2d, QuantLinear
from .losses import get_loss
from .models import register_model
from .norm import batch_norm
from .optim import build_optimizer, build_scheduler, register_optimizer
from .quantizers import QuantizerSpec, get_quantizer
from .train import CHECKPOINT, build_metrics, data_parallel, end_epoch, resume_run, train_step

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")
CROP = 224
RESIZE = 256

# --------------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------------


class Normalize(nn.Module):
    """8-bit RGB pixels p in [0, 255] (as floats) -> (p / 255 - mean) / std per channel (ImageNet's)."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255.0, persistent=False)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(std).view(1, -1, 1, 1) * 255.0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * self.inv_std


def _fresh(spec: QuantizerSpec) -> nn.Module:
    """A new quantizer for each place it is used (a PACT alpha belongs to one layer)."""
    return copy.deepcopy(spec) if isinstance(spec, nn.Module) else get_quantizer(spec)


def alexnet_qnn(
    num_classes: int = 1000,
    widths: Sequence[int] = (192, 576, 1152, 768, 256),
    fc: Sequence[int] = (4096, 4096),
    weight_quantizer: QuantizerSpec = "ste_sign",
    act_quantizer: QuantizerSpec = "linear:bits=2",
    pad_value: float = 0.0,
    norm: str = "bn",
    grad_quantizer: QuantizerSpec = None,
    bn_eps: float = 1e-5,
    bn_momentum: float = 0.1,
) -> nn.Sequential:
    """The QNN paper's ImageNet AlexNet: BinaryNet.pytorch's AlexNet widened x3.

    Normalize -> QConv11/4(192) -> MP3/2 -> BN -> act -> QConv5(576) -> MP3/2 -> BN -> act -> QConv3(1152)
    -> BN -> act -> QConv3(768) -> BN -> act -> QConv3(256) -> MP3/2 -> BN -> act -> 2 x (QFC(4096) -> BN ->
    act) -> QFC(num_classes) -> BN (the logits).

    Every weight is quantized (default binary), activations are k-bit (default 2-bit: ``linear`` over
    [-1, 1], whose STE is the hardtanh gradient of BinaryNet.pytorch); the first layer takes the real-valued
    normalized image. Convolutions pad with ``pad_value`` (0, as BinaryNet.pytorch). An adaptive average
    pool to 6 x 6 (the identity at 224 x 224 inputs) lets smaller images through.
    """
    if len(widths) != 5 or any(int(w) < 1 for w in widths):
        raise ConfigError(f"alexnet_qnn: widths must be 5 positive conv widths, got {list(widths)}")
    w = [int(v) for v in widths]

    def conv(cin, cout, k, stride=1, padding=0):
        return QuantConv2d(cin, cout, k, stride=stride, padding=padding, bias=False, weight_quantizer=weight_quantizer,
                           pad_value=pad_value, grad_quantizer=grad_quantizer)

    def act():
        return QuantAct(_fresh(act_quantizer), float_activation="hardtanh")

    def bn2(c):
        return batch_norm(norm, 2, c, eps=bn_eps, momentum=bn_momentum)

    layers: List[nn.Module] = [
        Normalize(),
        conv(3, w[0], 11, stride=4, padding=2), nn.MaxPool2d(3, 2), bn2(w[0]), act(),
        conv(w[0], w[1], 5, padding=2), nn.MaxPool2d(3, 2), bn2(w[1]), act(),
        conv(w[1], w[2], 3, padding=1), bn2(w[2]), act(),
        conv(w[2], w[3], 3, padding=1), bn2(w[3]), act(),
        conv(w[3], w[4], 3, padding=1), nn.MaxPool2d(3, 2), bn2(w[4]), act(),
        nn.AdaptiveAvgPool2d(6), nn.Flatten(),
    ]
    width = w[4] * 36
    for f in fc:
        layers += [
            QuantLinear(width, int(f), bias=False, weight_quantizer=weight_quantizer, grad_quantizer=grad_quantizer),
            batch_norm(norm, 1, int(f), eps=bn_eps, momentum=bn_momentum), act(),
        ]
        width = int(f)
    layers += [
        QuantLinear(width, num_classes, bias=False, weight_quantizer=weight_quantizer, grad_quantizer=grad_quantizer),
        batch_norm(norm, 1, num_classes, eps=bn_eps, momentum=bn_momentum),
    ]
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """ResNet basic block: QConv3 -> BN -> act -> QConv3 -> BN, + shortcut, -> act.

    The two 3x3 convolutions are quantized (weights by ``weight_quantizer``, their inputs are the outputs of
    the quantized activations); the shortcut (identity, or a 1x1 conv + BN where the shape changes) stays
    full precision, as the SAWB paper recommends.
    """

    def __init__(self, cin: int, cout: int, stride: int, weight_quantizer, act_quantizer, norm: str, grad_quantizer):
        super().__init__()
        self.conv1 = QuantConv2d(cin, cout, 3, stride=stride, padding=1, bias=False,
                                 weight_quantizer=weight_quantizer, grad_quantizer=grad_quantizer)
        self.bn1 = batch_norm(norm, 2, cout)
        self.act1 = QuantAct(_fresh(act_quantizer), float_activation="relu")
        self.conv2 = QuantConv2d(cout, cout, 3, stride=1, padding=1, bias=False,
                                 weight_quantizer=weight_quantizer, grad_quantizer=grad_quantizer)
        self.bn2 = batch_norm(norm, 2, cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), batch_norm(norm, 2, cout))
        self.act2 = QuantAct(_fresh(act_quantizer), float_activation="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.act2(y + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet with basic blocks; full-precision stem (7x7/2 conv) and classifier, quantized blocks."""

    def __init__(self, num_classes, widths, blocks, weight_quantizer, act_quantizer, norm, grad_quantizer):
        super().__init__()
        self.normalize = Normalize()
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False), batch_norm(norm, 2, widths[0]),
            QuantAct(_fresh(act_quantizer), float_activation="relu"), nn.MaxPool2d(3, 2, 1),
        )
        stages, cin = [], widths[0]
        for i, (width, n) in enumerate(zip(widths, blocks)):
            for b in range(n):
                stride = 2 if (i > 0 and b == 0) else 1
                stages.append(BasicBlock(cin, width, stride, weight_quantizer, act_quantizer, norm, grad_quantizer))
                cin = width
        self.blocks = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(self.normalize(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet18_pact_sawb(
    num_classes: int = 1000,
    widths: Sequence[int] = (64, 128, 256, 512),
    blocks: Sequence[int] = (2, 2, 2, 2),
    weight_quantizer: QuantizerSpec = "sawb:bits=2",
    act_quantizer: QuantizerSpec = "pact:bits=2,alpha=10.0",
    norm: str = "bn",
    grad_quantizer: QuantizerSpec = None,
) -> ResNet:
    """ResNet-18 with 2-bit SAWB weights and 2-bit PACT activations in every block; full-precision first
    convolution, last (fully connected) layer and shortcuts. ``weight_quantizer="identity"`` and
    ``act_quantizer="identity"`` give the float ResNet-18 (ReLU)."""
    if len(widths) != len(blocks) or not widths or any(int(v) < 1 for v in list(widths) + list(blocks)):
        raise ConfigError(f"resnet18_pact_sawb: widths and blocks must be equally long lists of positive "
                          f"integers, got {list(widths)} and {list(blocks)}")
    return ResNet(num_classes, [int(v) for v in widths], [int(v) for v in blocks], weight_quantizer,
                  act_quantizer, norm, grad_quantizer)


register_model("alexnet_qnn", alexnet_qnn)
register_model("resnet18_pact_sawb", resnet18_pact_sawb)


def _sgd_momentum(params, lr, **kwargs):
    """SGD with momentum 0.9 and weight decay 5e-5 (the PACT/SAWB ImageNet setting)."""
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-5, **kwargs)


register_optimizer("sgd_momentum", _sgd_momentum)


# --------------------------------------------------------------------------------------------------------
# Recipes
# --------------------------------------------------------------------------------------------------------


@recipe("imagenet-alexnet")
def imagenet_alexnet() -> TrainConfig:
    """QNN AlexNet on ImageNet: binary weights, 2-bit activations (paper: 51.03% top-1)."""
    return TrainConfig(
        recipe="imagenet-alexnet", dataset="imagenet", model="alexnet_qnn", task="imagenet",
        model_args=dict(num_classes=1000, widths=[192, 576, 1152, 768, 256], fc=[4096, 4096],
                        weight_quantizer="ste_sign", act_quantizer="linear:bits=2", pad_value=0.0, norm="bn",
                        grad_quantizer=None),
        # BinaryNet.pytorch's regime: Adam 5e-3 falling to 1e-5 by epoch ~45; no Glorot LR scale there.
        epochs=45, batch_size=256, eval_batch_size=256, optimizer="adam", lr_start=5e-3, lr_end=1e-5,
        lr_scale=False, loss="cross_entropy",
    )


@recipe("imagenet-resnet18-pact-sawb")
def imagenet_resnet18_pact_sawb() -> TrainConfig:
    """ResNet-18, PACT 2-bit activations + SAWB 2-bit weights, FP first/last layer and shortcuts."""
    return TrainConfig(
        recipe="imagenet-resnet18-pact-sawb", dataset="imagenet", model="resnet18_pact_sawb", task="imagenet",
        model_args=dict(num_classes=1000, widths=[64, 128, 256, 512], blocks=[2, 2, 2, 2],
                        weight_quantizer="sawb:bits=2", act_quantizer="pact:bits=2,alpha=10.0", norm="bn",
                        grad_quantizer=None),
        # SGD momentum 0.9, weight decay 5e-5, LR 0.1 decayed over the run; alpha starts at 10 with an L2
        # penalty of the same strength as the weight decay.
        epochs=90, batch_size=256, eval_batch_size=256, optimizer="sgd_momentum", lr_start=0.1, lr_end=1e-4,
        lr_scale=False, loss="cross_entropy", pact_l2=5e-5,
    )


# --------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------


def find_imagenet_root(data_dir=None) -> Path:
    """The folder holding ``train/`` and ``val/``: ``data_dir`` itself or ``data_dir/imagenet`` (default data
    directory: ``$LOWBIT_DATA`` or ``~/.cache/lowbit/data``). Raises DataError naming where it looked."""
    from .data.base import resolve_data_dir

    base = resolve_data_dir(data_dir)
    candidates = [base, base / "imagenet"]
    for cand in candidates:
        if (cand / "train").is_dir() and (cand / "val").is_dir():
            return cand
    raise DataError(
        "ImageNet not found: expected train/ and val/ folders (one sub-folder of images per class) in "
        + " or ".join(str(c) for c in candidates) + "; give the folder with --data-dir"
    )


def scan_folder(root: Path, classes: Optional[Sequence[str]] = None) -> Tuple[List[str], List[Tuple[str, int]]]:
    """(class names, [(image path, label)]) of a class-per-sub-folder directory, sorted. With ``classes``
    (the training set's), labels follow that list and an unknown class folder is an error."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a directory")
    found = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not found:
        raise DataError(f"{root} has no class sub-folders")
    if classes is None:
        classes = found
    index = {c: i for i, c in enumerate(classes)}
    unknown = [c for c in found if c not in index]
    if unknown:
        raise DataError(f"{root} has class folders that the training set does not: {unknown[:5]}")
    samples = []
    for c in found:
        for f in sorted((root / c).iterdir()):
            if f.is_file() and f.suffix.lower() in IMG_EXTENSIONS:
                samples.append((str(f), index[c]))
    if not samples:
        raise DataError(f"{root} holds no images ({', '.join(IMG_EXTENSIONS)})")
    return list(classes), samples


def random_resized_crop_box(width: int, height: int, generator: torch.Generator,
                            scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0)) -> Tuple[int, int, int, int]:
    """(left, top, w, h) of the standard random-resized crop: an area fraction uniform in ``scale`` and a
    log-uniform aspect ratio in ``ratio``, 10 tries, else the largest central crop within ``ratio``."""
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        r = torch.rand(2, generator=generator).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * r[0])
        aspect = math.exp(log_lo + (log_hi - log_lo) * r[1])
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def train_transform(img, generator: torch.Generator, size: int = CROP):
    """Random-resized crop to ``size`` x ``size`` (bilinear) and a horizontal flip with probability 1/2."""
    from PIL import Image

    left, top, w, h = random_resized_crop_box(img.width, img.height, generator)
    out = img.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))
    if float(torch.rand(1, generator=generator)) < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return out


def eval_transform(img, resize: int = RESIZE, size: int = CROP):
    """Resize the shorter side to ``resize`` (bilinear), then the center ``size`` x ``size`` crop."""
    from PIL import Image

    scale = resize / min(img.width, img.height)
    w, h = max(size, int(round(img.width * scale))), max(size, int(round(img.height * scale)))
    img = img.resize((w, h), Image.Resampling.BILINEAR)
    left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


class ImageFolder(torch.utils.data.Dataset):
    """Images of a class-per-folder directory as (uint8 tensor (3, 224, 224), label), augmented for training
    (:func:`train_transform`) or cropped for evaluation (:func:`eval_transform`)."""

    def __init__(self, root, train: bool, classes: Optional[Sequence[str]] = None, size: int = CROP,
                 resize: int = RESIZE):
        self.root = Path(root)
        self.classes, self.samples = scan_folder(self.root, classes)
        self.train = train
        self.size, self.resize = size, resize
        self.seed = 0

    def set_seed(self, seed: int) -> None:
        """Seed of this epoch's augmentation (image i uses a generator seeded by (seed, i))."""
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from PIL import Image, UnidentifiedImageError

        path, label = self.samples[i]
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise DataError(f"cannot read image {path}: {exc}") from None
        if self.train:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + i) % (2 ** 63))
            img = train_transform(img, g, self.size)
        else:
            img = eval_transform(img, self.resize, self.size)
        arr = np.asarray(img, dtype=np.uint8)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1), label


def _subset(ds: ImageFolder, n: int, seed: int) -> ImageFolder:
    """The first ``n`` images of a fixed random order (so a subset covers the classes)."""
    if n and n < len(ds.samples):
        order = np.random.default_rng(seed).permutation(len(ds.samples))[:n]
        ds.samples = [ds.samples[i] for i in sorted(order)]
    return ds


def load_imagenet(cfg: TrainConfig, data_dir=None, log=print):
    """(train, val) ImageFolders for ``cfg``, checked against the model's number of classes."""
    root = find_imagenet_root(data_dir)
    train = ImageFolder(root / "train", train=True)
    val = ImageFolder(root / "val", train=False, classes=train.classes)
    num_classes = int(cfg.model_args.get("num_classes", len(train.classes)))
    if len(train.classes) > num_classes:
        raise DataError(f"{root / 'train'} has {len(train.classes)} classes, but the model has {num_classes} outputs "
                        f"(--set model.num_classes={len(train.classes)})")
    if len(train.classes) < num_classes:
        log(f"NOTE: {len(train.classes)} classes in {root / 'train'}, the model has {num_classes} outputs")
    _subset(train, cfg.train_subset, cfg.seed)
    _subset(val, cfg.test_subset, cfg.seed + 1)
    return train, val, str(root)


# --------------------------------------------------------------------------------------------------------
# Training loop
# --------------------------------------------------------------------------------------------------------


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


def train_imagenet(cfg: TrainConfig, out_dir, data_dir=None, resume: bool = False, progress: bool = True) -> Dict:
    """The ``"imagenet"`` task: see the module docstring."""
    validate(cfg)
    ctx = distributed.setup()
    log = print if ctx.is_main else (lambda *a, **k: None)
    out_dir = Path(out_dir)
    torch.manual_seed(cfg.seed)

    # ---- data ----------------------------------------------------------------------------------------
    train_set, val_set, source = load_imagenet(cfg, data_dir, log)
    log(f"data: {source}: train {len(train_set)} / val {len(val_set)} images, {len(train_set.classes)} classes")

    # ---- model, loss, optimizer, schedule -----------------------------------------------------------
    model = model_from_config(cfg.to_dict()).to(ctx.device)
    loss_fn = get_loss(cfg.loss)
    optimizer = build_optimizer(model, cfg.optimizer, lr=cfg.lr_start, lr_scale=cfg.lr_scale)
    local_batch = max(1, cfg.batch_size // ctx.world_size)
    per_rank = math.ceil(len(train_set) / ctx.world_size)
    steps_per_epoch = math.ceil(per_rank / local_batch)
    scheduler = build_scheduler(optimizer, cfg.lr_start, cfg.lr_end, cfg.epochs * steps_per_epoch)

    # ---- resume ---------------------------------------------------------------------------------------
    history, start_epoch, elapsed_before = [], 0, 0.0
    ckpt_path = out_dir / CHECKPOINT
    if resume:
        _, history, start_epoch, elapsed_before = resume_run(ckpt_path, cfg, model, optimizer, scheduler, ctx, log)
    train_model = data_parallel(model, ctx)

    # ---- epochs ---------------------------------------------------------------------------------------
    t0 = time.time() - elapsed_before
    for epoch in range(start_epoch, cfg.epochs):
        train_model.train()
        train_set.set_seed(cfg.seed * 100003 + epoch)
        indices = epoch_indices(len(train_set), cfg.seed, epoch, ctx.rank, ctx.world_size)
        loader = torch.utils.data.DataLoader(train_set, batch_size=local_batch, sampler=indices,
                                             num_workers=cfg.data_workers, pin_memory=ctx.device.type == "cuda")
        loss_sum = correct = seen = 0.0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", total=steps_per_epoch,
                   disable=not (progress and ctx.is_main), dynamic_ncols=True, mininterval=0.5)
        for x, y in bar:
            x = x.to(ctx.device, non_blocking=True).float()
            y = y.to(ctx.device, non_blocking=True)
            batch_loss, batch_correct = train_step(train_model, model, x, y, loss_fn, optimizer, scheduler, cfg.pact_l2)
            loss_sum += batch_loss
            correct += batch_correct
            seen += len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}", refresh=False)
        bar.close()
        loss_sum, correct, seen = distributed.all_sum([loss_sum, correct, seen], ctx)
        val_loss, top1, top5 = evaluate_loader(model, val_set, loss_fn, cfg.eval_batch_size, cfg.data_workers,
                                               ctx.device, ctx)
        record = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / seen,
            "train_accuracy": correct / seen,
            "test_loss": val_loss,
            "test_accuracy": top1,
            "test_top5": top5,
            "lr": optimizer.param_groups[-1]["lr"],
            "wall_time": time.time() - t0,
        }
        history.append(record)
        log(f"epoch {epoch + 1}: train loss {record['train_loss']:.4f} acc {record['train_accuracy']:.4f} | "
            f"val loss {val_loss:.4f} top-1 {top1:.4f} top-5 {top5:.4f} | {record['wall_time']:.0f}s")
        end_epoch(ckpt_path, out_dir, cfg, model, optimizer, scheduler, history, source, ctx)

    metrics = build_metrics(cfg, history, source, ctx)
    metrics["test_top5"] = history[-1]["test_top5"] if history else None
    distributed.teardown(ctx)
    return metrics
