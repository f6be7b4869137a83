"""float32 GEMM for the layers a quantized network keeps in float (first/last layers, real-valued shortcuts),
on NumPy's BLAS, threaded the way lowbit's own kernels are.

Why not simply ``a @ b``: OpenBLAS's worker threads busy-wait for a while after each call. Between two of
lowbit's native kernels, which start their own threads (one per core), those spinning BLAS threads take the
cores away: on a 2-core machine a W2A2 ResNet-18 at batch 1 ran 5x slower (75 ms vs 15 ms) with NumPy's
BLAS at 2 threads than at 1. So while a network runs (:func:`single_threaded_blas`) BLAS is held to one
thread, and :func:`float_matmul` splits the rows of a large product over lowbit's thread count instead, each
part one single-threaded BLAS call (NumPy releases the GIL inside it). Either way each output is a float32
dot product over K (BLAS picks its summation order by shape): float layers agree with PyTorch to float32
rounding, which is all the exporter promises for them.

``threadpoolctl`` sets the BLAS thread count (any BLAS NumPy may be linked to: OpenBLAS, MKL, BLIS); when it
is not installed, BLAS keeps its threads (correct, slower).
"""
from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .dispatch import resolve_threads

#: products smaller than this (multiply-adds) run in one call: below it, splitting measured no faster
SPLIT_MACS = 32_000_000

_lock = threading.Lock()
_state = {"controller": False, "pool": None, "pool_size": 0}


def _blas_controller():
    """threadpoolctl's view of the BLAS libraries loaded (made once), or None without threadpoolctl."""
    with _lock:
        if _state["controller"] is False:
            try:
                from threadpoolctl import ThreadpoolController

                _state["controller"] = ThreadpoolController().select(user_api="blas")
            except Exception:  # not installed, or a platform it cannot inspect: BLAS keeps its threads
                _state["controller"] = None
        return _state["controller"]


@contextlib.contextmanager
def single_threaded_blas():
    """BLAS at one thread inside the block (restored after); a no-op without threadpoolctl."""
    ctl = _blas_controller()
    if ctl is None or not ctl.lib_controllers:
        yield
        return
    with ctl.limit(limits=1):
        yield


def _pool(n: int) -> ThreadPoolExecutor:
    with _lock:
        if _state["pool_size"] < n:
            old = _state["pool"]
            _state["pool"], _state["pool_size"] = ThreadPoolExecutor(n, thread_name_prefix="lowbit-float"), n
            if old is not None:
                old.shutdown(wait=False)
        return _state["pool"]


def float_matmul(a: np.ndarray, b: np.ndarray, num_threads=None) -> np.ndarray:
    """float32 ``a @ b`` for a (M, K), b (K, N): rows split over ``num_threads`` (default: lowbit's thread
    count) when the product is large, each part one BLAS call."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    m, k = a.shape
    n = b.shape[1]
    threads = min(resolve_threads(num_threads), m)
    if threads <= 1 or m * k * n < SPLIT_MACS:
        return a @ b
    out = np.empty((m, n), np.float32)
    edges = [m * i // threads for i in range(threads + 1)]

    def part(i):
        np.matmul(a[edges[i]:edges[i + 1]], b, out=out[edges[i]:edges[i + 1]])

    for f in [_pool(threads).submit(part, i) for i in range(threads)]:
        f.result()
    return out


__all__ = ["SPLIT_MACS", "float_matmul", "single_threaded_blas"]
