"""Integer-only LSTM kernels (extension ``_intlstm``): int8 GEMM and one LSTM layer over a sequence; the
integer GRU and tanh RNN layers built on the same GEMM and fixed-point pieces.

The arithmetic (TensorFlow Lite's "8x8_16" LSTM) and its NumPy reference are in :mod:`lowbit.runtime.int_lstm`,
which uses this module as its C backend; every path computes the same integers as the reference, bit for
bit. The code path is the one of every native kernel, :func:`lowbit.kernels.active_path` (env
``LOWBIT_KERNEL_PATH``, :func:`lowbit.kernels.set_kernel_path`); a call may name another with ``path=``.
What runs on each path is the table in :mod:`lowbit.kernels.dispatch`. The kernels release the GIL;
:func:`gemm` and :func:`lstm_layer` run on the calling thread, the prepared ones may start threads.

Arrays are NumPy arrays, C-contiguous and of the exact dtypes named below; the C side checks types, sizes
and writability and raises TypeError / ValueError / BufferError naming the argument. Weights are "packed":
int8 rows zero-padded to a multiple of 16 columns (:func:`lowbit.runtime.int_lstm.pack_rows`), so
that every kernel step is whole.

* :func:`gemm` -- ``a @ w.T + bias``, int8 x int8 -> int32
* :func:`lstm_layer` -- one layer over (T, B, I) int8 inputs, updating the (h, c) state in place
* :func:`gru_layer`, :func:`rnn_layer` -- the same for the integer GRU (state h int16 Q0.15) and tanh RNN
  (state h int8); their arithmetic and NumPy references are in :mod:`lowbit.runtime.int_rnn`
* :func:`prepare_weights` -- weights laid out once for the kernels below (:class:`PreparedWeights`)
* :func:`gemm_prepared`, :func:`lstm_layer_prepared` -- the same products with prepared weights: no
  per-call repacking, and threads (``num_threads``, default :func:`lowbit.kernels.get_num_threads`)
* :func:`lut`, :func:`rescale` -- the fixed-point primitives, for tests against the reference
* :func:`resolve_path` -- the path a call with ``path=...`` runs

**Prepared weights** are the int8 panels of the k-bit GEMM (:mod:`lowbit.kernels.quant`, 8-bit storage):
16 weight rows per panel, 4 consecutive values of K per row in each 64-byte step, so one AVX-512 VNNI
``vpdpbusd`` multiplies a broadcast group of 4 activations with 16 rows at once (AVX2: ``vpmaddwd`` on the
same bytes; portable C: plain loops). ``vpdpbusd`` takes unsigned activations: the kernels read
``u = x + 128`` and the prepared bias is ``bias - 128 * rowsum(W)`` (exact in int32). The LSTM layer computes
the input projection of many time steps in one GEMM, then per step the recurrent GEMM and the element-wise
step; with ``num_threads`` > 1 threads split the batch rows (each runs every step of its rows, so no
synchronisation per step); :func:`plan_threads` says how many a call uses (small problems run on one).
"""
from __future__ import annotations

import os
import warnings
from typing import NamedTuple, Optional

import numpy as np

from .dispatch import PATHS, active_path, check_path, path_id, resolve_threads
from .native import load

_ext = load("_intlstm")
if tuple(_ext.path_names()) != PATHS:  # both extensions compile the same lowbit_cpu.h; a mix of builds would not
    raise ImportError(f"lowbit.kernels._intlstm has the kernel paths {_ext.path_names()}, _bitgemm {PATHS}: "
                      "rebuild both ('pip install .')")

LUT_SEGMENTS = 4096
MAX_K = 65536

_LEGACY_ENV = "LOWBIT_INTLSTM_PATH"
_warned = []


def _warn_legacy_env() -> None:
    if not _warned and os.environ.get(_LEGACY_ENV, "").strip():
        _warned.append(True)
        warnings.warn(f"{_LEGACY_ENV} is no longer read: the integer LSTM runs on the path of every kernel, "
                      "LOWBIT_KERNEL_PATH (or lowbit.kernels.set_kernel_path)", DeprecationWarning, stacklevel=3)


def resolve_path(path=None) -> str:
    """The path a kernel call with ``path`` runs: None or ``"auto"`` follow :func:`~lowbit.kernels.active_path`,
    a name is checked against this CPU (ConfigError if unknown or unsupported)."""
    _warn_legacy_env()
    if path is None or (isinstance(path, str) and path.strip().lower() == "auto"):
        return active_path()
    return check_path(path)


