"""What every loader shares: the dataset record, the data directory, and the "files missing" message."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from ..errors import DataError

#: The datasets :func:`lowbit.data.load_dataset` knows, by canonical name.
DATASETS = ("mnist", "fashion-mnist", "cifar10", "svhn")

#: Environment variable naming the data directory (used when no directory is passed explicitly).
DATA_ENV = "LOWBIT_DATA"

PathLike = Union[str, "os.PathLike[str]"]


class MissingDataError(DataError):
    """The dataset files are not there and could not be fetched (download disabled or failed).

    Raised instead of a plain :class:`DataError` so that callers can tell "absent" (where the embedded MNIST
    sample may stand in) from "present but corrupt" (which must never be papered over).
    """


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """A whole split of an image-classification dataset, in memory.

    ``images`` is uint8 of shape (N, C, H, W); ``labels`` is int64 of shape (N,) with values
    0..num_classes-1. ``source`` says in words where the data came from (the files read, or the embedded
    sample); ``is_sample`` is True only for the embedded MNIST subset.
    """

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    name: str
    split: str
    source: str
    is_sample: bool = False

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __repr__(self) -> str:  # arrays would flood the screen
        sample = ", sample" if self.is_sample else ""
        return (f"ImageDataset({self.name!r}, {self.split!r}, {len(self)} images of "
                f"{'x'.join(str(d) for d in self.images.shape[1:])}, {self.num_classes} classes{sample}, "
                f"source={self.source!r})")


def resolve_data_dir(data_dir: Optional[PathLike] = None) -> Path:
    """The data directory: ``data_dir`` if given, else ``$LOWBIT_DATA`` if set, else ``~/.cache/lowbit/data``.

    The directory is not created here (a download creates what it needs).
    """
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "lowbit" / "data"


def data_dir_is_named(data_dir: Optional[PathLike] = None) -> bool:
    """True if the user chose the data directory (``data_dir`` given or ``$LOWBIT_DATA`` set)."""
    return (data_dir is not None and str(data_dir) != "") or bool(os.environ.get(DATA_ENV, "").strip())


def data_root(data_dir: Optional[PathLike] = None) -> Path:
    """:func:`resolve_data_dir`, checked: a directory the user named (``data_dir`` or ``$LOWBIT_DATA``) must
    exist, and whatever the data directory is must not be a regular file. Only the default directory
    (``~/.cache/lowbit/data``) may be absent (a download creates it; MNIST may fall back to the sample).
    Nothing is created here."""
    root = resolve_data_dir(data_dir)
    explicit = data_dir is not None and str(data_dir) != ""
    named = data_dir_is_named(data_dir)
    origin = ("the data directory given" if explicit else
              f"the data directory ${DATA_ENV} names" if os.environ.get(DATA_ENV, "").strip() else
              "the default data directory")
    if root.is_symlink() and not root.exists():
        raise DataError(f"{origin}, {root}, is a broken symbolic link")
    if root.exists() and not root.is_dir():
        raise DataError(f"{origin}, {root}, is not a directory")
    if not root.exists() and named:
        raise DataError(f"{origin}, {root}, does not exist (a typo?); create it or point --data-dir / "
                        f"{DATA_ENV} at the folder that holds the datasets")
    return root


def is_data_file(path: Path) -> bool:
    """True if ``path`` is a regular file (or a link to one), False if nothing is there; DataError naming the
    path if something else stands in its place (a directory, a broken link), which must never be mistaken
    for "missing"."""
    if path.is_file():
        return True
    if path.is_symlink() and not path.exists():
        raise DataError(f"{path} is a broken symbolic link (to {os.readlink(path)}); fix or remove it")
    if path.exists():
        raise DataError(f"{path} is not a regular file (a directory or a device); put the data file there")
    return False


def check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
    """DataError naming ``where`` if any label lies outside 0..num_classes-1."""
    if labels.size == 0:
        return
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{where}: label {labels[i]} at index {i} is out of range 0..{num_classes - 1} "
                        f"({bad.size} bad label{'s' if bad.size != 1 else ''} in all)")


def _join(items: Sequence[str]) -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def missing_message(title: str, wanted: Iterable[str], looked_in: Iterable[Path], target: Path,
                    origin: str, reason: str) -> str:
    """One-line message for missing dataset files: what was looked for where, why it was not fetched,
    and exactly which files to put into which directory to make it work offline."""
    wanted = list(wanted)
    dirs = _join([str(d) for d in dict.fromkeys(looked_in)])
    return (f"{title}: {_join(wanted)} not found (looked in {dirs}). {reason} "
            f"To use it offline, put {_join(wanted)} (from {origin}) into {target}, "
            f"or point {DATA_ENV} (or --data-dir) at a directory that holds them.")
