"""The ``.lbt`` model file, format 2: a safetensors file with a checksum (no pickle, no code).

Layout (plain safetensors, readable by ``safetensors.numpy.load_file``)::

    8 bytes    uint64 little-endian: header length N
    N bytes    UTF-8 JSON header: {"__metadata__": {...}, NAME: {"dtype", "shape", "data_offsets"}, ...}
    the rest   data region: each array's bytes at its data_offsets, C order, little-endian

``__metadata__`` (string values only) holds ``lowbit.format`` ("2"), ``lowbit.kind``, ``lowbit.meta`` (the meta
dict as JSON) and ``lowbit.checksum``: ``"sha256:" + hex`` of the header with that one key removed, as
canonical JSON (sorted keys, no whitespace: independent of how a writer orders or pads the header), followed
by the whole data region. It covers kind, meta, format version, the tensor table (names, dtypes, shapes,
offsets) and every data byte, and is verified before anything is used, so truncation or a flipped bit
anywhere is reported (safetensors itself checks nothing). Arrays: int8..uint64, float32, float64.

Writing uses ``safetensors.numpy``; reading is a strict parser of its own (NumPy and the standard library
only, JSON only). Format-1 files (magic ``b"LOWBIT\\x00M"``, JSON header, CRC-32) still load.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
import zlib
from pathlib import Path
from typing import Any, Dict, Tuple, Union

import numpy as np

from ..errors import CheckpointError
from ..fileio import atomic_write

FORMAT_VERSION = 2
MAGIC = b"LOWBIT\x00M"  # format 1 (before safetensors)
ALIGN = 64  # format 1
_ALLOWED_DTYPES = {"int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"}
# safetensors dtype codes <-> NumPy dtype names (the allowed ones only)
_ST_DTYPES = {"I8": "int8", "U8": "uint8", "I16": "int16", "U16": "uint16", "I32": "int32", "U32": "uint32",
              "I64": "int64", "U64": "uint64", "F32": "float32", "F64": "float64"}
_FORMAT_KEY, _KIND_KEY, _META_KEY, _CHECKSUM_KEY = "lowbit.format", "lowbit.kind", "lowbit.meta", "lowbit.checksum"
_CHECKSUM_DOMAIN = b"lowbit model file v2\n"
_REEXPORT = "re-export the model with 'lowbit export'"

ModelFile = Tuple[str, Dict[str, Any], Dict[str, np.ndarray]]


def is_model_file(path: Union[str, Path]) -> bool:
    """Whether ``path`` looks like a model file (format 1 magic, or a safetensors header) rather than, say, a
    PyTorch checkpoint; :func:`load_model_file` then says exactly what is wrong with it. Raises OSError."""
    with open(path, "rb") as f:
        head = f.read(9)
    return head[:8] == MAGIC or (len(head) == 9 and head[8:9] == b"{")


# ---------------------------------------------------------------------------------------------- format 2


def _checksum(header: Dict[str, Any], data) -> str:
    """``"sha256:" + hex`` over the canonical header (without the checksum key) and the data region."""
    header = dict(header)
    metadata = dict(header.get("__metadata__") or {})
    metadata.pop(_CHECKSUM_KEY, None)
    header["__metadata__"] = metadata
    canon = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()
    h = hashlib.sha256(_CHECKSUM_DOMAIN)
    h.update(struct.pack("<Q", len(canon)))
    h.update(canon)
    h.update(data)
    return "sha256:" + h.hexdigest()


def _no_duplicates(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise ValueError(f"duplicate key {k!r}")
        d[k] = v
    return d


def _split(blob: bytes, path) -> Tuple[Dict[str, Any], memoryview]:
    """(parsed safetensors header, data region); CheckpointError unless it parses as one."""
    if len(blob) < 9:
        raise CheckpointError(f"{path} is truncated or not a lowbit model file: only {len(blob)} bytes")
    if blob[8:9] != b"{":
        raise CheckpointError(f"{path} is not a lowbit model file (neither a safetensors file nor a format-1 .lbt "
                              f"file); expected a file written by 'lowbit export'")
    (n,) = struct.unpack("<Q", blob[:8])
    if 8 + n > len(blob):
        raise CheckpointError(f"{path} is truncated or corrupt: its header claims {n} bytes, the file has "
                              f"{len(blob) - 8} after the length field")
    try:
        header = json.loads(bytes(blob[8:8 + n]).decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:  # (UnicodeDecodeError and JSONDecodeError are ValueErrors)
        raise CheckpointError(f"{path} has a corrupt header: not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} has a corrupt header: a JSON {type(header).__name__}, not an object")
    return header, memoryview(blob)[8 + n:]


def _tensor_table(header: Dict[str, Any], path) -> Dict[str, Tuple[str, Tuple[int, ...], int, int]]:
    """{name: (dtype name, shape, begin, end)} with every entry checked (types, dtype, size = shape)."""
    table = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        if not (isinstance(spec, dict) and set(spec) == {"dtype", "shape", "data_offsets"}):
            raise CheckpointError(f"{path}: tensor {name!r} has a malformed entry in the header (corrupt file)")
        dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
        if not isinstance(dtype, str) or dtype not in _ST_DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {dtype!r}, which a lowbit model file cannot "
                                  f"hold (allowed: {', '.join(_ST_DTYPES)})")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise CheckpointError(f"{path}: tensor {name!r} has an invalid shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            raise CheckpointError(f"{path}: tensor {name!r} has invalid data offsets {offsets!r}")
        itemsize = np.dtype(_ST_DTYPES[dtype]).itemsize
        if math.prod(shape) * itemsize != offsets[1] - offsets[0]:
            raise CheckpointError(f"{path}: tensor {name!r} does not fit its offsets: shape {shape} of {dtype} is "
                                  f"{math.prod(shape) * itemsize} bytes, offsets {offsets} span "
                                  f"{offsets[1] - offsets[0]}")
        table[name] = (_ST_DTYPES[dtype], tuple(shape), offsets[0], offsets[1])
    return table


def _data_end(header: Dict[str, Any]) -> int:
    """The data-region length the header's offsets imply (lenient: -1 when they are unreadable)."""
    try:
        return max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (KeyError, TypeError, ValueError, IndexError):
        return -1