def gemm(a: np.ndarray, w_packed: np.ndarray, bias: np.ndarray, out: np.ndarray = None, *, path=None) -> np.ndarray:
    """int32 ``a @ w.T + bias``: a int8 (M, K), w_packed int8 (N, round_up(K, 16)) (packed),
    bias int32 (N); into ``out`` (int32 (M, N)) if given. Exact (K <= 65536)."""
    m, k = a.shape
    n = w_packed.shape[0]
    if out is None:
        out = np.empty((m, n), dtype=np.int32)
    _ext.gemm(a, w_packed, bias, out, m, n, k, path_id(resolve_path(path)))
    return out


def lstm_layer(x, w_ih, w_hh, bias_x, bias_h, qmul, lut_sig, lut_tanh, lut_cell, h, c, y, *, z_h: int,
               cell_frac_bits: int, hid_m0: int, hid_shift: int, cell_clip: int, path=None) -> None:
    """Run one integer LSTM layer over a sequence.

    x int8 (T, B, I); w_ih int8 (4H, round_up(I, 16)) and w_hh int8 (4H, round_up(H, 16)) packed; bias_x,
    bias_h int32 (4H); qmul int32 (4, 4H) (m0_x, shift_x, m0_h, shift_h); the three tables int32
    (LUT_SEGMENTS + 1). h int8 (B, H) and c int16 (B, H) hold the initial state and receive the final one;
    y int8 (T, B, H) receives the hidden outputs. The scalars are those of :class:`lowbit.runtime.int_lstm.IntLSTMLayer`.
    The C side lays the weights out for its kernels at every call; for repeated calls with the same weights,
    :func:`prepare_weights` once and :func:`lstm_layer_prepared` skip that (same results).
    """
    T, B, I = x.shape
    H = h.shape[1]
    _ext.lstm_layer(x, w_ih, w_hh, bias_x, bias_h, qmul, lut_sig, lut_tanh, lut_cell, h, c, y, (T, B, I, H),
                    (z_h, cell_frac_bits, hid_m0, hid_shift, cell_clip), path_id(resolve_path(path)))


def gru_layer(x, w_ih, w_hh, bias_x, bias_h, qmul, lut_sig, lut_tanh, h, y, *, z_h: int, hid_m0: int,
              hid_shift: int, path=None) -> None:
    """Run one integer GRU layer over a sequence (gates r, z, n; :mod:`lowbit.runtime.int_rnn`).

    x int8 (T, B, I); w_ih int8 (3H, round_up(I, 16)) and w_hh int8 (3H, round_up(H, 16)) packed; bias_x,
    bias_h int32 (3H); qmul int32 (4, 3H) (m0_x, shift_x, m0_h, shift_h); the two tables int32
    (LUT_SEGMENTS + 1). h int16 Q0.15 (B, H) holds the initial state and receives the final one; y int8
    (T, B, H) receives the hidden outputs. The scalars are those of :class:`lowbit.runtime.int_rnn.IntGRULayer`.
    """
    T, B, I = x.shape
    _ext.gru_layer(x, w_ih, w_hh, bias_x, bias_h, qmul, lut_sig, lut_tanh, h, y, (T, B, I, h.shape[1]),
                   (z_h, hid_m0, hid_shift), path_id(resolve_path(path)))


def rnn_layer(x, w_ih, w_hh, bias_x, bias_h, qmul, lut_tanh, h, y, *, z_h: int, hid_m0: int, hid_shift: int,
              path=None) -> None:
    """Run one integer tanh RNN layer over a sequence: as :func:`gru_layer` with H rows, no sigmoid table and
    the state h int8 (B, H) (:class:`lowbit.runtime.int_rnn.IntRNNLayer`)."""
    T, B, I = x.shape
    _ext.rnn_layer(x, w_ih, w_hh, bias_x, bias_h, qmul, lut_tanh, h, y, (T, B, I, h.shape[1]),
                   (z_h, hid_m0, hid_shift), path_id(resolve_path(path)))


NR = 16  # weight rows per panel


def _kp(k: int) -> int:
    return (int(k) + 15) // 16 * 16


class PreparedWeights(NamedTuple):
    """Weights laid out for the prepared kernels (:func:`prepare_weights`): ``panels`` int8
    (round_up(N, 16) * round_up(K, 16)), 64-byte aligned; ``bias`` the effective bias int32 (N)
    (``bias - 128 * rowsum(w)``); ``n``, ``k`` the shape of the weight matrix."""
    panels: np.ndarray
    bias: np.ndarray
    n: int
    k: int


