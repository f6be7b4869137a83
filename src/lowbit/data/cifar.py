"""CIFAR-10 (python version): a pickle reader that cannot run code, and a safe tar extractor.

The official batches are pickles made by Python 2: a dict with ``data`` (a numpy uint8 array, N x 3072,
each row the 32x32 red plane, then green, then blue, row-major) and ``labels`` (a list of ints). A numpy
array in a pickle is rebuilt through the globals ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``
and ``numpy.dtype`` (and ``_codecs.encode`` for bytes pickled by Python 3), so "refuse every global" would
refuse the real files. Instead :class:`SafeUnpickler` refuses every global except exactly those names, and
even for those it never hands the pickle's data to numpy's own ``__setstate__``: they resolve to inert
stand-ins defined here that only record what they are given; after loading, each recorded array is checked
(plain numeric dtype, byte count equal to shape x itemsize) and built with ``np.frombuffer``. No callable
chosen by the file is ever invoked, so a malicious pickle can at most be refused.
"""
from __future__ import annotations

import io
import os
import pickle
import shutil
import struct
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, List, Optional, Tuple

import numpy as np

from ..errors import DataError
from .base import DATA_ENV, ImageDataset, MissingDataError, check_labels, is_data_file
from .download import DownloadError, download_file, resource

BATCH_DIR = "cifar-10-batches-py"
TARBALL = "cifar-10-python.tar.gz"
SPLIT_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}


class _RefusedGlobal(pickle.UnpicklingError):
    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.module, self.name = module, name


class _NDArrayClass:
    """Stands for ``numpy.ndarray`` (only usable as the first argument of ``_reconstruct``)."""


class _DTypeSpec:
    """Stands for a ``numpy.dtype(spec, align, copy)`` call; ``__setstate__`` accepts only the plain state."""

    def __init__(self, spec: Any = None, align: Any = False, copy: Any = False):
        if isinstance(spec, bytes):
            spec = spec.decode("latin1")
        if not isinstance(spec, str) or len(spec) > 8:
            raise pickle.UnpicklingError(f"unsupported dtype spec {spec!r}")
        self.spec = spec
        self.byteorder = "|"

    def __setstate__(self, state: Any) -> None:
        # (version, byteorder, subarray, names, fields, elsize, alignment, flags) for version 3 (4 lacks flags)
        if not (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4)):
            raise pickle.UnpicklingError("unsupported dtype state")
        byteorder = state[1].decode("latin1") if isinstance(state[1], bytes) else state[1]
        if byteorder not in ("|", "<", ">", "=") or any(x is not None for x in state[2:5]):
            raise pickle.UnpicklingError("only plain (unstructured) dtypes are accepted")
        self.byteorder = byteorder

    def resolve(self) -> np.dtype:
        try:
            dt = np.dtype(self.spec)
        except TypeError as e:
            raise pickle.UnpicklingError(f"unknown dtype {self.spec!r}") from e
        if dt.kind not in "biuf" or dt.fields is not None or dt.subdtype is not None:
            raise pickle.UnpicklingError(f"dtype {dt} is not a plain numeric type")
        if self.byteorder in "<>" and dt.itemsize > 1:
            dt = dt.newbyteorder(self.byteorder)
        return dt


