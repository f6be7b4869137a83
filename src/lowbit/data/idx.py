"""IDX files (MNIST, Fashion-MNIST): strict parsing, and finding/downloading the four files."""
from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from ..errors import DataError
from .base import ImageDataset, MissingDataError, PathLike, check_labels, is_data_file, missing_message
from .download import DownloadError, download_file, origin_of, resource

IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension

#: split -> (images stem, labels stem), as named by the official distribution
STEMS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

_TITLES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}
_SUBDIRS = {"mnist": ("mnist", ""), "fashion-mnist": ("fashion-mnist",)}


def read_bytes(path: PathLike) -> bytes:
    """The file's content, gunzipped if it is gzip (by ``.gz`` name or by its magic bytes)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from e
    if path.suffix == ".gz" or raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: corrupt gzip file ({e})") from e
    return raw


def _header(data: bytes, path: Path, magic: int, ndim: int, kind: str) -> Tuple[int, ...]:
    need = 4 + 4 * ndim
    if len(data) < 4:
        raise DataError(f"{path}: truncated IDX file ({len(data)} bytes, not even a magic number)")
    (got,) = struct.unpack(">I", data[:4])
    if got != magic:
        raise DataError(f"{path}: wrong magic number 0x{got:08x} (an IDX {kind} file starts with 0x{magic:08x})")
    if len(data) < need:
        raise DataError(f"{path}: truncated IDX header ({len(data)} bytes, need {need})")
    return struct.unpack(">" + "I" * ndim, data[4:need])


def read_idx_images(path: PathLike, rows: int = 28, cols: int = 28) -> np.ndarray:
    """uint8 (N, 1, rows, cols) from an IDX3 image file (gzipped or not); DataError on anything off."""
    path = Path(path)
    data = read_bytes(path)
    n, r, c = _header(data, path, IMAGES_MAGIC, 3, "image")
    if (r, c) != (rows, cols):
        raise DataError(f"{path}: images are {r}x{c}, expected {rows}x{cols}")
    expected = n * r * c
    payload = len(data) - 16
    if payload < expected:
        raise DataError(f"{path}: truncated: the header declares {n} images of {r}x{c} ({expected} bytes) "
                        f"but only {payload} bytes follow")
    if payload > expected:
        raise DataError(f"{path}: {payload - expected} unexpected trailing bytes after the {n} images "
                        f"the header declares")
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, 1, r, c).copy()


def read_idx_labels(path: PathLike, num_classes: int = 10) -> np.ndarray:
    """int64 (N,) from an IDX1 label file (gzipped or not); DataError on anything off."""
    path = Path(path)
    data = read_bytes(path)
    (n,) = _header(data, path, LABELS_MAGIC, 1, "label")
    payload = len(data) - 8
    if payload < n:
        raise DataError(f"{path}: truncated: the header declares {n} labels but only {payload} bytes follow")
    if payload > n:
        raise DataError(f"{path}: {payload - n} unexpected trailing bytes after the {n} labels "
                        f"the header declares")
    labels = np.frombuffer(data, dtype=np.uint8, offset=8).astype(np.int64)
    check_labels(labels, num_classes, str(path))
    return labels


def _candidates(stem: str) -> List[str]:
    dotted = stem.replace("-idx", ".idx", 1)  # train-images.idx3-ubyte (as some mirrors/unzippers name it)
    return [stem + ".gz", stem, dotted + ".gz", dotted]


def _find(directory: Path, stem: str) -> Optional[Path]:
    for name in _candidates(stem):
        p = directory / name
        if is_data_file(p):
            return p
    return None


def locate(root: Path, dataset: str, split: str) -> Tuple[Optional[Tuple[Path, Path]], List[Path]]:
    """((images, labels), dirs looked in) for the first directory that holds both files, else (None, dirs)."""
    dirs = [root / sub if sub else root for sub in _SUBDIRS[dataset]]
    for d in dirs:
        found = [_find(d, stem) for stem in STEMS[split]]
        if all(found):
            return (found[0], found[1]), dirs
    return None, dirs


def load_idx_dataset(root: Path, dataset: str, split: str, download: bool = True) -> ImageDataset:
    """MNIST or Fashion-MNIST ``split`` from under ``root``, downloading missing files if allowed."""
    title = _TITLES[dataset]
    found, dirs = locate(root, dataset, split)
    if found is None:
        target = dirs[0]
        wanted = [stem + ".gz" for stem in STEMS[split]]
        missing = [name for name, stem in zip(wanted, STEMS[split]) if _find(target, stem) is None]
        if not download:
            raise MissingDataError(missing_message(f"{title} {split} set", wanted, dirs, target,
                                                   origin_of(dataset), "Downloading is disabled."))
        try:
            for name in missing:
                url, md5 = resource(dataset, name)
                download_file(url, target / name, md5)
        except DownloadError as e:
            raise MissingDataError(missing_message(f"{title} {split} set", missing, dirs, target,
                                                   origin_of(dataset), f"Download failed: {e}.")) from e
        found, dirs = locate(root, dataset, split)
        if found is None:  # pragma: no cover - download_file guarantees the files
            raise MissingDataError(f"{title} {split} set: files still missing in {target} after downloading")
    images_path, labels_path = found
    images = read_idx_images(images_path)
    labels = read_idx_labels(labels_path)
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{title} {split} set: {images_path} holds {images.shape[0]} images but "
                        f"{labels_path} holds {labels.shape[0]} labels")
    if images.shape[0] == 0:
        raise DataError(f"{images_path}: holds no images")
    source = (f"{images_path.parent}/{{{images_path.name}, {labels_path.name}}}"
              if images_path.parent == labels_path.parent else f"{images_path}, {labels_path}")
    return ImageDataset(images=images, labels=labels, num_classes=10, name=dataset, split=split,
                        source=source, is_sample=False)


def write_idx(path: PathLike, array: np.ndarray) -> None:
    """Write uint8 ``array`` (N,) labels or (N, H, W)/(N, 1, H, W) images as IDX, gzipped if ``path`` ends
    with ``.gz``. The inverse of the readers (used by tests and tools)."""
    path = Path(path)
    a = np.ascontiguousarray(array, dtype=np.uint8)
    if a.ndim == 4:
        a = a.reshape(a.shape[0], a.shape[2], a.shape[3])
    magic = {1: LABELS_MAGIC, 3: IMAGES_MAGIC}.get(a.ndim)
    if magic is None:
        raise ValueError(f"write_idx wants (N,) or (N, H, W) arrays, got shape {array.shape}")
    blob = struct.pack(">I" + "I" * a.ndim, magic, *a.shape) + a.tobytes()
    path.write_bytes(gzip.compress(blob, 6) if path.suffix == ".gz" else blob)

