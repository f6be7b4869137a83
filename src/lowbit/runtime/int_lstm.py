"""Integer-only LSTM inference (TensorFlow Lite's "8x8_16" LSTM design), NumPy + a C kernel, no torch.

    from lowbit.runtime import load
    m = load("ptb_lstm.lbt")                     # written by `lowbit export` (lowbit.export.lstm)
    m.perplexity(m.encode_file("ptb.test.txt"))  # {"perplexity": ..., "loss": ..., "tokens": ...}
    logp, state = m.log_probs(ids)               # ids (T, B) int -> (T, B, V) float32 log-probabilities

Number formats (per layer; "Qm.n" = signed fixed point with m integer and n fractional bits)
------------------------------------------------------------------------------------------
================================  =====================================================================
input x, hidden state h           int8 asymmetric: real = s * (q - z); layer l > 0 takes layer l-1's h
weights W_ih, W_hh (per gate row)  int8 symmetric, per output row r: real = sw[r] * q, q in [-127, 127]
effective biases                  int32 at scale s_x * sw_ih[r] (input part) / s_h * sw_hh[r] (recurrent)
gate pre-activations              int16 Q3.12 (scale 2^-12, range [-8, 8))
gate outputs i, f, g, o           int16 Q0.15 (sigmoid, tanh)
cell state c                      int16, scale 2^-cs with cs = 15 - m, 2^m = the power of two >= max|c|
================================  =====================================================================

One time step (everything integer; "rescale" = multiply by a quantized multiplier, below)::

    acc_x[r] = sum_k W_ih[r, k] x[k] + bias_x[r]       bias_x = round(b[r] / (s_x sw_ih[r])) - z_x rowsum(W_ih[r])
    acc_h[r] = sum_k W_hh[r, k] h[k] + bias_h[r]       bias_h = - z_h rowsum(W_hh[r])
    gate[r]  = sat16(rescale(acc_h[r], M_h[r]) + sat16(rescale(acc_x[r], M_x[r])))
               M_x[r] = s_x sw_ih[r] / 2^-12,  M_h[r] = s_h sw_hh[r] / 2^-12       (-> Q3.12)
    i, f, o  = sigmoid(gate) ; g = tanh(gate)         Q3.12 -> Q0.15 by table (below)
    c        = sat16(rshr(f * c, 15) + rshr(i * g, 30 - cs))
               (Q0.15 x 2^-cs = 2^-(15+cs) -> 2^-cs; Q0.15 x Q0.15 = Q0.30 -> 2^-cs)
    h        = clamp8(rescale(o * tanh_c(c), M_o) + z_h),   M_o = 2^-30 / s_h       (Q0.30 -> int8)
               tanh_c(c) = table(sat16(c << max(0, 12 - cs)))  (see the tables below)

The zero points fold into the biases because ``sum_k W (x_q - z) = sum_k W x_q - z rowsum(W)``: the inner
loops are pure int8 x int8 -> int32 dot products. The input part of all time steps is one GEMM (it does not
depend on h); the results are identical to TFLite's step-by-step order because integer sums are exact (the
accumulators cannot overflow: |bias| <= 2^30 and K <= 65536 give |acc| < 2^31).

Fixed-point rescaling (gemmlowp's multiplier, TFLite's single rounding)
----------------------------------------------------------------------
A real multiplier M > 0 is stored as an int32 ``m0`` in [2^30, 2^31) and an exponent ``shift`` (-31..30):
``M = m0 * 2^(shift - 31)``, so ``m0 / 2^31`` is M's mantissa in [1/2, 1) with 31 bits of precision
(gemmlowp's QuantizeMultiplier). Applying it to an int32 ``x`` takes one exact 64-bit product and one
rounding right shift::

    rescale(x) = sat32(rshr(x * m0, 31 - shift)),    rshr(v, e) = (v + 2^(e-1)) >> e   (round half up)

(|x * m0| < 2^62, so adding the rounding constant cannot overflow; ``>>`` is the arithmetic shift.) This is
TFLite's ``MultiplyByQuantizedMultiplier`` in its single-rounding form (``TFLITE_SINGLE_ROUNDING``); the
default gemmlowp form rounds twice (SaturatingRoundingDoublingHighMul, then RoundingDivideByPOT) and
differs by at most one unit in rare ties. The cell update's power-of-two rescales use the same ``rshr``.
So every rescale is one multiply, one add and one shift, with no float at run time.

Sigmoid and tanh (a documented 16-bit table instead of gemmlowp's polynomials)
------------------------------------------------------------------------------
A table holds f at the 4097 points ``x_i = -32768 + 16 i`` of the int16 input domain (i = 0..4096; the last
point lies just past the domain for the last segment) as int32 in Q0.23 (8 guard bits below Q0.15):
``T[i] = round(f(x_i * s_in) * 2^23)``. For an int16 input x, with ``u = x + 32768``, ``i = u >> 4``,
``t = u & 15``::

    v   = T[i] + (((T[i+1] - T[i]) * t + 8) >> 4)       linear interpolation, Q0.23
    out = clamp16((v + 128) >> 8)                        round to Q0.15

(``>>`` is the arithmetic shift, i.e. floor division.) Error: the entries are within 2^-24 of f; linear
interpolation over a segment of width h = 16 s_in is off by at most h^2 max|f''| / 8 (sigmoid on Q3.12:
< 2^-21; tanh: < 2^-19), and the final rounding adds at most half a Q0.15 step, so
``|out - f(x s_in) 2^15| < 0.6`` for every int16 x, except where f reaches +1.0 and out saturates at
32767 (= 1 - 2^-15): the test checks ``<= 1`` LSB over all 65536 inputs. Three tables per layer: sigmoid
and tanh on Q3.12 (shared by all layers) and tanh on the cell state. A coarse cell scale (cs < 12) would
make tanh too steep for the table's segments, so c is first shifted to 12 fractional bits,
``x = sat16(c << (12 - cs))`` (saturating only where |c| >= 8, where tanh rounds to +-1 anyway), and the
cell table is built on the scale 2^-max(cs, 12). Tables live in the model file, so the C kernel and the
NumPy reference read the same bytes.

Backends: the C kernels of :mod:`lowbit.kernels.intlstm` (int8 GEMM and element-wise step, on the code path of
every lowbit kernel: the best the CPU runs, ``LOWBIT_KERNEL_PATH`` or ``lowbit.kernels.set_kernel_path`` forces
one) and the NumPy reference in this module, which computes exactly the same integers (the tests compare them
bit for bit).

The integer GRU and tanh RNN (:mod:`lowbit.runtime.int_rnn`) are built from this module's pieces: the
fixed-point primitives and tables above, :class:`IntRecurrentLayer` (the arrays and constants every cell
stores) and :class:`IntRecurrentModel` (embedding, layers, decoder, state checks, log-probabilities,
perplexity, saving and loading), of which :class:`IntLSTM` is the LSTM.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from ..errors import CheckpointError, ConfigError, DataError, InputError, ShapeError

KIND = "int_lstm"
FORMAT_VERSION = 1
GATE_FRAC_BITS = 12         # gate pre-activations: Q3.12
LUT_SEGMENTS = 4096         # table points: LUT_SEGMENTS + 1, segment width 65536 / LUT_SEGMENTS = 16
LUT_STEP_BITS = 4
LUT_FRAC_BITS = 23          # table entries: Q0.23
MAX_K = 65536               # longest dot product (no int32 overflow, see above)
BIAS_LIMIT = 2 ** 30
INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1

PathLike = Union[str, Path]


# ======================================================================================================
# Fixed-point primitives (NumPy; int64 arrays hold int32 values)
# ======================================================================================================


def quantize_multiplier(real: float) -> Tuple[int, int]:
    """``real = m0 * 2^(shift - 31)`` with int32 ``m0`` in [2^30, 2^31) (0 for a multiplier below 2^-32)."""
    real = float(real)
    if not (math.isfinite(real) and real > 0):
        raise ConfigError(f"a rescale multiplier must be finite and > 0, got {real!r}")
    q, e = math.frexp(real)                  # real = q * 2^e, q in [1/2, 1)
    m0 = int(round(q * (1 << 31)))
    if m0 == (1 << 31):                      # q rounded up to 1.0
        m0 //= 2
        e += 1
    if e < -31:                              # the product would always round to 0
        return 0, 0
    if e > 30:
        raise ConfigError(f"rescale multiplier {real:g} is too large (scales of this model are degenerate)")
    return m0, e


def rshift_round(x, e) -> np.ndarray:
    """round(x / 2^e) with ties up: floor((x + 2^(e-1)) / 2^e) for e >= 1, x for e = 0 (int64)."""
    x = np.asarray(x, dtype=np.int64)
    e = np.asarray(e, dtype=np.int64)
    half = np.where(e > 0, np.int64(1) << np.maximum(e - 1, 0), 0)
    return (x + half) >> e


def rescale(x, m0, shift) -> np.ndarray:
    """x * M for M = m0 * 2^(shift - 31): the exact product x * m0, one rounding right shift by 31 - shift,
    saturated to int32 (TFLite's single-rounding MultiplyByQuantizedMultiplier)."""
    x = np.asarray(x, dtype=np.int64)
    prod = x * np.asarray(m0, dtype=np.int64)
    return np.clip(rshift_round(prod, 31 - np.asarray(shift, dtype=np.int64)), INT32_MIN, INT32_MAX)


def sat16(x) -> np.ndarray:
    return np.clip(x, -32768, 32767)


def make_lut(fn, in_scale: float) -> np.ndarray:
    """int32 table (LUT_SEGMENTS + 1) of ``fn(x * in_scale)`` in Q0.23 at x = -32768 + 16 i."""
    x = (np.arange(LUT_SEGMENTS + 1, dtype=np.float64) * (1 << LUT_STEP_BITS) - 32768.0) * float(in_scale)
    return np.round(fn(x) * float(1 << LUT_FRAC_BITS)).astype(np.int32)


def sigmoid_f64(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def lut_apply(table: np.ndarray, x) -> np.ndarray:
    """Interpolated table lookup, int16 input -> int16 Q0.15 output (see the module docstring)."""
    t = np.asarray(table, dtype=np.int64)
    u = np.asarray(x, dtype=np.int64) + 32768
    i = u >> LUT_STEP_BITS
    frac = u & ((1 << LUT_STEP_BITS) - 1)
    a = t[i]
    v = a + (((t[i + 1] - a) * frac + (1 << (LUT_STEP_BITS - 1))) >> LUT_STEP_BITS)
    shift = LUT_FRAC_BITS - 15
    return sat16((v + (1 << (shift - 1))) >> shift)


def cell_table_input(c, cell_frac_bits: int) -> np.ndarray:
    """The cell state brought to at least 12 fractional bits for the cell tanh table (saturating)."""
    return sat16(np.asarray(c, dtype=np.int64) << max(0, GATE_FRAC_BITS - int(cell_frac_bits)))


def cell_lut(cell_frac_bits: int) -> np.ndarray:
    """tanh table for the cell state of scale 2^-cell_frac_bits (input of :func:`cell_table_input`)."""
    return make_lut(np.tanh, 2.0 ** -max(int(cell_frac_bits), GATE_FRAC_BITS))


def standard_luts() -> Tuple[np.ndarray, np.ndarray]:
    """(sigmoid, tanh) tables on Q3.12 input."""
    s = 2.0 ** -GATE_FRAC_BITS
    return make_lut(sigmoid_f64, s), make_lut(np.tanh, s)


def quantize_asymmetric(x: np.ndarray, scale: float, zero: int) -> np.ndarray:
    """int8 ``clamp(round(x / scale) + zero)`` (round half to even, NumPy's rint)."""
    return np.clip(np.rint(np.asarray(x, dtype=np.float64) / scale) + zero, -128, 127).astype(np.int8)


def asymmetric_params(lo: float, hi: float) -> Tuple[float, int]:
    """(scale, zero point) of int8 asymmetric quantization covering [lo, hi] (widened to include 0)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ConfigError(f"calibration range [{lo}, {hi}] is not finite")
    if hi - lo < 1e-8:
        return 1.0 / 128.0, 0
    scale = (hi - lo) / 255.0
    zero = int(np.clip(round(-128 - lo / scale), -128, 127))
    return scale, zero


# ======================================================================================================
# Layer parameters
# ======================================================================================================


class IntRecurrentLayer:
    """One layer of an integer recurrent cell: what every cell (LSTM here, GRU and RNN in
    :mod:`lowbit.runtime.int_rnn`) stores, checked on load.

    Attributes: ``w_ih`` int8 (G H, I), ``w_hh`` int8 (G H, H) (G = :attr:`GATES`, rows per output unit and
    gate, in torch's gate order), ``bias_x``/``bias_h`` int32 (G H), ``qmul`` int32 (4, G H) rows (m0_x,
    shift_x, m0_h, shift_h), every ``lut_*`` array int32 (LUT_SEGMENTS+1); ``z_in, s_in`` (input), ``z_h,
    s_h`` (hidden output, int8), ``hid_m0, hid_shift`` (the multiplier that requantizes the hidden output
    to int8) and the integer constants a cell adds (:attr:`SCALARS`).

    :attr:`STATE` names the per-layer state the cell carries between calls: (name, dtype) of each (batch, H)
    array. An int8 state is a hidden output (real 0 is ``z_h``), an int16 one a fixed-point value (0 is 0).
    """

    GATES = 4
    ARRAYS: Tuple[str, ...] = ("w_ih", "w_hh", "bias_x", "bias_h", "qmul")
    SCALARS: Tuple[str, ...] = ("s_in", "z_in", "s_h", "z_h", "hid_m0", "hid_shift")
    STATE: Tuple[Tuple[str, Any], ...] = (("h", np.int8),)

    def __init__(self, arrays: Dict[str, np.ndarray], scalars: Dict[str, Any], where: str = "layer"):
        for name in self.ARRAYS:
            if name not in arrays:
                raise CheckpointError(f"{where}: array {name!r} is missing")
            a = np.ascontiguousarray(arrays[name])
            want = np.int8 if name.startswith("w_") else np.int32
            if a.dtype != want:
                raise CheckpointError(f"{where}: array {name!r} has dtype {a.dtype}, expected {np.dtype(want)}")
            setattr(self, name, a)
        for name in self.SCALARS:
            if name not in scalars:
                raise CheckpointError(f"{where}: constant {name!r} is missing")
            setattr(self, name, float(scalars[name]) if name.startswith("s_") else int(scalars[name]))
        g, self.input_size = self.w_ih.shape if self.w_ih.ndim == 2 else (0, 0)
        self.hidden_size = h = g // self.GATES
        gh = self.GATES * h
        ok = (self.w_ih.ndim == 2 and g == gh and h > 0 and self.w_hh.shape == (gh, h)
              and self.bias_x.shape == (gh,) and self.bias_h.shape == (gh,) and self.qmul.shape == (4, gh)
              and all(getattr(self, n).shape == (LUT_SEGMENTS + 1,) for n in self.ARRAYS if n.startswith("lut_")))
        if not ok:
            raise CheckpointError(f"{where}: arrays have inconsistent shapes (w_ih {self.w_ih.shape}, "
                                  f"w_hh {self.w_hh.shape}, qmul {self.qmul.shape})")
        q = self.qmul.astype(np.int64)
        if (q[0] < 0).any() or (q[2] < 0).any() or (np.abs(q[1]) > 31).any() or (np.abs(q[3]) > 31).any():
            raise CheckpointError(f"{where}: qmul holds a multiplier < 0 or a shift outside -31..31")
        if not (-128 <= self.z_h <= 127 and -128 <= self.z_in <= 127 and max(self.input_size, h) <= MAX_K
                and 0 <= self.hid_m0 < 2 ** 31 and -31 <= self.hid_shift <= 30 and self._constants_ok()):
            raise CheckpointError(f"{where}: integer constants out of range")

    def _constants_ok(self) -> bool:
        """The cell's own constants are in range (subclasses)."""
        return True

    def init_state(self, batch: int) -> Tuple[np.ndarray, ...]:
        """The state of a fresh sequence (real 0 everywhere)."""
        return tuple(np.full((batch, self.hidden_size), self.z_h if dt == np.int8 else 0, dtype=dt)
                     for _, dt in self.STATE)

    def scalars(self) -> Dict[str, Any]:
        return {n: getattr(self, n) for n in self.SCALARS}

    def prepared(self):
        """(input, recurrent) weights with their biases laid out for the C kernels
        (:func:`lowbit.kernels.intlstm.prepare_weights`), made on first use and kept."""
        p = self.__dict__.get("_prepared")
        if p is None:
            from ..kernels.intlstm import prepare_weights

            p = self._prepared = (prepare_weights(self.w_ih, self.bias_x), prepare_weights(self.w_hh, self.bias_h))
        return p

    def arrays(self) -> Dict[str, np.ndarray]:
        return {n: getattr(self, n) for n in self.ARRAYS}


class IntLSTMLayer(IntRecurrentLayer):
    """One integer LSTM layer (see the module docstring): gates (i, f, g, o), ``lut_cell`` the tanh table
    of the cell state, ``cell_frac_bits`` (cs) and ``cell_clip`` (0: none); state (h int8, c int16)."""

    GATES = 4
    ARRAYS = IntRecurrentLayer.ARRAYS + ("lut_cell",)
    SCALARS = IntRecurrentLayer.SCALARS + ("cell_frac_bits", "cell_clip")
    STATE = (("h", np.int8), ("c", np.int16))

    def _constants_ok(self) -> bool:
        return 0 <= self.cell_frac_bits <= 30 and 0 <= self.cell_clip <= 32767


# ======================================================================================================
# NumPy reference
# ======================================================================================================


def lstm_layer_reference(layer: IntLSTMLayer, x: np.ndarray, h: np.ndarray, c: np.ndarray,
                         lut_sig: np.ndarray, lut_tanh: np.ndarray):
    """The integer LSTM over a sequence, in NumPy: ``x`` int8 (T, B, I), ``h`` int8 (B, H), ``c`` int16 (B, H)
    -> (y int8 (T, B, H), h_T, c_T). The arithmetic of the module docstring, step by step."""
    T, B, _ = x.shape
    H = layer.hidden_size
    w_ih = layer.w_ih.astype(np.int64)
    w_hh = layer.w_hh.astype(np.int64)
    m0x, shx, m0h, shh = (layer.qmul[k].astype(np.int64) for k in range(4))
    acc_x = x.reshape(T * B, layer.input_size).astype(np.int64) @ w_ih.T + layer.bias_x
    gx = sat16(rescale(acc_x, m0x, shx)).reshape(T, B, 4 * H)
    h = h.astype(np.int64)
    c = c.astype(np.int64)
    y = np.empty((T, B, H), dtype=np.int8)
    cs = layer.cell_frac_bits
    for t in range(T):
        acc_h = h @ w_hh.T + layer.bias_h
        gate = sat16(rescale(acc_h, m0h, shh) + gx[t])
        i = lut_apply(lut_sig, gate[:, 0:H])
        f = lut_apply(lut_sig, gate[:, H:2 * H])
        g = lut_apply(lut_tanh, gate[:, 2 * H:3 * H])
        o = lut_apply(lut_sig, gate[:, 3 * H:4 * H])
        c = sat16(rshift_round(f * c, 15) + rshift_round(i * g, 30 - cs))
        if layer.cell_clip:
            c = np.clip(c, -layer.cell_clip, layer.cell_clip)
        tc = lut_apply(layer.lut_cell, cell_table_input(c, cs))
        h = np.clip(rescale(o * tc, layer.hid_m0, layer.hid_shift) + layer.z_h, -128, 127)
        y[t] = h
    return y, h.astype(np.int8), c.astype(np.int16)


def pack_rows(w: np.ndarray) -> np.ndarray:
    """int8 rows zero-padded to a multiple of 16 columns: the C kernel's weight layout (no scalar tails)."""
    n, k = w.shape
    out = np.zeros((n, (k + 15) // 16 * 16), dtype=np.int8)
    out[:, :k] = w
    return out


def gemm_reference(a: np.ndarray, w: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """int32 ``a @ w.T + bias`` (a int8 (M, K), w int8 (N, K), bias int32 (N))."""
    return (a.astype(np.int64) @ w.astype(np.int64).T + bias.astype(np.int64)).astype(np.int32)


# ======================================================================================================
# Kernels
# ======================================================================================================

_KERNELS = None
_KERNELS_ERROR: Optional[str] = None


def extension():
    """The C kernels (module :mod:`lowbit.kernels.intlstm`), or None (with :func:`extension_error` saying why)."""
    global _KERNELS, _KERNELS_ERROR
    if _KERNELS is None and _KERNELS_ERROR is None:
        try:
            from ..kernels import intlstm
        except ImportError as exc:
            _KERNELS_ERROR = str(exc)
        else:
            _KERNELS = intlstm
    return _KERNELS


def extension_error() -> Optional[str]:
    extension()
    return _KERNELS_ERROR


def available_paths() -> List[str]:
    """Kernel paths the C backend runs on this CPU (``[]`` without the extension)."""
    if extension() is None:
        return []
    from ..kernels import available_paths as kernel_paths

    return list(kernel_paths())


BACKENDS = ("auto", "c", "numpy")
_KERNEL_PATH_NAMES = ("portable", "popcnt", "avx2", "avx512", "avx512vnni", "amx")  # lowbit.kernels.PATHS, for the NumPy-only case


class _Kernels:
    """Backend selection: "c" (:mod:`lowbit.kernels.intlstm`; ``path`` "auto" follows the kernel path of
    :mod:`lowbit.kernels` at each call, or one of its path names), "numpy" (reference), or "auto" (C when built)."""

    def __init__(self, backend: str = "auto", path: str = "auto", num_threads: Optional[int] = None):
        self.num_threads = num_threads  # None: lowbit.kernels.get_num_threads() at each call
        if backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        ext = extension() if backend in ("auto", "c") else None
        if backend == "c" and ext is None:
            raise ConfigError(extension_error())
        self.ext = ext
        self.backend = "c" if ext is not None else "numpy"
        auto = path is None or (isinstance(path, str) and path.strip().lower() == "auto")
        self.path = None if auto else path  # None: follow lowbit.kernels.active_path() at each call
        if ext is not None and not auto:
            self.path = ext.resolve_path(path)  # ConfigError for a path this CPU does not run
        elif not auto and path not in _KERNEL_PATH_NAMES:
            raise ConfigError(f"path must be auto or one of {', '.join(_KERNEL_PATH_NAMES)}, got {path!r}")

    @property
    def resolved_path(self) -> str:
        if self.ext is None:
            return "numpy"
        return self.ext.resolve_path(self.path)

    def lstm_layer(self, layer: IntLSTMLayer, x, h, c, lut_sig, lut_tanh):
        if self.ext is None:
            return lstm_layer_reference(layer, x, h, c, lut_sig, lut_tanh)
        T, B, I = x.shape
        H = layer.hidden_size
        x = np.ascontiguousarray(x, dtype=np.int8)
        h = np.array(h, dtype=np.int8, order="C", copy=True)
        c = np.array(c, dtype=np.int16, order="C", copy=True)
        y = np.empty((T, B, H), dtype=np.int8)
        p_ih, p_hh = layer.prepared()
        self.ext.lstm_layer_prepared(
            x, p_ih, p_hh, layer.qmul, lut_sig, lut_tanh, layer.lut_cell,
            h, c, y, z_h=layer.z_h, cell_frac_bits=layer.cell_frac_bits, hid_m0=layer.hid_m0,
            hid_shift=layer.hid_shift, cell_clip=layer.cell_clip, path=self.path, num_threads=self.num_threads)
        return y, h, c

    @staticmethod
    def packed(layer: IntRecurrentLayer) -> Tuple[np.ndarray, np.ndarray]:
        """The layer's (w_ih, w_hh) in the C kernels' layout (:func:`pack_rows`), made once per layer."""
        packed = layer.__dict__.get("_packed")
        if packed is None:
            packed = layer._packed = (pack_rows(layer.w_ih), pack_rows(layer.w_hh))
        return packed

    def gemm(self, a, w, bias, w_packed=None):
        """int32 ``a @ w.T + bias``; ``w_packed``: :func:`pack_rows` (w), or better the weights prepared with
        bias (:func:`lowbit.kernels.intlstm.prepare_weights` (w, bias)), if the caller keeps one."""
        if self.ext is None:
            return gemm_reference(a, w, bias)
        a = np.ascontiguousarray(a, dtype=np.int8)
        if isinstance(w_packed, self.ext.PreparedWeights):
            return self.ext.gemm_prepared(a, w_packed, path=self.path, num_threads=self.num_threads)
        if w_packed is None:
            w_packed = pack_rows(w)
        return self.ext.gemm(a, w_packed, np.ascontiguousarray(bias, dtype=np.int32), path=self.path)


# ======================================================================================================
# The model
# ======================================================================================================

State = List[Tuple[np.ndarray, ...]]


class IntRecurrentModel:
    """A loaded integer recurrent network (optionally with an int8 embedding in front and an int8 decoder
    behind): what the integer LSTM, GRU and RNN share. A subclass names its cell (:attr:`KIND`, the layer
    class :attr:`LAYER`, the format-version key) and runs one layer (:meth:`_run_layer`).

    Methods:
        init_state(batch) -> state            per layer a tuple of (B, H) arrays (:attr:`IntRecurrentLayer.STATE`)
        run_quantized(x_q, state) -> (y_q, state)   int8 (T, B, I) -> int8 hidden outputs of the last layer
        run_float(x, state) -> (y, state)     float (T, B, I) -> float (T, B, H) (quantize in, dequantize out)
        run_ids(ids, state) -> (y_q, state)   token ids (T, B) through the embedding
        logits(ids, state) -> (float32 (T, B, V), state)
        log_probs(ids, state) -> (float32 (T, B, V), state)
        perplexity(ids, batch_size=1, bptt=35) -> dict (loss nats/token, perplexity, bpc, tokens)
        encode(text) / encode_file(path) -> int64 ids, with the vocabulary stored in the file
    """

    task = "lm"
    KIND = ""
    VERSION_KEY = ""  # the metadata key of the format version: "<KIND>_version"
    FORMAT_VERSION = 1
    LAYER = IntRecurrentLayer
    description = "integer recurrent network"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.VERSION_KEY = f"{cls.KIND}_version"

    def __init__(self, meta: Dict[str, Any], arrays: Dict[str, np.ndarray], backend: str = "auto",
                 path: str = "auto", source: str = "model"):
        self.meta = meta
        self.source = source
        self._all_arrays = dict(arrays)
        L = self.LAYER
        try:
            n = int(meta["num_layers"])
            self.layers = [L({k: arrays[f"l{i}.{k}"] for k in L.ARRAYS if f"l{i}.{k}" in arrays},
                             meta["layers"][i], where=f"{source} layer {i}") for i in range(n)]
            self.lut_sig = np.ascontiguousarray(arrays["lut_sigmoid"], dtype=np.int32)
            self.lut_tanh = np.ascontiguousarray(arrays["lut_tanh"], dtype=np.int32)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{source} is not a valid {self.description} model ({exc!r})") from None
        if n < 1 or self.lut_sig.shape != (LUT_SEGMENTS + 1,) or self.lut_tanh.shape != (LUT_SEGMENTS + 1,):
            raise CheckpointError(f"{source}: bad layer count or activation tables")
        for a, b in zip(self.layers, self.layers[1:]):
            if b.input_size != a.hidden_size or b.s_in != a.s_h or b.z_in != a.z_h:
                raise CheckpointError(f"{source}: layer sizes or scales do not chain")
        self.embedding = arrays.get("embedding")
        if self.embedding is not None:
            if self.embedding.dtype != np.int8 or self.embedding.ndim != 2 or self.embedding.shape[1] != self.input_size:
                raise CheckpointError(f"{source}: embedding table has shape {self.embedding.shape}/{self.embedding.dtype}")
        self.decoder_w = arrays.get("decoder.weight")
        self._decoder_packed = None
        if self.decoder_w is not None:
            self.decoder_bias_int = np.ascontiguousarray(arrays["decoder.bias_int"], dtype=np.int32)
            self.decoder_scale = np.asarray(arrays["decoder.scale"], dtype=np.float32)
            self.decoder_bias = np.asarray(arrays["decoder.bias"], dtype=np.float32)
            v = self.decoder_w.shape[0]
            if (self.decoder_w.dtype != np.int8 or self.decoder_w.shape[1] != self.hidden_size
                    or self.decoder_bias_int.shape != (v,) or self.decoder_scale.shape != (v,) or self.decoder_bias.shape != (v,)):
                raise CheckpointError(f"{source}: decoder arrays are inconsistent")
        self.vocab = None
        if meta.get("vocab"):
            from ..data.text import Vocabulary

            self.vocab = Vocabulary.from_dict(meta["vocab"])
            if self.embedding is not None and len(self.vocab) != self.embedding.shape[0]:
                raise CheckpointError(f"{source}: vocabulary has {len(self.vocab)} tokens, embedding {self.embedding.shape[0]}")
        self.kernels = _Kernels(backend, path)

    # ---- facts ---------------------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        return self.KIND

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def input_size(self) -> int:
        return self.layers[0].input_size

    @property
    def hidden_size(self) -> int:
        return self.layers[-1].hidden_size

    @property
    def vocab_size(self) -> Optional[int]:
        return None if self.embedding is None else int(self.embedding.shape[0])

    @property
    def backend(self) -> str:
        return self.kernels.backend if self.kernels.backend == "numpy" else f"c/{self.kernels.resolved_path}"

    # ---- state ---------------------------------------------------------------------------------------

    def init_state(self, batch: int) -> State:
        return [layer.init_state(batch) for layer in self.layers]

    def _check_state(self, state: Optional[State], batch: int) -> State:
        if state is None:
            return self.init_state(batch)
        spec = self.LAYER.STATE
        names = ", ".join(name for name, _ in spec)
        what = f"({names}) pairs" if len(spec) == 2 else f"({names},) tuples"
        if not isinstance(state, (list, tuple)) or len(state) != self.num_layers:
            raise ShapeError(f"state must be a list of {self.num_layers} {what}, one per layer")
        for k, (parts, layer) in enumerate(zip(state, self.layers)):
            if not (isinstance(parts, (list, tuple)) and len(parts) == len(spec)):
                kinds = ", ".join(f"{name} {np.dtype(dt)}" for name, dt in spec)
                raise ShapeError(f"state of layer {k} must be a {'pair' if len(spec) == 2 else 'tuple'} ({kinds})")
            want = (batch, layer.hidden_size)
            for (name, dt), a in zip(spec, parts):
                a = np.asarray(a)
                if a.shape != want:
                    raise ShapeError(f"hidden state {name} of layer {k} has shape {a.shape}, expected {want} "
                                     f"(batch, hidden_size)")
                if a.dtype != dt:
                    raise ShapeError(f"hidden state {name} of layer {k} has dtype {a.dtype}, expected {np.dtype(dt)}")
        return [tuple(np.asarray(a) for a in parts) for parts in state]

    # ---- running -------------------------------------------------------------------------------------

    def _run_layer(self, layer, x: np.ndarray, state: Tuple[np.ndarray, ...]):
        """One layer over the int8 sequence ``x`` (T, B, I) from ``state``: (int8 (T, B, H), new state).
        The cell's own arithmetic: each cell class (IntLSTM, IntGRU, IntRNN) defines it."""
        raise NotImplementedError(f"{type(self).__name__} is the shared base; load an int_lstm/int_gru/int_rnn file")

    def run_quantized(self, x_q: np.ndarray, state: Optional[State] = None):
        x_q = np.asarray(x_q)
        if x_q.ndim != 3 or x_q.shape[2] != self.input_size:
            raise ShapeError(f"input must be int8 (seq, batch, {self.input_size}), got shape {x_q.shape}")
        if x_q.dtype != np.int8:
            raise ShapeError(f"quantized input must be int8, got {x_q.dtype}")
        state = self._check_state(state, x_q.shape[1])
        new_state = []
        x = x_q
        for layer, st in zip(self.layers, state):
            x, st = self._run_layer(layer, x, st)
            new_state.append(st)
        return x, new_state

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        l0 = self.layers[0]
        return quantize_asymmetric(x, l0.s_in, l0.z_in)

    def dequantize_output(self, y_q: np.ndarray) -> np.ndarray:
        l = self.layers[-1]
        return ((y_q.astype(np.float32) - l.z_h) * np.float32(l.s_h)).astype(np.float32)

    def run_float(self, x: np.ndarray, state: Optional[State] = None):
        if np.iscomplexobj(x):
            raise InputError(f"input must be real-valued, got complex dtype {np.asarray(x).dtype}")
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 3 or x.shape[2] != self.input_size:
            raise ShapeError(f"input must be (seq, batch, {self.input_size}), got shape {x.shape}")
        y, state = self.run_quantized(self.quantize_input(x), state)
        return self.dequantize_output(y), state

    def _ids(self, ids) -> np.ndarray:
        if self.embedding is None:
            raise ConfigError(f"{self.source} has no embedding (exported from a bare recurrent layer); use run_float")
        ids = np.asarray(ids)
        if ids.ndim == 1:
            ids = ids[:, None]
        if ids.ndim != 2:
            raise ShapeError(f"token ids must be (seq, batch), got shape {ids.shape}")
        if ids.dtype.kind not in "iu":
            raise DataError(f"token ids must be integers, got dtype {ids.dtype}")
        v = self.embedding.shape[0]
        if ids.size and (ids.min() < 0 or ids.max() >= v):
            bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
            raise DataError(f"token id {bad} is outside the vocabulary (valid ids 0..{v - 1})")
        return ids.astype(np.int64)

    def run_ids(self, ids, state: Optional[State] = None):
        ids = self._ids(ids)
        return self.run_quantized(self.embedding[ids], state)

    def _decode(self, y: np.ndarray, log_softmax: bool) -> np.ndarray:
        """float32 (T, B, V) logits (or their log-softmax) of the hidden outputs y int8 (T, B, H). Computed a
        block of rows at a time (the int32 products of a block, ~1 MB, stay in cache while they are
        dequantized and normalized); every row's arithmetic is that of the whole array at once."""
        T, B, H = y.shape
        V = self.decoder_w.shape[0]
        if self._decoder_packed is None and self.kernels.backend == "c":
            self._decoder_packed = self.kernels.ext.prepare_weights(self.decoder_w, self.decoder_bias_int)
        rows = y.reshape(T * B, H)
        out = np.empty((T * B, V), dtype=np.float32)
        step = max(1, (1 << 18) // V)
        for r0 in range(0, T * B, step):
            acc = self.kernels.gemm(rows[r0:r0 + step], self.decoder_w, self.decoder_bias_int, self._decoder_packed)
            z = out[r0:r0 + step]
            np.multiply(acc, self.decoder_scale, out=z, dtype=np.float32)  # = acc.astype(float32) * scale
            z += self.decoder_bias
            if log_softmax:
                z -= z.max(axis=-1, keepdims=True)
                z -= np.log(np.exp(z).sum(axis=-1, keepdims=True))
        return out.reshape(T, B, V)

    def logits(self, ids, state: Optional[State] = None):
        if self.decoder_w is None:
            raise ConfigError(f"{self.source} has no decoder (exported from a bare recurrent layer)")
        y, state = self.run_ids(ids, state)
        return self._decode(y, False), state

    def log_probs(self, ids, state: Optional[State] = None):
        """float32 (T, B, V) log-softmax of the logits, and the new state."""
        if self.decoder_w is None:
            raise ConfigError(f"{self.source} has no decoder (exported from a bare LSTM)")
        y, state = self.run_ids(ids, state)
        return self._decode(y, True), state

    def perplexity(self, ids, batch_size: int = 1, bptt: int = 35) -> Dict[str, float]:
        """Mean next-token cross-entropy of a token stream, cut into ``batch_size`` columns and read in
        segments of ``bptt`` with the state carried (as the training loop evaluates)."""
        from ..data.text import batchify

        ids = np.asarray(ids)
        if ids.ndim != 1:
            raise ShapeError(f"perplexity takes a 1-D token stream, got shape {ids.shape}")
        data = batchify(self._ids(ids)[:, 0], batch_size)
        state = None
        total, count = 0.0, 0
        for i in range(0, data.shape[0] - 1, bptt):
            seq = min(bptt, data.shape[0] - 1 - i)
            lp, state = self.log_probs(data[i:i + seq], state)
            tgt = data[i + 1:i + 1 + seq]
            total -= float(np.take_along_axis(lp, tgt[..., None], axis=-1).sum(dtype=np.float64))
            count += tgt.size
        loss = total / max(count, 1)
        return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "bpc": loss / math.log(2.0),
                "tokens": int(count)}

    def encode(self, text: str) -> np.ndarray:
        if self.vocab is None:
            raise ConfigError(f"{self.source} stores no vocabulary")
        from ..data.text import tokenize

        return self.vocab.encode(tokenize(text, self.vocab.level), source="text")

    def encode_file(self, path: PathLike) -> np.ndarray:
        if self.vocab is None:
            raise ConfigError(f"{self.source} stores no vocabulary")
        from ..data.text import encode_file

        return encode_file(path, self.vocab)

    # ---- saving and loading --------------------------------------------------------------------------

    def to_arrays(self) -> Dict[str, np.ndarray]:
        """Every array of the model file (including the informational float weight scales)."""
        return dict(self._all_arrays)

    def save(self, path: PathLike) -> None:
        from .modelfile import save_model_file

        save_model_file(path, self.KIND, self.meta, self.to_arrays())

    @classmethod
    def from_parts(cls, meta: Dict[str, Any], arrays: Dict[str, np.ndarray], source: str = "model",
                   backend: str = "auto", kernel_path: str = "auto"):
        """The model from a model file's metadata and arrays, after checking its format version."""
        version = meta.get(cls.VERSION_KEY)
        what = cls.description.replace(" ", "-")
        if not isinstance(version, int) or isinstance(version, bool):
            raise CheckpointError(f"{source}: {what} format version {version!r} is not an integer (corrupt file)")
        if version > cls.FORMAT_VERSION:
            raise CheckpointError(f"{source}: {what} format version {version}; this lowbit reads up to "
                                  f"{cls.FORMAT_VERSION}: upgrade lowbit")
        return cls(meta, arrays, backend=backend, path=kernel_path, source=source)

    @classmethod
    def load(cls, path: PathLike, backend: str = "auto", kernel_path: str = "auto"):
        """Load a model file of this class's kind (see :func:`load_int_lstm` for the options)."""
        from .modelfile import load_model_file

        kind, meta, arrays = load_model_file(path)
        if kind != cls.KIND:
            raise CheckpointError(f"{path} holds a {kind!r} model, not an {cls.description} ({cls.KIND!r})")
        return cls.from_parts(meta, arrays, str(path), backend=backend, kernel_path=kernel_path)


class IntLSTM(IntRecurrentModel):
    """A loaded integer LSTM (kind ``"int_lstm"``); the state of each layer is the pair (h int8, c int16).
    Methods: those of :class:`IntRecurrentModel`."""

    KIND, LAYER, description = KIND, IntLSTMLayer, "integer LSTM"
    FORMAT_VERSION = FORMAT_VERSION

    def _run_layer(self, layer, x, state):
        y, h, c = self.kernels.lstm_layer(layer, x, state[0], state[1], self.lut_sig, self.lut_tanh)
        return y, (h, c)


def from_parts(meta: Dict[str, Any], arrays: Dict[str, np.ndarray], source: str = "model",
               backend: str = "auto", kernel_path: str = "auto") -> IntLSTM:
    """An :class:`IntLSTM` from a model file's metadata and arrays, after checking its format version."""
    return IntLSTM.from_parts(meta, arrays, source, backend=backend, kernel_path=kernel_path)


def load_int_lstm(path: PathLike, backend: str = "auto", kernel_path: str = "auto") -> IntLSTM:
    """Load an integer LSTM model file (kind ``"int_lstm"``, written by :func:`lowbit.export.lstm.export_int_lstm`).

    ``backend``: "auto" (the C kernel when built, else the NumPy reference), "c" or "numpy";
    ``kernel_path``: "auto" (the path of every lowbit kernel: ``$LOWBIT_KERNEL_PATH`` or the best the CPU
    supports) or one of ``lowbit.kernels.PATHS`` ("portable", "popcnt", "avx2", "avx512", "avx512vnni", "amx").
    Raises CheckpointError for a missing, corrupt or foreign file.
    """
    return IntLSTM.load(path, backend=backend, kernel_path=kernel_path)