class _ArraySpec:
    """Stands for ``_reconstruct(ndarray, (0,), b'b')``; the BUILD state carries shape, dtype and bytes."""

    def __init__(self, cls: Any = None, shape: Any = None, typecode: Any = None):
        if cls is not _NDArrayClass:
            raise pickle.UnpicklingError("_reconstruct is only accepted for numpy.ndarray")
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def resolve(self) -> np.ndarray:
        st = self.state
        if not (isinstance(st, tuple) and len(st) == 5):
            raise pickle.UnpicklingError("unsupported ndarray state")
        _version, shape, dtype, fortran, raw = st
        if not isinstance(dtype, _DTypeSpec):
            raise pickle.UnpicklingError("ndarray state without a dtype")
        if not (isinstance(shape, tuple) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise pickle.UnpicklingError(f"bad ndarray shape {shape!r}")
        dt = dtype.resolve()
        if isinstance(raw, str):  # Python 2 str read with encoding="latin1"
            raw = raw.encode("latin1")
        if not isinstance(raw, (bytes, bytearray)):
            raise pickle.UnpicklingError("ndarray data is not a byte string")
        count = int(np.prod(shape, dtype=np.int64))
        if len(raw) != count * dt.itemsize:
            raise pickle.UnpicklingError(f"ndarray of shape {shape} and dtype {dt} needs "
                                         f"{count * dt.itemsize} bytes, the pickle holds {len(raw)}")
        arr = np.frombuffer(raw, dtype=dt, count=count).reshape(shape, order="F" if fortran else "C")
        return np.ascontiguousarray(arr).astype(dt.newbyteorder("="), copy=True)


def _codecs_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """Stands for ``_codecs.encode``, which Python 3 uses to pickle bytes at protocol 2 (latin1 only)."""
    if not isinstance(obj, str) or encoding != "latin1":
        raise pickle.UnpicklingError("_codecs.encode is only accepted as encode(str, 'latin1')")
    return obj.encode("latin1")


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _ArraySpec,
    ("numpy._core.multiarray", "_reconstruct"): _ArraySpec,
    ("numpy", "ndarray"): _NDArrayClass,
    ("numpy", "dtype"): _DTypeSpec,
    ("_codecs", "encode"): _codecs_encode,
}


class SafeUnpickler(pickle.Unpickler):
    """Refuses every global except the numpy-array names above, which map to inert stand-ins."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _RefusedGlobal(module, name) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent references are not accepted")


def _finish(obj: Any, depth: int = 0) -> Any:
    """Replace the stand-ins by real arrays; bytes dict keys become str."""
    if depth > 20:
        raise pickle.UnpicklingError("nesting too deep")
    if isinstance(obj, _ArraySpec):
        return obj.resolve()
    if isinstance(obj, (_DTypeSpec, _NDArrayClass)) or obj is _NDArrayClass:
        raise pickle.UnpicklingError("stray numpy object")
    if isinstance(obj, dict):
        return {(k.decode("latin1") if isinstance(k, bytes) else k): _finish(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finish(v, depth + 1) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_finish(v, depth + 1) for v in obj)
    return obj


def safe_load_pickle(path: Path) -> Any:
    """Unpickle ``path`` without ever executing code from it; DataError (naming the file) on anything off."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from e
    try:
        return _finish(SafeUnpickler(io.BytesIO(raw), encoding="latin1").load())
    except _RefusedGlobal as e:
        raise DataError(f"{path}: refused to unpickle: it references the global {e.module}.{e.name} "
                        f"(a CIFAR-10 batch holds only arrays, lists, numbers and strings; nothing was executed)"
                        ) from None
    except RecursionError:
        raise DataError(f"{path}: corrupt pickle (nested too deeply)") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            UnicodeError, OverflowError, MemoryError, struct.error) as e:
        what = "truncated" if isinstance(e, EOFError) or "truncated" in str(e) else "corrupt"
        raise DataError(f"{path}: {what} pickle ({type(e).__name__}: {e})") from None