def _load_v2(path: Path, blob: bytes) -> ModelFile:
    header, data = _split(blob, path)
    metadata = header.get("__metadata__")
    if not (isinstance(metadata, dict) and any(str(k).startswith("lowbit.") for k in metadata)):
        raise CheckpointError(f"{path} is a safetensors file but not a lowbit model file (no lowbit metadata); "
                              f"{_REEXPORT}")
    missing = [k for k in (_FORMAT_KEY, _KIND_KEY, _META_KEY, _CHECKSUM_KEY) if k not in metadata]
    if missing:
        raise CheckpointError(f"{path} is corrupt: its lowbit metadata lacks {', '.join(missing)}")
    if not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path} has a corrupt header: safetensors metadata values must be strings")
    version_text = metadata[_FORMAT_KEY]
    if not re.fullmatch(r"[0-9]{1,9}", version_text):
        raise CheckpointError(f"{path} is corrupt: format version {version_text!r} is not a number")
    version = int(version_text)
    end = _data_end(header)
    if len(data) < end:  # (end is -1 when the offsets are unreadable: the checks below report those)
        raise CheckpointError(f"{path} is truncated: {len(data)} of {end} data bytes present")
    try:
        checksum = _checksum(header, data)
    except (ValueError, TypeError, RecursionError) as exc:
        raise CheckpointError(f"{path} has a corrupt header ({exc})") from None
    verified = checksum == metadata[_CHECKSUM_KEY]
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has model-file format version {version}, newer than this lowbit reads ({FORMAT_VERSION}): "
            f"upgrade lowbit" + ("" if verified else " (or the file is corrupt: its checksum does not verify)"))
    if len(data) > end >= 0:
        raise CheckpointError(f"{path} has {len(data) - end} unexpected trailing bytes after its data")
    if not verified:
        raise CheckpointError(f"{path} is corrupt: checksum mismatch (the header or the data changed after "
                              f"'lowbit export' wrote it)")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path} is corrupt: a safetensors model file cannot have format version {version}")
    # verified: everything below reads what the writer wrote, checked for consistency all the same
    kind = metadata[_KIND_KEY]
    try:
        meta = json.loads(metadata[_META_KEY])
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path}: {_META_KEY} is not valid JSON ({exc}); {_REEXPORT}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: {_META_KEY} is a JSON {type(meta).__name__}, not an object; {_REEXPORT}")
    table = _tensor_table(header, path)
    position = 0
    for name, (_, _, begin, stop) in sorted(table.items(), key=lambda item: (item[1][2], item[1][3])):
        if begin != position:
            raise CheckpointError(f"{path}: tensor {name!r} starts at {begin}, expected {position} (tensors must "
                                  f"tile the data region without gaps or overlaps)")
        position = stop
    if position != len(data):
        raise CheckpointError(f"{path}: the tensors cover {position} of the {len(data)} data bytes")
    arrays = {}
    for name, (dtype, shape, begin, stop) in table.items():
        dt = np.dtype(dtype).newbyteorder("<")
        arr = np.frombuffer(data[begin:stop], dtype=dt).reshape(shape)
        arrays[name] = arr.astype(dt.newbyteorder("="), copy=True)
    return kind, meta, arrays


