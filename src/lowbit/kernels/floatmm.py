"""float32 convolution and GEMM for the layers a quantized network keeps in float (first conv on pixels,
real-valued shortcut convs, float dense layers): lowbit's own implicit-GEMM kernel (csrc/kconv_float.c).

Why not im2col + BLAS: a first layer's patch matrix is kh*kw/(sh*sw) times its input (12x for ResNet's 7x7/2
conv) and writing it took as long as the GEMM; and BLAS's worker threads busy-wait after each call, taking the
cores from lowbit's own threads between layers (a W2A2 ResNet-18 at batch 1 ran 5x slower with NumPy's BLAS
at 2 threads). The native kernel reads each window straight from the padded NHWC input (a window row is
kw*C consecutive floats), keeps 6 pixels x 64 channels in registers (AVX-512; 6 x 16 on AVX2 + FMA; plain C
elsewhere) and runs on lowbit's threads. Each output is a float32 sum of the K products: float32 rounding
of the exact sum, as any float32 GEMM, which is all the exporter promises for float layers.

* :func:`prepare_float` -- weights (K, N), K in (ky, kx, c) order, into the kernel's panels (once, at load);
* :func:`float_conv2d` -- a float conv of an NHWC map (:func:`pad_map` pads it; :func:`lowbit.kernels.codes.
  decode_map` makes it from codes);
* :func:`float_matmul` / :func:`float_matmul_prepared` -- ``a @ b``, the 1 x 1 conv of a (1, 1, M, K) map.

:func:`single_threaded_blas` holds NumPy's BLAS to one thread while a network runs (the portable first-layer
fallback of :mod:`lowbit.runtime.ops` still multiplies with it).
"""
from __future__ import annotations

import contextlib
import threading

import numpy as np

from ..errors import ShapeError
from .dispatch import active_path, path_id, resolve_threads
from .native import bitgemm as _bitgemm

_lock = threading.Lock()
_state = {"controller": False}


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


class PreparedFloat:
    """float32 weights (K, N) in :func:`float_conv2d`'s panels: ceil(N / 64) blocks of (K, 64), zero past N."""

    __slots__ = ("panels", "k", "n")

    def __init__(self, panels: np.ndarray, k: int, n: int):
        self.panels, self.k, self.n = panels, k, n

    def __repr__(self) -> str:
        return f"PreparedFloat(k={self.k}, n={self.n})"


def prepare_float(b: np.ndarray) -> PreparedFloat:
    """Pack float32 weights (K, N) for :func:`float_conv2d` / :func:`float_matmul_prepared`."""
    b = np.asarray(b)
    if b.ndim != 2 or b.shape[0] < 1 or b.shape[1] < 1:
        raise ShapeError(f"float weights must be a non-empty 2-D (K, N) array, got shape {b.shape}")
    if not np.issubdtype(b.dtype, np.floating):
        raise ShapeError(f"float weights must be floating point, got {b.dtype}")
    k, n = b.shape
    panels = np.empty(-(-n // 64) * 64 * k, np.float32)
    _bitgemm.kc_fconv_pack(np.ascontiguousarray(b, np.float32), panels)
    return PreparedFloat(panels, k, n)


def pad_map(x: np.ndarray, padding, fill: float = 0.0) -> np.ndarray:
    """float32 NHWC ``x`` padded by (ph, pw) with ``fill``: the map :func:`float_conv2d` reads."""
    (ph, pw) = padding
    x = np.asarray(x, np.float32)
    if ph == 0 and pw == 0:
        return np.ascontiguousarray(x)
    return np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)), constant_values=np.float32(fill))


def float_conv2d(xmap: np.ndarray, w: PreparedFloat, kernel, stride, num_threads=None) -> np.ndarray:
    """float32 conv of a padded NHWC map (N, Hp, Wp, C) with prepared weights of K = kh * kw * C (window
    order (ky, kx, c)): (N, OH, OW, N_out) with OH = (Hp - kh) // sh + 1."""
    xmap = np.ascontiguousarray(xmap, np.float32)
    if xmap.ndim != 4:
        raise ShapeError(f"float_conv2d needs an NHWC map, got shape {xmap.shape}")
    n, hp, wp, c = xmap.shape
    (kh, kw), (sh, sw) = kernel, stride
    if kh * kw * c != w.k:
        raise ShapeError(f"weights of K={w.k} cannot read {kh}x{kw} windows of {c} channels")
    if hp < kh or wp < kw:
        raise ShapeError(f"the padded input {hp}x{wp} is smaller than the kernel {kh}x{kw}")
    oh, ow = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    out = np.empty((n * oh * ow, w.n), np.float32)
    _bitgemm.kc_fconv(xmap, (kh, kw), (sh, sw), w.panels, w.n, out, path_id(active_path()),
                      resolve_threads(num_threads))
    return out.reshape(n, oh, ow, w.n)


def float_matmul_prepared(a: np.ndarray, w: PreparedFloat, num_threads=None) -> np.ndarray:
    """float32 ``a @ b`` for a (M, K) and ``w = prepare_float(b)``."""
    a = np.asarray(a, np.float32)
    if a.ndim != 2 or a.shape[1] != w.k:
        raise ShapeError(f"float_matmul: a of shape {a.shape} cannot multiply weights of K={w.k}")
    m = a.shape[0]
    if m == 0:
        return np.zeros((0, w.n), np.float32)
    return float_conv2d(a.reshape(1, 1, m, w.k), w, (1, 1), (1, 1), num_threads).reshape(m, w.n)


def float_matmul(a: np.ndarray, b: np.ndarray, num_threads=None) -> np.ndarray:
    """float32 ``a @ b`` for a (M, K), b (K, N) on lowbit's float kernel (b packed on every call: prepare it
    once with :func:`prepare_float` where it is reused)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ShapeError(f"float_matmul: shapes {a.shape} and {b.shape} do not multiply")
    return float_matmul_prepared(a, prepare_float(b), num_threads)


__all__ = ["PreparedFloat", "float_conv2d", "float_matmul", "float_matmul_prepared", "pad_map", "prepare_float",
           "single_threaded_blas"]
