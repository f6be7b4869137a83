"""Run-time choice of the binary GEMM code path, and the thread count.

The C extension is built for the baseline ISA; its fast paths carry their own target attributes and
are chosen at run time from what the CPU reports:

``portable``
    scalar ``__builtin_popcountll`` (any CPU)
``popcnt``
    scalar, hardware POPCNT instruction (x86-64)
``avx2``
    256-bit ``vpshufb`` nibble-lookup popcount (Mula), 2 x 4 register tile
``avx512``
    512-bit ``vpopcntq`` (AVX-512 VPOPCNTDQ), 4 x 4 register tile
``avx512vnni``
    ``avx512`` plus AVX-512 VNNI and BW: the k-bit GEMM's int8 kernel uses ``vpdpbusd``
    (:mod:`lowbit.kernels.quant`); binary products run the ``avx512`` kernels

By default the best path the CPU supports is used. ``LOWBIT_KERNEL_PATH=<name>`` in the environment,
or :func:`set_kernel_path`, forces one (an error if the CPU lacks it). ``LOWBIT_NUM_THREADS`` or
:func:`set_num_threads` sets the default thread count (else ``os.cpu_count()``). Environment values
are read on first use, and a bad one raises :class:`lowbit.errors.ConfigError` then.
"""
from __future__ import annotations

import operator
import os
import threading

from ..errors import ConfigError
from . import _bitgemm

PATHS = tuple(_bitgemm.path_names())  # every path name, by id: portable, popcnt, avx2, avx512, avx512vnni

_lock = threading.Lock()
_state = {"path": None, "threads": None}  # resolved lazily from the environment


def available_paths() -> tuple:
    """Names of the code paths this CPU can run, slowest first (``"portable"`` is always there)."""
    return tuple(_bitgemm.supported_paths())


def _check_path(name) -> str:
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
                    _state["path"] = _check_path(env)
                except ConfigError as e:
                    raise ConfigError(f"LOWBIT_KERNEL_PATH: {e}") from None
            else:
                _state["path"] = _bitgemm.best_path()
        return _state["path"]


def set_kernel_path(name) -> str:
    """Force the code path (``"portable"``, ``"popcnt"``, ``"avx2"``, ``"avx512"``, ``"avx512vnni"``), or pass ``None``
    or ``"auto"`` for the best one this CPU supports. Returns the path that was active before, so a
    caller can restore it. Raises ConfigError for an unknown name or one the CPU cannot run."""
    previous = active_path()
    chosen = _bitgemm.best_path() if name is None or (isinstance(name, str) and name.strip().lower() == "auto") \
        else _check_path(name)
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
