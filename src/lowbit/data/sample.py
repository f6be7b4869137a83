"""The embedded MNIST sample: a small real subset shipped with the package (``mnist_sample.npz``).

Made by ``scripts/make_mnist_sample.py`` from the official files: the first 600 training images of each
class (6000 in all, in their original order) and the first 1000 test images. ``train_index`` /
``test_index`` record where each image sits in the full set.
"""
from __future__ import annotations

import io
from functools import lru_cache
from importlib import resources
from typing import Dict

import numpy as np

from ..errors import DataError
from .base import ImageDataset

SAMPLE_FILE = "mnist_sample.npz"
FULL_SIZES = {"train": 60000, "test": 10000}


@lru_cache(maxsize=1)
def _arrays() -> Dict[str, np.ndarray]:
    try:
        blob = resources.files("lowbit.data").joinpath(SAMPLE_FILE).read_bytes()
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError) as e:  # a broken install
        raise DataError(f"the embedded MNIST sample ({SAMPLE_FILE} in the lowbit package) cannot be read: {e}") from e


def sample_index(split: str) -> np.ndarray:
    """Positions (int64) in the full MNIST ``split`` of the sample's images, in the sample's order."""
    return _arrays()[f"{split}_index"].astype(np.int64)


def load_sample(split: str) -> ImageDataset:
    """The embedded MNIST ``split`` ("train" or "test") as an ImageDataset with ``is_sample=True``."""
    a = _arrays()
    images = a[f"{split}_images"]
    images = images.reshape(images.shape[0], 1, 28, 28).copy()
    labels = a[f"{split}_labels"].astype(np.int64)
    n, total = images.shape[0], FULL_SIZES[split]
    return ImageDataset(images=images, labels=labels, num_classes=10, name="mnist", split=split,
                        source=f"embedded sample ({n} of {total} MNIST {split} images)", is_sample=True)
