"""Run-time choice of the kernel code path, the thread count, and the CPU-feature report.

One setting for every native kernel (the binary GEMM, the integer LSTM, ...): the extensions are built for
the baseline ISA; their fast code carries its own target attributes and runs on the path chosen here from
what the CPU reports (one enum and one CPU detection in ``csrc/lowbit_cpu.h``, compiled into each
extension). Paths are nested, each implying the features of the ones before it:

``portable``
    plain C (any CPU)
``popcnt``
    + hardware POPCNT (x86-64)
``avx2``
    + AVX2
``avx512``
    + AVX-512F and AVX-512 VPOPCNTDQ
``avx512vnni``
    + AVX-512 VNNI, BW and VL
``amx``
    + AMX-TILE and AMX-INT8 (Sapphire Rapids and later), with the tile state granted by the OS (Linux 5.16+)

What each kernel family runs on each path:

==========  ==================================================  ================================================
path        binary GEMM (:mod:`~lowbit.kernels.binary`)         integer LSTM (:mod:`~lowbit.kernels.intlstm`)
==========  ==================================================  ================================================
portable    scalar ``__builtin_popcountll``                     scalar GEMM and step
popcnt      scalar, POPCNT instruction                          scalar GEMM and step (nothing to count)
avx2        ``vpshufb`` nibble-lookup popcount (Mula), 2 x 4    AVX2 GEMM (``vpmaddwd``, 2 x 4) and step
avx512      ``vpopcntq``, 4 x 4                                 VNNI GEMM (``vpdpwssd``, 4 x 4) [#]_, AVX2 step
avx512vnni  as ``avx512``                                       as ``avx512`` (VNNI GEMM)
amx         as ``avx512``                                       as ``avx512`` (VNNI GEMM)
==========  ==================================================  ================================================

.. [#] with AVX-512 BW, VL and VNNI, which every CPU of the avx512 path has but Knights Mill (AVX2 GEMM there)

The binary convolution (:mod:`~lowbit.kernels.binconv`) runs scalar tiles of 2 pixels x 4 channels on
``portable`` / ``popcnt``, 4 pixels x 8 channels with a nibble-split ``vpshufb`` popcount on ``avx2``, and
6 pixels x 32 channels with ``vpopcntq`` (AVX-512F only besides) on ``avx512`` and above.

The k-bit GEMM (:mod:`~lowbit.kernels.quant`) runs its bit-serial AND-popcount kernel in scalar code on
``portable`` (POPCNT instruction on ``popcnt``), AVX2 on ``avx2``, ``vpopcntq`` on ``avx512`` and above; its
int8 kernel in scalar code below ``avx2``, ``vpmaddubsw`` + ``vpmaddwd`` on ``avx2`` and ``avx512`` (no VNNI
assumed there), ``vpdpbusd`` on ``avx512vnni``, and ``tdpbusd`` on 32 x 32 blocks of 16 x 16 AMX tiles on
``amx`` (the VNNI kernel takes the rows, columns and K outside whole blocks).

By default the best path the CPU supports is used. ``LOWBIT_KERNEL_PATH=<name>`` in the environment,
or :func:`set_kernel_path`, forces one (an error if the CPU lacks it). ``LOWBIT_NUM_THREADS`` or
:func:`set_num_threads` sets the default thread count (else ``os.cpu_count()``; the integer-LSTM layer
splits its batch rows over them when the batch and the work are large enough). Environment values are read on first use, and a bad one raises
:class:`lowbit.errors.ConfigError` then. :func:`cpu_features` reports the CPU features the kernels test.
"""
from __future__ import annotations

import operator
import os
import threading

from ..errors import ConfigError
from .native import bitgemm as _bitgemm

PATHS = tuple(_bitgemm.path_names())  # every path name, by id: portable, popcnt, avx2, avx512, avx512vnni, amx

_lock = threading.Lock()
_state = {"path": None, "threads": None}  # resolved lazily from the environment


def cpu_features() -> tuple:
    """Names of the CPU features the kernels test that this CPU has and the OS enables (GCC's spelling, e.g.
    ``("popcnt", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512vpopcntdq", ...)``; empty off x86)."""
    return tuple(_bitgemm.cpu_features())


def available_paths() -> tuple:
    """Names of the code paths this CPU can run, slowest first (``"portable"`` is always there)."""
    return tuple(_bitgemm.supported_paths())


def check_path(name) -> str:
    """The path ``name`` names (case and spaces ignored); ConfigError if unknown or not run by this CPU."""
    if not isinstance(name, str) or name.strip().lower() not in PATHS:
        raise ConfigError(f"unknown kernel path {name!r}; choose one of {', '.join(PATHS)}")
    name = name.strip().lower()
    if name not in available_paths():
        raise ConfigError(
            f"kernel path {name!r} is not supported by this CPU; available: {', '.join(available_paths())}"
        )
    return name


def active_path() -> str:
    """Name of the code path the GEMM uses now."""
    with _lock:
        if _state["path"] is None:
            env = os.environ.get("LOWBIT_KERNEL_PATH", "").strip()
            if env and env.lower() != "auto":
                try:
                    _state["path"] = check_path(env)
                except ConfigError as e:
                    raise ConfigError(f"LOWBIT_KERNEL_PATH: {e}") from None
            else:
                _state["path"] = _bitgemm.best_path()
        return _state["path"]


def set_kernel_path(name) -> str:
    """Force the code path (``"portable"``, ``"popcnt"``, ``"avx2"``, ``"avx512"``, ``"avx512vnni"``, ``"amx"``), or pass ``None``
    or ``"auto"`` for the best one this CPU supports. Returns the path that was active before, so a
    caller can restore it. Raises ConfigError for an unknown name or one the CPU cannot run."""
    previous = active_path()
    chosen = _bitgemm.best_path() if name is None or (isinstance(name, str) and name.strip().lower() == "auto") \
        else check_path(name)
    with _lock:
        _state["path"] = chosen
    return previous


def path_id(name: str) -> int:
    return PATHS.index(name)


def _check_threads(n, what: str, *, from_env: bool = False) -> int:
    bad = ConfigError(f"{what} must be a positive integer, got {n!r}")
    if isinstance(n, bool):
        raise bad
    if from_env:
        try:
            value = int(n.strip())
        except ValueError:
            raise bad from None
    else:
        try:
            value = operator.index(n)
        except TypeError:
            raise bad from None
    if value < 1:
        raise bad
    return min(value, 256)  # the C side's limit


def get_num_threads() -> int:
    """Default number of threads for the kernels: ``set_num_threads``, else ``LOWBIT_NUM_THREADS``,
    else ``os.cpu_count()``."""
    with _lock:
        if _state["threads"] is None:
            env = os.environ.get("LOWBIT_NUM_THREADS", "").strip()
            _state["threads"] = _check_threads(env, "LOWBIT_NUM_THREADS", from_env=True) if env else (os.cpu_count() or 1)
        return _state["threads"]


def set_num_threads(n: int) -> int:
    """Set the default thread count (a positive integer); returns the previous one."""
    value = _check_threads(n, "num_threads")
    previous = get_num_threads()
    with _lock:
        _state["threads"] = value
    return previous


def resolve_threads(num_threads) -> int:
    """The thread count for one call: its ``num_threads`` argument, or the default."""
    return get_num_threads() if num_threads is None else _check_threads(num_threads, "num_threads")
