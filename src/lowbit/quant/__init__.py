"""Quantizers: real values -> a few levels, with their training-time (straight-through) gradients.

    from lowbit.quant import get_quantizer
    q = get_quantizer("linear:bits=2")          # by registry name, with inline arguments

Modules (each quantizer's forward/backward is in its docstring):
    base        sign, ste_sign, stochastic_sign, the ``Quantizer`` base class, ``get_quantizer``
    kbit        AP2, k-bit linear and logarithmic quantizers, the DoReFa gradient quantizer
    pact_sawb   PACT (learned activation clip) and SAWB (statistics-aware weight scale)
    recurrent   quantizer plumbing of recurrent layers (per-matrix weight scale, gate mapping)

Importing this package registers every built-in name in :data:`lowbit.registry.QUANTIZERS`.
"""
from . import kbit, pact_sawb  # noqa: F401  (register "linear", "log", "grad", "pact", "sawb")
from .base import (  # noqa: F401
    Identity,
    Quantizer,
    QuantizerSpec,
    SteSign,
    StochasticSign,
    get_quantizer,
    hard_sigmoid,
    is_binary,
    parse_quantizer_spec,
    quantizer_bits,
    register_quantizer,
    sign,
    ste_sign,
    stochastic_sign,
)
from .kbit import GradQuant, LinearQuant, LogQuant, ap2, linear_quantize, log_quantize  # noqa: F401
from .pact_sawb import PACT, SAWB  # noqa: F401
