"""Image datasets for training: MNIST, Fashion-MNIST, CIFAR-10 and SVHN, as uint8 numpy arrays.

    from lowbit.data import load_dataset
    ds = load_dataset("mnist", "train")          # ds.images (N, 1, 28, 28) uint8, ds.labels (N,) int64

Files are looked up under the data directory (``data_dir`` argument > ``$LOWBIT_DATA`` >
``~/.cache/lowbit/data``), downloaded from the official sources with md5 verification when missing
(unless ``download=False``), and parsed strictly: anything truncated, inconsistent or out of range raises
:class:`lowbit.errors.DataError` naming the file. With ``allow_sample=True``, MNIST missing from the default directory falls back
to a small real subset embedded in the package (``is_sample=True``; ``source`` says so).
"""
from __future__ import annotations

from typing import Optional

from ..errors import ConfigError
from .base import DATASETS, ImageDataset, MissingDataError, PathLike, data_dir_is_named, data_root, resolve_data_dir
from .download import RESOURCES, download_file

SPLITS = ("train", "test")

_ALIASES = {
    "mnist": "mnist",
    "fashion-mnist": "fashion-mnist", "fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist",
    "cifar10": "cifar10", "cifar-10": "cifar10", "cifar_10": "cifar10",
    "svhn": "svhn",
}


def _canonical(name: str) -> str:
    key = str(name).strip().lower()
    if key not in _ALIASES:
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return _ALIASES[key]


def load_dataset(name: str, split: str, data_dir: Optional[PathLike] = None, download: bool = True,
                 allow_sample: bool = False) -> ImageDataset:
    """Load one split of a dataset into memory.

    name: one of ``DATASETS`` ("mnist", "fashion-mnist", "cifar10", "svhn"); split: "train" or "test"
    (SVHN also "extra"). data_dir: see :func:`resolve_data_dir`. download: fetch missing files from the
    official source (checksum-verified). allow_sample: if MNIST is missing from the default data directory (no
    ``data_dir``, no ``$LOWBIT_DATA``) and cannot be downloaded, return the embedded sample (``is_sample=True``)
    instead of raising; a directory the user named never falls back.

    A directory the user named (``data_dir`` or ``$LOWBIT_DATA``) must exist (a DataError naming it
    otherwise: a typo must not train on the sample); a directory or broken link where a data file belongs is
    a DataError, never "missing".

    Raises ConfigError for an unknown name/split, DataError (MissingDataError when files are absent) for
    missing, corrupt or inconsistent data, with a message that names the files and directories.
    """
    name = _canonical(name)
    splits = SPLITS + (("extra",) if name == "svhn" else ())
    if split not in splits:
        raise ConfigError(f"unknown split {split!r} for {name}; use one of {', '.join(splits)}")
    root = data_root(data_dir)
    try:
        if name in ("mnist", "fashion-mnist"):
            from .idx import load_idx_dataset
            return load_idx_dataset(root, name, split, download=download)
        if name == "cifar10":
            from .cifar import load_cifar10
            return load_cifar10(root, split, download=download)
        from .svhn import load_svhn
        return load_svhn(root, split, download=download)
    except MissingDataError:
        if allow_sample and name == "mnist" and not data_dir_is_named(data_dir):
            from .sample import load_sample
            return load_sample(split)
        raise


__all__ = ["DATASETS", "ImageDataset", "MissingDataError", "RESOURCES", "SPLITS", "download_file",
           "data_root", "load_dataset", "resolve_data_dir"]
