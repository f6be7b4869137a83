"""The native extensions of :mod:`lowbit.kernels`, loaded in one place.

Every extension is built from ``csrc/`` (``pip install .``, or ``python setup.py build_ext --inplace`` in a
checkout) and carries an ``ABI_VERSION`` that changes whenever one of its functions changes its arguments;
:func:`load` refuses a build whose version is not the one this Python code speaks (a stale ``.so`` left by
an older checkout would otherwise be called with the wrong arguments).

==============  =====================================================  ==============================
extension       kernels                                                Python face
==============  =====================================================  ==============================
``_bitgemm``    binary (XNOR-popcount) GEMM, packing, threshold, u8;   :mod:`lowbit.kernels.binary`,
                binary convolution (implicit GEMM, fused threshold);   :mod:`lowbit.kernels.binconv`,
                k-bit GEMM of level sets (bit-serial, int8)            :mod:`lowbit.kernels.u8`,
                                                                       :mod:`lowbit.kernels.quant`
``_intlstm``    integer-only LSTM, GRU, RNN: int8 GEMM, the steps      :mod:`lowbit.kernels.intlstm`
==============  =====================================================  ==============================

All of them share one kernel-path enum and CPU detection (``csrc/lowbit_cpu.h``), which
:mod:`lowbit.kernels.dispatch` reads from ``_bitgemm``.
"""
from __future__ import annotations

import importlib

ABI_VERSIONS = {"_bitgemm": 5, "_intlstm": 6}

_cache: dict = {}


def load(name: str):
    """The extension module ``lowbit.kernels.<name>``; ImportError (saying how to build it) if it is not
    built, or built from other sources than this Python code."""
    mod = _cache.get(name)
    if mod is not None:
        return mod
    want = ABI_VERSIONS[name]
    full = f"{__package__}.{name}"
    try:
        mod = importlib.import_module(full)
    except ImportError as exc:
        raise ImportError(f"{full} is not available ({exc}); build it with 'pip install .' (or "
                          "'python setup.py build_ext --inplace' in a source checkout)") from exc
    got = getattr(mod, "ABI_VERSION", None)
    if got != want:
        raise ImportError(f"{full} has ABI version {got}, this lowbit expects {want} (a stale build): rebuild "
                          "with 'pip install .' (or 'python setup.py build_ext --inplace')")
    _cache[name] = mod
    return mod


bitgemm = load("_bitgemm")  # every module of lowbit.kernels needs it