def save_model_file(path: Union[str, Path], kind: str, meta: Dict[str, Any], arrays: Dict[str, np.ndarray]) -> None:
    """Write ``arrays`` and JSON-able ``meta`` atomically to ``path`` (format 2: safetensors + checksum)."""
    from safetensors.numpy import save as st_save

    if not isinstance(kind, str) or not kind:
        raise TypeError(f"model file kind must be a non-empty string, not {kind!r}")
    if not isinstance(meta, dict):
        raise TypeError(f"model file meta must be a dict, not {type(meta).__name__}")
    tensors = {}
    for name, arr in arrays.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise TypeError(f"array name {name!r} cannot be stored in a model file")
        a = np.asarray(arr)
        dt = a.dtype.newbyteorder("<")
        if dt.name not in _ALLOWED_DTYPES:
            raise TypeError(f"array {name!r}: dtype {a.dtype} cannot be stored in a model file")
        a = a.astype(dt, copy=False)
        tensors[name] = a if a.flags.c_contiguous else a.copy(order="C")
    metadata = {_FORMAT_KEY: str(FORMAT_VERSION), _KIND_KEY: kind, _META_KEY: json.dumps(meta, sort_keys=True)}
    # the checksum does not depend on its own key, nor on the header's length (offsets are relative to the data)
    metadata[_CHECKSUM_KEY] = _checksum(*_split(st_save(tensors, metadata), path))
    blob = st_save(tensors, metadata)
    if _checksum(*_split(blob, path)) != metadata[_CHECKSUM_KEY]:  # cheap insurance: what we wrote verifies
        raise RuntimeError(f"model file {path}: checksum of the serialized file does not reproduce")
    atomic_write(path, lambda f: f.write(blob))


