"""The ``.lbt`` model file: a versioned header plus raw little-endian arrays (no pickle, no code).

Layout::

    offset 0   8 bytes   magic  b"LOWBIT\\x00M"
    offset 8   uint32    format version (FORMAT_VERSION)
    offset 12  uint32    header length H in bytes
    offset 16  H bytes   header: UTF-8 JSON {"kind": str, "meta": {...}, "arrays": {name: {dtype, shape,
                         offset, nbytes}}, "data_crc32": int, "data_nbytes": int}
    then       padding to a 64-byte boundary, then the data region: every array at its offset (64-aligned,
               relative to the start of the data region), C order, little-endian.

The reader checks the magic, the version (a newer file is refused with a message to upgrade), that the
file is as long as the header says and the CRC-32 of the data region, so a truncated or altered file is
reported instead of producing garbage predictions. Only NumPy and the standard library are imported.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any, Dict, Tuple, Union

import numpy as np

from ..errors import CheckpointError
from ..fileio import atomic_write

MAGIC = b"LOWBIT\x00M"
FORMAT_VERSION = 1
ALIGN = 64
_ALLOWED_DTYPES = {"int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"}


def _pad(n: int) -> int:
    return (-n) % ALIGN


def save_model_file(path: Union[str, Path], kind: str, meta: Dict[str, Any], arrays: Dict[str, np.ndarray]) -> None:
    """Write ``arrays`` and JSON-able ``meta`` atomically to ``path``."""
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
    prefix = MAGIC + struct.pack("<II", FORMAT_VERSION, len(hbytes)) + hbytes
    prefix += b"\x00" * _pad(len(prefix))

    def write(f):
        f.write(prefix)
        f.write(data)

    atomic_write(path, write)


def load_model_file(path: Union[str, Path]) -> Tuple[str, Dict[str, Any], Dict[str, np.ndarray]]:
    """Read a model file: returns ``(kind, meta, arrays)``; raises CheckpointError on any defect."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file {path} does not exist")
    blob = path.read_bytes()
    if len(blob) < 16 or blob[:8] != MAGIC:
        raise CheckpointError(f"{path} is not a lowbit model file (bad magic; expected a file from 'lowbit export')")
    version, hlen = struct.unpack("<II", blob[8:16])
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has model-file format version {version}, newer than this lowbit reads ({FORMAT_VERSION}): "
            f"upgrade lowbit"
        )
    if 16 + hlen > len(blob):
        raise CheckpointError(f"{path} is truncated (header runs past the end of the file)")
    try:
        header = json.loads(blob[16:16 + hlen].decode("utf-8"))
        start = 16 + hlen + _pad(16 + hlen)
        data = memoryview(blob)[start:]
        nbytes = int(header["data_nbytes"])
        kind, meta, table = header["kind"], header["meta"], header["arrays"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} has a corrupt header ({exc})") from None
    if len(data) < nbytes:
        raise CheckpointError(f"{path} is truncated: {len(data)} of {nbytes} data bytes present")
    if len(data) > nbytes:
        raise CheckpointError(f"{path} has {len(data) - nbytes} unexpected trailing bytes")
    if zlib.crc32(data) != header["data_crc32"]:
        raise CheckpointError(f"{path} is corrupt (data checksum mismatch)")
    arrays = {}
    for name, spec in table.items():
        if spec["dtype"] not in _ALLOWED_DTYPES:
            raise CheckpointError(f"{path}: array {name!r} has unsupported dtype {spec['dtype']!r}")
        dt = np.dtype(spec["dtype"]).newbyteorder("<")
        count = int(np.prod(spec["shape"], dtype=np.int64))
        if count * dt.itemsize != spec["nbytes"] or spec["offset"] + spec["nbytes"] > nbytes:
            raise CheckpointError(f"{path}: array {name!r} does not fit its declared shape/offset")
        arr = np.frombuffer(data, dtype=dt, count=count, offset=spec["offset"]).reshape(spec["shape"])
        arrays[name] = arr.astype(dt.newbyteorder("="), copy=True)
    return kind, meta, arrays
