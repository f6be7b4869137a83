"""SVHN cropped digits (``{train,test,extra}_32x32.mat``, MATLAB v5: X (32, 32, 3, N) uint8, y (N, 1) in 1..10)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from ..errors import DataError
from .base import ImageDataset, MissingDataError, is_data_file, missing_message
from .download import DownloadError, download_file, origin_of, resource

SPLIT_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat", "extra": "extra_32x32.mat"}


def read_svhn_mat(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 3, 32, 32), labels int64 (N,) with digit 0 as 0) from one SVHN .mat file."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path), variable_names=["X", "y"])
    except NotImplementedError as e:  # MATLAB v7.3 (HDF5) files
        raise DataError(f"{path}: unsupported MATLAB file version ({e}); expected the official v5 file") from None
    except Exception as e:  # scipy raises many kinds (ValueError, TypeError, MatReadError, OSError, ...)
        raise DataError(f"{path}: corrupt or unreadable .mat file ({type(e).__name__}: {e})") from None
    for key in ("X", "y"):
        if key not in mat:
            raise DataError(f"{path}: no variable {key!r} in the .mat file")
    X, y = mat["X"], mat["y"]
    if not isinstance(X, np.ndarray) or X.ndim != 4 or X.shape[:3] != (32, 32, 3):
        raise DataError(f"{path}: 'X' must have shape (32, 32, 3, N), found {getattr(X, 'shape', type(X).__name__)}")
    if X.dtype != np.uint8:
        raise DataError(f"{path}: 'X' must be uint8, found {X.dtype}")
    n = X.shape[3]
    if not isinstance(y, np.ndarray) or y.shape not in ((n, 1), (n,)):
        raise DataError(f"{path}: 'y' must have shape ({n}, 1) to match 'X', found "
                        f"{getattr(y, 'shape', type(y).__name__)}")
    if y.dtype.kind not in "iuf":
        raise DataError(f"{path}: 'y' must be numeric, found {y.dtype}")
    y = y.reshape(-1)
    bad = np.flatnonzero(~np.isin(y, np.arange(1, 11)))
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{path}: label {y[i]} at index {i} is not in 1..10 ({bad.size} bad labels in all)")
    labels = y.astype(np.int64) % 10  # SVHN writes digit 0 as 10
    images = np.ascontiguousarray(X.transpose(3, 2, 0, 1))  # (H, W, C, N) -> (N, C, H, W)
    return images, labels


def _dirs(root: Path) -> List[Path]:
    return [root / "svhn", root]


def _locate(root: Path, split: str) -> Optional[Path]:
    for d in _dirs(root):
        p = d / SPLIT_FILES[split]
        if is_data_file(p):
            return p
    return None


def load_svhn(root: Path, split: str, download: bool = True) -> ImageDataset:
    """SVHN ``split`` from ``root/svhn/`` or ``root/``, downloading the .mat file if allowed."""
    name = SPLIT_FILES[split]
    path = _locate(root, split)
    if path is None:
        target = _dirs(root)[0]
        if not download:
            raise MissingDataError(missing_message(f"SVHN {split} set", [name], _dirs(root), target,
                                                   origin_of("svhn"), "Downloading is disabled."))
        url, md5 = resource("svhn", name)
        try:
            path = download_file(url, target / name, md5)
        except DownloadError as e:
            raise MissingDataError(missing_message(f"SVHN {split} set", [name], _dirs(root), target,
                                                   origin_of("svhn"), f"Download failed: {e}.")) from e
    images, labels = read_svhn_mat(path)
    if images.shape[0] == 0:
        raise DataError(f"{path}: holds no images")
    return ImageDataset(images=images, labels=labels, num_classes=10, name="svhn", split=split,
                        source=str(path), is_sample=False)