def load_model_file(path: Union[str, Path]) -> ModelFile:
    """Read a model file: returns ``(kind, meta, arrays)``; raises CheckpointError on any defect."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file {path} does not exist")
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"model file {path} cannot be read ({exc.strerror or exc})") from None
    if blob[:8] == MAGIC:
        return _load_v1(path, blob)
    return _load_v2(path, blob)


# ---------------------------------------------------------------------------------------------- format 1


def _pad(n: int) -> int:
    return (-n) % ALIGN


def _save_v1(path: Union[str, Path], kind: str, meta: Dict[str, Any], arrays: Dict[str, np.ndarray]) -> None:
    """The format-1 writer (kept for tests of the format-1 reader)."""
    table, chunks, offset = {}, [], 0
    for name, arr in arrays.items():
        a = np.ascontiguousarray(arr)
        dt = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
        if dt.name not in _ALLOWED_DTYPES:
            raise TypeError(f"array {name!r}: dtype {a.dtype} cannot be stored in a model file")
        a = a.astype(dt.newbyteorder("<"), copy=False)
        raw = a.tobytes()
        table[name] = {"dtype": dt.name, "shape": list(a.shape), "offset": offset, "nbytes": len(raw)}
        chunks.append(raw + b"\x00" * _pad(len(raw)))
        offset += len(raw) + _pad(len(raw))
    data = b"".join(chunks)
    header = {"kind": kind, "meta": meta, "arrays": table, "data_crc32": zlib.crc32(data), "data_nbytes": len(data)}
    hbytes = json.dumps(header, sort_keys=True).encode("utf-8")
    prefix = MAGIC + struct.pack("<II", 1, len(hbytes)) + hbytes
    prefix += b"\x00" * _pad(len(prefix))

    def write(f):
        f.write(prefix)
        f.write(data)

    atomic_write(path, write)


def _load_v1(path: Path, blob: bytes) -> ModelFile:
    """The format-1 reader: magic, version, JSON header, CRC-32 of the data region."""
    if len(blob) < 16:
        raise CheckpointError(f"{path} is truncated (format-1 file of {len(blob)} bytes)")
    version, hlen = struct.unpack("<II", blob[8:16])
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has model-file format version {version}, newer than this lowbit reads ({FORMAT_VERSION}): "
            f"upgrade lowbit"
        )
    if version != 1:
        raise CheckpointError(f"{path} is corrupt: format-1 magic with format version {version}")
    if 16 + hlen > len(blob):
        raise CheckpointError(f"{path} is truncated (header runs past the end of the file)")
    try:
        header = json.loads(blob[16:16 + hlen].decode("utf-8"))
        start = 16 + hlen + _pad(16 + hlen)
        data = memoryview(blob)[start:]
        nbytes = int(header["data_nbytes"])
        kind, meta, table, crc = header["kind"], header["meta"], header["arrays"], header["data_crc32"]
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise CheckpointError(f"{path} has a corrupt header ({exc})") from None
    if len(data) < nbytes:
        raise CheckpointError(f"{path} is truncated: {len(data)} of {nbytes} data bytes present")
    if len(data) > nbytes:
        raise CheckpointError(f"{path} has {len(data) - nbytes} unexpected trailing bytes")
    if zlib.crc32(data) != crc:
        raise CheckpointError(f"{path} is corrupt (data checksum mismatch)")
    arrays = {}
    try:
        for name, spec in table.items():
            if spec["dtype"] not in _ALLOWED_DTYPES:
                raise CheckpointError(f"{path}: array {name!r} has unsupported dtype {spec['dtype']!r}")
            dt = np.dtype(spec["dtype"]).newbyteorder("<")
            shape = [int(d) for d in spec["shape"]]
            count = math.prod(shape)
            offset, size = int(spec["offset"]), int(spec["nbytes"])
            if min(shape, default=0) < 0 or offset < 0 or count * dt.itemsize != size or offset + size > nbytes:
                raise CheckpointError(f"{path}: array {name!r} does not fit its declared shape/offset")
            arr = np.frombuffer(data, dtype=dt, count=count, offset=offset).reshape(shape)
            arrays[name] = arr.astype(dt.newbyteorder("="), copy=True)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path} has a corrupt header ({exc})") from None
    return kind, meta, arrays