def read_batch(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 3, 32, 32), labels int64 (N,)) from one CIFAR-10 batch file."""
    d = safe_load_pickle(path)
    if not isinstance(d, dict):
        raise DataError(f"{path}: expected a pickled dict, found {type(d).__name__}")
    for key in ("data", "labels"):
        if key not in d:
            raise DataError(f"{path}: the batch has no {key!r} entry (keys: {sorted(map(str, d))})")
    data = d["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = (f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__)
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), found {desc}")
    labels_obj = d["labels"]
    try:
        labels = np.asarray(labels_obj)
    except (ValueError, TypeError) as e:
        raise DataError(f"{path}: 'labels' is not a list of integers ({e})") from None
    if labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
        raise DataError(f"{path}: 'labels' must be a flat list of integers, found {labels.dtype} of shape {labels.shape}")
    labels = labels.astype(np.int64)
    if labels.shape[0] != data.shape[0]:
        raise DataError(f"{path}: {data.shape[0]} images but {labels.shape[0]} labels")
    check_labels(labels, 10, str(path))
    return data.reshape(-1, 3, 32, 32), labels


def _is_unsafe_member_name(name: str) -> bool:
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive or os.path.isabs(name):
        return True
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return ".." in parts


def extract_tar_safely(tar_path: Path, dest: Path) -> None:
    """Extract ``tar_path`` into ``dest``; refuse (DataError, nothing written into ``dest``) an archive with a
    member that has an absolute path or a ``..`` component, or is a link or device. Extraction goes to a
    temporary folder first; files are moved into ``dest`` only once the whole archive has been read."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
    except OSError as e:
        raise DataError(f"cannot extract {tar_path} into {dest}: {e}") from e
    try:
        try:
            with tarfile.open(tar_path, "r:*") as tf:
                for m in tf:
                    if _is_unsafe_member_name(m.name):
                        raise DataError(f"{tar_path}: refusing to extract: member {m.name!r} has an absolute "
                                        f"path or a '..' component")
                    target = tmp / m.name
                    if m.isdir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    if not m.isfile():
                        raise DataError(f"{tar_path}: refusing to extract: member {m.name!r} is a link or "
                                        f"special file, not a regular file")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    src = tf.extractfile(m)
                    assert src is not None
                    with src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
        except (tarfile.TarError, EOFError, zlib.error) as e:
            raise DataError(f"{tar_path}: corrupt or truncated archive ({e})") from None
        except OSError as e:
            raise DataError(f"{tar_path}: cannot extract ({e})") from None
        for p in sorted(tmp.rglob("*")):
            if p.is_file():
                final = dest / p.relative_to(tmp)
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(p, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _batch_dirs(root: Path) -> List[Path]:
    return [root / BATCH_DIR, root / "cifar10" / BATCH_DIR]


def _complete(d: Path, split: str) -> bool:
    return all([is_data_file(d / f) for f in SPLIT_FILES[split]])


def _locate(root: Path, split: str) -> Optional[Path]:
    for d in _batch_dirs(root):
        if _complete(d, split):
            return d
    return None


def _missing_message(root: Path, split: str, reason: str) -> str:
    files = ", ".join(SPLIT_FILES[split])
    url, _ = resource("cifar10", TARBALL)
    dirs = " and ".join(str(d) for d in _batch_dirs(root))
    return (f"CIFAR-10 {split} set: {files} not found (looked in {dirs}). {reason} "
            f"To use it offline, put {TARBALL} (from {url}) into {root / 'cifar10'} (it is extracted on first "
            f"use), or its extracted folder {BATCH_DIR}/ into {root}, or point {DATA_ENV} (or --data-dir) at a "
            f"directory that holds them.")


def load_cifar10(root: Path, split: str, download: bool = True) -> ImageDataset:
    """CIFAR-10 ``split`` from under ``root``: extracts a tarball found there, or downloads one if allowed."""
    d = _locate(root, split)
    if d is None:
        tarballs = [p for p in (root / "cifar10" / TARBALL, root / TARBALL) if is_data_file(p)]
        if tarballs:
            tar = tarballs[0]
        elif not download:
            raise MissingDataError(_missing_message(root, split, "Downloading is disabled."))
        else:
            url, md5 = resource("cifar10", TARBALL)
            tar = root / "cifar10" / TARBALL
            try:
                download_file(url, tar, md5)
            except DownloadError as e:
                raise MissingDataError(_missing_message(root, split, f"Download failed: {e}.")) from e
        extract_tar_safely(tar, tar.parent)
        d = _locate(root, split)
        if d is None:
            raise DataError(f"{tar}: the archive does not contain {BATCH_DIR}/ with "
                            f"{', '.join(SPLIT_FILES[split])}")
    parts = [read_batch(d / f) for f in SPLIT_FILES[split]]
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    names = "data_batch_1..5" if split == "train" else "test_batch"
    return ImageDataset(images=np.ascontiguousarray(images), labels=labels, num_classes=10, name="cifar10",
                        split=split, source=f"{d}/{names}", is_sample=False)
