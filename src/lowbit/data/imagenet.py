"""ImageNet-style class-per-folder data: ``DATA/train/<class>/*.JPEG`` and ``DATA/val/<class>/*.JPEG``.

(``DATA/imagenet/...`` is found too.) Images are decoded with PIL. Training crops are the standard
random-resized crop to 224 (area 8-100%, aspect 3/4-4/3) plus a horizontal flip; evaluation resizes the
shorter side to 256 and takes the center 224 x 224. The dataset yields uint8 images, like every lowbit
dataset (the models normalize). Each image's augmentation is drawn from a generator seeded by
(seed, epoch, index), so it does not depend on the number of workers and a resumed run sees the same crops.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import DataError
from .base import resolve_data_dir

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")
CROP = 224
RESIZE = 256

def find_imagenet_root(data_dir=None) -> Path:
    """The folder holding ``train/`` and ``val/``: ``data_dir`` itself or ``data_dir/imagenet`` (default data
    directory: ``$LOWBIT_DATA`` or ``~/.cache/lowbit/data``). Raises DataError naming where it looked."""
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


def load_imagenet(num_classes: Optional[int], train_subset: int = 0, test_subset: int = 0, seed: int = 0,
                  data_dir=None, log=print):
    """(train, val, source) ImageFolders, checked against the model's number of classes (``None``: take it
    from the data); ``*_subset`` keep that many images of a fixed random order (0: all)."""
    root = find_imagenet_root(data_dir)
    train = ImageFolder(root / "train", train=True)
    val = ImageFolder(root / "val", train=False, classes=train.classes)
    num_classes = len(train.classes) if num_classes is None else int(num_classes)
    if len(train.classes) > num_classes:
        raise DataError(f"{root / 'train'} has {len(train.classes)} classes, but the model has {num_classes} outputs "
                        f"(--set model.num_classes={len(train.classes)})")
    if len(train.classes) < num_classes:
        log(f"NOTE: {len(train.classes)} classes in {root / 'train'}, the model has {num_classes} outputs")
    _subset(train, train_subset, seed)
    _subset(val, test_subset, seed + 1)
    return train, val, str(root)