def prepare_weights(w: np.ndarray, bias: Optional[np.ndarray] = None, *, k: Optional[int] = None) -> PreparedWeights:
    """Lay out int8 weights ``w`` (N, K) and their int32 ``bias`` (N; None: zeros) once for
    :func:`gemm_prepared` / :func:`lstm_layer_prepared`. ``w`` may also be packed rows (N, round_up(K, 16)),
    e.g. from :func:`lowbit.runtime.int_lstm.pack_rows`, with ``k=K``. The result serves every kernel path."""
    w = np.ascontiguousarray(w)
    if w.dtype != np.int8 or w.ndim != 2:
        raise TypeError(f"prepare_weights: w must be a 2-D int8 array, got {w.dtype} {w.shape}")
    n, ldw = w.shape
    k = ldw if k is None else int(k)
    if not 1 <= k <= ldw:
        raise ValueError(f"prepare_weights: k={k} outside 1..{ldw}")
    nbytes = (n + NR - 1) // NR * NR * _kp(k)
    raw = np.empty(nbytes + 64, dtype=np.int8)
    off = (-raw.ctypes.data) % 64
    panels = raw[off:off + nbytes]
    bias_eff = np.empty(n, dtype=np.int32)
    b = None if bias is None else np.ascontiguousarray(bias, dtype=np.int32)
    _ext.prepare(w, b, panels, bias_eff, n, k, ldw)
    panels.flags.writeable = False
    bias_eff.flags.writeable = False
    return PreparedWeights(panels, bias_eff, n, k)


def _threads(num_threads) -> int:
    return resolve_threads(num_threads)


def gemm_prepared(a: np.ndarray, pw: PreparedWeights, out: np.ndarray = None, *, path=None,
                  num_threads=None) -> np.ndarray:
    """int32 ``a @ w.T + bias`` for a int8 (M, K) and prepared weights (:func:`prepare_weights`); into
    ``out`` (int32 (M, N)) if given. Bit-identical to :func:`gemm`; threads split the output columns."""
    m, k = a.shape
    if k != pw.k:
        raise ValueError(f"gemm_prepared: a has K={k}, the weights {pw.k}")
    if out is None:
        out = np.empty((m, pw.n), dtype=np.int32)
    _ext.gemm_prepared(a, pw.panels, pw.bias, out, m, pw.n, k, path_id(resolve_path(path)), _threads(num_threads))
    return out


def lstm_layer_prepared(x, p_ih: PreparedWeights, p_hh: PreparedWeights, qmul, lut_sig, lut_tanh, lut_cell, h, c, y,
                        *, z_h: int, cell_frac_bits: int, hid_m0: int, hid_shift: int, cell_clip: int, path=None,
                        num_threads=None) -> None:
    """:func:`lstm_layer` with prepared weights: ``p_ih = prepare_weights(w_ih, bias_x)``,
    ``p_hh = prepare_weights(w_hh, bias_h)`` (the biases are in them). Bit-identical results; threads split
    the batch rows (:func:`plan_threads`)."""
    T, B, I = x.shape
    H = h.shape[1]
    if (p_ih.n, p_ih.k, p_hh.n, p_hh.k) != (4 * H, I, 4 * H, H):
        raise ValueError(f"lstm_layer_prepared: weights ({p_ih.n}, {p_ih.k}) / ({p_hh.n}, {p_hh.k}) do not fit "
                         f"I={I}, H={H}")
    _ext.lstm_layer_prepared(x, p_ih.panels, p_hh.panels, p_ih.bias, p_hh.bias, qmul, lut_sig, lut_tanh, lut_cell,
                             h, c, y, (T, B, I, H), (z_h, cell_frac_bits, hid_m0, hid_shift, cell_clip),
                             path_id(resolve_path(path)), _threads(num_threads))


def plan_threads(T: int, B: int, I: int, H: int, num_threads=None) -> int:
    """Threads :func:`lstm_layer_prepared` uses for T steps of B rows (I inputs, H units)."""
    return int(_ext.plan_threads(int(T), int(B), int(I), int(H), _threads(num_threads)))


def lut(table: np.ndarray, x: np.ndarray, out: np.ndarray = None) -> np.ndarray:
    """int16 -> int16 through an interpolated activation table (int32 (LUT_SEGMENTS + 1), Q0.23)."""
    if out is None:
        out = np.empty_like(x)
    _ext.lut(table, x, out)
    return out


def rescale(x: np.ndarray, m0: int, shift: int, out: np.ndarray = None) -> np.ndarray:
    """int32 -> int32 multiplication by the quantized multiplier ``m0 * 2^(shift - 31)`` (single rounding)."""
    if out is None:
        out = np.empty_like(x)
    _ext.rescale(x, m0, shift, out)
    return out


__all__ = ["LUT_SEGMENTS", "MAX_K", "PreparedWeights", "gemm", "gemm_prepared", "gru_layer", "lstm_layer",
           "lstm_layer_prepared", "lut", "plan_threads", "prepare_weights", "rescale", "resolve_path", "rnn_layer"]
